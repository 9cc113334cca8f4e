#include "model/config.h"

#include <gtest/gtest.h>

#include "base/error.h"
#include "model/weights.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>

namespace epwa {
namespace {

const char* kMixtral = R"({
  "architectures": ["MixtralForCausalLM"], "vocab_size": 32000, "hidden_size": 4096,
  "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
  "num_key_value_heads": 8, "max_position_embeddings": 32768, "rms_norm_eps": 1e-05,
  "rope_theta": 1000000.0, "sliding_window": null, "num_local_experts": 8,
  "num_experts_per_tok": 2, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16"})";

std::string ErrorOf(const std::string& json) {
  try {
    ParseModelConfig(json, "config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string Replace(std::string s, const std::string& from, const std::string& to) {
  s.replace(s.find(from), from.size(), to);
  return s;
}

TEST(ModelConfig, ParsesMixtral8x7B) {
  ModelConfig c = ParseModelConfig(kMixtral, "config.json");
  EXPECT_EQ(c.model_type, "mixtral");
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.eos_token_ids, std::vector<int32_t>{2});
  EXPECT_FALSE(c.qkv_bias);
}

TEST(ModelConfig, RoundTripsThroughJson) {
  ModelConfig c = ParseModelConfig(kMixtral, "config.json");
  ModelConfig d = ParseModelConfig(ModelConfigToJson(c), "again");
  EXPECT_EQ(d.hidden_size, c.hidden_size);
  EXPECT_EQ(d.num_experts, c.num_experts);
  EXPECT_EQ(d.head_dim, c.head_dim);
}

TEST(ModelConfig, Qwen2HasBiasesAndIgnoresDisabledWindow) {
  std::string q = Replace(kMixtral, "MixtralForCausalLM", "Qwen2ForCausalLM");
  q = Replace(q, "\"sliding_window\": null", "\"sliding_window\": 4096, \"use_sliding_window\": false");
  ModelConfig c = ParseModelConfig(q, "config.json");
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_FALSE(c.IsMoe());
}

TEST(ModelConfig, MistralUsesSlidingWindow) {
  std::string m = Replace(kMixtral, "MixtralForCausalLM", "MistralForCausalLM");
  m = Replace(m, "\"sliding_window\": null", "\"sliding_window\": 4096");
  EXPECT_EQ(ParseModelConfig(m, "config.json").sliding_window, 4096);
}

TEST(ModelConfig, RefusesUnknownArchitectureListingSupported) {
  std::string msg = ErrorOf(Replace(kMixtral, "MixtralForCausalLM", "GPT2LMHeadModel"));
  EXPECT_NE(msg.find("GPT2LMHeadModel"), std::string::npos) << msg;
  EXPECT_NE(msg.find("MixtralForCausalLM, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
                     "Qwen3ForCausalLM, Qwen3MoeForCausalLM, OlmoeForCausalLM, Qwen2MoeForCausalLM, "
                     "GraniteMoeForCausalLM, GptOssForCausalLM, PhimoeForCausalLM, DeepseekV2ForCausalLM, "
                     "DeepseekV3ForCausalLM, PhiMoEForCausalLM"),
            std::string::npos)
      << msg;
}

std::string WithRope(const std::string& rope_json) {
  return Replace(kMixtral, "\"sliding_window\": null", "\"rope_scaling\": " + rope_json);
}

TEST(ModelConfig, RefusesUnknownRopeTypesNamingTheField) {
  std::string msg = ErrorOf(WithRope(R"({"type": "mrope", "factor": 4.0})"));
  EXPECT_NE(msg.find("rope_scaling type 'mrope' is not supported"), std::string::npos) << msg;
  msg = ErrorOf(WithRope(R"({"type": "longrope", "factor": 4.0})"));
  EXPECT_NE(msg.find("rope_type 'longrope' needs 'short_factor', a list of head_dim / 2 = 64 numbers"),
            std::string::npos)
      << msg;
  msg = ErrorOf(WithRope(R"({"rope_type": "llama3", "factor": 8.0})"));
  EXPECT_NE(msg.find("needs the field 'low_freq_factor'"), std::string::npos) << msg;
  msg = ErrorOf(WithRope(R"({"rope_type": "linear"})"));
  EXPECT_NE(msg.find("needs the field 'factor'"), std::string::npos) << msg;
  msg = ErrorOf(WithRope(R"({"factor": 2.0})"));
  EXPECT_NE(msg.find("no 'rope_type'"), std::string::npos) << msg;
  msg = ErrorOf(WithRope(R"({"rope_type": "linear", "type": "dynamic", "factor": 2.0})"));
  EXPECT_NE(msg.find("disagree"), std::string::npos) << msg;
  msg = ErrorOf(WithRope(R"({"rope_type": "dynamic", "factor": 0.5})"));
  EXPECT_NE(msg.find("factor is 0.5"), std::string::npos) << msg;
}

TEST(ModelConfig, AcceptsEveryRopeTypeAndTheTypeAlias) {
  EXPECT_EQ(ParseModelConfig(WithRope(R"({"type": "linear", "factor": 2.0})"), "c").rope_scaling.kind,
            RopeScalingKind::kLinear);
  EXPECT_EQ(ParseModelConfig(WithRope(R"({"rope_type": "default"})"), "c").rope_scaling.kind,
            RopeScalingKind::kDefault);
  const ModelConfig d = ParseModelConfig(WithRope(R"({"rope_type": "dynamic", "factor": 2.0})"), "c");
  EXPECT_EQ(d.rope_scaling.kind, RopeScalingKind::kDynamic);
  EXPECT_EQ(d.ContextLimit(), 2 * 32768);
  // transformers v5 moves the theta into rope_parameters.
  std::string v5 = Replace(kMixtral, "\"sliding_window\": null",
                           R"("rope_parameters": {"rope_type": "default", "rope_theta": 5e5})");
  EXPECT_DOUBLE_EQ(ParseModelConfig(v5, "c").rope_theta, 5e5);
}

// Inverse frequencies against values computed by hand from transformers'
// formulas (modeling_rope_utils.py), with head_dim 128.
TEST(RopeScaling, Llama31FrequenciesFollowTheThreeBands) {
  ModelConfig c = ParseModelConfig(
      WithRope(R"({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})"),
      "c");
  c.rope_theta = 500000.0;
  const std::vector<double> inv = RopeInverseFrequencies(c, 1);
  ASSERT_EQ(inv.size(), 64u);
  for (int i = 0; i < 64; ++i) {
    const double base = std::pow(500000.0, -2.0 * i / 128.0);
    const double wavelen = 2 * M_PI / base;
    double want = base;  // short wavelengths (below 8192/4 = 2048) are kept
    if (wavelen > 8192.0) want = base / 8;  // long ones (above 8192/1) are slowed 8x
    else if (wavelen >= 2048.0) {
      const double smooth = (8192.0 / wavelen - 1.0) / (4.0 - 1.0);
      want = (1 - smooth) * base / 8 + smooth * base;
    }
    EXPECT_NEAR(inv[i], want, 1e-15 + 1e-12 * want) << i;
  }
  EXPECT_DOUBLE_EQ(inv[0], 1.0);      // the fastest pair is untouched
  EXPECT_NEAR(inv[63], std::pow(500000.0, -126.0 / 128.0) / 8, 1e-18);
}

TEST(RopeScaling, YarnMatchesGptOssAndQwenValues) {
  // gpt-oss: head_dim 64, theta 150000, factor 32, beta 32/1, original 4096,
  // truncate false: attention factor 0.1 ln 32 + 1, ramp from pair 8.0928 to 17.3980.
  std::string j = Replace(kMixtral, "\"num_attention_heads\": 32", "\"num_attention_heads\": 64");
  j = Replace(j, "\"num_key_value_heads\": 8", "\"num_key_value_heads\": 8, \"head_dim\": 64");
  j = Replace(j, "\"rope_theta\": 1000000.0", "\"rope_theta\": 150000.0");
  j = Replace(j, "\"sliding_window\": null",
              R"("rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                  "beta_slow": 1.0, "original_max_position_embeddings": 4096, "truncate": false})");
  const ModelConfig c = ParseModelConfig(j, "c");
  EXPECT_NEAR(c.rope_scaling.attention_factor, 1.3465735902799727, 1e-12);
  const std::vector<double> inv = RopeInverseFrequencies(c, 1);
  const double low = 64 * std::log(4096 / (32 * 2 * M_PI)) / (2 * std::log(150000.0));
  const double high = 64 * std::log(4096 / (1 * 2 * M_PI)) / (2 * std::log(150000.0));
  EXPECT_NEAR(low, 8.0928, 1e-4);
  EXPECT_NEAR(high, 17.3980, 1e-4);
  for (int i = 0; i < 32; ++i) {
    const double base = std::pow(150000.0, -2.0 * i / 64.0);
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    EXPECT_NEAR(inv[i], base / 32 * ramp + base * (1 - ramp), 1e-15) << i;
  }
  EXPECT_DOUBLE_EQ(inv[0], 1.0);
  EXPECT_NEAR(inv[31], std::pow(150000.0, -62.0 / 64.0) / 32, 1e-18);
  // Qwen's documented recipe: factor 4, original 32768 -> attention factor 1.1386.
  const ModelConfig q = ParseModelConfig(
      WithRope(R"({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})"), "c");
  EXPECT_NEAR(q.rope_scaling.attention_factor, 0.1 * std::log(4.0) + 1, 1e-12);
  EXPECT_TRUE(q.rope_scaling.truncate);
  // DeepSeek's mscale pair cancels: attention factor 1.
  const ModelConfig d = ParseModelConfig(
      WithRope(R"({"rope_type": "yarn", "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                   "original_max_position_embeddings": 4096})"), "c");
  EXPECT_DOUBLE_EQ(d.rope_scaling.attention_factor, 1.0);
}

TEST(RopeScaling, LinearDividesAndDynamicRaisesTheBaseOnlyPastTheContext) {
  ModelConfig lin = ParseModelConfig(WithRope(R"({"type": "linear", "factor": 4.0})"), "c");
  ModelConfig plain = ParseModelConfig(kMixtral, "c");
  const auto a = RopeInverseFrequencies(lin, 10), b = RopeInverseFrequencies(plain, 10);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_DOUBLE_EQ(a[i], b[i] / 4);
  ModelConfig dyn = ParseModelConfig(WithRope(R"({"type": "dynamic", "factor": 2.0})"), "c");
  EXPECT_EQ(RopeInverseFrequencies(dyn, 32768), b);  // at the trained length: unchanged
  const auto longer = RopeInverseFrequencies(dyn, 65536);
  // theta' = theta * (2 * 2 - 1)^(128/126)
  const double theta = 1e6 * std::pow(3.0, 128.0 / 126.0);
  for (size_t i = 0; i < longer.size(); ++i)
    EXPECT_NEAR(longer[i], std::pow(theta, -2.0 * i / 128.0), 1e-15) << i;
}

TEST(ModelConfig, RefusesContradictions) {
  EXPECT_NE(ErrorOf(Replace(kMixtral, "\"num_key_value_heads\": 8", "\"num_key_value_heads\": 7"))
                .find("multiple of num_key_value_heads"),
            std::string::npos);
  EXPECT_NE(ErrorOf(Replace(kMixtral, "\"num_experts_per_tok\": 2", "\"num_experts_per_tok\": 9"))
                .find("exceeds num_local_experts"),
            std::string::npos);
  EXPECT_NE(ErrorOf(Replace(kMixtral, "\"hidden_size\": 4096,", "")).find("'hidden_size' is missing"),
            std::string::npos);
  EXPECT_NE(ErrorOf(Replace(kMixtral, "\"vocab_size\": 32000", "\"vocab_size\": -5"))
                .find("'vocab_size' is -5"),
            std::string::npos);
  EXPECT_NE(ErrorOf(Replace(kMixtral, "\"eos_token_id\": 2", "\"eos_token_id\": 40000"))
                .find("outside the vocabulary"),
            std::string::npos);
  EXPECT_NE(ErrorOf("{\"architectures\": [\"MixtralForCausalLM\"], ").find("malformed JSON"),
            std::string::npos);
  EXPECT_NE(ErrorOf("[1, 2]").find("expected a JSON object"), std::string::npos);
}


// F15: a size field of 2^64-1 was read as int64 -1 and reported as "is -1".
TEST(ModelConfig, HugeSizeFieldsReportTheirRealValue) {
  for (const char* field : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                            "num_attention_heads", "num_key_value_heads",
                            "max_position_embeddings", "num_local_experts",
                            "num_experts_per_tok"}) {
    const std::string key = std::string("\"") + field + "\": ";
    std::string json = kMixtral;
    const size_t at = json.find(key);
    ASSERT_NE(at, std::string::npos) << field;
    const size_t end = json.find(',', at);
    json.replace(at, end - at, key + "18446744073709551615");
    const std::string msg = ErrorOf(json);
    EXPECT_NE(msg.find(std::string("'") + field + "' is 18446744073709551615, which is too large"),
              std::string::npos)
        << msg;
    EXPECT_EQ(msg.find("-1"), std::string::npos) << msg;
  }
  for (const char* extra : {"\"head_dim\": 18446744073709551615",
                                   "\"sliding_window\": 9223372036854775807"}) {
    std::string m = Replace(kMixtral, "\"sliding_window\": null", extra);
    EXPECT_NE(ErrorOf(m).find("which is too large"), std::string::npos) << ErrorOf(m);
  }
}

// Each size may be plausible alone while their product is absurd; the
// product is bounded too, so that no later int64 product can overflow.
TEST(ModelConfig, RefusesAnImplausibleParameterCount) {
  std::string m = Replace(kMixtral, "\"hidden_size\": 4096", "\"hidden_size\": 1099511627776");
  m = Replace(m, "\"num_attention_heads\": 32", "\"num_attention_heads\": 8, \"head_dim\": 128");
  EXPECT_NE(ErrorOf(m).find("implausibly large"), std::string::npos) << ErrorOf(m);
}

// F14: every supported architecture is SwiGLU; another activation is refused
// instead of silently running SiLU.
TEST(ModelConfig, HiddenActMustBeSilu) {
  for (const char* act : {"\"gelu\"", "\"no_such_activation\"", "\"relu\"", "7", "[\"silu\"]"}) {
    const std::string msg =
        ErrorOf(Replace(kMixtral, "\"sliding_window\": null", std::string("\"hidden_act\": ") + act));
    EXPECT_NE(msg.find("config.json: hidden_act"), std::string::npos) << act << ": " << msg;
    EXPECT_NE(msg.find("not supported (supported: \"silu\""), std::string::npos) << msg;
  }
  for (const char* act : {"\"silu\"", "\"swish\"", "null"})
    EXPECT_EQ(ErrorOf(Replace(kMixtral, "\"sliding_window\": null",
                              std::string("\"hidden_act\": ") + act)),
              "")
        << act;
}

// F14: float fields must be finite and, for the epsilon, a positive float32.
TEST(ModelConfig, RefusesFloatFieldsThatAreNotUsable) {
  for (const char* eps : {"1e300", "0", "-1e-5", "1e-50", "3.5e38"}) {
    const std::string msg =
        ErrorOf(Replace(kMixtral, "\"rms_norm_eps\": 1e-05", std::string("\"rms_norm_eps\": ") + eps));
    EXPECT_NE(msg.find("rms_norm_eps is"), std::string::npos) << eps << ": " << msg;
    EXPECT_NE(msg.find("not a positive float32"), std::string::npos) << msg;
  }
  EXPECT_NE(ErrorOf(Replace(kMixtral, "\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": 1e400"))
                .find("config.json: malformed JSON"),
            std::string::npos);
  EXPECT_NE(ErrorOf(Replace(kMixtral, "\"rope_theta\": 1000000.0", "\"rope_theta\": 0.5"))
                .find("rope_theta is 0.5, must be greater than 1"),
            std::string::npos);
  EXPECT_NE(ErrorOf(Replace(kMixtral, "\"rope_theta\": 1000000.0", "\"rope_theta\": \"1e6\""))
                .find("'rope_theta' must be a number"),
            std::string::npos);
  EXPECT_EQ(ErrorOf(Replace(kMixtral, "\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": 1e-6")), "");
}

// Token ids are judged before narrowing: 2^33 is not truncated to 0, a
// string is not dropped, and BOS is held to the vocabulary like EOS.
TEST(ModelConfig, TokenIdsAreCheckedWhole) {
  EXPECT_NE(ErrorOf(Replace(kMixtral, "\"eos_token_id\": 2", "\"eos_token_id\": 8589934592"))
                .find("token id 8589934592, which is outside the vocabulary (vocab_size 32000)"),
            std::string::npos);
  EXPECT_NE(ErrorOf(Replace(kMixtral, "\"eos_token_id\": 2", "\"eos_token_id\": \"2\""))
                .find("'eos_token_id' must be a token id or a list of token ids, not \"2\""),
            std::string::npos);
  EXPECT_NE(ErrorOf(Replace(kMixtral, "\"bos_token_id\": 1", "\"bos_token_id\": 32000"))
                .find("'bos_token_id' has token id 32000"),
            std::string::npos);
  EXPECT_NE(ErrorOf(Replace(kMixtral, "\"eos_token_id\": 2", "\"eos_token_id\": [2, -1]"))
                .find("token id -1"),
            std::string::npos);
  EXPECT_EQ(ParseModelConfig(Replace(kMixtral, "\"eos_token_id\": 2", "\"eos_token_id\": [2, 7]"),
                             "config.json")
                .eos_token_ids,
            (std::vector<int32_t>{2, 7}));
}


// ---------------------------------------------------------------------------
// The new families: real configs from ../shared/data/models and schedules.

namespace fs = std::filesystem;

std::optional<std::string> SharedModelFile(const std::string& model, const std::string& file) {
  const fs::path path = fs::path("..") / "shared" / "data" / "models" / model / file;
  std::ifstream in(path);
  if (!in) return std::nullopt;
  return std::string(std::istreambuf_iterator<char>(in), {});
}

#define SHARED_OR_SKIP(var, model, file)                                                      \
  const auto var = SharedModelFile(model, file);                                              \
  if (!var) GTEST_SKIP() << "../shared/data/models/" << model << "/" << file                  \
                         << " is absent (the shared data folder is not beside the repository)"

TEST(Families, RealQwen3MoeConfigAndItsTensorNames) {
  SHARED_OR_SKIP(text, "qwen3-coder-30b-a3b-instruct", "config.json");
  const ModelConfig c = ParseModelConfig(*text, "qwen3 config.json");
  EXPECT_EQ(c.model_type, "qwen3_moe");
  EXPECT_EQ(c.qk_norm, QkNormKind::kPerHead);
  EXPECT_EQ(c.router, RouterKind::kSoftmaxTopK);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.num_experts, 128);
  EXPECT_EQ(c.ExpertFf(), 768);
  EXPECT_EQ(c.intermediate_size, 5472);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.QDim(), 4096);  // not hidden_size: head_dim is explicit
  EXPECT_EQ(c.NumMoeLayers(), 48);
  EXPECT_FALSE(c.qkv_bias);
  // Every tensor name and only those: the real index's weight_map against
  // the layout the family table produces.
  SHARED_OR_SKIP(index, "qwen3-coder-30b-a3b-instruct", "model.safetensors.index.json");
  const nlohmann::json parsed = nlohmann::json::parse(*index);
  std::set<std::string> real;
  for (auto it = parsed["weight_map"].begin(); it != parsed["weight_map"].end(); ++it) real.insert(it.key());
  ASSERT_GT(real.size(), 18000u);
  std::set<std::string> ours;
  for (const CheckpointTensor& t : CheckpointTensors(c)) ours.insert(t.name);
  EXPECT_EQ(ours, real);
}

TEST(Families, RealMixtralInstructTensorNames) {
  SHARED_OR_SKIP(text, "mixtral-8x7b-instruct-v0.1", "config.json");
  SHARED_OR_SKIP(index, "mixtral-8x7b-instruct-v0.1", "model.safetensors.index.json");
  const ModelConfig c = ParseModelConfig(*text, "mixtral config.json");
  const nlohmann::json parsed = nlohmann::json::parse(*index);
  std::set<std::string> real, ours;
  for (auto it = parsed["weight_map"].begin(); it != parsed["weight_map"].end(); ++it) real.insert(it.key());
  ASSERT_EQ(real.size(), 995u);
  for (const CheckpointTensor& t : CheckpointTensors(c)) ours.insert(t.name);
  EXPECT_EQ(ours, real);
}

TEST(Families, RealGraniteMoeConfigs) {
  for (const char* model : {"granite-3.0-1b-a400m-instruct", "granite-3.1-1b-a400m-instruct"}) {
    SHARED_OR_SKIP(text, model, "config.json");
    const ModelConfig c = ParseModelConfig(*text, model);
    EXPECT_EQ(c.expert_layout, ExpertLayout::kFused) << model;
    EXPECT_EQ(c.router, RouterKind::kTopKSoftmax);
    EXPECT_FLOAT_EQ(c.embedding_multiplier, 12.0f);
    EXPECT_FLOAT_EQ(c.residual_multiplier, 0.22f);
    EXPECT_FLOAT_EQ(c.attention_scale, 0.015625f);
    EXPECT_FLOAT_EQ(c.logits_scaling, 6.0f);
    EXPECT_TRUE(c.tie_word_embeddings);
    EXPECT_EQ(c.num_experts, 32);
    EXPECT_EQ(c.ExpertFf(), 512);
    // The fused stacks: [E, 2 I, H] and [E, H, I].
    bool found = false;
    for (const CheckpointTensor& t : CheckpointTensors(c))
      if (t.name == "model.layers.0.block_sparse_moe.input_linear.weight") {
        EXPECT_EQ(t.shape, (std::vector<int64_t>{32, 1024, 1024}));
        found = true;
      }
    EXPECT_TRUE(found);
  }
}

TEST(Families, RealGptOssConfigAndItsTensorNames) {
  SHARED_OR_SKIP(text, "gpt-oss-20b", "config.json");
  const ModelConfig c = ParseModelConfig(*text, "gpt-oss config.json");
  EXPECT_EQ(c.model_type, "gpt_oss");
  EXPECT_EQ(c.router, RouterKind::kTopKSoftmax);
  EXPECT_TRUE(c.router_bias);
  EXPECT_TRUE(c.expert_bias);
  EXPECT_TRUE(c.attention_sinks);
  EXPECT_TRUE(c.qkv_bias && c.o_bias);
  EXPECT_EQ(c.activation, ActivationKind::kClampedSwiGLU);
  EXPECT_FLOAT_EQ(c.swiglu_limit, 7.0f);
  EXPECT_EQ(c.expert_layout, ExpertLayout::kMxfp4Interleaved);
  EXPECT_EQ(c.num_experts, 32);
  EXPECT_EQ(c.num_experts_per_tok, 4);
  EXPECT_EQ(c.ExpertFf(), 2880);
  EXPECT_EQ(c.QDim(), 4096);
  EXPECT_EQ(c.sliding_window, 128);
  // layer_types: even layers slide, odd ones see everything.
  EXPECT_EQ(c.WindowOf(0), 128);
  EXPECT_EQ(c.WindowOf(1), 0);
  EXPECT_EQ(c.WindowOf(22), 128);
  EXPECT_EQ(c.WindowOf(23), 0);
  EXPECT_EQ(c.rope_scaling.kind, RopeScalingKind::kYarn);
  EXPECT_FALSE(c.rope_scaling.truncate);
  EXPECT_NEAR(c.rope_scaling.attention_factor, 0.1 * std::log(32.0) + 1.0, 1e-12);
  SHARED_OR_SKIP(index, "gpt-oss-20b", "model.safetensors.index.json");
  const nlohmann::json parsed = nlohmann::json::parse(*index);
  std::set<std::string> real, ours;
  for (auto it = parsed["weight_map"].begin(); it != parsed["weight_map"].end(); ++it) real.insert(it.key());
  ASSERT_GT(real.size(), 400u);
  for (const CheckpointTensor& t : CheckpointTensors(c)) ours.insert(t.name);
  EXPECT_EQ(ours, real);
}

#define EXPECT_THAT_ERROR(msg, part)                                      \
  do {                                                                    \
    const std::string m_ = (msg);                                         \
    EXPECT_NE(m_.find(part), std::string::npos) << "message: " << m_;    \
  } while (0)

TEST(Families, RealDeepseekR1Config) {
  SHARED_OR_SKIP(text, "deepseek-r1", "config.json");
  const ModelConfig c = ParseModelConfig(*text, "deepseek-r1 config.json");
  EXPECT_EQ(c.attention, AttentionKind::kLatent);
  EXPECT_EQ(c.router, RouterKind::kGroupSigmoid);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.head_dim, 64);  // the rotary width
  EXPECT_EQ(c.QDim(), 128 * 192);
  EXPECT_EQ(c.AttnOutDim(), 128 * 128);
  EXPECT_EQ(c.CacheKeyDim(), 576);  // the compressed cache: latent + shared rotary key
  EXPECT_EQ(c.CacheValueDim(), 0);
  EXPECT_EQ(c.n_group, 8);
  EXPECT_EQ(c.topk_group, 4);
  EXPECT_FLOAT_EQ(c.routed_scaling_factor, 2.5f);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_TRUE(c.correction_bias);
  EXPECT_EQ(c.fp8_block, 128);
  EXPECT_EQ(c.shared_expert_intermediate_size, 2048);
  EXPECT_EQ(c.dense_layers, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(c.rope_pairing, RopePairing::kAdjacent);
  // (qk 192)^-0.5 x m^2, m = 0.1 ln 40 + 1: 0.135234.
  EXPECT_NEAR(c.attention_scale, 0.135234, 1e-6);
  // FP8 linears carry block scales; the router and its correction bias do not.
  std::set<std::string> names;
  for (const CheckpointTensor& t : CheckpointTensors(c)) names.insert(t.name);
  EXPECT_TRUE(names.count("model.layers.3.mlp.experts.255.down_proj.weight_scale_inv"));
  EXPECT_TRUE(names.count("model.layers.0.self_attn.kv_b_proj.weight_scale_inv"));
  EXPECT_TRUE(names.count("model.layers.3.mlp.gate.e_score_correction_bias"));
  EXPECT_FALSE(names.count("model.layers.3.mlp.gate.weight_scale_inv"));
}

// gpt-oss's config fields that are new with it, each refused with one line.
TEST(Families, GptOssConfigErrors) {
  const std::string base = R"({"architectures": ["GptOssForCausalLM"], "vocab_size": 512,
    "hidden_size": 64, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "num_local_experts": 4, "experts_per_token": 2,
    "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"],
    "quantization_config": {"quant_method": "mxfp4"}})";
  const ModelConfig c = ParseModelConfig(base, "config.json");
  EXPECT_EQ(c.num_experts_per_tok, 2);  // the experts_per_token spelling
  EXPECT_TRUE(c.qkv_bias);              // attention_bias defaults to true for gpt-oss
  EXPECT_THAT_ERROR(ErrorOf(Replace(base, R"(["sliding_attention", "full_attention"])", R"(["sliding_attention"])")),
                    "layer_types must list one entry per layer (2), not 1 entries");
  EXPECT_THAT_ERROR(ErrorOf(Replace(base, R"("full_attention")", R"("chunked_attention")")),
                    "layer_types holds \"chunked_attention\"");
  EXPECT_THAT_ERROR(ErrorOf(Replace(base, R"("mxfp4")", R"("fp8")")),
                    "quantization_config quant_method 'fp8' is not supported for GptOssForCausalLM (supported: mxfp4)");
  EXPECT_THAT_ERROR(ErrorOf(Replace(base, R"("intermediate_size": 32)", R"("intermediate_size": 40)")),
                    "must be multiples of 32");
  // Without layer_types the even layers slide, as transformers' GptOssConfig does.
  const ModelConfig d = ParseModelConfig(
      Replace(base, R"("layer_types": ["sliding_attention", "full_attention"],)", ""), "config.json");
  EXPECT_EQ(d.WindowOf(0), 8);
  EXPECT_EQ(d.WindowOf(1), 0);
  // Other families refuse any quantization_config instead of reading packed
  // weights as floats.
  EXPECT_THAT_ERROR(ErrorOf(Replace(kMixtral, R"("torch_dtype")", R"("quantization_config": {"quant_method": "gptq"}, "torch_dtype")")),
                    "quantization_config quant_method 'gptq' is not supported for MixtralForCausalLM");
}

// Phi-3.5-MoE: LayerNorm, lm_head bias, sparsemixer (top-2 only) and longrope.
TEST(Families, PhimoeConfig) {
  std::string factors = "[";
  for (int i = 0; i < 8; ++i) factors += std::string(i ? ", " : "") + std::to_string(1 + i);
  factors += "]";
  const std::string base = R"({"architectures": ["PhiMoEForCausalLM"], "vocab_size": 512,
    "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2,
    "attention_bias": true, "lm_head_bias": true, "router_jitter_noise": 0.01,
    "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
    "rope_scaling": {"type": "longrope", "short_factor": )" + factors + R"(, "long_factor": )" +
                           factors + R"(, "short_mscale": 1.1, "long_mscale": 1.2}})";
  const ModelConfig c = ParseModelConfig(base, "config.json");
  EXPECT_EQ(c.norm, NormKind::kLayerNorm);
  EXPECT_TRUE(c.lm_head_bias);
  EXPECT_EQ(c.router, RouterKind::kSparseMixer);
  EXPECT_EQ(c.rope_scaling.kind, RopeScalingKind::kLongRope);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 4096);  // from the top level
  EXPECT_DOUBLE_EQ(RopeAttentionFactor(c, 4096), 1.1);
  EXPECT_DOUBLE_EQ(RopeAttentionFactor(c, 4097), 1.2);
  // Pair i is divided by short_factor[i] up to the original context, by long_factor[i] past it.
  EXPECT_DOUBLE_EQ(RopeInverseFrequencies(c, 10)[3], 1.0 / std::pow(10000.0, 6.0 / 16.0) / 4.0);
  std::set<std::string> names;
  for (const CheckpointTensor& t : CheckpointTensors(c)) names.insert(t.name);
  for (const char* n : {"model.norm.bias", "lm_head.bias", "model.layers.1.input_layernorm.bias",
                        "model.layers.0.post_attention_layernorm.bias", "model.layers.0.self_attn.o_proj.bias",
                        "model.layers.0.block_sparse_moe.experts.3.w2.weight"})
    EXPECT_TRUE(names.count(n)) << n;
  EXPECT_THAT_ERROR(ErrorOf(Replace(base, R"("num_experts_per_tok": 2)", R"("num_experts_per_tok": 3)")),
                    "sparsemixer router selects exactly 2 experts");
  EXPECT_THAT_ERROR(ErrorOf(Replace(base, R"("short_mscale": 1.1)", R"("short_mscale": -1)")),
                    "short_mscale and long_mscale must be positive");
  // The round trip keeps every field.
  const ModelConfig d = ParseModelConfig(ModelConfigToJson(c), "again");
  EXPECT_EQ(d.rope_scaling.long_factor, c.rope_scaling.long_factor);
  EXPECT_DOUBLE_EQ(d.rope_scaling.long_mscale, 1.2);
  EXPECT_FLOAT_EQ(d.router_jitter, 0.01f);
  EXPECT_TRUE(d.lm_head_bias);
}

