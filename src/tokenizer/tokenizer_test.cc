// Tests for the tokenizer.json implementation.
//
// Three groups:
//  * Conformance against vectors made by the reference Hugging Face
//    tokenizers library, for the real Mistral, OLMoE, Qwen3, Granite and
//    Mixtral files in ../shared (skipped, saying so, when they are absent).
//  * Self-contained tests on small tokenizers built inline, including
//    malformed files and their error messages.
//  * The BPE trainer used for epwa's seeded random test models.
#include "tokenizer/tokenizer.h"
#include "tokenizer/text_stream.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "base/error.h"
#include "base/test_paths.h"
#include "tokenizer/utf8.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;
using testing::RepoRoot;
using testing::SharedDir;
using Json = nlohmann::json;
using Ids = std::vector<int32_t>;

// ---------------------------------------------------------------------------
// Locating test data.

// The folder of a tokenizer family under the shared data folder. Most live in
// data/tokenizers; Mixtral's files sit beside the rest of its model card.
fs::path SharedFolder(const std::string& name) {
  if (name == "mixtral") return fs::path("data") / "models" / "mixtral-8x7b-instruct-v0.1";
  return fs::path("data") / "tokenizers" / name;
}

// The family's tokenizer.json, or nullopt with `why` saying what is missing.
std::optional<fs::path> SharedTokenizer(const std::string& name, std::string* why) {
  const auto shared = SharedDir();
  if (!shared) {
    *why =
        "The shared data folder is absent (looked for ../shared/data beside the repository and "
        "$EPWA_SHARED_DIR); conformance test for " +
        name + " skipped.";
    return std::nullopt;
  }
  const fs::path path = *shared / SharedFolder(name) / "tokenizer.json";
  std::error_code error;
  if (!fs::exists(path, error)) {
    *why = "The shared tokenizer file " + path.string() + " is absent; conformance test for " +
           name + " skipped.";
    return std::nullopt;
  }
  return path;
}

