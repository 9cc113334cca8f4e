// The memory plan against reality: for the bundled model and shortened
// synthetic models of real shapes (MoE and dense, bf16), at every level and
// two context lengths, a fresh `epwa run` process (load + prefill of a prompt
// that fills the context + decode) must peak (VmHWM) within +-5% of the plan's
// expected total, or +-64 MiB for small models; below the plan, also within
// the embedding's pessimistic share (EmbeddingBound). The table goes to the
// test log.
// Also: a --mem-budget just below a level's requirement makes auto step down
// and an explicit level refuse with its message; just above, it runs.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Output {
  int exit_code;
  std::string out, err;
};

Output Epwa(const std::string& args, const testing::TempDir& dir) {
  const std::string out = dir.path() + "/stdout", err = dir.path() + "/stderr";
  const std::string cmd = std::string(EPWA_BINARY) + " " + args + " >" + out + " 2>" + err;
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, testing::ReadFile(out),
          testing::ReadFile(err)};
}

// Writes a prompt file of at most `tokens` tokens (BOS included), as close to
// it as a cut at a character boundary gets, of real varied text (held-out
// corpus): repeated tokens would route to few experts and leave the rest of
// the weights untouched, which is not what a plan is for.
std::string PromptFile(const std::string& model, int64_t tokens, const testing::TempDir& dir) {
  const std::string corpus = testing::ReadFile("data/heldout/jargon.txt").substr(2000, 64000);
  const std::string path = dir.path() + "/prompt.txt";
  auto count = [&](size_t chars) {
    std::ofstream(path, std::ios::trunc) << corpus.substr(0, chars);
    Output o = Epwa("tokenize -m " + model + " --special --json --file " + path, dir);
    EXPECT_EQ(o.exit_code, 0) << o.err;
    return static_cast<int64_t>(json::parse(o.out)["ids"].size());
  };
  // Cut at a space so no multi-byte character is split; bisect on length.
  size_t lo = 1, hi = corpus.size();
  while (lo < hi) {
    const size_t mid = (lo + hi + 1) / 2;
    if (count(mid) <= tokens) lo = mid; else hi = mid - 1;
  }
  while (lo > 1 && corpus[lo] != ' ') --lo;
  const int64_t got = count(lo);
  EXPECT_LE(got, tokens);
  EXPECT_GE(got, tokens * 9 / 10);
  return path;
}

struct Row {
  std::string model, level;
  int64_t ctx;
  double planned_mib, actual_mib, error_pct;
  bool ok;
};

class PlanAccuracy : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    // Quantized-weight caches go to the test's own folder, not the user's.
    setenv("EPWA_CACHE_DIR", (dir_->path() + "/cache").c_str(), 1);
  }
  static void TearDownTestSuite() {
    std::printf("\n%-28s %-6s %6s %12s %12s %9s\n", "model", "level", "ctx", "plan MiB",
                "actual MiB", "error");
    for (const Row& r : rows_)
      std::printf("%-28s %-6s %6lld %12.1f %12.1f %+8.2f%%%s\n", r.model.c_str(), r.level.c_str(),
                  static_cast<long long>(r.ctx), r.planned_mib, r.actual_mib, r.error_pct,
                  r.ok ? "" : "  FAIL");
    delete dir_;
  }

  // The resident bytes the plan counts for an untied embedding used in place
  // at context ctx: as if each of the ctx tokens were another row and each
  // row's page fault mapped the kernel's 64 KiB fault-around window
  // (PlanTensors). That is an upper bound a real prompt stays under (its
  // tokens repeat; a fault may map fewer pages), by up to all of it.
  static double EmbeddingBound(const std::string& model, int64_t ctx) {
    std::ifstream in(model + "/config.json");
    const json c = json::parse(in);
    if (c.value("tie_word_embeddings", false)) return 0.0;
    const double vocab = c.at("vocab_size").get<double>(), hidden = c.at("hidden_size").get<double>();
    return std::min(vocab * hidden * 2.0, std::min(vocab, static_cast<double>(ctx)) * 65536.0);
  }

  void CheckModel(const std::string& name, const std::string& model, std::vector<int64_t> ctxs) {
    testing::TempDir scratch;
    for (int64_t ctx : ctxs) {
      const std::string prompt = PromptFile(model, ctx - 8, scratch);
      // The budget that makes mixed a real mixture: halfway between int4 and int8.
      Output plan = Epwa("plan -m " + model + " --ctx " + std::to_string(ctx) + " -t 2 --json", scratch);
      ASSERT_EQ(plan.exit_code, 0) << plan.err;
      std::map<std::string, uint64_t> required;
      const json plan_json = json::parse(plan.out);  // kept alive for the loop
      for (const json& l : plan_json["levels"])
        required[l["level"].get<std::string>()] = l["required_bytes"].get<uint64_t>();
      const uint64_t mixed_budget = (required["int8"] + required["int4"]) / 2;
      for (const std::string level : {"none", "fp16", "int8", "mixed", "int4"}) {
        std::string args = "run -m " + model + " --quant " + level + " --ctx " +
                           std::to_string(ctx) + " -f " + prompt + " -n 8 --temp 0 -t 2 --json";
        if (level == "mixed") args += " --mem-budget " + std::to_string(mixed_budget);
        Output o = Epwa(args, scratch);
        ASSERT_EQ(o.exit_code, 0) << args << "\n" << o.err;
        const json stats = json::parse(o.out)["stats"];
        const double planned = stats["load"]["planned_bytes"].get<double>();
        const double actual = stats["peak_rss_bytes"].get<double>();
        const double tolerance = std::max(0.05 * planned, 64.0 * (1 << 20));
        // Above the plan only the tolerance; below it also the embedding's
        // deliberately pessimistic share (at a 1,024-token context on this
        // machine's bench-moe, 54-68 MiB under the plan in all).
        const bool ok = actual - planned <= tolerance &&
                        planned - actual <= tolerance + EmbeddingBound(model, ctx);
        rows_.push_back({name, level, ctx, planned / (1 << 20), actual / (1 << 20),
                         100.0 * (actual - planned) / planned, ok});
        EXPECT_TRUE(ok) << name << " " << level << " ctx " << ctx << ": planned " << planned
                        << " actual " << actual;
        EXPECT_EQ(stats["load"]["quant_level"], level);
      }
    }
  }

  static testing::TempDir* dir_;
  static std::vector<Row> rows_;
};
testing::TempDir* PlanAccuracy::dir_ = nullptr;
std::vector<Row> PlanAccuracy::rows_;

