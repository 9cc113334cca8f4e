// Hostile-input regressions for the watermark commands (detect, oracle,
// keygen, eval watermark): findings F1, F4, F10, F11, F15, F16 and F17 of
// the hostile-input sweep (../shared/reports/hostile-sweep-2026-12-01.md).
// Every case runs the real binary; each must end in one clear error line (or
// per-input errors in a batch), never a hang, a crash or a silent result.
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "test_util.h"
#include "watermark/oracle.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kModel = "models/tiny-moe";

// JSON Lines output: one object per line.
std::vector<json> JsonLines(const std::string& out) {
  std::vector<json> lines;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(json::parse(line));
  return lines;
}

class HostileWatermark : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    key_ = PrepareWatermarkSuite(*dir_, 23);
    Result run = RunEpwa("run -m " + kModel +
                             " -p 'The history of the computer' -n 40 --seed 5 --ignore-eos "
                             "--watermark gsg --key-file " + key_ + " --json",
                         *dir_);
    ASSERT_EQ(run.exit_code, 0) << run.err;
    ids_ = json::parse(run.out)["ids"].dump();
  }
  static void TearDownTestSuite() { delete dir_; }

  std::string Write(const std::string& name, const std::string& content) {
    const std::string path = scratch_.path() + "/" + name;
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }
  std::string Detect() const { return "detect -m " + kModel + " --key-file " + key_ + " "; }

  // A small oracle for black-box PEPI (vocabulary 64, 4 experts), trained
  // in-process: --logprobs detection needs no model, only this file.
  std::string SmallOracle(double heldout_fraction) {
    std::mt19937 rng(3);
    std::vector<wm::TopLogprobs> x;
    std::vector<int32_t> labels;
    for (int i = 0; i < 400; ++i) {
      const int e = static_cast<int>(rng() % 4);
      x.push_back({{16 * e + static_cast<int32_t>(rng() % 8), 16 * e + 8 + static_cast<int32_t>(rng() % 8)},
                   {-0.2f, -1.5f}});
      labels.push_back(e);
    }
    wm::OracleInfo info;
    info.router_hash = std::string(64, 'a');  // any IRSH: --logprobs needs no model
    info.router_layer = 0;
    info.num_experts = 4;
    info.vocab_size = 64;
    info.top_k = 2;
    wm::OracleTrainOptions opts;
    opts.epochs = 2;
    opts.hidden = 0;
    opts.heldout_fraction = heldout_fraction;
    const std::string path = scratch_.path() + "/oracle" + std::to_string(heldout_fraction) + ".bin";
    wm::ExpertOracle::Train(x, labels, info, opts).Save(path);
    return path;
  }
  // A logprobs file of `n` entries over that vocabulary, each listing
  // `listed` (id, logprob) pairs.
  std::string LogprobsFile(const std::string& name, int n, int listed) {
    json tokens = json::array();
    for (int i = 0; i < n; ++i) {
      std::vector<int32_t> top;
      std::vector<float> lps;
      for (int j = 0; j < listed; ++j) {
        top.push_back((i * 7 + j * 13) % 64);
        lps.push_back(-0.5f - j);
      }
      tokens.push_back({{"id", (i * 5) % 64}, {"top_ids", top}, {"top_logprobs", lps}});
    }
    return Write(name, json{{"format", "epwa-logprobs-v1"}, {"vocab_size", 64}, {"tokens", tokens}}.dump());
  }

  static testing::TempDir* dir_;
  static std::string key_, ids_;
  testing::TempDir scratch_;
};
testing::TempDir* HostileWatermark::dir_ = nullptr;
std::string HostileWatermark::key_, HostileWatermark::ids_;

