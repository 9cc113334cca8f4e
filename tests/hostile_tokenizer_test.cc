// Hostile-input regressions for `epwa tokenize` and tokenizer.json (report
// ../shared/reports/hostile-sweep-2026-12-01.md, findings F3, F4, F5, F10,
// F11, F15, F16). Each runs the real binary.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_util.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

const char* kTokenizer = "models/tiny-moe/tokenizer.json";

void Write(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// C_tok_jsonl_mixed, C_tok_jsonl_oov: one bad line costs only its own result.
TEST(HostileTokenizerTest, JsonlBadLinesGetTheirOwnErrors) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/batch.jsonl";
  Write(path, "\"hello\"\n[1, 99999999]\nnot json\n\"caf\xC3\"\n\n[1]\n");
  const Result r = RunEpwa(std::string("tokenize --tokenizer ") + kTokenizer + " --jsonl " + Quote(path), dir);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  std::vector<Json> lines;
  std::istringstream out(r.out);
  for (std::string line; std::getline(out, line);) lines.push_back(Json::parse(line));
  ASSERT_EQ(lines.size(), 5u) << r.out;
  EXPECT_TRUE(lines[0].is_array() && !lines[0].empty());
  ASSERT_TRUE(lines[1].contains("error"));
  EXPECT_NE(lines[1]["error"].get<std::string>().find(path + ":2"), std::string::npos);
  ASSERT_TRUE(lines[2].contains("error"));
  EXPECT_NE(lines[2]["error"].get<std::string>().find(path + ":3: the line is not valid JSON"),
            std::string::npos);
  ASSERT_TRUE(lines[3].contains("error"));
  EXPECT_NE(lines[3]["error"].get<std::string>().find(path + ":4: the line is not valid UTF-8"),
            std::string::npos);
  EXPECT_TRUE(lines[4].is_string());
  EXPECT_NE(r.err.find("epwa: error: 3 of 5 lines"), std::string::npos) << r.err;
}

// C_tok_file_dir, H_tokenize_devurandom: --file takes regular files only.
TEST(HostileTokenizerTest, FileMustBeARegularFile) {
  testing::TempDir dir;
  ExpectCleanError(RunEpwa(std::string("tokenize --tokenizer ") + kTokenizer + " --file /tmp", dir), 1,
                   "folder");
  ExpectCleanError(
      RunEpwa(std::string("tokenize --tokenizer ") + kTokenizer + " --file /dev/urandom", dir), 1,
      "/dev/urandom");
}

// C_tok_tokenizer_dir, A_dir_tok_isdir, A_dir_tok_fifo.
TEST(HostileTokenizerTest, TokenizerJsonMustBeARegularFile) {
  testing::TempDir dir;
  fs::create_directory(dir.path() + "/tokenizer.json");
  ExpectCleanError(RunEpwa("tokenize --tokenizer " + Quote(dir.path() + "/tokenizer.json") + " --text hi", dir),
                   1, "folder");
  const std::string fifo = dir.path() + "/fifo.json";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  ExpectCleanError(RunEpwa("tokenize --tokenizer " + Quote(fifo) + " --text hi", dir), 1, "FIFO");
}

// C_tok_deep_normalizer_100k: refused at load, naming the file and the limit.
TEST(HostileTokenizerTest, DeepNormalizerIsRefused) {
  testing::TempDir dir;
  Json doc = Json::parse(testing::ReadFile(kTokenizer));
  std::string open, close;
  for (int i = 0; i < 100000; ++i) {
    open += "{\"type\":\"Sequence\",\"normalizers\":[";
    close += "]}";
  }
  doc["normalizer"] = nullptr;
  std::string text = doc.dump();
  const std::string key = "\"normalizer\":null";
  text.replace(text.find(key), key.size(), "\"normalizer\":" + open + "{\"type\":\"NFC\"}" + close);
  const std::string path = dir.path() + "/deep.json";
  Write(path, text);
  ExpectCleanError(RunEpwa("tokenize --tokenizer " + Quote(path) + " --text hi", dir), 1,
                   "deep.json: the normalizer nests Sequence components more than 32 levels deep");
}

// C_tok_re_quadratic_1mb: a clear error within seconds instead of a hang.
TEST(HostileTokenizerTest, QuadraticRegexOnLongInputFails) {
  testing::TempDir dir;
  Json doc = Json::parse(testing::ReadFile(kTokenizer));
  doc["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "a*b|."}}}, {"behavior", "Isolated"},
                          {"invert", false}};
  Write(dir.path() + "/quad.json", doc.dump());
  Write(dir.path() + "/text.txt", std::string(1 << 20, 'a'));
  ExpectCleanError(RunEpwa("tokenize --tokenizer " + Quote(dir.path() + "/quad.json") + " --file " +
                               Quote(dir.path() + "/text.txt"),
                           dir),
                   1, "a*b|.");
}

// C_run_tokdir_postproc_bad_special: refused at load, naming tokenizer.json.
TEST(HostileTokenizerTest, PostProcessorIdOutsideVocabulary) {
  testing::TempDir dir;
  Json doc = Json::parse(testing::ReadFile(kTokenizer));
  doc["post_processor"]["special_tokens"]["<s>"]["ids"] = Json::array({999999});
  Write(dir.path() + "/pp.json", doc.dump());
  ExpectCleanError(RunEpwa("tokenize --tokenizer " + Quote(dir.path() + "/pp.json") + " --text hi", dir), 1,
                   "pp.json: field 'post_processor.special_tokens.<s>.ids[0]' holds the id 999999");
}

}  // namespace
}  // namespace epwa
