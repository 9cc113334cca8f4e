// generation_config.json and tokenizer_config.json parsing (F9 of the
// hostile-input sweep): values the flags refuse are refused from the files
// too, with the file and field named, and nothing is truncated or dropped.
#include <gtest/gtest.h>

#include <filesystem>
#include <optional>
#include <string>

#include "base/error.h"
#include "base/file_read.h"
#include "runtime/engine.h"

namespace epwa {
namespace {

constexpr int64_t kVocab = 4096;

GenerationDefaults Parse(const std::string& json) {
  GenerationDefaults d;
  d.eos_token_ids = {2};
  ApplyGenerationConfig(json, "m/generation_config.json", kVocab, &d);
  return d;
}

std::string ErrorOf(const std::string& json) {
  try {
    Parse(json);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(GenerationConfig, ReadsTheUsualFields) {
  const GenerationDefaults d = Parse(
      R"({"do_sample": true, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.05,
          "repetition_penalty": 1.05, "max_new_tokens": 512, "eos_token_id": [151, 2, 7],
          "bos_token_id": 1, "pad_token_id": 0, "transformers_version": "4.46.0"})");
  EXPECT_FLOAT_EQ(*d.temperature, 0.7f);
  EXPECT_FLOAT_EQ(*d.top_p, 0.8f);
  EXPECT_EQ(*d.top_k, 20);
  EXPECT_FLOAT_EQ(*d.min_p, 0.05f);
  EXPECT_FLOAT_EQ(*d.repetition_penalty, 1.05f);
  EXPECT_EQ(*d.max_new_tokens, 512);
  EXPECT_TRUE(*d.do_sample);
  EXPECT_EQ(d.eos_token_ids, (std::vector<int32_t>{2, 151, 7}));  // union, no duplicates
  EXPECT_EQ(d.bos_token_id, 1);
  // Limits that are still valid: greedy, everything off, the largest int32.
  EXPECT_EQ(ErrorOf(R"({"temperature": 0, "top_p": 1, "top_k": 0, "min_p": 0,
                        "max_new_tokens": 2147483647, "eos_token_id": null})"),
            "");
}

TEST(GenerationConfig, RefusesWhatTheFlagsRefuse) {
  const struct {
    const char* json;
    const char* needle;
  } cases[] = {
      {R"({"temperature": -1})", "field 'temperature' is -1, must be at least 0"},
      {R"({"top_p": 5})", "field 'top_p' is 5, must be in (0, 1]"},
      {R"({"top_p": -1})", "field 'top_p' is -1, must be in (0, 1]"},
      {R"({"top_p": 0})", "field 'top_p' is 0, must be in (0, 1]"},
      {R"({"top_k": -5})", "field 'top_k' is -5, must be at least 0"},
      {R"({"top_k": 4294967296})", "field 'top_k' is 4294967296, which is too large"},
      {R"({"top_k": 40.5})", "field 'top_k' must be an integer, not 40.5"},
      {R"({"repetition_penalty": 0})", "field 'repetition_penalty' is 0, must be greater than 0"},
      {R"({"repetition_penalty": -2})", "field 'repetition_penalty' is -2"},
      {R"({"min_p": 2})", "field 'min_p' is 2, must be in [0, 1]"},
      {R"({"max_new_tokens": -5})", "field 'max_new_tokens' is -5, must be at least 1"},
      {R"({"max_new_tokens": 0})", "field 'max_new_tokens' is 0, must be at least 1"},
      {R"({"max_new_tokens": 1099511627776})",
       "field 'max_new_tokens' is 1099511627776, which is too large (at most 2147483647)"},
      {R"({"max_new_tokens": 18446744073709551615})", "is 18446744073709551615, which is too large"},
      {R"({"eos_token_id": "2"})", "field 'eos_token_id' must be a token id or a list of token ids, not \"2\""},
      {R"({"eos_token_id": [2, "</s>"]})", "not \"</s>\""},
      {R"({"eos_token_id": 8589934592})", "token id 8589934592, which is outside the vocabulary (vocab_size 4096)"},
      {R"({"eos_token_id": -1})", "token id -1, which is outside the vocabulary"},
      {R"({"bos_token_id": 99999})", "field 'bos_token_id' has token id 99999, which is outside the vocabulary"},
      {R"({"bos_token_id": 1.0})", "field 'bos_token_id' must be a token id"},
      {R"({"temperature": 1e39})", "field 'temperature' is 1e+39, which is not a finite float32 number"},
      {R"({"temperature": 1e400})", "malformed JSON"},
      {R"({"temperature": "0.7"})", "field 'temperature' must be a number, not \"0.7\""},
      {R"({"top_p": true})", "field 'top_p' must be a number, not true"},
      {R"({"do_sample": 1})", "field 'do_sample' must be true or false, not 1"},
      {R"([1, 2])", "expected a JSON object"},
      {R"({"temperature": )", "malformed JSON"},
  };
  for (const auto& c : cases) {
    const std::string msg = ErrorOf(c.json);
    EXPECT_EQ(msg.rfind("m/generation_config.json: ", 0), 0u) << c.json << ": " << msg;
    EXPECT_NE(msg.find(c.needle), std::string::npos) << c.json << ": " << msg;
  }
}

// The generation_config.json files of real models (Mixtral, Qwen3, DeepSeek
// R1, gpt-oss, Granite and the bundled model), kept as the config fuzz
// target's seeds: fuzz/corpus/config/gen_<model>, whose first byte selects the
// parser. All of them parse (their vocabularies are below 2^18).
TEST(GenerationConfig, RealFilesParse) {
  int parsed = 0;
  for (const auto& entry : std::filesystem::directory_iterator("fuzz/corpus/config")) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("gen_", 0) != 0 || name.rfind("gen_bad", 0) == 0) continue;
    const std::string text = ReadRegularFile(entry.path().string(), kMaxConfigFileBytes, "seed");
    GenerationDefaults d;
    EXPECT_NO_THROW(ApplyGenerationConfig(text.substr(1), name, int64_t{1} << 18, &d)) << name;
    ++parsed;
  }
  EXPECT_GE(parsed, 5);
}

TEST(TokenizerConfig, ResolvesSpecialTokensAndChecksTypes) {
  auto lookup = [](const std::string& piece) -> std::optional<int32_t> {
    if (piece == "<s>") return 1;
    if (piece == "</s>") return 2;
    return std::nullopt;
  };
  GenerationDefaults d;
  ApplyTokenizerConfig(R"({"add_bos_token": true, "bos_token": {"content": "<s>"},
                           "eos_token": "</s>"})",
                       "tokenizer_config.json", lookup, &d);
  EXPECT_TRUE(d.add_bos_token);
  EXPECT_EQ(d.bos_token_id, 1);
  EXPECT_EQ(d.eos_token_ids, std::vector<int32_t>{2});
  // Ids known from config.json win over the text.
  GenerationDefaults known;
  known.bos_token_id = 5;
  known.eos_token_ids = {6};
  ApplyTokenizerConfig(R"({"bos_token": "<s>", "eos_token": "</s>"})", "t", lookup, &known);
  EXPECT_EQ(known.bos_token_id, 5);
  EXPECT_EQ(known.eos_token_ids, std::vector<int32_t>{6});
  GenerationDefaults bad;
  try {
    ApplyTokenizerConfig(R"({"add_bos_token": "yes"})", "m/tokenizer_config.json", lookup, &bad);
    ADD_FAILURE() << "a string add_bos_token was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "m/tokenizer_config.json: field 'add_bos_token' must be true or false, not \"yes\""),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace epwa