TEST_F(PlanAccuracy, BundledModel) {
  if (!fs::exists("models/tiny-moe/config.json")) GTEST_SKIP() << "models/tiny-moe is absent";
  CheckModel("tiny-moe", "models/tiny-moe", {128, 512});
}

TEST_F(PlanAccuracy, SyntheticMoe) {
  const std::string model = testing::MakeModel(*dir_, "bench-moe");  // 2 layers, ~1.1 GB bf16
  CheckModel("bench-moe (2 layers)", model, {128, 1024});
}

TEST_F(PlanAccuracy, SyntheticDense) {
  SynthOptions o;
  o.preset = "mistral-7b";
  o.layers = 1;
  o.out_dir = dir_->path() + "/mistral-7b-1";
  WriteSynthModel(o);
  CheckModel("mistral-7b (1 layer)", o.out_dir, {128, 1024});
}

// Every family added with the architecture table, at its real width and a
// layer or two: per-head and whole-projection q/k norms, a dense layer beside
// MoE ones, a shared expert, fused experts, explicit head_dim.
TEST_F(PlanAccuracy, EveryFamily) {
  const std::pair<const char*, int64_t> models[] = {
      {"qwen3-30b-a3b", 1}, {"olmoe-1b-7b", 1}, {"qwen1.5-moe-a2.7b", 1}, {"granite-3.1-1b-a400m", 2}};
  for (const auto& [preset, layers] : models) {
    SynthOptions o;
    o.preset = preset;
    o.layers = layers;
    o.out_dir = dir_->path() + "/" + preset;
    WriteSynthModel(o);
    CheckModel(std::string(preset) + " (" + std::to_string(layers) + " layer" + (layers > 1 ? "s" : "") + ")",
               o.out_dir, {256});
    std::filesystem::remove_all(o.out_dir);
  }
}

