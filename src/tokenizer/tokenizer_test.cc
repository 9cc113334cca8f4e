// Tests for the tokenizer.json implementation.
//
// Three groups:
//  * Conformance against vectors made by the reference Hugging Face
//    tokenizers library, for the real Mistral and OLMoE files in ../shared
//    (skipped, saying so, when that folder is absent).
//  * Self-contained tests on small tokenizers built inline, including
//    malformed files and their error messages.
//  * The BPE trainer used for epwa's seeded random test models.
#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "tokenizer/utf8.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using Ids = std::vector<int32_t>;

// ---------------------------------------------------------------------------
// Locating test data.

// The repository root: tests run from it, but walking up from the working
// directory also lets the binary be started from a build folder.
fs::path RepoRoot() {
  std::error_code error;
  fs::path dir = fs::current_path(error);
  for (fs::path candidate = dir; !candidate.empty(); candidate = candidate.parent_path()) {
    if (fs::exists(candidate / "src" / "tokenizer" / "tokenizer.h", error)) return candidate;
    if (candidate == candidate.parent_path()) break;
  }
  return dir;
}

// The shared data folder: $EPWA_SHARED_DIR, else ../shared beside the repo.
std::optional<fs::path> SharedDir() {
  std::error_code error;
  if (const char* env = std::getenv("EPWA_SHARED_DIR"); env != nullptr && *env != '\0') {
    if (fs::exists(fs::path(env) / "data" / "tokenizers", error)) return fs::path(env);
  }
  const fs::path beside = RepoRoot() / ".." / "shared";
  if (fs::exists(beside / "data" / "tokenizers", error)) return beside;
  return std::nullopt;
}

std::optional<fs::path> SharedTokenizer(const std::string& name) {
  const auto shared = SharedDir();
  if (!shared) return std::nullopt;
  return *shared / "data" / "tokenizers" / name / "tokenizer.json";
}

#define SKIP_WITHOUT_SHARED(path_var, name)                                                        \
  const auto path_var = SharedTokenizer(name);                                                     \
  if (!path_var) {                                                                                 \
    GTEST_SKIP() << "The shared tokenizer files are absent (looked for ../shared/data/tokenizers " \
                    "beside the repository and $EPWA_SHARED_DIR); conformance test skipped.";     \
  }

std::vector<Json> ReadJsonLines(const fs::path& path) {
  std::ifstream file(path);
  EXPECT_TRUE(file) << "cannot open " << path;
  std::vector<Json> lines;
  std::string line;
  while (std::getline(file, line)) {
    if (!line.empty()) lines.push_back(Json::parse(line));
  }
  return lines;
}

// Message of the epwa::Error thrown by `action`, or "" when none is thrown.
template <typename Action>
std::string ErrorOf(Action&& action) {
  try {
    action();
  } catch (const Error& error) {
    return error.what();
  }
  return "";
}

// ---------------------------------------------------------------------------
// Conformance with the reference vectors.

class SharedVectorsTest : public ::testing::TestWithParam<std::string> {};

// vectors.jsonl: {"text", "ids", "decoded"} made with encode(text,
// add_special_tokens=false) and decode(ids, skip_special_tokens=false).
TEST_P(SharedVectorsTest, MatchesReference) {
  SKIP_WITHOUT_SHARED(path, GetParam());
  const auto tokenizer = Tokenizer::FromFile(path->string());
  const auto vectors = ReadJsonLines(path->parent_path() / "vectors.jsonl");
  ASSERT_FALSE(vectors.empty());
  int passed = 0;
  for (size_t i = 0; i < vectors.size(); ++i) {
    const std::string text = vectors[i]["text"];
    const Ids expected_ids = vectors[i]["ids"];
    const std::string expected_decoded = vectors[i]["decoded"];
    const Ids ids = tokenizer->Encode(text);
    const std::string decoded = tokenizer->Decode(ids);
    EXPECT_EQ(ids, expected_ids) << "vector " << i << ": " << Json(text).dump();
    EXPECT_EQ(decoded, expected_decoded) << "vector " << i << ": " << Json(text).dump();
    if (ids == expected_ids && decoded == expected_decoded) ++passed;
  }
  std::cout << GetParam() << ": " << passed << "/" << vectors.size() << " reference vectors pass\n";
}

