// IRSH against an independent computation (Python hashlib + NumPy reading the
// safetensors file by hand: tools/irsh_reference.py, run on the committed model), the same at every quantization level, and
// sensitive to any router change.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "base/error.h"
#include "model/router_hash.h"
#include "runtime/engine.h"
#include "test_util.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;

constexpr const char* kTinyMoeHash = "122fa78b170b6890516ab6b2bc89d333f6085853245f331a3fb80bd2183dd1f8";

TEST(RouterHash, MatchesIndependentComputationOnTheBundledModel) {
  auto store = TensorStore::OpenDir("models/tiny-moe");
  EXPECT_EQ(RouterHash(LoadModelConfig("models/tiny-moe"), *store), kTinyMoeHash);
}

TEST(RouterHash, SameAtEveryLevel) {
  testing::TempDir cache;
  for (QuantLevel level : {QuantLevel::kNone, QuantLevel::kFp16, QuantLevel::kInt8, QuantLevel::kInt4}) {
    LoadOptions o("models/tiny-moe", 2);
    o.quant = level;
    o.cache_dir = cache.path();
    auto engine = Engine::Load(o);
    EXPECT_EQ(engine->load_stats().router_hash, kTinyMoeHash) << QuantLevelName(level);
    EXPECT_GT(engine->load_stats().router_hash_ms, 0.0);
  }
}

TEST(RouterHash, ChangesWithOneRouterWeight) {
  testing::TempDir dir;
  const std::string copy = dir.path() + "/m";
  fs::copy("models/tiny-moe", copy);
  const std::string before = RouterHash(LoadModelConfig(copy), *TensorStore::OpenDir(copy));
  // Flip the lowest bit of one bf16 router weight of layer 2, found through
  // the header's data offsets.
  uint64_t at = 0;
  {
    auto store = TensorStore::OpenDir(copy);
    const TensorInfo* t = store->Find("model.layers.2.block_sparse_moe.gate.weight");
    ASSERT_NE(t, nullptr);
    at = t->begin;
  }
  const std::string file = copy + "/model.safetensors";
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  uint64_t header = 0;
  f.read(reinterpret_cast<char*>(&header), 8);
  f.seekg(static_cast<std::streamoff>(8 + header + at + 10));
  char byte = 0;
  f.read(&byte, 1);
  byte = static_cast<char>(byte ^ 1);
  f.seekp(static_cast<std::streamoff>(8 + header + at + 10));
  f.write(&byte, 1);
  f.close();
  const std::string after = RouterHash(LoadModelConfig(copy), *TensorStore::OpenDir(copy));
  EXPECT_NE(after, before);
  EXPECT_EQ(before, kTinyMoeHash);
}

// One vector per MoE family, on the seeded bf16 fixtures (synth's output is a
// pure function of the seed), from tools/irsh_reference.py. Qwen3-MoE's
// fixture has a dense layer 1, so its hash covers layers 0 and 2 only.
TEST(RouterHash, MatchesIndependentComputationForEveryFamily) {
  const std::pair<const char*, const char*> vectors[] = {
      {"fixture-qwen3-moe", "b1fb08210f14aaf380e2ac96fc5822ea388cb746178953e011901dba69ab7046"},
      {"fixture-olmoe", "e8abdb4efee4e9a62cb3d2f5fb3b8e698d089cb4a82b9c2bc6ef9b8cf614b046"},
      {"fixture-qwen2-moe", "f8d5392cf1fc00698a91071a19c609917b89d45ca3b75093e891fa92545e8a20"},
      {"fixture-granite-moe", "9eaf345d41dd19f5f28215f06a9521c3c99ebb03d4b766f08dd50341ce4610ec"},
      // IRSH v2: gpt-oss's router bias decides selection too, so it is hashed.
      {"fixture-gpt-oss", "31047d2b7b7898c0b2577050922a4a152742cb60b3381d086c865671b740dc67"},
      {"fixture-phimoe", "455060eec337746af2eadc7ea65f7327bde362a780848f60fa3f4ed6fa83ec4b"},
      // DeepSeek: MoE layers from first_k_dense_replace (1) on; V3's
      // correction bias selects experts, so V3 uses v2 (flag bit 1).
      {"fixture-deepseek-v2", "f67b9f7f9667398bd6ce316d7c8d7c5262dc5282c0981068561699fddb3f50c1"},
      {"fixture-deepseek-v3", "e429e5aff6da38e917fa064b865dff8d670174330404be05b52a5f35d1ed01da"},
  };
  for (const auto& [preset, hash] : vectors) {
    testing::TempDir dir;
    const std::string model = testing::MakeModel(dir, preset, DType::kBF16);
    EXPECT_EQ(RouterHash(LoadModelConfig(model), *TensorStore::OpenDir(model)), hash) << preset;
    // The same through the engine at an int level (routers stay float32).
    LoadOptions o(model, 2);
    o.quant = QuantLevel::kInt4;
    o.cache_dir = dir.path();
    EXPECT_EQ(Engine::Load(o)->load_stats().router_hash, hash) << preset;
  }
}

// v2 covers the router bias: one changed bias value changes the hash, and
// families without a bias stay on v1 (their vectors above are unchanged).
TEST(RouterHash, VersionTwoCoversTheRouterBias) {
  testing::TempDir dir;
  const std::string model = testing::MakeModel(dir, "fixture-gpt-oss", DType::kF32);
  const ModelConfig config = LoadModelConfig(model);
  EXPECT_EQ(RouterHashVersion(config), 2);
  EXPECT_EQ(RouterHashVersion(LoadModelConfig(testing::MakeModel(dir, "fixture-olmoe"))), 1);
  const std::string before = RouterHash(config, *TensorStore::OpenDir(model));
  uint64_t offset = 0;
  {
    auto store = TensorStore::OpenDir(model);
    const TensorInfo* bias = store->Find("model.layers.1.mlp.router.bias");
    ASSERT_NE(bias, nullptr);
    std::ifstream in(model + "/model.safetensors", std::ios::binary);
    uint64_t header = 0;
    in.read(reinterpret_cast<char*>(&header), 8);
    offset = 8 + header + bias->begin + 4 * 3;  // element 3, float32
  }
  std::fstream f(model + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
  float v = 0;
  f.seekg(static_cast<std::streamoff>(offset));
  f.read(reinterpret_cast<char*>(&v), 4);
  v += 0.25f;
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(reinterpret_cast<const char*>(&v), 4);
  f.close();
  EXPECT_NE(RouterHash(config, *TensorStore::OpenDir(model)), before);
}

TEST(RouterHash, DenseModelIsAnError) {
  testing::TempDir dir;
  const std::string model = testing::MakeModel(dir, "fixture-llama");
  EXPECT_THROW(RouterHash(LoadModelConfig(model), *TensorStore::OpenDir(model)), Error);
  EXPECT_EQ(Engine::Load({model, 2})->load_stats().router_hash, "");
}

}  // namespace
}  // namespace epwa