#undef EXPECT_THAT_ERROR

const char* kQwen2Moe = R"({
  "architectures": ["Qwen2MoeForCausalLM"], "vocab_size": 151936, "hidden_size": 2048,
  "intermediate_size": 5632, "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
  "num_hidden_layers": 6, "num_attention_heads": 16, "num_key_value_heads": 16,
  "num_experts": 60, "num_experts_per_tok": 4, "decoder_sparse_step": 2, "mlp_only_layers": [3],
  "norm_topk_prob": false, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
  "use_sliding_window": false, "sliding_window": 32768, "tie_word_embeddings": false})";

TEST(Families, QwenLayerScheduleAndSharedExpert) {
  const ModelConfig c = ParseModelConfig(kQwen2Moe, "config.json");
  // (i + 1) % 2 == 0 -> 1, 3, 5; layer 3 is in mlp_only_layers.
  EXPECT_EQ(c.MoeLayers(), (std::vector<int32_t>{1, 5}));
  EXPECT_EQ(c.dense_layers, (std::vector<int32_t>{0, 2, 3, 4}));
  EXPECT_EQ(c.shared_expert, SharedExpertKind::kSigmoidGated);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_EQ(c.MaxFf(), 5632);
  const ModelConfig again = ParseModelConfig(ModelConfigToJson(c), "again");
  EXPECT_EQ(again.MoeLayers(), c.MoeLayers());
  EXPECT_EQ(again.shared_expert_intermediate_size, 5632);
}

