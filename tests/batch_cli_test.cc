// Continuous batching from the command line: `run --prompts-file` with
// --parallel gives every prompt what a run of that prompt alone gives (its
// own sampler, watermark processor and log-probabilities), `plan` shows the
// sequences, and `bench --parallel` reports its table.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli_util.h"

namespace epwa {
namespace {

using nlohmann::json;

const std::vector<std::string> kPrompts = {
    "Once upon a time",
    "The clock in the square",
    "Python is a programming language that lets you",
    "To install a package, run",
    "She opened the door and saw",
};

class BatchCli : public ::testing::Test {
 protected:
  void SetUp() override {
    key_ = PrepareWatermarkSuite(dir_, 3);
    prompts_ = dir_.path() + "/prompts.txt";
    std::ofstream out(prompts_);
    // A blank line is skipped; the line numbers in messages count it.
    for (size_t i = 0; i < kPrompts.size(); ++i) out << kPrompts[i] << (i == 1 ? "\n\n" : "\n");
  }
  std::vector<json> Lines(const std::string& text) {
    std::vector<json> out;
    std::stringstream ss(text);
    for (std::string line; std::getline(ss, line);) out.push_back(json::parse(line));
    return out;
  }
  testing::TempDir dir_;
  std::string key_, prompts_;
};

TEST_F(BatchCli, EachPromptGetsWhatItsRunAloneGets) {
  const std::string flags = " -m models/tiny-moe -n 20 --seed 5 -t 2 --json";
  for (const std::string wm : {"", " --watermark gsg --key-file ", " --watermark ewp --key-file "}) {
    const std::string wm_flags = wm.empty() ? "" : wm + key_;
    Result batched = RunEpwa("run --prompts-file " + prompts_ + " --parallel 3" + flags + wm_flags +
                                 (wm.empty() ? " --logprobs 3" : ""),
                             dir_);
    ASSERT_EQ(batched.exit_code, 0) << batched.err;
    const std::vector<json> lines = Lines(batched.out);
    ASSERT_EQ(lines.size(), kPrompts.size());
    for (size_t i = 0; i < kPrompts.size(); ++i) {
      const json& b = lines[i];
      EXPECT_EQ(b["index"], i);
      EXPECT_EQ(b["line"], i < 2 ? i + 1 : i + 2);
      Result alone = RunEpwa("run -p " + Quote(kPrompts[i]) + flags + wm_flags +
                                 (wm.empty() ? " --logprobs 3" : ""),
                             dir_);
      ASSERT_EQ(alone.exit_code, 0) << alone.err;
      const json a = json::parse(alone.out);
      EXPECT_EQ(b["prompt_ids"], a["prompt_ids"]) << kPrompts[i];
      EXPECT_EQ(b["ids"], a["ids"]) << kPrompts[i] << wm;
      EXPECT_EQ(b["text"], a["text"]) << kPrompts[i] << wm;
      EXPECT_EQ(b["stats"]["stop_reason"], a["stats"]["stop_reason"]);
      if (wm.empty()) {
        EXPECT_TRUE(b["watermark"].is_null());
        ASSERT_EQ(b["logprobs"]["tokens"].size(), a["logprobs"]["tokens"].size());
        EXPECT_EQ(b["logprobs"]["tokens"][0]["id"], a["logprobs"]["tokens"][0]["id"]);
      } else {
        // Its own processor: its own steps and seeding experts, the same as alone.
        EXPECT_EQ(b["watermark"]["steps"], b["ids"].size());
        EXPECT_EQ(b["watermark"]["experts_used"], a["watermark"]["experts_used"]) << kPrompts[i];
        EXPECT_EQ(b["watermark"]["router_hash"], a["watermark"]["router_hash"]);
      }
    }
  }
}

TEST_F(BatchCli, TextOutputAndMessages) {
  Result r = RunEpwa("run -m models/tiny-moe --prompts-file " + prompts_ +
                         " --parallel 2 -n 6 --temp 0 -t 2",
                     dir_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("=== 1 of 5 (line 1, 6 tokens, stop: length)\nOnce upon a time"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("=== 3 of 5 (line 4,"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("batch: 5 sequences, --parallel 2"), std::string::npos) << r.err;
  // An empty file, a prompt too long for the context, and too many sequences
  // for the memory given: one-line errors.
  const std::string empty = dir_.path() + "/empty.txt";
  std::ofstream(empty) << "\n  \n";
  ExpectCleanError(RunEpwa("run -m models/tiny-moe --prompts-file " + empty, dir_), 1, "has no prompt");
  const std::string long_file = dir_.path() + "/long.txt";
  {
    std::ofstream out(long_file);
    out << "short one\n";
    for (int i = 0; i < 400; ++i) out << "many words here ";
    out << "\n";
  }
  Result too_long = RunEpwa("run -m models/tiny-moe --ctx 128 --prompts-file " + long_file, dir_);
  ExpectCleanError(too_long, 1, "line 2 of the --prompts-file");
  // 1G rather than less: the plan counts the process's own memory, which an
  // ASan build's shadow raises by a third of a GiB; below that, no count of
  // sequences fits there and the message (rightly) suggests none.
  ExpectCleanError(RunEpwa("run -m models/tiny-moe --prompts-file " + prompts_ +
                               " --parallel 4096 --ctx 512 --mem-budget 1G",
                           dir_),
                   1, "--parallel");
  ExpectCleanError(RunEpwa("run -m models/tiny-moe -p hi --prompts-file " + prompts_, dir_), 2, "excludes");
}

TEST_F(BatchCli, PlanShowsTheSequences) {
  Result one = RunEpwa("plan -m models/tiny-moe --ctx 256 --json", dir_);
  Result four = RunEpwa("plan -m models/tiny-moe --ctx 256 --parallel 4 --batch-tokens 64 --json", dir_);
  ASSERT_EQ(one.exit_code, 0) << one.err;
  ASSERT_EQ(four.exit_code, 0) << four.err;
  const json a = json::parse(one.out), b = json::parse(four.out);
  EXPECT_EQ(b["parallel"], 4);
  EXPECT_EQ(b["batch_tokens"], 64);
  EXPECT_EQ(b["levels"][0]["kv_cache_bytes"].get<uint64_t>(), 4 * a["levels"][0]["kv_cache_bytes"].get<uint64_t>());
  Result text = RunEpwa("plan -m models/tiny-moe --ctx 256 --parallel 4", dir_);
  EXPECT_NE(text.out.find("4 sequences of 256 tokens"), std::string::npos) << text.out;
  Result info = RunEpwa("info -m models/tiny-moe --ctx 256 --parallel 3 --json", dir_);
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(json::parse(info.out)["load"]["plan_parallel"], 3);
}

TEST_F(BatchCli, BenchParallelReportsEveryCount) {
  Result r = RunEpwa("bench -m models/tiny-moe --parallel 1,3 --divergence --prompt-tokens 16 "
                     "--gen-tokens 8 --repeats 1 -t 2 --json",
                     dir_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out);
  ASSERT_EQ(j["rows"].size(), 2u);
  EXPECT_EQ(j["rows"][0]["ratio_vs_single"], 1.0);
  const json& three = j["rows"][1];
  EXPECT_EQ(three["parallel"], 3);
  EXPECT_GT(three["decode_tokens_per_s"].get<double>(), 0);
  EXPECT_GE(three["ttft_p99_ms"].get<double>(), three["ttft_p50_ms"].get<double>());
  EXPECT_GE(three["token_p99_ms"].get<double>(), three["token_p50_ms"].get<double>());
  EXPECT_EQ(three["divergence"]["sequences_with_other_tokens"], 0);
  EXPECT_LE(three["divergence"]["max_rel_logit_diff"].get<double>(), 1e-4);
  ExpectCleanError(RunEpwa("bench -m models/tiny-moe --parallel 1,x", dir_), 1, "--parallel");
  ExpectCleanError(RunEpwa("bench -m models/tiny-moe --divergence", dir_), 1, "go with --parallel");
}

}  // namespace
}  // namespace epwa
