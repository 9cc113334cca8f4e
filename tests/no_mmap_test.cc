// --no-mmap (LoadOptions::copy_weights): the weights a plan would read from
// file mappings are copied into process memory, every logit stays exactly
// what the mapped weights give, only an untied embedding stays mapped, and
// the memory plan counts the copies.
#include <gtest/gtest.h>

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "base/mapped_regions.h"
#include "model/weights.h"
#include "plan/memory_plan.h"
#include "runtime/engine.h"
#include "test_util.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;

struct Loaded {
  std::unique_ptr<Engine> engine;
  std::vector<float> logits;
};

class NoMmapTest : public ::testing::Test {
 protected:
  Loaded Load(const std::string& model, QuantLevel level, bool copy, bool cache = false) {
    LoadOptions o(model, 2);
    o.quant = level;
    o.plan_ctx = 64;
    o.use_cache = cache;
    o.cache_dir = cache_.path();
    o.copy_weights = copy;
    Loaded l;
    l.engine = Engine::Load(o);
    l.logits = l.engine->Score(ids_).logits;
    return l;
  }
  // Bytes of the checkpoint's untied embedding (0 when tied: it is the
  // lm_head then, and copied like any other matrix).
  static uint64_t UntiedEmbeddingBytes(const Engine& e) {
    const ModelConfig& c = e.config();
    return c.tie_word_embeddings ? 0 : static_cast<uint64_t>(c.vocab_size * c.hidden_size) * 2;  // BF16
  }

  testing::TempDir dir_, cache_;
  const std::vector<int32_t> ids_ = {1, 50, 30, 7, 99, 64, 12, 13};
};

// 16-bit matrices used in place (and gpt-oss's MXFP4 expert stacks, codes
// and E8M0 scales), a tied embedding (Qwen3), and float32 copies of FP8
// linears (DeepSeek-V3), at the levels that keep weights mapped.
TEST_F(NoMmapTest, CopiedWeightsGiveTheMappedLogitsBitForBit) {
  for (const char* preset : {"tiny-random-moe", "fixture-qwen3", "fixture-gpt-oss", "fixture-deepseek-v3-fp8"}) {
    const std::string model = testing::MakeModel(dir_, preset);
    for (QuantLevel level : {QuantLevel::kFp16, QuantLevel::kInt4}) {
      SCOPED_TRACE(std::string(preset) + " at " + QuantLevelName(level));
      const Loaded mapped = Load(model, level, false);
      const Loaded copied = Load(model, level, true);
      EXPECT_EQ(copied.logits, mapped.logits);
      const LoadStats& m = mapped.engine->load_stats();
      const LoadStats& c = copied.engine->load_stats();
      EXPECT_EQ(m.copied_bytes, 0u);
      // Only the untied embedding is left in the mapping, and everything else
      // the mapped engine read from it is now in process memory.
      EXPECT_EQ(c.mapped_bytes, UntiedEmbeddingBytes(*copied.engine));
      EXPECT_GT(c.copied_bytes, 0u);
      EXPECT_EQ(c.copied_bytes, m.mapped_bytes - c.mapped_bytes);
      EXPECT_EQ(c.converted_bytes, m.converted_bytes + c.copied_bytes);
      // The FP8 fixture's float32 sources are dropped after conversion and
      // no longer counted (they had underflowed mapped_bytes before).
      EXPECT_LT(m.mapped_bytes, m.weight_bytes);
    }
  }
}

// A weight-cache hit maps the cache file; --no-mmap copies it out too.
TEST_F(NoMmapTest, WeightCacheHitsAreCopiedOutOfTheCacheFile) {
  const std::string model = testing::MakeModel(dir_, "tiny-random-moe");
  const Loaded written = Load(model, QuantLevel::kInt4, false, /*cache=*/true);
  ASSERT_EQ(written.engine->load_stats().cache, "written");
  const Loaded mapped = Load(model, QuantLevel::kInt4, false, true);
  const Loaded copied = Load(model, QuantLevel::kInt4, true, true);
  ASSERT_EQ(mapped.engine->load_stats().cache, "hit");
  ASSERT_EQ(copied.engine->load_stats().cache, "hit");
  EXPECT_EQ(copied.logits, written.logits);
  EXPECT_EQ(mapped.logits, written.logits);
  EXPECT_EQ(copied.engine->load_stats().mapped_bytes, UntiedEmbeddingBytes(*copied.engine));
  EXPECT_EQ(copied.engine->load_stats().copied_bytes,
            mapped.engine->load_stats().mapped_bytes - copied.engine->load_stats().mapped_bytes);
}

// The plan holds the copies as process memory from the end of loading, plus
// the largest one's source beside the copies before it.
TEST_F(NoMmapTest, ThePlanCountsCopiesAsResidentAtLoad) {
  const std::string model = testing::MakeModel(dir_, "tiny-random-moe");
  const ModelConfig config = LoadModelConfig(model);
  std::unique_ptr<TensorStore> store = TensorStore::OpenDir(model);
  ModelWeights weights = BindWeights(config, *store, nullptr);
  const std::vector<MatrixSlot> slots = ListMatrices(config, weights);
  PlanContext pc;
  pc.ctx = 64;
  pc.vector_bytes = weights.converted_bytes;
  const LevelPlan mapped = PlanLevel(config, slots, QuantLevel::kFp16, pc, 1ull << 40);
  pc.copy_weights = true;
  const LevelPlan copied = PlanLevel(config, slots, QuantLevel::kFp16, pc, 1ull << 40);
  EXPECT_EQ(copied.weights_bytes, mapped.weights_bytes);
  uint64_t embedding = 0, largest_copy = 0, copies = 0;
  for (const TensorPlan& t : copied.tensors) {
    if (!CopiesIntoMemory(t)) {
      embedding += t.bytes;
      continue;
    }
    copies += t.bytes;
    largest_copy = std::max(largest_copy, t.bytes);
  }
  EXPECT_EQ(copied.in_place_bytes, embedding);
  EXPECT_GT(copies, 0u);
  // Every copy is resident at the end of loading; the last one's source is
  // resident beside them while it is copied.
  const uint64_t at_load = copied.weights_bytes - copied.in_place_bytes + copied.transient_bytes;
  EXPECT_GE(at_load, copies + largest_copy / 2);
  EXPECT_GE(copied.ExpectedBytes(), mapped.ExpectedBytes());
}

// The guard that keeps MADV_DONTNEED off process memory.
TEST(InRegisteredMapping, TellsMappingsFromProcessMemory) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  void* mapping = ::mmap(nullptr, 4 * page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mapping, MAP_FAILED);
  RegisterMappedFile(mapping, 4 * page, "test-mapping");
  const char* begin = static_cast<const char*>(mapping);
  EXPECT_TRUE(InRegisteredMapping(begin, 4 * page));
  EXPECT_TRUE(InRegisteredMapping(begin + page, 3 * page));
  EXPECT_FALSE(InRegisteredMapping(begin + page, 3 * page + 1));  // runs past the end
  EXPECT_FALSE(InRegisteredMapping(begin - 1, 2));
  std::vector<char> heap(64);
  EXPECT_FALSE(InRegisteredMapping(heap.data(), heap.size()));
  UnregisterMappedFile(mapping);
  EXPECT_FALSE(InRegisteredMapping(begin, page));
  ::munmap(mapping, 4 * page);
}

}  // namespace
}  // namespace epwa
