// Every supported family from the command line, as a user runs it:
//  * the real config.json files of ../shared/data/models go through
//    `synth --config --layers 1` (random weights in the real tensor layout),
//    then `info`, `run` and `score` at every quantization level;
//  * the seeded fixture of each MoE family is watermarked (gsg and ewp) and
//    detected;
//  * contradictory folders end in one error line naming the file and the
//    field or tensor.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <optional>
#include <tuple>
#include <vector>
#include <fstream>

#include <nlohmann/json.hpp>

#include "cli_util.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const char* kLevels[] = {"none", "fp16", "int8", "int4", "mixed"};

std::optional<fs::path> SharedModels() {
  const fs::path p = fs::path("..") / "shared" / "data" / "models";
  if (!fs::exists(p)) return std::nullopt;
  return p;
}

class Families : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    key_ = PrepareWatermarkSuite(*dir_, 5);
  }
  static void TearDownTestSuite() { delete dir_; }
  static inline testing::TempDir* dir_ = nullptr;
  static inline std::string key_;
  testing::TempDir scratch_;
};

// One real config: written at one layer, then loaded at every level. The
// folder is deleted afterwards (the 1-layer Mixtral is 3.4 GB).
void CheckRealConfig(const fs::path& config, const std::string& family, const testing::TempDir& dir) {
  const std::string model = dir.path() + "/" + config.parent_path().filename().string();
  Result s = RunEpwa("synth --config " + Quote(config.string()) + " --layers 1 --out " + Quote(model), dir);
  ASSERT_EQ(s.exit_code, 0) << s.err;
  Result info = RunEpwa("info -m " + Quote(model) + " --json", dir);
  ASSERT_EQ(info.exit_code, 0) << info.err;
  const json j = json::parse(info.out);
  EXPECT_EQ(j["architecture"], family);
  EXPECT_EQ(j["num_layers"], 1);
  EXPECT_EQ(j["moe_layers"], json::array({0}));
  for (const char* level : kLevels) {
    SCOPED_TRACE(config.string() + " at " + level);
    Result run = RunEpwa("run -m " + Quote(model) + " --quant " + level +
                             " -p 'The capital of France' -n 3 --temp 0 --ignore-eos --json",
                         dir);
    ASSERT_EQ(run.exit_code, 0) << run.err;
    const json r = json::parse(run.out);
    EXPECT_EQ(r["stats"]["generated_tokens"], 3) << run.out;
    EXPECT_EQ(r["ids"].size(), 3u);
    Result score = RunEpwa("score -m " + Quote(model) + " --quant " + level +
                               " --text 'The capital of France is Paris.' --json",
                           dir);
    ASSERT_EQ(score.exit_code, 0) << score.err;
    const json sc = json::parse(score.out);
    EXPECT_GT(sc["num_tokens"].get<int>(), 3) << score.out;
    EXPECT_TRUE(sc["perplexity"].is_number() && std::isfinite(sc["perplexity"].get<double>())) << score.out;
    EXPECT_EQ(sc["moe_layers"], json::array({0}));
  }
  fs::remove_all(model);
}

TEST_F(Families, RealConfigsRunAtEveryLevel) {
  const auto models = SharedModels();
  if (!models) GTEST_SKIP() << "../shared/data/models is absent: the real configs are not checked";
  const std::pair<const char*, const char*> real[] = {
      {"qwen3-coder-30b-a3b-instruct", "Qwen3MoeForCausalLM"},
      {"granite-3.0-1b-a400m-instruct", "GraniteMoeForCausalLM"},
      {"granite-3.1-1b-a400m-instruct", "GraniteMoeForCausalLM"},
      {"mixtral-8x7b-instruct-v0.1", "MixtralForCausalLM"},
      {"gpt-oss-20b", "GptOssForCausalLM"},
  };
  for (const auto& [folder, family] : real) CheckRealConfig(*models / folder / "config.json", family, scratch_);
}

