// The planner's arithmetic against hand computation on a small model whose
// weight views carry shapes and dtypes only (planning reads no data).
#include "plan/memory_plan.h"

#include <gtest/gtest.h>

#include "base/error.h"
#include "model/transformer.h"

namespace epwa {
namespace {

// 2 layers, d_model 64, 4 experts of d_ff 96 (top-2), GQA 4/2 heads of 16, vocab 320.
struct FakeModel {
  ModelConfig config;
  ModelWeights weights;
  explicit FakeModel(DType dtype = DType::kBF16, bool tied = false, int64_t d_ff = 96) {
    ModelConfig& c = config;
    c.architecture = "MixtralForCausalLM";
    c.vocab_size = 320;
    c.hidden_size = 64;
    c.intermediate_size = d_ff;
    c.num_layers = 2;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 16;
    c.max_position_embeddings = 256;
    c.num_experts = 4;
    c.num_experts_per_tok = 2;
    c.tie_word_embeddings = tied;
    auto view = [&](int64_t r, int64_t k) { return WeightView{dtype, nullptr, r, k}; };
    weights.embed = view(c.vocab_size, c.hidden_size);
    weights.lm_head = tied ? weights.embed : view(c.vocab_size, c.hidden_size);
    for (int l = 0; l < c.num_layers; ++l) {
      LayerWeights lw;
      lw.q = view(c.QDim(), 64);
      lw.k = view(c.KvDim(), 64);
      lw.v = view(c.KvDim(), 64);
      lw.o = view(64, c.QDim());
      for (int e = 0; e < c.num_experts; ++e)
        lw.experts.push_back({view(d_ff, 64), view(d_ff, 64), view(64, d_ff)});
      weights.layers.push_back(std::move(lw));
    }
  }
  std::vector<MatrixSlot> Slots() { return ListMatrices(config, weights); }
};

PlanContext Context(int64_t ctx = 128) {
  PlanContext pc;
  pc.ctx = ctx;
  pc.threads = 2;
  pc.runtime_bytes = 10 << 20;
  pc.vector_bytes = 4096;
  return pc;
}

TEST(MemoryPlan, StoredBytesOfEachFormat) {
  EXPECT_EQ(StoredBytes(DType::kF32, 64, 64), 64u * 64 * 4);
  EXPECT_EQ(StoredBytes(DType::kBF16, 3, 5), 64u);  // 30 bytes, rounded up to 64
  // int8: one byte per weight + one fp16 scale per 32 weights.
  EXPECT_EQ(StoredBytes(DType::kQ8, 64, 64), 4096u + 256u);
  // 4-bit: half a byte per weight + the same scales.
  EXPECT_EQ(StoredBytes(DType::kNF4, 64, 64), 2048u + 256u);
  EXPECT_EQ(StoredBytes(DType::kQ4, 64, 96), 3072u + 384u);
}

TEST(MemoryPlan, ListsEveryMatrixOnceAndNeverTheRouter) {
  FakeModel untied;
  // embed + 2 x (4 attention + 4 experts x 3) + lm_head
  EXPECT_EQ(untied.Slots().size(), 1u + 2 * (4 + 12) + 1);
  FakeModel tied(DType::kBF16, /*tied=*/true);
  EXPECT_EQ(tied.Slots().size(), 1u + 2 * (4 + 12));
  for (const MatrixSlot& m : untied.Slots()) EXPECT_EQ(m.name.find("gate.weight"), std::string::npos);
}

TEST(MemoryPlan, PolicyPerLevel) {
  FakeModel m;
  auto slots = m.Slots();
  for (const TensorPlan& t : PlanTensors(slots, QuantLevel::kNone, 128)) {
    // The untied embedding stays in place at every level (read row by row).
    EXPECT_EQ(t.target, t.role == MatrixRole::kEmbedding ? DType::kBF16 : DType::kF32) << t.name;
  }
  for (const TensorPlan& t : PlanTensors(slots, QuantLevel::kFp16, 128)) EXPECT_TRUE(t.InPlace()) << t.name;
  for (QuantLevel l : {QuantLevel::kInt8, QuantLevel::kInt4}) {
    for (const TensorPlan& t : PlanTensors(slots, l, 128)) {
      if (t.role == MatrixRole::kEmbedding || t.role == MatrixRole::kLmHead)
        EXPECT_EQ(t.target, DType::kBF16) << t.name;  // kept 16-bit by policy
      else
        EXPECT_EQ(t.target, l == QuantLevel::kInt8 ? DType::kQ8 : kInt4Format) << t.name;
    }
  }
  // An f32 checkpoint at fp16 becomes bf16 (the range of f32).
  FakeModel f32(DType::kF32);
  for (const TensorPlan& t : PlanTensors(f32.Slots(), QuantLevel::kFp16, 128)) {
    EXPECT_EQ(t.target, t.role == MatrixRole::kEmbedding ? DType::kF32 : DType::kBF16) << t.name;
  }
  // Widths that are not a multiple of 32 stay 16-bit at int levels (the
  // experts' w2 has 72 inputs here).
  FakeModel odd(DType::kBF16, false, /*d_ff=*/72);
  for (const TensorPlan& t : PlanTensors(odd.Slots(), QuantLevel::kInt4, 128)) {
    if (t.cols == 72) {
      EXPECT_EQ(t.target, DType::kBF16) << t.name;
    }
  }
}

TEST(MemoryPlan, TermsMatchHandComputation) {
  FakeModel m;
  auto slots = m.Slots();
  const PlanContext pc = Context(128);
  const LevelPlan p = PlanLevel(m.config, slots, QuantLevel::kInt8, pc, UINT64_MAX);
  // Weights: embed + lm_head in place (bf16), the rest int8.
  uint64_t want = 2ull * 320 * 64 * 2 + pc.vector_bytes;
  for (int l = 0; l < 2; ++l) {
    want += 2 * StoredBytes(DType::kQ8, 64, 64) + 2 * StoredBytes(DType::kQ8, 32, 64);
    want += 4 * (2 * StoredBytes(DType::kQ8, 96, 64) + StoredBytes(DType::kQ8, 64, 96));
  }
  EXPECT_EQ(p.weights_bytes, want);
  EXPECT_EQ(p.kv_bytes, 2ull * 2 * 128 * 32 * 4);  // K and V, layers, ctx, kv_dim, float32
  EXPECT_EQ(p.transient_bytes, 96ull * 64 * 2);    // the largest bf16 source being converted
  EXPECT_EQ(p.runtime_bytes, pc.runtime_bytes);
  EXPECT_GE(p.scratch_bytes, Transformer::ScratchBytes(m.config, 128, 128, 2, false));
  EXPECT_EQ(p.in_place_bytes, 2ull * 320 * 64 * 2);  // embedding and lm_head
  EXPECT_EQ(p.ExpectedBytes(),
            p.runtime_bytes + std::max(p.weights_bytes - p.in_place_bytes + p.transient_bytes,
                                       p.weights_bytes + p.kv_bytes + p.scratch_bytes));
  EXPECT_EQ(p.RequiredBytes(), p.ExpectedBytes() + p.margin_bytes);
  EXPECT_GE(p.margin_bytes, 64u << 20);
  // A CUDA plan adds the context.
  PlanContext gpu = pc;
  gpu.device = Device::kCuda;
  EXPECT_GT(PlanLevel(m.config, slots, QuantLevel::kInt8, gpu, UINT64_MAX).runtime_bytes,
            pc.runtime_bytes + (256u << 20));
}

// A 16-bit KV cache plans half the float32 cache's bytes, as KVCache allocates.
TEST(MemoryPlan, SixteenBitKvCacheHalvesTheKvTerm) {
  FakeModel m;
  auto slots = m.Slots();
  PlanContext pc = Context(128);
  const LevelPlan f32 = PlanLevel(m.config, slots, QuantLevel::kInt8, pc, UINT64_MAX);
  for (DType kv : {DType::kF16, DType::kBF16}) {
    pc.kv_cache = kv;
    const LevelPlan half = PlanLevel(m.config, slots, QuantLevel::kInt8, pc, UINT64_MAX);
    EXPECT_EQ(half.kv_bytes, 2ull * 2 * 128 * 32 * 2);  // K and V, layers, ctx, kv_dim, 2 bytes
    EXPECT_EQ(2 * half.kv_bytes, f32.kv_bytes);
    EXPECT_EQ(half.kv_bytes, KVCache(m.config, 128, kv).Bytes());
    EXPECT_EQ(half.weights_bytes, f32.weights_bytes);
  }
}

TEST(MemoryPlan, Int8LmHeadAtIntLevelsOnly) {
  FakeModel m;
  PlanContext pc = Context();
  pc.int8_lm_head = true;
  auto target_of = [](const LevelPlan& p, const std::string& name) {
    for (const TensorPlan& t : p.tensors)
      if (t.name == name) return t.target;
    ADD_FAILURE() << name << " is not planned";
    return DType::kF32;
  };
  const uint64_t budget = 1ull << 40;
  for (QuantLevel l : {QuantLevel::kInt8, QuantLevel::kInt4, QuantLevel::kMixed}) {
    const LevelPlan with = PlanLevel(m.config, m.Slots(), l, pc, budget);
    EXPECT_EQ(target_of(with, "lm_head.weight"), DType::kQ8) << QuantLevelName(l);
    // Only the lm_head changes: the embedding stays in place, the rest as the level says.
    EXPECT_EQ(target_of(with, "model.embed_tokens.weight"), DType::kBF16);
    const LevelPlan without = PlanLevel(m.config, m.Slots(), l, Context(), budget);
    EXPECT_EQ(target_of(without, "lm_head.weight"), DType::kBF16);
    EXPECT_EQ(without.weights_bytes - with.weights_bytes,
              StoredBytes(DType::kBF16, 320, 64) - StoredBytes(DType::kQ8, 320, 64));
    EXPECT_EQ(with.raised_to_int8, without.raised_to_int8);  // not counted as a mixed raise
  }
  for (QuantLevel l : {QuantLevel::kNone, QuantLevel::kFp16})
    EXPECT_NE(target_of(PlanLevel(m.config, m.Slots(), l, pc, budget), "lm_head.weight"), DType::kQ8);
  // A tied embedding is also read row by row as the embedding: it stays 16-bit.
  FakeModel tied(DType::kBF16, /*tied=*/true);
  EXPECT_EQ(target_of(PlanLevel(tied.config, tied.Slots(), QuantLevel::kInt4, pc, budget), "model.embed_tokens.weight"),
            DType::kBF16);
}

TEST(MemoryPlan, UntiedEmbeddingCountsTheRowsAContextCanTouch) {
  // vocab 320 x d 64 bf16: rows of 128 bytes, 40 KiB in all. One token maps
  // a 64 KiB fault-around window, more than the whole matrix: capped at it.
  // A tied embedding is the lm_head and is counted whole.
  FakeModel m;
  const TensorPlan e = PlanTensors(m.Slots(), QuantLevel::kInt8, 1)[0];
  EXPECT_EQ(e.role, MatrixRole::kEmbedding);
  EXPECT_EQ(e.bytes, 320u * 64 * 2);
  FakeModel tied(DType::kBF16, /*tied=*/true);
  const TensorPlan t = PlanTensors(tied.Slots(), QuantLevel::kInt8, 2)[0];
  EXPECT_EQ(t.role, MatrixRole::kLmHead);
  EXPECT_EQ(t.bytes, 320u * 64 * 2);
}

TEST(MemoryPlan, LevelsShrinkInOrder) {
  FakeModel m;
  auto slots = m.Slots();
  PlanReport r = PlanAllLevels(m.config, slots, Context(), UINT64_MAX);
  ASSERT_EQ(r.levels.size(), 5u);
  auto weights = [&](QuantLevel l) {
    for (const auto& p : r.levels)
      if (p.level == l) return p.weights_bytes;
    return uint64_t{0};
  };
  EXPECT_GT(weights(QuantLevel::kNone), weights(QuantLevel::kFp16));
  EXPECT_GT(weights(QuantLevel::kFp16), weights(QuantLevel::kInt8));
  EXPECT_GT(weights(QuantLevel::kInt8), weights(QuantLevel::kInt4));
  // With unlimited memory, a bf16 checkpoint gets fp16 (exact, half of none).
  EXPECT_EQ(r.levels[r.chosen].level, QuantLevel::kFp16);
}

TEST(MemoryPlan, AutoStepsDownAndMixedFillsTheGap) {
  FakeModel m;
  auto slots = m.Slots();
  const PlanContext pc = Context();
  auto required = [&](QuantLevel l) {
    return PlanLevel(m.config, slots, l, pc, UINT64_MAX).RequiredBytes();
  };
  // Just below fp16: int8.
  PlanReport r = PlanAllLevels(m.config, slots, pc, required(QuantLevel::kFp16) - 1);
  EXPECT_EQ(r.levels[r.chosen].level, QuantLevel::kInt8);
  // Between int4 and int8: mixed, with some matrices raised, attention first.
  const uint64_t mid = (required(QuantLevel::kInt8) + required(QuantLevel::kInt4)) / 2;
  r = PlanAllLevels(m.config, slots, pc, mid);
  const LevelPlan& mixed = r.levels[r.chosen];
  EXPECT_EQ(mixed.level, QuantLevel::kMixed);
  EXPECT_GT(mixed.raised_to_int8, 0);
  EXPECT_LE(mixed.RequiredBytes(), mid);
  for (const TensorPlan& t : mixed.tensors) {
    if (t.role == MatrixRole::kAttention && t.layer == 0) {
      EXPECT_EQ(t.target, DType::kQ8);
    }
  }
  // Just at int4: int4.
  r = PlanAllLevels(m.config, slots, pc, required(QuantLevel::kInt4));
  EXPECT_EQ(r.levels[r.chosen].level, QuantLevel::kInt4);
}

TEST(MemoryPlan, NothingFitsSaysWhatWould) {
  FakeModel m;
  auto slots = m.Slots();
  PlanContext pc = Context(4096);
  const uint64_t at_128 = PlanLevel(m.config, slots, QuantLevel::kInt4, Context(128), UINT64_MAX).RequiredBytes();
  PlanReport r = PlanAllLevels(m.config, slots, pc, at_128);
  EXPECT_EQ(r.chosen, -1);
  EXPECT_NE(r.advice.find("missing"), std::string::npos) << r.advice;
  EXPECT_NE(r.advice.find("--ctx"), std::string::npos) << r.advice;
  // The suggested context really fits.
  const size_t at = r.advice.find("--ctx ") + 6;
  const int64_t suggested = std::stoll(r.advice.substr(at));
  EXPECT_GE(suggested, 128);
  pc.ctx = suggested;
  EXPECT_LE(PlanLevel(m.config, slots, QuantLevel::kInt4, pc, UINT64_MAX).RequiredBytes(), at_128);
  // Far too little memory: no context helps.
  r = PlanAllLevels(m.config, slots, pc, 1 << 20);
  EXPECT_NE(r.advice.find("No context length"), std::string::npos) << r.advice;
  // A requested level that does not fit names one that does.
  try {
    ChooseLevel(m.config, slots, QuantLevel::kNone, Context(), at_128);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("level none needs"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--quant"), std::string::npos) << e.what();
  }
}

TEST(MemoryPlan, ParallelSequencesEachGetAContext) {
  FakeModel m;
  auto slots = m.Slots();
  const LevelPlan one = PlanLevel(m.config, slots, QuantLevel::kInt8, Context(128), UINT64_MAX);
  PlanContext pc = Context(128);
  pc.parallel = 4;
  const LevelPlan four = PlanLevel(m.config, slots, QuantLevel::kInt8, pc, UINT64_MAX);
  EXPECT_EQ(four.kv_bytes, 4 * one.kv_bytes);  // a full cache per sequence
  EXPECT_EQ(PlannedBatchRows(pc), 128);        // a whole prompt per pass by default
  // A batched pass of 128 rows from 4 sequences: 4 logits rows.
  EXPECT_GE(four.scratch_bytes, Transformer::BatchScratchBytes(m.config, 128, 128, 2, 4, 4));
  EXPECT_GT(four.scratch_bytes, one.scratch_bytes);
  EXPECT_GE(one.scratch_bytes, Transformer::ScratchBytes(m.config, 128, 128, 2, false));
  // A smaller row budget shrinks the scratch; more sequences than rows
  // still get one decode row each.
  pc.batch_tokens = 16;
  EXPECT_EQ(PlannedBatchRows(pc), 16);
  EXPECT_LT(PlanLevel(m.config, slots, QuantLevel::kInt8, pc, UINT64_MAX).scratch_bytes, four.scratch_bytes);
  pc.parallel = 32;
  EXPECT_EQ(PlannedBatchRows(pc), 32);
}

TEST(MemoryPlan, TooManySequencesSaysHowManyFit) {
  FakeModel m;
  auto slots = m.Slots();
  PlanContext pc = Context(4096);
  pc.parallel = 16;
  const uint64_t budget = PlanLevel(m.config, slots, QuantLevel::kInt4, pc, UINT64_MAX).RequiredBytes();
  pc.parallel = 200;
  const PlanReport r = PlanAllLevels(m.config, slots, pc, budget);
  ASSERT_EQ(r.chosen, -1);
  EXPECT_NE(r.advice.find("for 200 sequences of 4096 tokens"), std::string::npos) << r.advice;
  const size_t at = r.advice.find("--parallel ");
  ASSERT_NE(at, std::string::npos) << r.advice;
  const int suggested = std::stoi(r.advice.substr(at + 11));
  EXPECT_GE(suggested, 16) << r.advice;
  EXPECT_LT(suggested, 200) << r.advice;
  pc.parallel = suggested;
  EXPECT_LE(PlanLevel(m.config, slots, QuantLevel::kInt4, pc, UINT64_MAX).RequiredBytes(), budget);
  pc.parallel = suggested + 1;
  EXPECT_GT(PlanLevel(m.config, slots, QuantLevel::kInt4, pc, UINT64_MAX).RequiredBytes(), budget);
  // And the shorter context at 200 sequences is offered too.
  EXPECT_NE(r.advice.find("--ctx "), std::string::npos) << r.advice;
}

}  // namespace
}  // namespace epwa
