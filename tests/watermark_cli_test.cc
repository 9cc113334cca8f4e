// The watermark from the command line on the bundled model: keygen, a
// watermarked and an unwatermarked run, detection of both (ids, text, with
// and without the prompt, cspv), black-box PEPI from a logprobs file, the key
// never appearing in any output, and every bad-input case as one clear error.
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "test_util.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kModel = "models/tiny-moe";
const std::string kPrompt = "The history of the computer";

class WatermarkCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    key_ = PrepareWatermarkSuite(*dir_, 11);
    // Marked with the default scheme (epw2-et), which detect assumes when
    // --watermark is not given; marked_v1_ with EPW-A v1's gsg.
    marked_ = RunEpwa("run -m " + kModel + " -p " + Quote(kPrompt) +
                          " -n 160 --seed 5 --ignore-eos --watermark epw2-et --key-file " + key_ + " --json",
                      *dir_);
    marked_v1_ = RunEpwa("run -m " + kModel + " -p " + Quote(kPrompt) +
                             " -n 160 --seed 5 --ignore-eos --watermark gsg --key-file " + key_ + " --json",
                         *dir_);
    plain_ = RunEpwa("run -m " + kModel + " -p " + Quote(kPrompt) + " -n 160 --seed 5 --ignore-eos --json",
                     *dir_);
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string WriteIds(const Result& run, const std::string& name) {
    const std::string path = dir_->path() + "/" + name;
    std::ofstream(path) << json::parse(run.out)["ids"].dump();
    return path;
  }
  static json Detect(const std::string& args) {
    Result r = RunEpwa("detect -m " + kModel + " --key-file " + key_ + " --json " + args, *dir_);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return json::parse(r.out);
  }
  static testing::TempDir* dir_;
  static std::string key_;
  static Result marked_, marked_v1_, plain_;
  testing::TempDir scratch_;
};
testing::TempDir* WatermarkCli::dir_ = nullptr;
std::string WatermarkCli::key_;
Result WatermarkCli::marked_, WatermarkCli::marked_v1_, WatermarkCli::plain_;

