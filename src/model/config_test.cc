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

}  // namespace
}  // namespace epwa