// DeepSeek-R1's real config cut to one layer: that layer is one of its three
// dense ones (first_k_dense_replace 3), with the real MLA shapes and FP8
// weights with 128 x 128 block scales (4.3 GB); one MoE layer of 256 experts
// would be 11 GB of FP8 and 45 GB once converted, more than this machine has.
TEST_F(Families, RealDeepseekR1ConfigRunsShortened) {
  const auto models = SharedModels();
  if (!models) GTEST_SKIP() << "../shared/data/models is absent";
  const std::string model = scratch_.path() + "/deepseek-r1";
  Result s = RunEpwa("synth --config " + Quote((*models / "deepseek-r1" / "config.json").string()) +
                         " --layers 1 --out " + Quote(model),
                     scratch_);
  ASSERT_EQ(s.exit_code, 0) << s.err;
  const json info = json::parse(RunEpwa("info -m " + Quote(model) + " --json", scratch_).out);
  EXPECT_EQ(info["architecture"], "DeepseekV3ForCausalLM");
  EXPECT_EQ(info["kv_cache_floats_per_token_layer"], 576);
  for (const char* level : {"fp16", "int4"}) {
    SCOPED_TRACE(level);
    Result run = RunEpwa("run -m " + Quote(model) + " --quant " + level +
                             " -p 'The capital of France' -n 3 --temp 0 --ignore-eos --json",
                         scratch_);
    ASSERT_EQ(run.exit_code, 0) << run.err;
    EXPECT_EQ(json::parse(run.out)["stats"]["generated_tokens"], 3) << run.out;
  }
  fs::remove_all(model);
}

TEST_F(Families, EveryMoeFamilyWatermarksAndDetects) {
  for (const char* preset :
       {"fixture-qwen3-moe", "fixture-olmoe", "fixture-qwen2-moe", "fixture-granite-moe",
        "fixture-gpt-oss", "fixture-phimoe", "fixture-deepseek-v2", "fixture-deepseek-v3"}) {
    const std::string model = testing::MakeModel(scratch_, preset, DType::kBF16);
    // The Qwen2-MoE fixture's context is 8 positions (x2 dynamic scaling) so
    // that its reference runs past it; 150 tokens need a longer one.
    json config = json::parse(testing::ReadFile(model + "/config.json"));
    config["max_position_embeddings"] = 256;
    // With random tied embeddings, Granite's x12 embedding multiplier makes
    // the previous token dominate the logits and the text a loop of one
    // token, which leaves nothing to score; a trained model does not do that.
    if (config.contains("embedding_multiplier")) config["embedding_multiplier"] = 1.0;
    std::ofstream(model + "/config.json", std::ios::trunc) << config.dump(2);
    for (const char* scheme : {"gsg", "ewp"}) {
      SCOPED_TRACE(std::string(preset) + " " + scheme);
      Result run = RunEpwa("run -m " + model + " -p 'one two three' -n 150 --seed 3 --ignore-eos --watermark " +
                               scheme + " --key-file " + key_ + " --json",
                           scratch_);
      ASSERT_EQ(run.exit_code, 0) << run.err;
      const std::string ids = scratch_.path() + "/ids.json";
      std::ofstream(ids) << json::parse(run.out)["ids"].dump();
      Result det = RunEpwa("detect -m " + model + " --watermark " + scheme + " --key-file " + key_ +
                               " --json --ids " + ids,
                           scratch_);
      ASSERT_EQ(det.exit_code, 0) << det.err;
      const json d = json::parse(det.out);
      EXPECT_TRUE(d["detected"]) << d.dump();
      // The same ids with another key are not detected.
      const std::string other = scratch_.path() + "/other.key";
      if (!fs::exists(other)) WriteFixedKey(other, 200);
      Result neg = RunEpwa("detect -m " + model + " --watermark " + scheme + " --key-file " + other +
                               " --json --ids " + ids,
                           scratch_);
      ASSERT_EQ(neg.exit_code, 0) << neg.err;
      EXPECT_FALSE(json::parse(neg.out)["detected"]) << neg.out;
    }
  }
}