TEST(Families, RefusesContradictoryMoeConfigs) {
  EXPECT_NE(ErrorOf(Replace(kQwen2Moe, "\"mlp_only_layers\": [3]", "\"mlp_only_layers\": [6]"))
                .find("'mlp_only_layers' holds 6, which is not a layer index below num_hidden_layers (6)"),
            std::string::npos);
  EXPECT_NE(ErrorOf(Replace(kQwen2Moe, "\"num_experts_per_tok\": 4", "\"num_experts_per_tok\": 61"))
                .find("num_experts_per_tok (61) exceeds num_experts (60)"),
            std::string::npos);
  EXPECT_NE(ErrorOf(Replace(kQwen2Moe, "\"shared_expert_intermediate_size\": 5632,", ""))
                .find("'shared_expert_intermediate_size' is missing"),
            std::string::npos);
  EXPECT_NE(ErrorOf(Replace(kQwen2Moe, "\"mlp_only_layers\": [3]", "\"mlp_only_layers\": [1, 3, 5]"))
                .find("leave no MoE layer"),
            std::string::npos);
  EXPECT_NE(ErrorOf(Replace(kQwen2Moe, "\"decoder_sparse_step\": 2", "\"decoder_sparse_step\": 0"))
                .find("'decoder_sparse_step' is 0"),
            std::string::npos);
}