TEST_F(WatermarkCli, KeygenMakesAPrivate32ByteKeyAndNeverOverwrites) {
  struct stat st {};
  ASSERT_EQ(stat(key_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(st.st_size, 32);
  ExpectCleanError(RunEpwa("keygen --out " + key_, scratch_), 1, "already exists");
}

TEST_F(WatermarkCli, RunReportsTheWatermarkAndChangesTheText) {
  ASSERT_EQ(marked_.exit_code, 0) << marked_.err;
  ASSERT_EQ(plain_.exit_code, 0) << plain_.err;
  const json m = json::parse(marked_.out), p = json::parse(plain_.out);
  EXPECT_EQ(m["watermark"]["scheme"], "epw2-et");
  EXPECT_EQ(m["watermark"]["version"], "EPW-A v2");
  // v2 keys the first MoE layer by default, v1 the last.
  EXPECT_EQ(m["watermark"]["router_layer"], 0);
  EXPECT_EQ(json::parse(marked_v1_.out)["watermark"]["router_layer"], 3);
  EXPECT_EQ(m["watermark"]["steps"], 160);
  EXPECT_EQ(m["watermark"]["router_hash"], m["stats"]["load"]["router_hash"]);
  EXPECT_TRUE(p["watermark"].is_null());
  EXPECT_EQ(m["ids"].size(), 160u);
  EXPECT_NE(m["ids"], p["ids"]) << "the watermark changed nothing";
}

TEST_F(WatermarkCli, KeyNeverAppearsInOutput) {
  const std::string raw = testing::ReadFile(key_);
  ASSERT_EQ(raw.size(), 32u);
  static const char* d = "0123456789abcdef";
  std::string hex;
  for (unsigned char c : raw) hex += {d[c >> 4], d[c & 15]};
  for (const Result* r : {&marked_, &plain_}) {
    for (const std::string* s : {&r->out, &r->err}) {
      EXPECT_EQ(s->find(hex), std::string::npos);
      EXPECT_EQ(s->find(hex.substr(0, 16)), std::string::npos);
      EXPECT_EQ(s->find(raw.substr(0, 8)), std::string::npos);
    }
  }
}

TEST_F(WatermarkCli, DetectsTheWatermarkedIdsAndNotThePlainOnes) {
  const std::string marked_ids = WriteIds(marked_, "marked.json"), plain_ids = WriteIds(plain_, "plain.json");
  const json with = Detect("--ids " + marked_ids + " --prompt " + Quote(kPrompt));
  EXPECT_TRUE(with["detected"]) << with.dump();
  EXPECT_TRUE(with["prompt_given"]);
  EXPECT_GT(with["z"].get<double>(), 8);
  EXPECT_LT(with["log10_p"].get<double>(), -10);
  EXPECT_EQ(with["scored"].get<int64_t>() + with["skipped_repeats"].get<int64_t>(), 160);
  const json without = Detect("--ids " + marked_ids);
  EXPECT_FALSE(without["prompt_given"]);
  EXPECT_TRUE(without["detected"]) << without.dump();
  const json plain = Detect("--ids " + plain_ids + " --prompt " + Quote(kPrompt));
  EXPECT_FALSE(plain["detected"]) << plain.dump();
  EXPECT_LT(plain["z"].get<double>(), 4);
  // Without dedup every token is scored.
  EXPECT_EQ(Detect("--ids " + marked_ids + " --no-dedup")["skipped_repeats"], 0);
  // CSPV reports its strata.
  const json c = Detect("--ids " + marked_ids + " --method cspv --sample 30");
  EXPECT_EQ(c["scored"], 30);
  EXPECT_EQ(c["strata"]["low_confidence"]["scored"], 10);
  EXPECT_TRUE(c["detected"]) << c.dump();
  // Another key finds nothing.
  const std::string other = scratch_.path() + "/other.key";
  ASSERT_EQ(RunEpwa("keygen --out " + other, scratch_).exit_code, 0);
  Result r = RunEpwa("detect -m " + kModel + " --key-file " + other + " --json --ids " + marked_ids, scratch_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(json::parse(r.out)["detected"]);
}

// The default scheme is epw2-et; text marked with v1 is found once its
// scheme is named, and the default test does not mistake it for v2 text.
TEST_F(WatermarkCli, DefaultSchemeIsEpw2EtAndV1TextNeedsItsName) {
  const json v2 = Detect("--ids " + WriteIds(marked_, "v2.json"));
  EXPECT_EQ(v2["scheme"], "epw2-et") << v2.dump();
  EXPECT_EQ(v2["version"], "EPW-A v2") << v2.dump();
  EXPECT_TRUE(v2["detected"]) << v2.dump();
  const std::string v1_ids = WriteIds(marked_v1_, "v1.json");
  const json as_default = Detect("--ids " + v1_ids);
  EXPECT_EQ(as_default["scheme"], "epw2-et");
  EXPECT_FALSE(as_default["detected"]) << as_default.dump();
  const json named = Detect("--ids " + v1_ids + " --watermark gsg");
  EXPECT_EQ(named["scheme"], "gsg");
  EXPECT_TRUE(named["detected"]) << named.dump();
  EXPECT_GT(named["z"].get<double>(), 8);
}

// detect --jsonl scores its texts in shared forward passes; every result is
// the same as with one text per pass (--batch-texts 1), and the same as
// detecting that text alone.
TEST_F(WatermarkCli, BatchedDetectionEqualsOneTextAtATime) {
  const std::string jsonl = scratch_.path() + "/batch.jsonl";
  {
    std::ofstream out(jsonl);
    const json m = json::parse(marked_.out), v1 = json::parse(marked_v1_.out), p = json::parse(plain_.out);
    for (int i = 0; i < 3; ++i) {
      out << json{{"ids", m["ids"]}, {"prompt", kPrompt}}.dump() << "\n";
      out << json{{"ids", v1["ids"]}}.dump() << "\n";
      out << json{{"text", p["text"]}}.dump() << "\n";
      // Shorter texts, so that experts see different row counts per pass.
      out << json{{"ids", json(std::vector<int32_t>(m["ids"].begin(), m["ids"].begin() + 20 + 30 * i))}}.dump() << "\n";
    }
  }
  auto results = [&](const std::string& extra) {
    Result r = RunEpwa("detect -m " + kModel + " --key-file " + key_ + " --json --jsonl " + jsonl + extra, scratch_);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("texts/s"), std::string::npos) << r.err;
    std::vector<json> out;
    std::istringstream lines(r.out);
    for (std::string line; std::getline(lines, line);) {
      json j = json::parse(line);
      j.erase("detect_ms");
      out.push_back(j);
    }
    return out;
  };
  const std::vector<json> batched = results(""), single = results(" --batch-texts 1");
  ASSERT_EQ(batched.size(), 12u);
  EXPECT_EQ(batched, single);
  EXPECT_TRUE(batched[0]["detected"]);
  const json alone = Detect("--ids " + WriteIds(marked_, "alone.json") + " --prompt " + Quote(kPrompt));
  EXPECT_EQ(batched[0]["z"], alone["z"]);
  EXPECT_EQ(batched[0]["green"], alone["green"]);
}

TEST_F(WatermarkCli, DetectsFromTextTokenizedLikeTheModel) {
  const json m = json::parse(marked_.out);
  const json j = Detect("--text " + Quote(m["text"].get<std::string>()) + " --prompt " + Quote(kPrompt));
  EXPECT_TRUE(j["detected"]) << j.dump();
  // Well above the threshold of 4: re-tokenised text keeps most of the
  // evidence (160 tokens at gamma 0.25, delta 2 give z of about 7 to 10).
  EXPECT_GT(j["z"].get<double>(), 6);
}

TEST_F(WatermarkCli, KeyFromEnvironment) {
  const std::string ids = WriteIds(marked_, "env.json");
  Result r = RunEpwa("detect -m " + kModel + " --json --ids " + ids, scratch_);
  ExpectCleanError(r, 1, "EPWA_KEY_FILE");
  setenv("EPWA_KEY_FILE", key_.c_str(), 1);
  r = RunEpwa("detect -m " + kModel + " --json --ids " + ids, scratch_);
  unsetenv("EPWA_KEY_FILE");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(json::parse(r.out)["detected"]);
}

TEST_F(WatermarkCli, PepiFromALogprobsFileNeedsNoModel) {
  const std::string oracle = scratch_.path() + "/oracle.bin";
  Result t = RunEpwa("oracle train -m " + kModel +
                         " --corpus data/heldout/jargon.txt --max-tokens 20000 --out " + oracle + " --json",
                     scratch_);
  ASSERT_EQ(t.exit_code, 0) << t.err;
  const json tj = json::parse(t.out);
  EXPECT_GT(tj["heldout_accuracy"].get<double>(), 2.0 / 8) << tj.dump();
  Result run = RunEpwa("run -m " + kModel + " -p " + Quote(kPrompt) +
                           " -n 200 --seed 9 --ignore-eos --watermark gsg --key-file " + key_ +
                           " --json --logprobs 20",
                       scratch_);
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const std::string lp = scratch_.path() + "/api.json";
  std::ofstream(lp) << run.out;
  // A model folder that does not exist proves no weights are read.
  Result d = RunEpwa("detect -m /nonexistent --method pepi --oracle " + oracle + " --key-file " + key_ +
                         " --logprobs " + lp + " --json",
                     scratch_);
  ASSERT_EQ(d.exit_code, 0) << d.err;
  const json dj = json::parse(d.out);
  EXPECT_EQ(dj["source"], "logprobs");
  EXPECT_EQ(dj["tokens"], 200);
  EXPECT_NEAR(dj["oracle"]["heldout_accuracy"].get<double>(), tj["heldout_accuracy"].get<double>(), 1e-12);
  EXPECT_GT(dj["z"].get<double>(), 2) << dj.dump();
}

TEST_F(WatermarkCli, BadInputIsOneClearError) {
  const std::string ids = WriteIds(marked_, "bad.json");
  const std::string base = "detect -m " + kModel + " --ids " + ids + " --key-file ";
  ExpectCleanError(RunEpwa(base + "/nonexistent.key", scratch_), 1, "cannot read the key file");
  const std::string short_key = scratch_.path() + "/short.key";
  std::ofstream(short_key) << "0123456789";
  ExpectCleanError(RunEpwa(base + short_key, scratch_), 1, "exactly 32 bytes");
  ExpectCleanError(RunEpwa("detect -m /nonexistent/model --key-file " + key_ + " --ids " + ids, scratch_), 1,
                   "/nonexistent/model");
  const std::string foreign = scratch_.path() + "/foreign.json";
  std::ofstream(foreign) << "[15496, 11, 50256, 995]";  // GPT-2 ids
  ExpectCleanError(RunEpwa("detect -m " + kModel + " --key-file " + key_ + " --ids " + foreign, scratch_), 1,
                   "another tokenizer");
  ExpectCleanError(RunEpwa("detect -m " + kModel + " --key-file " + key_ + " --text ''", scratch_), 1,
                   "text to test is empty");
  ExpectCleanError(RunEpwa("detect -m " + kModel + " --key-file " + key_ + " --text 'Hello there'", scratch_), 1,
                   "detection needs at least 16");
  ExpectCleanError(RunEpwa("detect -m " + kModel + " --key-file " + key_ + " --ids " + ids + " --method pepi",
                           scratch_),
                   1, "--oracle");
  ExpectCleanError(RunEpwa("run -m " + kModel + " -p hi --watermark gsg --key-file " + short_key, scratch_), 1,
                   "exactly 32 bytes");
  ExpectCleanError(RunEpwa("run -m " + kModel + " -p hi --watermark xyz --key-file " + key_, scratch_), 1,
                   "use gsg, ewp, kgw, epw2-et, epw2-minhash or epw2-votes");
  ExpectCleanError(RunEpwa("run -m " + kModel + " -p hi --key-file " + key_, scratch_), 1,
                   "only applies with --watermark");
  ExpectCleanError(RunEpwa("run -m " + kModel + " -p hi --watermark gsg --router-layer 9 --key-file " + key_,
                           scratch_),
                   1, "outside the model's 4 MoE layers");
  ExpectCleanError(RunEpwa("run -m " + kModel + " -p hi --watermark gsg --gamma 1.5 --key-file " + key_,
                           scratch_),
                   1, "--gamma");
}

TEST_F(WatermarkCli, DenseModelsGetKgwOnly) {
  const std::string dense = testing::MakeModel(scratch_, "fixture-llama");
  ExpectCleanError(RunEpwa("run -m " + dense + " -p hi --watermark gsg --key-file " + key_, scratch_), 1,
                   "use --watermark kgw");
  Result r = RunEpwa("run -m " + dense + " -p hi -n 4 --watermark kgw --key-file " + key_ + " --json", scratch_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["watermark"]["scheme"], "kgw");
}

}  // namespace
}  // namespace epwa