// --parallel: four KV caches of --ctx each, filled by four prompts of real
// text generated together with a 256-row budget per forward pass. Granite's
// tied embedding is planned whole, so the figure tests the caches and the
// batch scratch rather than how many distinct embedding rows the text reads
// (the plan bounds those by parallel x ctx rows, an upper bound).
TEST_F(PlanAccuracy, ParallelSequences) {
  SynthOptions o;
  o.preset = "granite-3.1-1b-a400m";
  o.layers = 2;
  o.out_dir = dir_->path() + "/granite-parallel";
  WriteSynthModel(o);
  testing::TempDir scratch;
  const int64_t ctx = 2048;
  // Four prompts, one per line, each a different stretch of the held-out
  // corpus of 3400 characters (1750 to 2000 tokens: most of the context).
  const std::string corpus = testing::ReadFile("data/heldout/jargon.txt");
  std::string lines;
  for (size_t i = 0; i < 4; ++i) {
    std::string p = corpus.substr(2000 + i * 9000, 3400);
    for (char& ch : p)
      if (ch == '\n' || ch == '\r') ch = ' ';
    lines += p + "\n";
  }
  const std::string path = scratch.path() + "/prompts.txt";
  std::ofstream(path, std::ios::trunc) << lines;
  const std::string args = "run -m " + o.out_dir + " --quant fp16 --ctx " + std::to_string(ctx) +
                           " --parallel 4 --batch-tokens 256 --prompts-file " + path +
                           " -n 8 --temp 0 -t 2 --json";
  Output out = Epwa(args, scratch);
  ASSERT_EQ(out.exit_code, 0) << args << "\n" << out.err;
  double planned = 0, actual = 0;
  std::stringstream ss(out.out);
  for (std::string line; std::getline(ss, line);) {
    const json stats = json::parse(line)["stats"];
    planned = stats["planned_bytes"].get<double>();
    actual = std::max(actual, stats["peak_rss_bytes"].get<double>());
    EXPECT_GT(stats["prompt_tokens"].get<int64_t>(), ctx / 2);
  }
  const double tolerance = std::max(0.05 * planned, 64.0 * (1 << 20));
  const bool ok = std::abs(actual - planned) <= tolerance;
  rows_.push_back({"granite (2 layers) x4 seqs", "fp16", ctx, planned / (1 << 20), actual / (1 << 20),
                   100.0 * (actual - planned) / planned, ok});
  EXPECT_TRUE(ok) << "planned " << planned << " actual " << actual;
  std::filesystem::remove_all(o.out_dir);
}

// `make bench-plan`: the same check on bigger synthetic models, named in
// EPWA_PLAN_BENCH_MODELS as "preset:layers ..." (not run by ctest).
TEST_F(PlanAccuracy, BiggerModels) {
  const char* list = std::getenv("EPWA_PLAN_BENCH_MODELS");
  if (!list || !*list) GTEST_SKIP() << "set EPWA_PLAN_BENCH_MODELS (make bench-plan)";
  std::stringstream ss(list);
  for (std::string item; ss >> item;) {
    const size_t colon = item.find(':');
    SynthOptions o;
    o.preset = item.substr(0, colon);
    o.layers = colon == std::string::npos ? 0 : std::stoll(item.substr(colon + 1));
    o.out_dir = dir_->path() + "/" + o.preset;
    WriteSynthModel(o);
    CheckModel(item, o.out_dir, {512, 4096});
    std::filesystem::remove_all(o.out_dir);
  }
}

// A budget just below a level's requirement: an explicit level refuses and
// says what fits; auto steps down. Just above: it loads and runs.
TEST_F(PlanAccuracy, BudgetRefusesOrStepsDown) {
  const std::string model = testing::MakeModel(*dir_, "tiny-random-moe");
  testing::TempDir scratch;
  Output plan = Epwa("plan -m " + model + " --ctx 256 --json", scratch);
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  std::map<std::string, uint64_t> required;
  const json plan_json = json::parse(plan.out);  // kept alive for the loop
  for (const json& l : plan_json["levels"])
    required[l["level"].get<std::string>()] = l["required_bytes"].get<uint64_t>();
  const std::string run = "run -m " + model + " --ctx 256 -p 'Once upon a time' -n 4 --json ";
  // fp16 just above its requirement runs.
  Output above = Epwa(run + "--quant fp16 --mem-budget " + std::to_string(required["fp16"] + (1 << 20)), scratch);
  EXPECT_EQ(above.exit_code, 0) << above.err;
  // Just below: refused, with the reason and a level that fits.
  Output below = Epwa(run + "--quant fp16 --mem-budget " + std::to_string(required["fp16"] - (1 << 20)), scratch);
  EXPECT_EQ(below.exit_code, 1);
  EXPECT_NE(below.err.find("level fp16 needs"), std::string::npos) << below.err;
  EXPECT_NE(below.err.find("missing"), std::string::npos) << below.err;
  EXPECT_TRUE(below.out.empty());
  // auto just below fp16 steps down to a smaller level and runs.
  Output stepped = Epwa(run + "--mem-budget " + std::to_string(required["fp16"] - (1 << 20)), scratch);
  ASSERT_EQ(stepped.exit_code, 0) << stepped.err;
  const std::string chosen = json::parse(stepped.out)["stats"]["load"]["quant_level"];
  EXPECT_TRUE(chosen == "int8" || chosen == "mixed" || chosen == "int4") << chosen;
  // Below everything: refused, saying what is missing.
  Output none = Epwa(run + "--mem-budget 1M", scratch);
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_NE(none.err.find("Nothing fits"), std::string::npos) << none.err;
}

}  // namespace
}  // namespace epwa