// F10 (E_detect_jsonl_badline, E_detect_jsonl_badutf8): a malformed line
// used to abort the whole batch before any detection, so the good lines got
// no result, and invalid UTF-8 was reported as a missing "text".
TEST_F(HostileWatermark, EveryJsonlLineGetsItsOwnResult) {
  const std::string jsonl =
      Write("batch.jsonl", "{\"ids\": " + ids_ + "}\n" +          // 1: good
                               "not json {\n" +                  // 2
                               "\n" +                            // 3: blank, skipped
                               "{\"text\": \"caf\xe9 ol\xe9\"}\n" +  // 4: Latin-1, not UTF-8
                               "{\"foo\": 1}\n" +                // 5
                               "{\"ids\": [1, 2, -3]}\n" +        // 6
                               "{\"ids\": " + ids_ + "}\n");     // 7: good
  Result r = RunEpwa(Detect() + "--json --jsonl " + jsonl, scratch_);
  EXPECT_EQ(r.exit_code, 1) << r.err;  // some lines failed
  const std::vector<json> lines = JsonLines(r.out);
  ASSERT_EQ(lines.size(), 6u) << r.out;
  const std::vector<std::string> where = {":1", ":2", ":4", ":5", ":6", ":7"};
  for (size_t i = 0; i < lines.size(); ++i)
    EXPECT_EQ(lines[i]["input"], jsonl + where[i]) << lines[i].dump();
  // The good lines were tested (whether 40 tokens reach z > 4 depends on
  // the random key, so only that they were scored is checked).
  for (size_t i : {0u, 5u}) {
    EXPECT_FALSE(lines[i].contains("error")) << lines[i].dump();
    EXPECT_GT(lines[i].value("scored", 0), 16) << lines[i].dump();
    EXPECT_TRUE(lines[i]["z"].is_number()) << lines[i].dump();
  }
  auto error_of = [&](size_t i) { return lines[i].value("error", std::string()); };
  EXPECT_NE(error_of(1).find(jsonl + ":2 is not valid JSON"), std::string::npos) << error_of(1);
  EXPECT_NE(error_of(2).find(jsonl + ":4 is not valid UTF-8"), std::string::npos) << error_of(2);
  EXPECT_NE(error_of(3).find(jsonl + ":5 must be an object"), std::string::npos) << error_of(3);
  EXPECT_NE(error_of(4).find(jsonl + ":6 must hold non-negative"), std::string::npos) << error_of(4);

  // Text output: the good results on stdout, one error line per bad line.
  Result t = RunEpwa(Detect() + "--jsonl " + jsonl, scratch_);
  EXPECT_EQ(t.exit_code, 1);
  EXPECT_NE(t.out.find(jsonl + ":1:"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find(jsonl + ":7:"), std::string::npos) << t.out;
  EXPECT_NE(t.err.find("epwa: error: " + jsonl + ":4 is not valid UTF-8\n"), std::string::npos) << t.err;

  // A batch of one bad line is one clean error.
  ExpectCleanError(RunEpwa(Detect() + "--jsonl " + Write("one.jsonl", "[1,2]\n"), scratch_), 1,
                   "one.jsonl:1 must be an object");
}

// F10 for --ids with an array of arrays: a bad element gets its own error.
TEST_F(HostileWatermark, EveryIdsBatchElementGetsItsOwnResult) {
  const std::string ids = Write("batch.json", "[" + ids_ + ", [1, \"x\"], 7, " + ids_ + "]");
  Result r = RunEpwa(Detect() + "--json --ids " + ids, scratch_);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  const std::vector<json> lines = JsonLines(r.out);
  ASSERT_EQ(lines.size(), 4u) << r.out;
  EXPECT_GT(lines[0].value("scored", 0), 16) << lines[0].dump();
  EXPECT_NE(lines[1].value("error", "").find(ids + "[1] must hold non-negative"), std::string::npos);
  EXPECT_NE(lines[2].value("error", "").find(ids + "[2] must be a JSON array"), std::string::npos);
  EXPECT_EQ(lines[3]["z"], lines[0]["z"]) << lines[3].dump();
  ExpectCleanError(RunEpwa(Detect() + "--ids " + Write("bad.json", "[1, 2"), scratch_), 1, "not valid JSON");
}

// F16 (E_detect_z_nan, E_detect_z_neginf) and the other numeric flags that
// CLI11's range checks let NaN through: refused at parse time (exit 2).
TEST_F(HostileWatermark, NonFiniteNumbersAreRefused) {
  const std::string ids = Write("ids.json", ids_);
  for (const std::string v : {"nan", "-inf", "inf", "NaN", "1e999"})
    ExpectCleanError(RunEpwa(Detect() + "--ids " + ids + " --z-threshold " + v, scratch_), 2,
                     "--z-threshold: must be a finite number");
  ExpectCleanError(RunEpwa(Detect() + "--ids " + ids + " --min-margin nan", scratch_), 2, "--min-margin");
  ExpectCleanError(RunEpwa(Detect() + "--ids " + ids + " --gamma nan", scratch_), 2, "--gamma");
  ExpectCleanError(RunEpwa("run -m " + kModel + " -p hi --watermark gsg --key-file " + key_ + " --delta inf",
                           scratch_),
                   2, "--delta");
  ExpectCleanError(RunEpwa("oracle train -m " + kModel + " --corpus x --out y --heldout nan", scratch_), 2,
                   "--heldout");
  ExpectCleanError(RunEpwa("eval watermark -m " + kModel + " --z-threshold nan", scratch_), 2, "--z-threshold");
  ExpectCleanError(RunEpwa("eval watermark -m " + kModel + " --detect-min-margin nan", scratch_), 2,
                   "--detect-min-margin");
}

// The evaluation's attack and corpus flags, and `eval report`'s inputs: each
// bad value is one clear error, before any model work.
TEST_F(HostileWatermark, EvaluationFlagsAndReportInputsAreChecked) {
  const std::string eval = "eval watermark -m " + kModel + " --generations 1 --null-generations 0 --paragraphs 1 ";
  for (const std::string flag : {"--deletion", "--insertion", "--synonym", "--copy-paste", "--substitution"}) {
    ExpectCleanError(RunEpwa(eval + flag + " 0.1,abc", scratch_), 1, flag + " takes fractions between 0 and 1");
    ExpectCleanError(RunEpwa(eval + flag + " 1.5", scratch_), 1, flag + " takes fractions between 0 and 1");
  }
  ExpectCleanError(RunEpwa(eval + "--steal 0", scratch_), 1, "--steal takes positive counts");
  ExpectCleanError(RunEpwa(eval + "--steal 10x", scratch_), 1, "--steal takes positive counts");
  ExpectCleanError(RunEpwa(eval + "--batch-texts 0", scratch_), 2, "--batch-texts");
  ExpectCleanError(RunEpwa(eval + "--batch-texts 5000", scratch_), 2, "--batch-texts");
  ExpectCleanError(RunEpwa(eval + "--synonym 0.5 --wordnet " + scratch_.path() + "/none", scratch_), 1,
                   "apt-get install wordnet-base");
  const std::string jsonl = Write("human.jsonl", "{\"text\": \"fine\"}\n{\"txt\": 1}\n");
  ExpectCleanError(RunEpwa(eval + "--human " + jsonl, scratch_), 1, "line 2: expected a JSON object with a \"text\"");
  const std::string empty = Write("empty.jsonl", "\n\n");
  ExpectCleanError(RunEpwa(eval + "--human " + empty, scratch_), 1, "holds no texts");
  // eval report: not JSON, JSON without the fields, a folder that cannot be made.
  const std::string bad = Write("bad.json", "{\"schemes\": [");
  ExpectCleanError(RunEpwa("eval report " + bad + " --out " + scratch_.path() + "/r", scratch_), 1, "is not valid JSON");
  const std::string nofields = Write("nofields.json", "{\"z_threshold\": 4}");
  ExpectCleanError(RunEpwa("eval report " + nofields + " --out " + scratch_.path() + "/r", scratch_), 1, "schemes");
  EXPECT_FALSE(std::filesystem::exists(scratch_.path() + "/r/report.md"));
  const std::string ok = Write("ok.json", "{\"z_threshold\": 4, \"schemes\": [{\"scheme\": \"gsg\", "
                                          "\"full_with_prompt\": {\"n\": 2, \"detected\": 1, \"z\": [1, 5]}}]}");
  ExpectCleanError(RunEpwa("eval report " + ok + " --out " + ok + "/sub", scratch_), 1, "cannot create the report folder");
}

// F16 (E_lp_top_empty): a logprobs file whose top lists are all empty gives
// the oracle nothing to predict from; it was scored anyway.
TEST_F(HostileWatermark, LogprobsWithoutAnyTopEntriesAreRefused) {
  const std::string oracle = SmallOracle(0.1);
  const std::string pepi = "detect --method pepi --key-file " + key_ + " --oracle " + oracle + " --logprobs ";
  ExpectCleanError(RunEpwa(pepi + LogprobsFile("empty.json", 40, 0), scratch_), 1,
                   "lists no log-probabilities at all");
  // Shorter lists than the oracle's k are scored, with a note saying so.
  Result r = RunEpwa(pepi + LogprobsFile("short.json", 40, 1), scratch_);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("lists at most 1 log-probabilities per token, the oracle was trained on 2"),
            std::string::npos)
      << r.err;
  Result j = RunEpwa(pepi + LogprobsFile("full.json", 40, 2) + " --json", scratch_);
  ASSERT_EQ(j.exit_code, 0) << j.err;
  const json out = json::parse(j.out);
  EXPECT_EQ(out["tokens"], 40);
  EXPECT_EQ(out["top_k_listed"]["max"], 2);
  EXPECT_GT(out["oracle"]["heldout_accuracy"].get<double>(), 0.0);
}