TEST(Families, OlmoeReadsClipQkvAndNeverRenormalisesByDefault) {
  std::string j = Replace(kQwen2Moe, "Qwen2MoeForCausalLM", "OlmoeForCausalLM");
  j = Replace(j, "\"norm_topk_prob\": false,", "\"clip_qkv\": 8.0,");
  const ModelConfig c = ParseModelConfig(j, "config.json");
  EXPECT_EQ(c.qk_norm, QkNormKind::kWholeProjection);
  EXPECT_FLOAT_EQ(c.clip_qkv, 8.0f);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_EQ(c.NumMoeLayers(), 6);  // OLMoE has no dense layers: the schedule fields are not read
  EXPECT_EQ(c.ExpertFf(), 5632);   // OLMoE's intermediate_size is the expert width
  EXPECT_NE(ErrorOf(Replace(j, "\"clip_qkv\": 8.0", "\"clip_qkv\": -1")).find("clip_qkv is -1"),
            std::string::npos);
}


// Qwen's sliding window covers the layers from max_window_layers (default
// 28) on, or those layer_types marks: all of them or none is supported.
TEST(Families, QwenSlidingWindowFollowsMaxWindowLayers) {
  std::string q = Replace(kMixtral, "MixtralForCausalLM", "Qwen2ForCausalLM");
  q = Replace(q, "\"sliding_window\": null", "\"sliding_window\": 4096, \"use_sliding_window\": true");
  // 32 layers with the default 28: layers 28-31 slide, the rest see everything.
  const ModelConfig mixed = ParseModelConfig(q, "c");
  EXPECT_EQ(mixed.WindowOf(27), 0);
  EXPECT_EQ(mixed.WindowOf(28), 4096);
  EXPECT_EQ(mixed.WindowOf(31), 4096);
  EXPECT_EQ(ParseModelConfig(ModelConfigToJson(mixed), "again").sliding_layers, mixed.sliding_layers);
  q = Replace(q, "\"num_hidden_layers\": 32", "\"num_hidden_layers\": 24");
  EXPECT_EQ(ParseModelConfig(q, "c").sliding_window, 0);  // 24 <= 28: no layer slides
  EXPECT_EQ(ParseModelConfig(Replace(q, "\"use_sliding_window\": true",
                                     "\"use_sliding_window\": true, \"max_window_layers\": 0"),
                             "c")
                .sliding_window,
            4096);
  const ModelConfig from10 = ParseModelConfig(
      Replace(q, "\"use_sliding_window\": true", "\"use_sliding_window\": true, \"max_window_layers\": 10"), "c");
  EXPECT_EQ(std::count(from10.sliding_layers.begin(), from10.sliding_layers.end(), true), 14);
}
}  // namespace
}  // namespace epwa
