// The epwa command end to end: the golden run on the bundled default model,
// and every bad-input case (one clear line on stderr, a non-zero exit code,
// never a crash).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "base/meminfo.h"
#include "io/safetensors.h"
#include "cli_util.h"
#include "test_util.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using CliTest = SynthModelCliTest;

// The golden end-to-end test: each trained bundled model, a prompt and a
// seed give exactly the committed token ids (tests/data/golden/NAME.json,
// made by tools/make_golden.sh).
void ExpectGoldenRun(const std::string& name, const testing::TempDir& dir, const std::string& extra = "") {
  const json golden = json::parse(testing::ReadFile("tests/data/golden/" + name + ".json"));
  Result r = RunEpwa("run -m models/" + name + " -p " + Quote(golden["prompt"].get<std::string>()) + " -n " +
                         std::to_string(golden["n"].get<int>()) + " --seed " +
                         std::to_string(golden["seed"].get<int>()) + " --json" + extra,
                     dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json got = json::parse(r.out);
  EXPECT_EQ(got["prompt_ids"], golden["prompt_ids"]) << name;
  EXPECT_EQ(got["ids"], golden["ids"]) << name;
  EXPECT_EQ(got["text"], golden["text"]) << name;
  EXPECT_GT(got["stats"]["decode_tokens_per_s"].get<double>(), 0.0);
}

TEST_F(CliTest, GoldenRunMatchesCommittedTokens) { ExpectGoldenRun("tiny-moe", scratch_); }

TEST_F(CliTest, GoldenRunOfTheManyExpertModel) {
  if (!fs::exists("tests/data/golden/tiny-qwen3-moe.json"))
    GTEST_SKIP() << "models/tiny-qwen3-moe has no golden file yet (tools/make_golden.sh)";
  ExpectGoldenRun("tiny-qwen3-moe", scratch_);
}

// --no-mmap and EPW_NO_MMAP copy the weights out of the mapping (the load
// line says so) and change no token; a misspelt EPW_NO_MMAP is refused.
TEST_F(CliTest, NoMmapCopiesTheWeightsAndKeepsTheGoldenTokens) {
  ExpectGoldenRun("tiny-moe", scratch_, " --no-mmap");
  Result flag = RunEpwa("run -m models/tiny-moe -p hi -n 2 --no-mmap", scratch_);
  ASSERT_EQ(flag.exit_code, 0) << flag.err;
  EXPECT_NE(flag.err.find("copied out of the mapping"), std::string::npos) << flag.err;
  Result plain = RunEpwa("run -m models/tiny-moe -p hi -n 2", scratch_);
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_EQ(plain.err.find("copied out of the mapping"), std::string::npos) << plain.err;

  setenv("EPW_NO_MMAP", "1", 1);
  Result env = RunEpwa("run -m models/tiny-moe -p hi -n 2", scratch_);
  Result plan = RunEpwa("plan -m models/tiny-moe --json", scratch_);
  setenv("EPW_NO_MMAP", "perhaps", 1);
  Result bad = RunEpwa("run -m models/tiny-moe -p hi -n 2", scratch_);
  unsetenv("EPW_NO_MMAP");
  ASSERT_EQ(env.exit_code, 0) << env.err;
  EXPECT_NE(env.err.find("copied out of the mapping"), std::string::npos) << env.err;
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  EXPECT_EQ(json::parse(plan.out)["copy_weights"], true);
  ExpectCleanError(bad, 1, "EPW_NO_MMAP=\"perhaps\" is not a boolean");
}

// EPWA_ISA chooses a slower instruction-set path: the bench names it, and at
// int4 on AVX2 the prefill is set against the int8 dot peak (the AVX2
// integer prefill). An unknown name is a clean error.
TEST_F(CliTest, EpwaIsaSelectsThePath) {
  setenv("EPWA_ISA", "avx2", 1);
  Result avx2 = RunEpwa("bench -m models/tiny-moe --quant int4 --no-cache --prompt-tokens 16 --gen-tokens 2 --repeats 1",
                        scratch_);
  // The binary decides whether this CPU has the AVX2 path (AVX2, FMA and
  // F16C); asking it keeps the test free of compiler-specific CPU checks
  // (clang 14 has no __builtin_cpu_supports("f16c")).
  if (avx2.exit_code != 0 && avx2.err.find("not supported by this CPU") != std::string::npos) {
    unsetenv("EPWA_ISA");
    GTEST_SKIP() << "this CPU has no AVX2 path";
  }
  setenv("EPWA_ISA", "avx9", 1);
  Result bad = RunEpwa("run -m models/tiny-moe -p hi -n 2", scratch_);
  unsetenv("EPWA_ISA");
  ASSERT_EQ(avx2.exit_code, 0) << avx2.err;
  EXPECT_NE(avx2.out.find(" threads, avx2;"), std::string::npos) << avx2.out;
  EXPECT_NE(avx2.out.find("of the int8 dot peak"), std::string::npos) << avx2.out;
  ExpectCleanError(bad, 1, "EPWA_ISA must be avx512, avx2 or scalar, got 'avx9'");
}

// The bench reports the last-level cache it read from sysfs, and says when a
// decode step's bytes are few enough for part of them to come from it:
// tiny-moe's few MB always are, wherever sysfs lists a cache.
TEST_F(CliTest, BenchSaysWhenADecodeStepFitsTheLastLevelCache) {
  const char* args = "bench -m models/tiny-moe --quant int8 --no-cache --prompt-tokens 8 --gen-tokens 2 --repeats 1";
  Result text = RunEpwa(args, scratch_);
  Result as_json = RunEpwa(std::string(args) + " --json", scratch_);
  ASSERT_EQ(text.exit_code, 0) << text.err;
  ASSERT_EQ(as_json.exit_code, 0) << as_json.err;
  const uint64_t llc = ProbeLastLevelCacheBytes();
  const json j = json::parse(as_json.out);
  EXPECT_EQ(j["last_level_cache_bytes"].get<uint64_t>(), llc);
  EXPECT_EQ(j["decode_step_within_twice_last_level_cache"].get<bool>(), llc > 0);
  const bool noted = text.out.find("last-level cache: part of them may come from it") != std::string::npos;
  EXPECT_EQ(noted, llc > 0) << text.out;
  if (llc > 0) {
    char mb[64];
    std::snprintf(mb, sizeof mb, "twice the %.0f MB last-level cache", static_cast<double>(llc) / 1e6);
    EXPECT_NE(text.out.find(mb), std::string::npos) << text.out;
  }
}

// --kv-cache and EPW_KV_CACHE: the load line names a 16-bit cache, the plan
// halves its KV term, and a bad value is a clean error naming the choices.
TEST_F(CliTest, KvCacheTypeComesFromTheFlagOrEpwKvCache) {
  Result f16 = RunEpwa("run -m models/tiny-moe -p hi -n 2 --kv-cache f16", scratch_);
  ASSERT_EQ(f16.exit_code, 0) << f16.err;
  EXPECT_NE(f16.err.find("(f16 KV cache)"), std::string::npos) << f16.err;
  Result f32 = RunEpwa("plan -m models/tiny-moe --json", scratch_);
  setenv("EPW_KV_CACHE", "bf16", 1);
  Result bf16 = RunEpwa("plan -m models/tiny-moe --json", scratch_);
  setenv("EPW_KV_CACHE", "f8", 1);
  Result bad_env = RunEpwa("run -m models/tiny-moe -p hi -n 2", scratch_);
  unsetenv("EPW_KV_CACHE");
  ASSERT_EQ(f32.exit_code, 0) << f32.err;
  ASSERT_EQ(bf16.exit_code, 0) << bf16.err;
  const json a = json::parse(f32.out), b = json::parse(bf16.out);
  EXPECT_EQ(a["kv_cache"], "f32");
  EXPECT_EQ(b["kv_cache"], "bf16");
  ASSERT_FALSE(a["levels"].empty());
  EXPECT_EQ(a["levels"][0]["kv_cache_bytes"].get<uint64_t>(), 2 * b["levels"][0]["kv_cache_bytes"].get<uint64_t>());
  ExpectCleanError(bad_env, 1, "unknown KV cache type 'f8': use f32 (default), f16 or bf16");
  ExpectCleanError(RunEpwa("run -m models/tiny-moe -p hi -n 2 --kv-cache int4", scratch_), 1,
                   "unknown KV cache type 'int4'");
}

TEST_F(CliTest, StreamingRunPrintsPromptAndContinuation) {
  Result r = RunEpwa("run -m " + model_ + " -p 'Once upon a time' -n 8 --seed 3", scratch_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("Once upon a time", 0), 0u) << r.out;
  EXPECT_NE(r.err.find("load: tokenizer"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("tok/s (decode)"), std::string::npos) << r.err;
  // The streamed text equals the --json text.
  Result j = RunEpwa("run -m " + model_ + " -p 'Once upon a time' -n 8 --seed 3 --json", scratch_);
  ASSERT_EQ(j.exit_code, 0) << j.err;
  EXPECT_EQ(r.out, "Once upon a time" + json::parse(j.out)["text"].get<std::string>() + "\n");
}

TEST_F(CliTest, ScoreReportsEveryPositionAndWritesNpy) {
  const std::string npy = scratch_.path() + "/logits.npy";
  Result r = RunEpwa("score -m " + model_ + " -p 'The bell rang twelve times' --json --logits-out " + npy,
                 scratch_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out);
  const size_t T = j["ids"].size();
  ASSERT_EQ(j["positions"].size(), T);
  const json& last = j["positions"][T - 1];
  EXPECT_LT(last["logprob"].get<double>(), 0.0);
  EXPECT_EQ(last["top"].size(), 5u);
  EXPECT_EQ(last["routing"].size(), 4u);  // four MoE layers
  EXPECT_EQ(last["routing"][0]["experts"].size(), 2u);
  EXPECT_EQ(last["routing"][0]["router_logits"].size(), 8u);
  const std::string npy_bytes = testing::ReadFile(npy);
  EXPECT_EQ(npy_bytes.substr(1, 5), "NUMPY");
  EXPECT_NE(npy_bytes.find("'shape': (" + std::to_string(T) + ", 768)"), std::string::npos);
}

// --split-activations: the fp16 prefill on AMX with each activation in
// three bf16 parts computes float32's products, so a scored text keeps
// every routing and its log-probabilities move only by float rounding;
// where the bench names the split (a CPU with AMX) they must move somewhere
// (the flag took effect), elsewhere the float32 prefill runs unchanged.
TEST_F(CliTest, SplitActivationsKeepRoutingAndLogprobs) {
  const std::string text =
      "'The lighthouse keeper wound the clock at dusk, and the lamp turned over the grey water until morning.'";
  Result plain = RunEpwa("score -m models/tiny-moe --quant fp16 -p " + text + " --json", scratch_);
  Result split = RunEpwa("score -m models/tiny-moe --quant fp16 -p " + text + " --json --split-activations", scratch_);
  Result bench = RunEpwa(
      "bench -m models/tiny-moe --quant fp16 --no-cache --prompt-tokens 32 --gen-tokens 2 --repeats 1 "
      "--split-activations",
      scratch_);
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  ASSERT_EQ(split.exit_code, 0) << split.err;
  ASSERT_EQ(bench.exit_code, 0) << bench.err;
  const json a = json::parse(plain.out), b = json::parse(split.out);
  ASSERT_EQ(a["positions"].size(), b["positions"].size());
  ASSERT_GT(a["positions"].size(), 16u);
  int moved = 0;
  for (size_t i = 0; i < a["positions"].size(); ++i) {
    const json& pa = a["positions"][i];
    const json& pb = b["positions"][i];
    EXPECT_EQ(pa["routing"].size(), pb["routing"].size());
    for (size_t l = 0; l < pa["routing"].size(); ++l)
      EXPECT_EQ(pa["routing"][l]["experts"], pb["routing"][l]["experts"]) << "position " << i << " layer " << l;
    if (pa["logprob"].is_null()) continue;
    const double da = pa["logprob"].get<double>(), db = pb["logprob"].get<double>();
    EXPECT_NEAR(da, db, 1e-4) << "position " << i;
    moved += da != db;
  }
  const bool on_amx = bench.out.find("AMX bf16 tile (x in 3 parts)") != std::string::npos;
  if (on_amx) {
    EXPECT_GT(moved, 0) << "--split-activations changed no log-probability: did the flag reach the kernels?";
  } else {
    EXPECT_EQ(moved, 0) << "without AMX the float32 prefill must run unchanged";
  }
  // The plan counts the scratch of x in three parts where the split runs.
  Result plan = RunEpwa("plan -m models/tiny-moe --quant fp16 --json", scratch_);
  Result plan_split = RunEpwa("plan -m models/tiny-moe --quant fp16 --json --split-activations", scratch_);
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  ASSERT_EQ(plan_split.exit_code, 0) << plan_split.err;
  const auto scratch = [](const std::string& out) {
    return json::parse(out)["levels"][0]["scratch_bytes"].get<uint64_t>();
  };
  if (on_amx) {
    EXPECT_GT(scratch(plan_split.out), scratch(plan.out));
  } else {
    EXPECT_EQ(scratch(plan_split.out), scratch(plan.out));
  }
}

TEST_F(CliTest, TokenizeRoundTrips) {
  Result r = RunEpwa("tokenize -m " + model_ + " --text 'Hello, clock!' --json", scratch_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out);
  std::string ids;
  for (const auto& id : j["ids"]) ids += (ids.empty() ? "" : ",") + std::to_string(id.get<int>());
  Result d = RunEpwa("tokenize -m " + model_ + " --decode " + ids, scratch_);
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_EQ(d.out, "Hello, clock!\n");
}

TEST_F(CliTest, InfoDescribesTheModel) {
  Result r = RunEpwa("info -m " + model_ + " --json", scratch_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["architecture"], "MixtralForCausalLM");
  EXPECT_EQ(j["num_experts"], 8);
  EXPECT_LT(j["active_parameters_per_token"].get<int64_t>(), j["parameters"].get<int64_t>());
}

TEST_F(CliTest, MissingFolder) {
  ExpectCleanError(RunEpwa("run -m /nonexistent/model -p hi", scratch_), 1,
                   "model folder '/nonexistent/model' does not exist");
}

TEST_F(CliTest, MissingConfig) {
  const std::string m = CopyModel("noconfig");
  fs::remove(m + "/config.json");
  ExpectCleanError(RunEpwa("run -m " + m + " -p hi", scratch_), 1, "config.json");
}

TEST_F(CliTest, MissingTokenizer) {
  const std::string m = CopyModel("notok");
  fs::remove(m + "/tokenizer.json");
  ExpectCleanError(RunEpwa("info -m " + m, scratch_), 1, "tokenizer.json is missing");
}

TEST_F(CliTest, MissingWeights) {
  const std::string m = CopyModel("noweights");
  fs::remove(m + "/model.safetensors");
  ExpectCleanError(RunEpwa("info -m " + m, scratch_), 1, "safetensors");
}

TEST_F(CliTest, UnsupportedArchitecture) {
  const std::string m = CopyModel("gpt2");
  std::string cfg = testing::ReadFile(m + "/config.json");
  cfg.replace(cfg.find("MixtralForCausalLM"), 18, "GPT2LMHeadModel");
  WriteFile(m + "/config.json", cfg);
  ExpectCleanError(RunEpwa("info -m " + m, scratch_), 1,
                   "architecture 'GPT2LMHeadModel' is not supported (supported: MixtralForCausalLM");
}

TEST_F(CliTest, ConfigContradictsTensors) {
  const std::string m = CopyModel("wrongvocab");
  std::string cfg = testing::ReadFile(m + "/config.json");
  cfg.replace(cfg.find("\"hidden_size\": 128"), 18, "\"hidden_size\": 256");
  WriteFile(m + "/config.json", cfg);
  ExpectCleanError(RunEpwa("info -m " + m, scratch_), 1, "model.embed_tokens.weight");
}

TEST_F(CliTest, TruncatedSafetensors) {
  const std::string m = CopyModel("truncated");
  fs::resize_file(m + "/model.safetensors", fs::file_size(m + "/model.safetensors") / 2);
  ExpectCleanError(RunEpwa("info -m " + m, scratch_), 1, "model.safetensors");
}

TEST_F(CliTest, MalformedTokenizer) {
  const std::string m = CopyModel("badtok");
  WriteFile(m + "/tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": ");
  ExpectCleanError(RunEpwa("info -m " + m, scratch_), 1, "tokenizer.json");
}

TEST_F(CliTest, EmptyPrompt) {
  ExpectCleanError(RunEpwa("run -m " + model_ + " -p ''", scratch_), 1, "prompt is empty");
  ExpectCleanError(RunEpwa("run -m " + model_, scratch_), 1, "run needs a prompt");
  const std::string empty = scratch_.path() + "/empty.txt";
  WriteFile(empty, "");
  ExpectCleanError(RunEpwa("run -m " + model_ + " -f " + empty, scratch_), 1, "prompt is empty");
  ExpectCleanError(RunEpwa("run -m " + model_ + " -f /nonexistent.txt", scratch_), 1,
                   "cannot open the --prompt-file '/nonexistent.txt'");
}

TEST_F(CliTest, PromptLongerThanContext) {
  const std::string m = CopyModel("shortctx");
  std::string cfg = testing::ReadFile(m + "/config.json");
  cfg.replace(cfg.find("\"max_position_embeddings\": 2048"), 31, "\"max_position_embeddings\": 8");
  WriteFile(m + "/config.json", cfg);
  ExpectCleanError(RunEpwa("run -m " + m + " -p 'the quick brown fox jumps over the lazy dog again'", scratch_),
                   1, "does not fit the model's context of 8 tokens");
}

TEST_F(CliTest, FlagsOutOfRange) {
  ExpectCleanError(RunEpwa("run -m " + model_ + " -p hi --temp -1", scratch_), 2, "--temp");
  ExpectCleanError(RunEpwa("run -m " + model_ + " -p hi --top-p 1.5", scratch_), 2, "--top-p");
  ExpectCleanError(RunEpwa("run -m " + model_ + " -p hi -n -3", scratch_), 2, "max-tokens");
  ExpectCleanError(RunEpwa("run -m " + model_ + " -p hi --bogus", scratch_), 2, "--bogus");
  ExpectCleanError(RunEpwa("score -m " + model_ + " --ids 1,x,3", scratch_), 1, "--ids");
  ExpectCleanError(RunEpwa("score -m " + model_ + " --ids 1,99999", scratch_), 1,
                   "token id 99999 is outside the vocabulary");
  ExpectCleanError(RunEpwa("tokenize -m " + model_ + " --decode 5000000", scratch_), 1,
                   "outside the tokenizer's vocabulary");
}

TEST_F(CliTest, NoPartialLogitsFileOnFailure) {
  const std::string npy = scratch_.path() + "/out.npy";
  Result r = RunEpwa("score -m " + model_ + " --ids 1,99999 --logits-out " + npy, scratch_);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_FALSE(fs::exists(npy));
}

}  // namespace
}  // namespace epwa