#define SKIP_WITHOUT_SHARED(path_var, name)                         \
  std::string path_var##_missing;                                   \
  const auto path_var = SharedTokenizer(name, &path_var##_missing); \
  if (!path_var) {                                                  \
    GTEST_SKIP() << path_var##_missing;                             \
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

// The token strings of `ids`, or "" for an id without one (which then also
// fails the id comparison).
std::vector<std::string> PiecesOf(const Tokenizer& tokenizer, const Ids& ids) {
  std::vector<std::string> pieces;
  for (const int32_t id : ids) {
    try {
      pieces.push_back(tokenizer.IdToPiece(id));
    } catch (const Error&) {
      pieces.emplace_back();
    }
  }
  return pieces;
}

// vectors.jsonl: {"text", "ids", "decoded"} made with encode(text,
// add_special_tokens) and decode(ids, skip_special_tokens=false). Newer files
// (qwen3, granite, mixtral) also hold "add_special_tokens" (absent means
// false) and "tokens", the vocabulary strings of the ids.
TEST_P(SharedVectorsTest, MatchesReference) {
  SKIP_WITHOUT_SHARED(path, GetParam());
  const auto tokenizer = Tokenizer::FromFile(path->string());
  const auto vectors = ReadJsonLines(path->parent_path() / "vectors.jsonl");
  ASSERT_FALSE(vectors.empty());
  int passed[2] = {0, 0};
  int total[2] = {0, 0};
  for (size_t i = 0; i < vectors.size(); ++i) {
    const Json& vector = vectors[i];
    const std::string text = vector["text"];
    const bool add_special = vector.value("add_special_tokens", false);
    const Ids expected_ids = vector["ids"];
    const std::string expected_decoded = vector["decoded"];
    const std::string where = "vector " + std::to_string(i) + ": " + Json(text).dump() +
                              " add_special_tokens=" + (add_special ? "true" : "false");
    const Ids ids = tokenizer->Encode(text, add_special);
    EXPECT_EQ(ids, expected_ids) << where;
    bool ok = ids == expected_ids;
    if (vector.contains("tokens")) {
      // The token strings are checked for the reference's ids, so that a
      // wrong piece table shows up even where encoding already fails.
      const std::vector<std::string> expected_tokens = vector["tokens"];
      const std::vector<std::string> tokens = PiecesOf(*tokenizer, expected_ids);
      EXPECT_EQ(tokens, expected_tokens) << where;
      ok = ok && tokens == expected_tokens;
    }
    // Decoding starts from the reference's ids so that it is tested on its
    // own, whatever Encode produced.
    const std::string decoded = tokenizer->Decode(expected_ids);
    EXPECT_EQ(decoded, expected_decoded) << where;
    ok = ok && decoded == expected_decoded;
    ++total[add_special];
    if (ok) ++passed[add_special];
  }
  std::cout << GetParam() << ": " << passed[0] + passed[1] << "/" << vectors.size()
            << " reference vectors pass (" << passed[0] << "/" << total[0]
            << " without special tokens, " << passed[1] << "/" << total[1] << " with)\n";
}

// extra_vectors.jsonl (committed, made by tests/data/tokenizers/
// make_extra_vectors.js) adds Unicode, code, whitespace, special tokens
// inside text, add_special_tokens=true and decode-only cases.
TEST_P(SharedVectorsTest, MatchesExtraVectors) {
  SKIP_WITHOUT_SHARED(path, GetParam());
  const auto tokenizer = Tokenizer::FromFile(path->string());
  const fs::path extra =
      RepoRoot() / "tests" / "data" / "tokenizers" / GetParam() / "extra_vectors.jsonl";
  ASSERT_TRUE(fs::exists(extra)) << extra << " is missing; make it with make_extra_vectors.js";
  const auto vectors = ReadJsonLines(extra);
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
    if (vector.contains("tokens")) {
      const std::vector<std::string> expected_tokens = vector["tokens"];
      const std::vector<std::string> tokens = PiecesOf(*tokenizer, expected_ids);
      EXPECT_EQ(tokens, expected_tokens) << "vector " << i;
      ok = ok && tokens == expected_tokens;
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

// The second bundled model's byte-level BPE tokenizer (trained by
// tools/train/bytelevel_bpe.py) against the reference library on every 8th
// held-out paragraph (tests/data/tokenizers/make_bundled_vectors.sh).
TEST(BundledTokenizer, ByteLevelModelMatchesTheReferenceOnHeldOutText) {
  const fs::path file = RepoRoot() / "models" / "tiny-qwen3-moe" / "tokenizer.json";
  if (!fs::exists(file)) GTEST_SKIP() << file << " is absent";
  const auto tokenizer = Tokenizer::FromFile(file.string());
  const auto vectors =
      ReadJsonLines(RepoRoot() / "tests" / "data" / "tokenizers" / "tiny-qwen3-moe" / "heldout_vectors.jsonl");
  ASSERT_GT(vectors.size(), 400u);
  int passed = 0;
  for (size_t i = 0; i < vectors.size(); ++i) {
    const Ids expected = vectors[i]["ids"];
    const Ids ids = tokenizer->Encode(vectors[i]["text"].get<std::string>(), false);
    EXPECT_EQ(ids, expected) << "paragraph " << i;
    const std::string decoded = tokenizer->Decode(expected, false);
    EXPECT_EQ(decoded, vectors[i]["decoded"].get<std::string>()) << "paragraph " << i;
    passed += ids == expected && decoded == vectors[i]["decoded"];
  }
  std::cout << "tiny-qwen3-moe: " << passed << "/" << vectors.size() << " held-out paragraphs\n";
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

// What a TextStream releases token by token, then flushes, is the whole
// decode of the generated tokens (Text(), which decodes everything at once),
// for every reference and extra vector of the real tokenizers cut into a
// prompt and a generation at several places: Unicode split across byte
// tokens, SentencePiece's leading spaces and special tokens included. The
// stream decodes only a window of the last tokens, so this is what keeps the
// window honest.
TEST_P(SharedVectorsTest, StreamedTextIsTheWholeText) {
  SKIP_WITHOUT_SHARED(path, GetParam());
  const auto tokenizer = Tokenizer::FromFile(path->string());
  std::vector<Json> vectors = ReadJsonLines(path->parent_path() / "vectors.jsonl");
  for (Json& extra : ReadJsonLines(RepoRoot() / "tests" / "data" / "tokenizers" / GetParam() / "extra_vectors.jsonl"))
    vectors.push_back(std::move(extra));
  ASSERT_FALSE(vectors.empty());
  int streams = 0;
  for (size_t i = 0; i < vectors.size(); ++i) {
    const Ids ids = vectors[i]["ids"];
    for (size_t cut : {size_t{0}, size_t{1}, size_t{3}, ids.size() / 2}) {
      if (cut > ids.size()) continue;
      const std::span<const int32_t> all(ids);
      // A cut inside a character (the prompt's last tokens decode to a
      // replacement character that the next token completes) is not a
      // prompt that encoding text gives, and its text has no clean start.
      const std::span<const int32_t> tail = all.first(cut).last(std::min<size_t>(cut, 4));
      const std::string prompt_text = tokenizer->Decode(tail, true);
      const std::string whole = tokenizer->Decode(all.subspan(cut - tail.size()), true);
      if (whole.compare(0, prompt_text.size(), prompt_text) != 0) continue;
      TextStream stream(*tokenizer, all.first(cut));
      std::string streamed;
      for (int32_t id : all.subspan(cut)) streamed += stream.Push(id);
      streamed += stream.Flush();
      EXPECT_EQ(streamed, stream.Text()) << "vector " << i << ", prompt of " << cut << " tokens";
      ++streams;
    }
  }
  std::cout << GetParam() << ": " << streams << " streams checked\n";
}

INSTANTIATE_TEST_SUITE_P(Families, SharedVectorsTest,
                         ::testing::Values("mistral", "olmoe", "qwen3", "granite", "mixtral"));

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

// A character split across byte tokens is released whole, once its last
// byte arrives, and the window that each Push decodes slides along a long
// generation without losing or repeating text.
TEST(InlineTokenizer, TextStreamReleasesWholeCharacters) {
  const auto tokenizer = Tokenizer::FromJson(TinyByteLevelJson().dump(), "tiny-byte-level");
  const Ids prompt{259};                           // "hello"
  const Ids smile{240, 159, 152, 128};             // U+1F600 as four byte tokens
  TextStream stream(*tokenizer, prompt);
  EXPECT_EQ(stream.Push(264), " world");
  for (size_t b = 0; b + 1 < smile.size(); ++b) EXPECT_EQ(stream.Push(smile[b]), "") << "byte " << b;
  EXPECT_EQ(stream.Push(smile.back()), "\xF0\x9F\x98\x80");
  std::string streamed = " world\xF0\x9F\x98\x80";
  for (int i = 0; i < 200; ++i) {
    streamed += stream.Push(i % 3 == 0 ? 264 : 195);  // " world", then "\xC3" lead bytes that never complete
    if (i % 7 == 0) streamed += stream.Push(169);      // completes a lead byte into "\xC3\xA9"
  }
  streamed += stream.Flush();
  EXPECT_EQ(streamed, stream.Text());
  EXPECT_EQ(stream.Flush(), "");
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
// Unicode data. The reference mixes Unicode versions (Oniguruma 16.0 in its
// regexes, Rust's char methods 17.0, Unicode 9.0 in its normalizers), none of
// them that of PCRE2 10.42 (14.0) or utf8proc 2.8 (15.0); these pin the
// characters where that shows. Expected values come from the reference on
// the same JSON.

// A byte-level BPE without merges whose ids are the bytes of the text. Its
// pre-tokenizer runs `pre_tokenizer` and then ByteLevel with
// add_prefix_space, which puts a space before every piece that does not
// start with one, so the encoded bytes show where the pieces are.
Json MarkedPiecesJson(const Json& normalizer, const Json& pre_tokenizer) {
  Json vocab = Json::object();
  const auto& bytes = tokenizer_internal::ByteToUnicode();
  for (int b = 0; b < 256; ++b) vocab[bytes[b]] = b;
  const Json marked = {{"type", "ByteLevel"},
                       {"add_prefix_space", true},
                       {"trim_offsets", false},
                       {"use_regex", false}};
  const Json plain = {{"type", "ByteLevel"},
                      {"add_prefix_space", false},
                      {"trim_offsets", false},
                      {"use_regex", false}};
  return {{"version", "1.0"},
          {"added_tokens", Json::array()},
          {"normalizer", normalizer},
          {"pre_tokenizer",
           pre_tokenizer.is_null()
               ? plain
               : Json{{"type", "Sequence"}, {"pretokenizers", {pre_tokenizer, marked}}}},
          {"post_processor", nullptr},
          {"decoder", plain},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"vocab", vocab},
            {"merges", Json::array()}}}};
}

// The bytes that the ids of MarkedPiecesJson stand for.
std::string EncodedBytes(const Json& json, const std::string& text) {
  const auto tokenizer = Tokenizer::FromJson(json.dump(), "marked-pieces");
  std::string bytes;
  for (const int32_t id : tokenizer->Encode(text)) bytes.push_back(static_cast<char>(id));
  return bytes;
}

Json SplitPattern(const std::string& regex) {
  return {{"type", "Split"},
          {"pattern", {{"Regex", regex}}},
          {"behavior", "Isolated"},
          {"invert", false}};
}

// The stand-ins of unicode_data.cc fill in what Unicode added after 14.0; an
// older PCRE2 would lack more than they cover.
TEST(InlineTokenizer, Pcre2KnowsUnicode14) {
  char version[32] = {};
  ASSERT_GE(pcre2_config(PCRE2_CONFIG_UNICODE_VERSION, version), 0);
  int major = 0;
  int minor = 0;
  ASSERT_EQ(std::sscanf(version, "%d.%d", &major, &minor), 2) << version;
  EXPECT_GE(major, 14) << "PCRE2 has Unicode " << version << "; epwa's tables assume 14.0 or later";
}

TEST(InlineTokenizer, RegexesSeeTheReferenceUnicodeCategories) {
  // U+11F04 (a Kawi letter) and U+11F50 (a Kawi digit) are Unicode 15.0, so
  // PCRE2 10.42 alone calls them unassigned; U+180E lost its whitespace
  // property in Unicode 6.3, which PCRE2's \s still gives it.
  EXPECT_EQ(
      EncodedBytes(MarkedPiecesJson(nullptr, SplitPattern(R"(\p{L}+|\p{N}|\s+|[^\s\p{L}\p{N}]+)")),
                   "x\U00011F04y 9\U00011F509 a\u180Eb"),
      " x\U00011F04y  9 \U00011F50 9  a \u180E b");
  // Oniguruma's escapes: \w holds marks and Latin-1 superscripts but not
  // U+2460; \b follows that \w; \h is a hexadecimal digit; \v the vertical
  // tab alone; \uHHHH a code point.
  EXPECT_EQ(
      EncodedBytes(MarkedPiecesJson(nullptr, SplitPattern(R"(\w+)")), "a\u0301\u00B2\u2460\u24B6"),
      " a\u0301\u00B2 \u2460 \u24B6");
  EXPECT_EQ(EncodedBytes(MarkedPiecesJson(nullptr, SplitPattern(R"(\b)")), "ab c\u0301d"),
            " ab  c\u0301d");
  EXPECT_EQ(EncodedBytes(MarkedPiecesJson(nullptr, SplitPattern(R"(\h+)")), "cafe babe"),
            " cafe  babe");
  EXPECT_EQ(EncodedBytes(MarkedPiecesJson(nullptr, SplitPattern(R"(\v|\u0041)")), "x\vA\n"),
            " x \v A \n");
  // A pattern that names such code points, or a range holding them, sees
  // the text as it is (U+104A0 is the stand-in for new decimal digits).
  EXPECT_EQ(EncodedBytes(MarkedPiecesJson(nullptr, SplitPattern(R"(\x{11F50}|\u180E)")),
                         "a\U00011F50b\u180Ec\U000104A0"),
            " a \U00011F50 b \u180E c\U000104A0");
  EXPECT_EQ(EncodedBytes(MarkedPiecesJson(nullptr, SplitPattern(R"([\x{10000}-\x{1FFFF}])")),
                         "a\U00011F04b"),
            " a \U00011F04 b");
  // PCRE2 10.42's JIT, left to its start-of-match scan, "found" U+00B2 in the
  // second byte of "ò" (C3 B2) once the text was longer than one window.
  EXPECT_EQ(EncodedBytes(MarkedPiecesJson(nullptr, SplitPattern("[\u00B2\u00B3]+")),
                         "x\u00F2" + std::string(40, 'a') + "\u00B2"),
            " x\u00F2" + std::string(40, 'a') + " \u00B2");
}

TEST(InlineTokenizer, BuiltInPreTokenizersUseTheReferenceSets) {
  // Digits: Rust's is_numeric (U+16FF4 is a Unicode 17.0 number).
  EXPECT_EQ(
      EncodedBytes(MarkedPiecesJson(nullptr, {{"type", "Digits"}, {"individual_digits", true}}),
                   "1\U00016FF4\u00B2x"),
      " 1 \U00016FF4 \u00B2 x");
  // Whitespace: the Rust regex crate's \w, which has joiners but not "²".
  EXPECT_EQ(EncodedBytes(MarkedPiecesJson(nullptr, {{"type", "Whitespace"}}), "a\u00B2b c\u200Cd"),
            " a \u00B2 b c\u200Cd");
  // Punctuation: an older table, without U+061D (Unicode 14.0).
  EXPECT_EQ(
      EncodedBytes(MarkedPiecesJson(nullptr, {{"type", "Punctuation"}, {"behavior", "Isolated"}}),
                   "a\u061Db!"),
      " a\u061Db !");
  // WhitespaceSplit: Rust's is_whitespace, without U+180E.
  EXPECT_EQ(EncodedBytes(MarkedPiecesJson(nullptr, {{"type", "WhitespaceSplit"}}), "a\u180Eb c"),
            " a\u180Eb c");
}

TEST(InlineTokenizer, NormalizersUseTheReferenceUnicodeData) {
  // The reference's normalizer has Unicode 9.0 data: U+07FD (combining class
  // 220 since Unicode 11.0) is a starter to it and blocks "a" + U+0301, and
  // U+11935 U+11930 do not compose to U+11938 (Unicode 13.0).
  EXPECT_EQ(EncodedBytes(MarkedPiecesJson({{"type", "NFC"}}, nullptr),
                         "a\u07FD\u0301|a\u0316\u0301|\U00011935\U00011930|e\u0301"),
            "a\u07FD\u0301|\u00E1\u0316|\U00011935\U00011930|\u00E9");
  EXPECT_EQ(EncodedBytes(MarkedPiecesJson({{"type", "NFKD"}}, nullptr), "\U0001FBF1\u00BD"),
            "\U0001FBF11\u20442");
  // Rust's to_lowercase knows Unicode 17.0 pairs (U+16EA0) and maps U+0130
  // to two code points.
  EXPECT_EQ(
      EncodedBytes(MarkedPiecesJson({{"type", "Lowercase"}}, nullptr), "\U00016EA0\uA7DC\u0130A"),
      "\U00016EBB\u019Bi\u0307a");
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
  // Other components of the reference that epwa does not implement.
  tokenizer = TinyByteFallbackJson();
  tokenizer["normalizer"] = {{"type", "StripAccents"}};
  expect_error(tokenizer.dump(), {"'normalizer.type'", "StripAccents"});
  tokenizer = TinyByteFallbackJson();
  tokenizer["pre_tokenizer"] = {{"type", "UnicodeScripts"}};
  expect_error(tokenizer.dump(), {"'pre_tokenizer.type'", "UnicodeScripts"});
  tokenizer = TinyByteFallbackJson();
  tokenizer["decoder"] = {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}};
  expect_error(tokenizer.dump(), {"'decoder.type'", "WordPiece"});
  tokenizer = TinyByteFallbackJson();
  tokenizer["post_processor"] = {{"type", "Unknown"}};
  expect_error(tokenizer.dump(), {"'post_processor.type'", "Unknown"});
  // A Split regex with a property PCRE2 lacks names the field.
  tokenizer = TinyByteFallbackJson();
  tokenizer["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", R"(\p{Word})"}}}, {"behavior", "Isolated"}};
  expect_error(tokenizer.dump(), {"'pre_tokenizer.pattern.Regex'", "does not compile"});
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