// F4, F11, F17: FIFOs, folders and devices as input files are refused at
// once with what they are (they hung, or read /dev/zero until memory ran out).
TEST_F(HostileWatermark, FifosFoldersAndDevicesAreRefused) {
  const std::string fifo = scratch_.path() + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  const std::string ids = Write("ids.json", ids_);
  const std::string oracle = SmallOracle(0.1);
  const std::string lp = LogprobsFile("lp.json", 20, 2);
  ExpectCleanError(RunEpwa("detect -m " + kModel + " --key-file " + fifo + " --ids " + ids, scratch_), 1,
                   "the key file '" + fifo + "' is a FIFO");
  ExpectCleanError(RunEpwa(Detect() + "--ids " + fifo, scratch_), 1, "is a FIFO");
  ExpectCleanError(RunEpwa(Detect() + "--ids /dev/zero", scratch_), 1,
                   "the --ids file '/dev/zero' is a character device");
  ExpectCleanError(RunEpwa(Detect() + "--jsonl " + fifo, scratch_), 1, "is a FIFO");
  ExpectCleanError(RunEpwa(Detect() + "--file /dev/zero", scratch_), 1, "character device");
  ExpectCleanError(RunEpwa(Detect() + "--file " + scratch_.path(), scratch_), 1, "is a folder");
  const std::string pepi = "detect --method pepi --key-file " + key_;
  ExpectCleanError(RunEpwa(pepi + " --oracle " + fifo + " --logprobs " + lp, scratch_), 1,
                   "the expert oracle file '" + fifo + "' is a FIFO");
  ExpectCleanError(RunEpwa(pepi + " --oracle " + oracle + " --logprobs " + fifo, scratch_), 1,
                   "the logprobs file '" + fifo + "' is a FIFO");
  ExpectCleanError(RunEpwa(pepi + " --oracle " + oracle + " --logprobs " + scratch_.path(), scratch_), 1,
                   "is a folder");
  ExpectCleanError(RunEpwa("oracle train -m " + kModel + " --corpus " + fifo + " --out o.bin", scratch_), 1,
                   "is a FIFO");
}