// extra_vectors.jsonl (committed, made by tests/data/tokenizers/
// make_extra_vectors.js) adds Unicode, code, whitespace, special tokens
// inside text, add_special_tokens=true and decode-only cases.
TEST_P(SharedVectorsTest, MatchesExtraVectors) {
  SKIP_WITHOUT_SHARED(path, GetParam());
  const auto tokenizer = Tokenizer::FromFile(path->string());
  const auto vectors =
      ReadJsonLines(RepoRoot() / "tests" / "data" / "tokenizers" / GetParam() / "extra_vectors.jsonl");
  ASSERT_FALSE(vectors.empty());
  int passed = 0;
  for (size_t i = 0; i < vectors.size(); ++i) {
    const Json& vector = vectors[i];
    const Ids expected_ids = vector["ids"];
    bool ok = true;
    if (vector.contains("text")) {
      const std::string text = vector["text"];
      const bool add_special = vector.value("add_special_tokens", false);
      const Ids ids = tokenizer->Encode(text, add_special);
      EXPECT_EQ(ids, expected_ids) << "vector " << i << ": " << Json(text).dump()
                                   << " add_special_tokens=" << add_special;
      ok = ids == expected_ids;
    }
    const std::string decoded = tokenizer->Decode(expected_ids, false);
    const std::string decoded_skip = tokenizer->Decode(expected_ids, true);
    EXPECT_EQ(decoded, vector["decoded"].get<std::string>()) << "vector " << i;
    EXPECT_EQ(decoded_skip, vector["decoded_skip_special"].get<std::string>()) << "vector " << i;
    ok = ok && decoded == vector["decoded"] && decoded_skip == vector["decoded_skip_special"];
    if (ok) ++passed;
  }
  std::cout << GetParam() << ": " << passed << "/" << vectors.size() << " extra vectors pass\n";
}

// FromFile speed matters because every epwa run loads the tokenizer. This
// prints the time rather than asserting it, since machines differ.
TEST_P(SharedVectorsTest, LoadTimeAndEncodeThroughput) {
  SKIP_WITHOUT_SHARED(path, GetParam());
  double best_ms = 1e9;
  std::unique_ptr<Tokenizer> tokenizer;
  for (int run = 0; run < 3; ++run) {
    const auto start = std::chrono::steady_clock::now();
    tokenizer = Tokenizer::FromFile(path->string());
    const auto stop = std::chrono::steady_clock::now();
    best_ms = std::min(best_ms, std::chrono::duration<double, std::milli>(stop - start).count());
  }
  // About 1 MB of varied text: the reference texts, repeated.
  std::string text;
  for (const Json& vector : ReadJsonLines(path->parent_path() / "vectors.jsonl")) {
    text += vector["text"].get<std::string>() + "\n";
  }
  std::string corpus;
  while (corpus.size() < (1 << 20)) corpus += text;
  const auto start = std::chrono::steady_clock::now();
  const Ids ids = tokenizer->Encode(corpus);
  const auto stop = std::chrono::steady_clock::now();
  const double seconds = std::chrono::duration<double>(stop - start).count();
  std::cout << GetParam() << ": FromFile " << best_ms << " ms (best of 3, "
            << fs::file_size(*path) / 1e6 << " MB); Encode " << corpus.size() / 1e6 / seconds
            << " MB/s (" << ids.size() << " ids)\n";
  EXPECT_EQ(tokenizer->Decode(ids).size() > 0, true);
}

INSTANTIATE_TEST_SUITE_P(Families, SharedVectorsTest, ::testing::Values("mistral", "olmoe"));

