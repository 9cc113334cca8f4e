#include "model/config.h"

#include <gtest/gtest.h>

#include "base/error.h"

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
  EXPECT_NE(msg.find("MixtralForCausalLM, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"),
            std::string::npos)
      << msg;
}

TEST(ModelConfig, RefusesRopeScaling) {
  std::string msg = ErrorOf(Replace(kMixtral, "\"sliding_window\": null",
                                    "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0}"));
  EXPECT_NE(msg.find("rope_scaling type 'yarn'"), std::string::npos) << msg;
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

}  // namespace
}  // namespace epwa