// F15 (E_oracle_train_corpus_tiny): a 5-word corpus trained an oracle with a
// held-out part of 0 positions and reported "held-out 0.0%".
TEST_F(HostileWatermark, OracleTrainRefusesACorpusTooSmallToHoldAnythingOut) {
  const std::string out = scratch_.path() + "/tiny.oracle";
  Result r = RunEpwa("oracle train -m " + kModel + " --corpus " + Write("tiny.txt", "one two three four five") +
                         " --out " + out,
                     scratch_);
  ExpectCleanError(r, 1, "positions to learn from, too few to also hold out --heldout 0.1");
  EXPECT_NE(r.err.find("it needs at least 10"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
}

// F15, the reading side: an oracle trained without a held-out part (the
// library allows it) is reported as "not measured", never as 0%.
TEST_F(HostileWatermark, AnUnmeasuredOracleIsNotReportedAsZeroPercent) {
  const std::string oracle = SmallOracle(0.0);
  const std::string pepi = "detect --method pepi --key-file " + key_ + " --oracle " + oracle + " --logprobs " +
                           LogprobsFile("lp.json", 20, 2);
  Result r = RunEpwa(pepi, scratch_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("held-out accuracy not measured"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("accuracy 0.0%"), std::string::npos) << r.out;
  Result j = RunEpwa(pepi + " --json", scratch_);
  ASSERT_EQ(j.exit_code, 0) << j.err;
  EXPECT_TRUE(json::parse(j.out)["oracle"]["heldout_accuracy"].is_null()) << j.out;
}

// F1 (E_keygen_devnull_ns) at the command line: --force replaces a key file
// only; the library test covers device nodes (made with mknod).
TEST_F(HostileWatermark, KeygenForceReplacesOnlyARegularFile) {
  const std::string fifo = scratch_.path() + "/fifo.key";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  ExpectCleanError(RunEpwa("keygen --out " + fifo + " --force", scratch_), 1,
                   "exists and is a FIFO (named pipe), not a regular file");
  EXPECT_TRUE(fs::is_fifo(fifo));
  const std::string link = scratch_.path() + "/link.key";
  fs::create_symlink(key_, link);
  ExpectCleanError(RunEpwa("keygen --out " + link + " --force", scratch_), 1, "is a symbolic link");
  EXPECT_TRUE(fs::is_symlink(link));
  const std::string real = scratch_.path() + "/real.key";
  ASSERT_EQ(RunEpwa("keygen --out " + real, scratch_).exit_code, 0);
  const std::string before = testing::ReadFile(real);
  Result again = RunEpwa("keygen --out " + real + " --force", scratch_);
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(testing::ReadFile(real), before);
  // Only what the test made: no temporary key file is left behind.
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(scratch_.path()))
    files += e.path().filename().string().find(".tmp.") == std::string::npos ? 0 : 1;
  EXPECT_EQ(files, 0u);
}

}  // namespace
}  // namespace epwa