TEST(SharedTokenizers, MistralAddsBosLikeReference) {
  SKIP_WITHOUT_SHARED(path, "mistral");
  const auto tokenizer = Tokenizer::FromFile(path->string());
  // Reference: encode("Hello world", add_special_tokens=true) -> [1, 22557, 1526].
  EXPECT_EQ(tokenizer->Encode("Hello world", true), (Ids{1, 22557, 1526}));
  EXPECT_EQ(tokenizer->Encode("Hello world", false), (Ids{22557, 1526}));
  EXPECT_EQ(tokenizer->Encode("", true), (Ids{1}));
  EXPECT_EQ(tokenizer->Decode(Ids{1, 22557, 1526}, true), "Hello world");
  EXPECT_EQ(tokenizer->Decode(Ids{1, 22557, 1526}, false), "<s> Hello world");
  EXPECT_EQ(tokenizer->VocabSize(), 32000);
  EXPECT_EQ(tokenizer->IdToPiece(28705), "\xE2\x96\x81");
  EXPECT_EQ(tokenizer->IdToPiece(13), "<0x0A>");
  EXPECT_EQ(tokenizer->PieceToId("<s>"), 1);
  EXPECT_TRUE(tokenizer->IsSpecial(2));
  EXPECT_FALSE(tokenizer->IsSpecial(22557));
}

TEST(SharedTokenizers, OlmoeVocabularyAndSpecials) {
  SKIP_WITHOUT_SHARED(path, "olmoe");
  const auto tokenizer = Tokenizer::FromFile(path->string());
  EXPECT_EQ(tokenizer->VocabSize(), 50280);
  EXPECT_EQ(tokenizer->PieceToId("<|endoftext|>"), 0);
  EXPECT_TRUE(tokenizer->IsSpecial(0));
  EXPECT_FALSE(tokenizer->IsSpecial(50254));  // A run of spaces: added but not special.
  EXPECT_EQ(tokenizer->IdToPiece(1533), "\xC4\xA0world");  // "Ġworld"
  // The byte-level post-processor adds nothing.
  EXPECT_EQ(tokenizer->Encode("Hello world", true), tokenizer->Encode("Hello world", false));
  EXPECT_NE(ErrorOf([&] { tokenizer->Decode(Ids{50280}); }).find("50280"), std::string::npos);
}

TEST(SharedTokenizers, ConcurrentEncodeIsConsistent) {
  SKIP_WITHOUT_SHARED(path, "olmoe");
  const auto tokenizer = Tokenizer::FromFile(path->string());
  const std::string text = "Concurrent encoding shares the word cache; results must not change. 123 456";
  const Ids expected = tokenizer->Encode(text);
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        if (tokenizer->Encode(text + std::to_string(i % 7)) !=
            tokenizer->Encode(text + std::to_string(i % 7))) {
          ++mismatches[t];
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(tokenizer->Encode(text), expected);
  for (int count : mismatches) EXPECT_EQ(count, 0);
}

// ---------------------------------------------------------------------------
// Small inline tokenizers. Expected values were produced by the reference
// library from the same JSON.

Json AddedToken(int id, const std::string& content, bool special) {
  return {{"id", id},         {"content", content}, {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", !special}, {"special", special}};
}

// A SentencePiece-style BPE with byte fallback, like Mistral's file: ids
// 0-2 are <unk>, <s>, </s>; 3-258 the byte tokens; then a few pieces.
Json TinyByteFallbackJson() {
  Json vocab = Json::object();
  vocab["<unk>"] = 0;
  vocab["<s>"] = 1;
  vocab["</s>"] = 2;
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  const std::vector<std::string> pieces = {"\xE2\x96\x81", "h", "e", "l", "o", "w", "r", "d",
                                           "\xE2\x96\x81h", "\xE2\x96\x81he", "ll", "llo",
                                           "\xE2\x96\x81hello", "\xE2\x96\x81w", "or",
                                           "\xE2\x96\x81wor", "ld", "\xE2\x96\x81world"};
  for (size_t i = 0; i < pieces.size(); ++i) vocab[pieces[i]] = 259 + static_cast<int>(i);
  const std::string m = "\xE2\x96\x81";
  // Merges as ["a", "b"] pairs (newer files); TinyByteLevelJson uses the
  // older "a b" strings.
  const Json merges = Json::array({{m, "h"}, {m + "h", "e"}, {"l", "l"}, {"ll", "o"}, {m + "he", "llo"},
                                   {m, "w"}, {"o", "r"}, {m + "w", "or"}, {"l", "d"}, {m + "wor", "ld"}});
  const Json bos = {{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}};
  return {
      {"version", "1.0"},
      {"added_tokens", {AddedToken(0, "<unk>", true), AddedToken(1, "<s>", true), AddedToken(2, "</s>", true)}},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "Metaspace"}, {"replacement", m}, {"prepend_scheme", "first"}, {"split", false}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", {bos, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"pair", Json::array()},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", m}}}, {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}},
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", "<unk>"}, {"fuse_unk", true},
        {"byte_fallback", true}, {"vocab", vocab}, {"merges", merges}}}};
}