// Both trained bundled models: a watermarked generation is detected, the
// unwatermarked one from the same prompt and seed is not. gsg on both; ewp on
// tiny-moe only: on the 32-expert model ewp detects 63 of 100 texts
// (`make compare-bundled`), a finding for the watermark's next version, not
// a bar it meets.
TEST_F(Families, BundledModelsWatermarkAndDetect) {
  const std::pair<const char*, std::vector<const char*>> cases[] = {
      {"models/tiny-moe", {"gsg", "ewp"}}, {"models/tiny-qwen3-moe", {"gsg"}}};
  for (const auto& [model, schemes] : cases) {
    if (!fs::exists(std::string(model) + "/model.safetensors")) {
      std::printf("%s is absent, skipped\n", model);
      continue;
    }
    for (const char* scheme : schemes) {
      SCOPED_TRACE(std::string(model) + " " + scheme);
      const std::string base = "run -m " + std::string(model) +
                               " -p 'The history of the computer' -n 200 --seed 11 --ignore-eos --json";
      Result marked = RunEpwa(base + " --watermark " + scheme + " --key-file " + key_, scratch_);
      Result plain = RunEpwa(base, scratch_);
      ASSERT_EQ(marked.exit_code, 0) << marked.err;
      ASSERT_EQ(plain.exit_code, 0) << plain.err;
      for (const auto& [name, run, want] : {std::tuple{"marked", &marked, true}, std::tuple{"plain", &plain, false}}) {
        const std::string ids = scratch_.path() + "/" + name + ".json";
        std::ofstream(ids) << json::parse(run->out)["ids"].dump();
        Result det = RunEpwa(std::string("detect -m ") + model + " --watermark " + scheme + " --key-file " +
                                 key_ + " --prompt 'The history of the computer' --json --ids " + ids,
                             scratch_);
        ASSERT_EQ(det.exit_code, 0) << det.err;
        EXPECT_EQ(json::parse(det.out)["detected"].get<bool>(), want) << name << ": " << det.out;
      }
    }
  }
}

// Bad input: contradictions between config.json and the checkpoint, or
// within config.json, end in one line naming what is wrong.
class BrokenFamilyFolder : public Families {
 protected:
  std::string Copy(const char* preset) {
    const std::string model = testing::MakeModel(scratch_, preset, DType::kBF16);
    return model;
  }
  static json ReadConfig(const std::string& model) {
    return json::parse(testing::ReadFile(model + "/config.json"));
  }
  static void WriteConfig(const std::string& model, const json& j) {
    std::ofstream(model + "/config.json", std::ios::trunc) << j.dump(2);
  }
};

TEST_F(BrokenFamilyFolder, HeadDimContradictingTheQProjection) {
  const std::string m = Copy("fixture-qwen3");
  json j = ReadConfig(m);
  j["head_dim"] = 32;  // the checkpoint's q_proj is 4 x 24 rows
  WriteConfig(m, j);
  ExpectCleanError(RunEpwa("score -m " + m + " --text hi", scratch_), 1,
                   "self_attn.q_proj.weight' has shape [96, 64] but config.json's "
                   "num_attention_heads x head_dim (4 x 32)");
}

// Renames the first tensor whose name contains `from` in a single-file
// checkpoint by rewriting the header in place (same length, so every offset
// stays valid).
void RenameTensor(const std::string& model, const std::string& from, const std::string& to) {
  ASSERT_EQ(from.size(), to.size());
  std::string bytes = testing::ReadFile(model + "/model.safetensors");
  const size_t at = bytes.find(from);
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, from.size(), to);
  std::ofstream(model + "/model.safetensors", std::ios::binary | std::ios::trunc) << bytes;
}

TEST_F(BrokenFamilyFolder, Mxfp4AndFp8TensorsThatDoNotAddUp) {
  // gpt-oss: scales whose shape contradicts the blocks (intermediate_size
  // changed to another multiple of 32 than the checkpoint's).
  std::string m = Copy("fixture-gpt-oss");
  json j = ReadConfig(m);
  j["intermediate_size"] = 64;
  WriteConfig(m, j);
  ExpectCleanError(RunEpwa("score -m " + m + " --text hi", scratch_), 1,
                   "mlp.experts.gate_up_proj_blocks' has shape [8, 64, 2, 16] but shape [8, 128, 2, 16] was expected");
  // FP8 weights without their scales.
  m = Copy("fixture-deepseek-v3-fp8");
  RenameTensor(m, "layers.0.self_attn.q_a_proj.weight_scale_inv", "layers.0.self_attn.q_a_proj.weight_scale_inX");
  ExpectCleanError(RunEpwa("score -m " + m + " --text hi", scratch_), 1,
                   "tensor 'model.layers.0.self_attn.q_a_proj.weight' is FP8 (F8_E4M3) but its scales "
                   "'model.layers.0.self_attn.q_a_proj.weight_scale_inv' are missing");
  // An unknown router scoring function and MLA ranks that contradict the tensors.
  m = Copy("fixture-deepseek-v3");
  j = ReadConfig(m);
  j["scoring_func"] = "softmax";
  WriteConfig(m, j);
  ExpectCleanError(RunEpwa("info -m " + m, scratch_), 1,
                   "scoring_func 'softmax' is not supported for DeepseekV3ForCausalLM (supported: sigmoid)");
  j["scoring_func"] = "sigmoid";
  j["kv_lora_rank"] = 48;
  WriteConfig(m, j);
  ExpectCleanError(RunEpwa("score -m " + m + " --text hi", scratch_), 1,
                   "self_attn.kv_a_proj_with_mqa.weight' has shape [40, 64] but shape [56, 64] was expected");
  // layer_types of the wrong length (the gpt-oss folder from above).
  m = scratch_.path() + "/fixture-gpt-oss";
  j = ReadConfig(m);
  j["layer_types"] = {"sliding_attention"};
  WriteConfig(m, j);
  ExpectCleanError(RunEpwa("info -m " + m, scratch_), 1,
                   "layer_types must list one entry per layer (3), not 1 entries");
}

