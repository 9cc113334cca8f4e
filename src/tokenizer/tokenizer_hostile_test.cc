// Hostile tokenizer.json files and inputs (issue 10, findings F3, F5, F15 of
// the hostile-input sweep): each must end in an epwa::Error that names the
// file and the limit, quickly, and the limits must not touch real tokenizers.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "tokenizer/tokenizer.h"

namespace epwa {
namespace {

using Json = nlohmann::json;

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The bundled model's tokenizer (Mistral-style BPE with byte fallback).
Json BundledTokenizer() { return Json::parse(ReadText("models/tiny-moe/tokenizer.json")); }

// Expects FromJson or `action` to throw an epwa::Error whose message holds
// every one of `needles`.
template <typename F>
void ExpectErrorContaining(F action, std::initializer_list<std::string> needles) {
  try {
    action();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    for (const std::string& needle : needles) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
}

// The text of a Sequence nested `depth` levels deep around `leaf`, in
// `list_key`. Kept as text: nlohmann's dump() and destructor recurse once per
// level, which overflows the stack of a sanitizer build at these depths, and
// they are not what is under test.
std::string NestedText(int depth, const Json& leaf, const char* list_key) {
  std::string open, close;
  for (int i = 0; i < depth; ++i) {
    open += std::string("{\"type\":\"Sequence\",\"") + list_key + "\":[";
    close += "]}";
  }
  return open + leaf.dump() + close;
}

// `doc` with the value of `field` replaced by the JSON text `value`.
std::string WithFieldText(Json doc, const char* field, const std::string& value) {
  doc[field] = "@@value@@";
  std::string text = doc.dump();
  text.replace(text.find("\"@@value@@\""), 11, value);
  return text;
}

TEST(TokenizerHostileTest, DeeplyNestedSequencesAreRefusedQuickly) {
  const auto start = std::chrono::steady_clock::now();
  struct Case {
    const char* field;
    const char* list_key;
    Json leaf;
  };
  const Case cases[] = {
      {"normalizer", "normalizers", Json{{"type", "NFC"}}},
      {"pre_tokenizer", "pretokenizers", Json{{"type", "Digits"}}},
      {"decoder", "decoders", Json{{"type", "Fuse"}}},
      {"post_processor", "processors", Json{{"type", "ByteLevel"}}},
  };
  for (const Case& c : cases) {
    const Json doc = BundledTokenizer();
    const std::string text = WithFieldText(doc, c.field, NestedText(20000, c.leaf, c.list_key));
    ExpectErrorContaining([&] { Tokenizer::FromJson(text, "deep/tokenizer.json"); },
                          {"deep/tokenizer.json", c.field, "32 levels"});
    // Real nesting (a few levels) still loads.
    EXPECT_NO_THROW(Tokenizer::FromJson(WithFieldText(doc, c.field, NestedText(3, c.leaf, c.list_key)),
                                        "ok/tokenizer.json"))
        << c.field;
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 10.0);
}

TEST(TokenizerHostileTest, TooManyComponentsAreRefused) {
  Json doc = BundledTokenizer();
  Json list = Json::array();
  for (int i = 0; i < 300; ++i) list.push_back(Json{{"type", "Fuse"}});
  doc["decoder"] = Json{{"type", "Sequence"}, {"decoders", list}};
  ExpectErrorContaining([&] { Tokenizer::FromJson(doc.dump(), "many/tokenizer.json"); },
                        {"many/tokenizer.json", "decoder", "256 components"});
}

Json WithSplit(const std::string& regex) {
  Json doc = BundledTokenizer();
  doc["pre_tokenizer"] = Json{{"type", "Split"},
                              {"pattern", {{"Regex", regex}}},
                              {"behavior", "Isolated"},
                              {"invert", false}};
  return doc;
}

TEST(TokenizerHostileTest, QuadraticRegexRunsOutOfBudgetInsteadOfHanging) {
  const auto tok = Tokenizer::FromJson(WithSplit("a*b|.").dump(), "quad/tokenizer.json");
  // Small inputs are fine: the budget has a constant part.
  EXPECT_EQ(tok->Encode("aaab").size(), tok->Encode("aaab").size());
  const auto start = std::chrono::steady_clock::now();
  ExpectErrorContaining([&] { tok->Encode(std::string(1 << 20, 'a')); },
                        {"quad/tokenizer.json", "a*b|.", "512 per input byte"});
  // Unbounded, this took > 60 s (report case C_tok_re_quadratic_1mb).
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 10.0);
}

TEST(TokenizerHostileTest, RegexMatchesAreThoseOfAnUnboundedSearch) {
  // Windows and per-position attempts must not change any split: compare
  // with matches worked out by hand for patterns that look ahead past
  // window boundaries (32 bytes) and behind the start.
  // Without a normalizer the spaces stay spaces for the pattern to see.
  Json doc = WithSplit(R"(\s+(?!\S)|\s+|\p{L}+|.)");
  doc["normalizer"] = nullptr;
  const auto tok = Tokenizer::FromJson(doc.dump(), "t.json");
  Json plain = doc;
  plain["pre_tokenizer"] = nullptr;
  const auto whole = Tokenizer::FromJson(plain.dump(), "p.json");
  // 99 spaces (the last one is not followed by a space), 1 space, a 71-letter
  // word, "!": the split pieces are encoded separately, so the ids are those
  // of the pieces encoded one by one.
  const std::string word = "x" + std::string(70, 'w');
  const std::string text = std::string(100, ' ') + word + "!";
  std::vector<int32_t> expected;
  for (const std::string& piece : {std::string(99, ' '), std::string(" "), word, std::string("!")}) {
    for (int32_t id : whole->Encode(piece)) expected.push_back(id);
  }
  EXPECT_EQ(tok->Encode(text), expected);
}

TEST(TokenizerHostileTest, GVerbsAreRefused) {
  ExpectErrorContaining([&] { Tokenizer::FromJson(WithSplit(R"(\Ga)").dump(), "g/tokenizer.json"); },
                        {"g/tokenizer.json", "\\G"});
  ExpectErrorContaining(
      [&] { Tokenizer::FromJson(WithSplit(R"(a(*COMMIT)b)").dump(), "v/tokenizer.json"); },
      {"v/tokenizer.json", "(*"});
  // Escaped or quoted, they are ordinary characters.
  EXPECT_NO_THROW(Tokenizer::FromJson(WithSplit(R"(\\G|\(\*|[(*]|\Q\G\E)").dump(), "ok.json"));
}

TEST(TokenizerHostileTest, ExponentialGrowthIsRefused) {
  Json doc = BundledTokenizer();
  Json list = Json::array();
  for (int i = 0; i < 40; ++i) {
    list.push_back(Json{{"type", "Replace"}, {"pattern", {{"String", "a"}}}, {"content", "aaaa"}});
  }
  doc["normalizer"] = Json{{"type", "Sequence"}, {"normalizers", list}};
  const auto tok = Tokenizer::FromJson(doc.dump(), "grow/tokenizer.json");
  ExpectErrorContaining([&] { tok->Encode("a"); }, {"grow/tokenizer.json", "Replace step", "64 bytes per input byte"});

  Json bytes = BundledTokenizer();
  Json steps = Json::array();
  for (int i = 0; i < 40; ++i) steps.push_back(Json{{"type", "ByteLevel"}, {"use_regex", false}});
  bytes["pre_tokenizer"] = Json{{"type", "Sequence"}, {"pretokenizers", steps}};
  const auto tok2 = Tokenizer::FromJson(bytes.dump(), "grow2/tokenizer.json");
  ExpectErrorContaining([&] { tok2->Encode("\xC3\xA9\xC3\xA9"); }, {"grow2/tokenizer.json", "pre_tokenizer"});
}

TEST(TokenizerHostileTest, PostProcessorIdsMustBeInTheVocabulary) {
  Json doc = BundledTokenizer();
  doc["post_processor"]["special_tokens"]["<s>"]["ids"] = Json::array({999999});
  ExpectErrorContaining([&] { Tokenizer::FromJson(doc.dump(), "pp/tokenizer.json"); },
                        {"pp/tokenizer.json", "post_processor.special_tokens.<s>.ids[0]", "999999",
                         "not a token"});
}

TEST(TokenizerHostileTest, FromFileRefusesFoldersAndFifos) {
  ExpectErrorContaining([] { Tokenizer::FromFile("/tmp"); }, {"/tmp", "folder"});
  const std::string fifo = "/tmp/epwa-tokenizer-fifo-" + std::to_string(::getpid());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  ExpectErrorContaining([&] { Tokenizer::FromFile(fifo); }, {fifo, "FIFO"});
  ::unlink(fifo.c_str());
}

TEST(TokenizerHostileTest, MaxTokenBytesBoundsEveryEncoding) {
  const auto bundled = Tokenizer::FromFile("models/tiny-moe/tokenizer.json");
  const size_t max_bytes = bundled->MaxTokenBytes();
  ASSERT_NE(max_bytes, std::numeric_limits<size_t>::max());
  // Byte fallback "<0xNN>" pieces are 6 bytes, so nothing is shorter than that.
  EXPECT_GE(max_bytes, 6u);
  for (const std::string& text : {std::string(5000, ' '), std::string(5000, 'a'),
                                 std::string("\xE2\x96\x81") + std::string(3000, 'x'),
                                 std::string("<s><s></s>"), ReadText("README.md")}) {
    const auto ids = bundled->Encode(text);
    EXPECT_LE(text.size(), ids.size() * max_bytes);
  }
  // A Strip normalizer deletes any amount of whitespace: no bound exists.
  Json doc = BundledTokenizer();
  doc["normalizer"] = Json{{"type", "Strip"}, {"strip_left", true}, {"strip_right", true}};
  EXPECT_EQ(Tokenizer::FromJson(doc.dump(), "s.json")->MaxTokenBytes(), std::numeric_limits<size_t>::max());
}

}  // namespace
}  // namespace epwa