// A GPT-2-style byte-level BPE: the 256 byte characters, a few merges, and
// the special token <|endoftext|>.
Json TinyByteLevelJson() {
  Json vocab = Json::object();
  const auto& bytes = tokenizer_internal::ByteToUnicode();
  for (int b = 0; b < 256; ++b) vocab[bytes[b]] = b;
  const std::string g = "\xC4\xA0";  // "Ġ", the stand-in for a space byte.
  const std::vector<std::string> pieces = {"he", "ll", "llo", "hello", g + "w", "or", g + "wor",
                                           "ld", g + "world", g + "hello"};
  for (size_t i = 0; i < pieces.size(); ++i) vocab[pieces[i]] = 256 + static_cast<int>(i);
  const Json merges = Json::array({"h e", "l l", "ll o", "he llo", g + " w", "o r", g + "w or",
                                   "l d", g + "wor ld", g + " hello"});
  const Json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
                           {"use_regex", true}};
  return {{"version", "1.0"},
          {"added_tokens", {AddedToken(266, "<|endoftext|>", true)}},
          {"normalizer", {{"type", "NFC"}}},
          {"pre_tokenizer", byte_level},
          {"post_processor", byte_level},
          {"decoder", byte_level},
          {"model",
           {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"fuse_unk", false},
            {"byte_fallback", false}, {"vocab", vocab}, {"merges", merges}}}};
}