TEST_F(BrokenFamilyFolder, TopKAboveTheExpertCount) {
  const std::string m = Copy("fixture-olmoe");
  json j = ReadConfig(m);
  j["num_experts_per_tok"] = 17;
  WriteConfig(m, j);
  ExpectCleanError(RunEpwa("info -m " + m, scratch_), 1,
                   "config.json: num_experts_per_tok (17) exceeds num_experts (16)");
}

TEST_F(BrokenFamilyFolder, MlpOnlyLayersOutOfRange) {
  const std::string m = Copy("fixture-qwen3-moe");
  json j = ReadConfig(m);
  j["mlp_only_layers"] = {1, 7};
  WriteConfig(m, j);
  ExpectCleanError(RunEpwa("info -m " + m, scratch_), 1,
                   "config.json: field 'mlp_only_layers' holds 7, which is not a layer index below "
                   "num_hidden_layers (3)");
}

TEST_F(BrokenFamilyFolder, UnknownRopeTypeAndMissingRopeFields) {
  const std::string m = Copy("fixture-qwen3-moe");
  json j = ReadConfig(m);
  j["rope_scaling"] = {{"rope_type", "su"}, {"factor", 2.0}};
  WriteConfig(m, j);
  ExpectCleanError(RunEpwa("info -m " + m, scratch_), 1, "rope_scaling type 'su' is not supported");
  j["rope_scaling"] = {{"type", "llama3"}, {"factor", 8.0}};
  WriteConfig(m, j);
  ExpectCleanError(RunEpwa("info -m " + m, scratch_), 1,
                   "rope_scaling: rope_type 'llama3' needs the field 'low_freq_factor'");
}

// A checkpoint without the tensors its config implies: the q_norm of Qwen3
// (a Llama checkpoint relabelled), the shared expert of Qwen2-MoE (a config
// claiming one the folder does not have), a fused tensor of the wrong shape.
TEST_F(BrokenFamilyFolder, MissingOrMisshapenFamilyTensors) {
  {
    const std::string m = Copy("fixture-llama");
    json j = ReadConfig(m);
    j["architectures"] = {"Qwen3ForCausalLM"};
    WriteConfig(m, j);
    ExpectCleanError(RunEpwa("score -m " + m + " --text hi", scratch_), 1,
                     "tensor 'model.layers.0.self_attn.q_norm.weight' is missing");
  }
  {
    const std::string m = Copy("fixture-qwen3-moe");
    json j = ReadConfig(m);
    j["architectures"] = {"Qwen2MoeForCausalLM"};
    j["shared_expert_intermediate_size"] = 64;
    j["qkv_bias"] = false;
    WriteConfig(m, j);
    ExpectCleanError(RunEpwa("score -m " + m + " --text hi", scratch_), 1,
                     "tensor 'model.layers.0.mlp.shared_expert.gate_proj.weight' is missing");
  }
  {
    const std::string m = Copy("fixture-granite-moe");
    json j = ReadConfig(m);
    j["intermediate_size"] = 48;  // the fused stacks hold 2 x 32 rows per expert
    WriteConfig(m, j);
    ExpectCleanError(RunEpwa("score -m " + m + " --text hi", scratch_), 1,
                     "tensor 'model.layers.0.block_sparse_moe.input_linear.weight' has shape [8, 64, 64] "
                     "but shape [8, 96, 64] was expected");
  }
}

}  // namespace
}  // namespace epwa