TEST(InlineTokenizer, ByteFallbackBpe) {
  const auto tokenizer = Tokenizer::FromJson(TinyByteFallbackJson().dump(), "tiny-byte-fallback");
  EXPECT_EQ(tokenizer->VocabSize(), 277);
  EXPECT_EQ(tokenizer->Encode("hello world"), (Ids{271, 276}));
  // prepend_scheme "first": a leading space does not add a second "▁".
  EXPECT_EQ(tokenizer->Encode(" hello world"), (Ids{271, 276}));
  EXPECT_EQ(tokenizer->Encode("hello  world"), (Ids{271, 259, 276}));
  // "é" is not in the vocabulary and falls back to its UTF-8 bytes.
  EXPECT_EQ(tokenizer->Encode("h\xC3\xA9"), (Ids{267, 198, 172}));
  EXPECT_EQ(tokenizer->Decode(Ids{267, 198, 172}), "h\xC3\xA9");
  // Added tokens are matched first; the text after one is not at the start,
  // so it gets no "▁".
  EXPECT_EQ(tokenizer->Encode("<s>hello</s>"), (Ids{1, 260, 261, 270, 2}));
  EXPECT_EQ(tokenizer->Encode("hello", true), (Ids{1, 271}));
  EXPECT_EQ(tokenizer->Decode(Ids{1, 271, 276, 2}), "<s> hello world</s>");
  EXPECT_EQ(tokenizer->Decode(Ids{1, 271, 276, 2}, true), "hello world");
  // A lone lead byte is invalid UTF-8: one U+FFFD per byte, as the reference.
  EXPECT_EQ(tokenizer->Decode(Ids{198}), "\xEF\xBF\xBD");
  EXPECT_EQ(tokenizer->Decode(Ids{198, 198}), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(tokenizer->Decode(Ids{}), "");
  EXPECT_EQ(tokenizer->Encode(""), Ids{});
  EXPECT_EQ(tokenizer->IdToPiece(3), "<0x00>");
  EXPECT_EQ(tokenizer->PieceToId("\xE2\x96\x81world"), 276);
  EXPECT_FALSE(tokenizer->PieceToId("nope").has_value());
}

TEST(InlineTokenizer, ByteLevelBpe) {
  const auto tokenizer = Tokenizer::FromJson(TinyByteLevelJson().dump(), "tiny-byte-level");
  EXPECT_EQ(tokenizer->VocabSize(), 267);
  EXPECT_EQ(tokenizer->Encode("hello world"), (Ids{259, 264}));
  EXPECT_EQ(tokenizer->Encode(" hello"), (Ids{265}));
  EXPECT_EQ(tokenizer->Encode("hello<|endoftext|> world"), (Ids{259, 266, 264}));
  EXPECT_EQ(tokenizer->Encode("a  b   c\n\n d"), (Ids{97, 32, 32, 98, 32, 32, 32, 99, 10, 10, 32, 100}));
  // "é" as two bytes; NFC first composes "e" + U+0301 into "é".
  EXPECT_EQ(tokenizer->Encode("\xC3\xA9"), (Ids{195, 169}));
  EXPECT_EQ(tokenizer->Encode("e\xCC\x81"), (Ids{195, 169}));
  EXPECT_EQ(tokenizer->Decode(Ids{195, 169}), "\xC3\xA9");
  // A truncated sequence decodes to U+FFFD (Rust's from_utf8_lossy).
  EXPECT_EQ(tokenizer->Decode(Ids{195}), "\xEF\xBF\xBD");
  EXPECT_EQ(tokenizer->Decode(Ids{240, 159, 152}), "\xEF\xBF\xBD");
  EXPECT_EQ(tokenizer->Decode(Ids{259, 266, 264}), "hello<|endoftext|> world");
  EXPECT_EQ(tokenizer->Decode(Ids{259, 266, 264}, true), "hello world");
  EXPECT_TRUE(tokenizer->IsSpecial(266));
  // Invalid UTF-8 input is repaired to U+FFFD before encoding.
  EXPECT_EQ(tokenizer->Decode(tokenizer->Encode("a\xFF")), "a\xEF\xBF\xBD");
}

// ---------------------------------------------------------------------------
// Malformed input: every failure is an epwa::Error naming the file and field.

TEST(InlineTokenizer, RejectsMalformedFiles) {
  const std::string good = TinyByteFallbackJson().dump();
  const auto load_error = [](const std::string& json) {
    return ErrorOf([&] { Tokenizer::FromJson(json, "bad.json"); });
  };
  const auto expect_error = [&](const std::string& json, const std::vector<std::string>& parts) {
    const std::string message = load_error(json);
    ASSERT_FALSE(message.empty()) << "no error for: " << json.substr(0, 200);
    EXPECT_NE(message.find("bad.json"), std::string::npos) << message;
    for (const std::string& part : parts) EXPECT_NE(message.find(part), std::string::npos) << message;
  };

  expect_error(good.substr(0, good.size() / 2), {"not valid JSON"});
  expect_error("", {"not valid JSON"});
  expect_error("[1, 2]", {"top level"});
  expect_error("{\"added_tokens\": []}", {"'model'", "missing"});

  Json tokenizer = TinyByteFallbackJson();
  tokenizer["model"]["type"] = "Unigram";
  expect_error(tokenizer.dump(), {"'model.type'", "Unigram", "BPE"});
  tokenizer["model"]["type"] = "WordPiece";
  expect_error(tokenizer.dump(), {"'model.type'", "WordPiece"});

  tokenizer = TinyByteFallbackJson();
  tokenizer["model"]["merges"].push_back("zz top");
  expect_error(tokenizer.dump(), {"'model.merges[10]'", "\"zz\""});
  tokenizer = TinyByteFallbackJson();
  tokenizer["model"]["merges"].push_back("h e");  // "he" is not a token.
  expect_error(tokenizer.dump(), {"'model.merges[10]'", "\"he\""});
  tokenizer = TinyByteFallbackJson();
  tokenizer["model"]["merges"].push_back("nospace");
  expect_error(tokenizer.dump(), {"'model.merges[10]'"});
  tokenizer = TinyByteFallbackJson();
  tokenizer["model"]["merges"].push_back(Json::array({"h", "e", "l"}));
  expect_error(tokenizer.dump(), {"'model.merges[10]'"});

  tokenizer = TinyByteFallbackJson();
  tokenizer["model"]["vocab"]["x"] = "seven";
  expect_error(tokenizer.dump(), {"'model.vocab'", "\"x\""});
  tokenizer = TinyByteFallbackJson();
  tokenizer["model"]["vocab"]["x"] = -4;
  expect_error(tokenizer.dump(), {"'model.vocab'", "\"x\""});
  tokenizer = TinyByteFallbackJson();
  tokenizer["model"].erase("vocab");
  expect_error(tokenizer.dump(), {"'model.vocab'"});

  tokenizer = TinyByteFallbackJson();
  tokenizer["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  expect_error(tokenizer.dump(), {"'pre_tokenizer.type'", "BertPreTokenizer"});
  tokenizer = TinyByteFallbackJson();
  tokenizer["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, {{"type", "Precompiled"}}}}};
  expect_error(tokenizer.dump(), {"'normalizer.normalizers[1].type'", "Precompiled"});
  tokenizer = TinyByteFallbackJson();
  tokenizer["decoder"]["decoders"][3] = {{"type", "CTC"}};
  expect_error(tokenizer.dump(), {"'decoder.decoders[3].type'", "CTC"});
  tokenizer = TinyByteFallbackJson();
  tokenizer["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  expect_error(tokenizer.dump(), {"'pre_tokenizer.pattern.Regex'", "does not compile"});
  tokenizer = TinyByteFallbackJson();
  tokenizer["post_processor"]["single"][0]["SpecialToken"]["id"] = "<bos>";
  expect_error(tokenizer.dump(), {"post_processor.special_tokens.<bos>"});
  tokenizer = TinyByteFallbackJson();
  tokenizer["added_tokens"][0].erase("content");
  expect_error(tokenizer.dump(), {"'added_tokens[0].content'", "missing"});

  EXPECT_NE(ErrorOf([] { Tokenizer::FromFile("/nonexistent/tokenizer.json"); }).find("/nonexistent/tokenizer.json"),
            std::string::npos);
}

TEST(InlineTokenizer, DecodeRejectsIdsOutOfRange) {
  const auto tokenizer = Tokenizer::FromJson(TinyByteFallbackJson().dump(), "tiny.json");
  for (const int32_t id : {277, -1, 1 << 30}) {
    const std::string message = ErrorOf([&] { tokenizer->Decode(Ids{271, id}); });
    EXPECT_NE(message.find("tiny.json"), std::string::npos) << message;
    EXPECT_NE(message.find(std::to_string(id)), std::string::npos) << message;
    EXPECT_FALSE(ErrorOf([&] { tokenizer->IdToPiece(id); }).empty());
  }
}

// ---------------------------------------------------------------------------
// The trainer.

std::string TrainingText() {
  // About 50 KB of varied text, deterministic.
  const std::vector<std::string> sentences = {
      "The mixture of experts routes every token to a few feed-forward experts. ",
      "Sparse models trade memory for compute; only k experts run per token. ",
      "Tokenizers split text into pieces: words, subwords and single bytes. ",
      "Naïve café owners in Zürich serve crème brûlée and Käsespätzle. ",
      "日本語の文章も少し含めます。 Emoji such as 🚀 and 🎉 appear too. ",
      "def route(x):\n    return softmax(x @ w_gate).topk(2)\n",
      "Numbers like 3.14159, 2718 and 1,000,000 should survive the round trip.\n"};
  std::string text;
  for (int i = 0; text.size() < 50000; ++i) {
    text += sentences[(i * 7 + i / 3) % sentences.size()];
    if (i % 11 == 0) text += "Paragraph " + std::to_string(i) + ".\n\n";
  }
  return text;
}

TEST(Trainer, ProducesLoadableDeterministicTokenizer) {
  const std::string text = TrainingText();
  for (const int32_t vocab_size : {260, 512, 4096}) {
    const auto start = std::chrono::steady_clock::now();
    const std::string json = TrainByteFallbackBpeJson(text, vocab_size);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::cout << "TrainByteFallbackBpeJson: " << text.size() << " bytes, vocab " << vocab_size << ": "
              << ms << " ms\n";
    EXPECT_EQ(json, TrainByteFallbackBpeJson(text, vocab_size)) << "training is not deterministic";

    const auto tokenizer = Tokenizer::FromJson(json, "trained");
    EXPECT_EQ(tokenizer->VocabSize(), vocab_size);
    EXPECT_EQ(Json::parse(json)["model"]["vocab"].size(), static_cast<size_t>(vocab_size));
    EXPECT_EQ(tokenizer->PieceToId("<unk>"), 0);
    EXPECT_EQ(tokenizer->PieceToId("<s>"), 1);
    EXPECT_EQ(tokenizer->PieceToId("</s>"), 2);
    EXPECT_EQ(tokenizer->PieceToId("<0x00>"), 3);
    EXPECT_EQ(tokenizer->PieceToId("<0xFF>"), 258);
    EXPECT_EQ(tokenizer->PieceToId("\xE2\x96\x81"), 259);
    EXPECT_TRUE(tokenizer->IsSpecial(1));

    const Ids ids = tokenizer->Encode(text);
    EXPECT_EQ(tokenizer->Decode(ids), text);
    if (vocab_size == 4096) {
      EXPECT_LT(ids.size(), text.size() / 3) << "merges should compress the text";
    }
    EXPECT_EQ(tokenizer->Encode("Hello", true).front(), 1);
    for (const std::string sample : {"Plain ASCII, with punctuation!", "Ünïcödé: 中文, 한국어, emoji 🧪🦀",
                                     "tabs\tand\nnewlines\r\n", "<s>special</s> inside"}) {
      EXPECT_EQ(tokenizer->Decode(tokenizer->Encode(sample)), sample) << sample;
    }
  }
}

TEST(Trainer, PadsWithReservedPiecesWhenTextRunsOut) {
  const std::string json = TrainByteFallbackBpeJson("tiny text, tiny vocab", 1000);
  const auto tokenizer = Tokenizer::FromJson(json, "trained");
  EXPECT_EQ(tokenizer->VocabSize(), 1000);
  EXPECT_EQ(tokenizer->IdToPiece(999).rfind("<reserved_", 0), 0u) << tokenizer->IdToPiece(999);
  EXPECT_EQ(tokenizer->Decode(tokenizer->Encode("tiny text")), "tiny text");
  // Empty text still yields a usable tokenizer (all bytes via fallback).
  const auto empty = Tokenizer::FromJson(TrainByteFallbackBpeJson("", 300), "trained-empty");
  EXPECT_EQ(empty->VocabSize(), 300);
  EXPECT_EQ(empty->Decode(empty->Encode("any text")), "any text");
}

TEST(Trainer, RejectsTooSmallVocabulary) {
  const std::string message = ErrorOf([] { TrainByteFallbackBpeJson("text", 100); });
  EXPECT_NE(message.find("vocab_size 100"), std::string::npos) << message;
}

TEST(Trainer, ConfigJsonIsMistralLike) {
  const Json config = Json::parse(TokenizerConfigJson());
  EXPECT_EQ(config["bos_token"], "<s>");
  EXPECT_EQ(config["eos_token"], "</s>");
  EXPECT_EQ(config["unk_token"], "<unk>");
  EXPECT_EQ(config["add_bos_token"], true);
  EXPECT_EQ(config["add_eos_token"], false);
}

}  // namespace
}  // namespace epwa
