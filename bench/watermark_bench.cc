// Watermark speed on the bundled model (run from the repository root):
//   - decode per token, plain vs gsg/ewp/kgw, in one process, so the
//     watermark's cost is a ratio of two numbers measured side by side;
//   - full detection vs a bare forward pass (prefill) over the same ids;
//   - PEPI with the model (one pass + oracle) and from a logprobs file
//     (parsing + oracle + scoring, no model);
//   - the processor alone for vocabularies of real models.
// build/bench/watermark_bench [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <cstdio>
#include <fstream>
#include <random>

#include "runtime/engine.h"
#include "watermark/detector.h"
#include "watermark/evaluate.h"
#include "watermark/logprobs.h"
#include "watermark/pipeline.h"
#include "watermark/processor.h"

namespace epwa::wm {
namespace {

Engine& TheEngine() {
  static std::unique_ptr<Engine> engine = [] {
    LoadOptions o("models/tiny-moe", 0);
    o.plan_ctx = 512;
    o.use_cache = false;
    return Engine::Load(o);
  }();
  return *engine;
}

const std::vector<int32_t>& Prompt() {
  static const std::vector<int32_t> p = TheEngine().EncodePrompt("The history of the computer");
  return p;
}

// Decode of 128 tokens, plain and watermarked alternately with the same
// seed in every iteration, so that drifts in machine speed hit both sides
// alike; the counters give both costs per token and the overhead. With
// delta 0 the watermark does all its work (routing read, argmax, list
// lookup, bias added) but changes no logit, so both runs decode the same
// tokens through the same experts: the difference is the watermark's own
// cost. With delta 2 the texts differ, and so do their routing and cost.
void BM_DecodeOverhead(benchmark::State& state) {
  Engine& e = TheEngine();
  const Scheme scheme = static_cast<Scheme>(state.range(0));
  double plain_ms = 0, marked_ms = 0;
  int64_t plain_tokens = 0, marked_tokens = 0;
  std::vector<int32_t> plain_ids;
  bool same_text = true;
  for (auto _ : state) {
    for (int marked = 0; marked < 2; ++marked) {
      GenerateOptions g;
      g.max_new_tokens = 128;
      g.ignore_eos = true;
      g.sampler.seed = 3;
      std::unique_ptr<WatermarkProcessor> proc;
      if (marked) {
        WatermarkParams p;
        p.scheme = scheme;
        p.delta = static_cast<double>(state.range(1));
        proc = std::make_unique<WatermarkProcessor>(EvaluationKey(), p, e.config(), e.load_stats().router_hash);
        g.logits_processor = [&](std::span<float> l, const RoutingTrace& r, std::span<const int32_t> c) {
          proc->Apply(l, r, c);
        };
      }
      const GenerateResult r = e.Generate(Prompt(), g);
      if (!marked) plain_ids = r.tokens;
      else same_text = same_text && r.tokens == plain_ids;
      (marked ? marked_ms : plain_ms) += r.stats.decode_ms;
      (marked ? marked_tokens : plain_tokens) += r.stats.generated_tokens - 1;
    }
  }
  const double plain = plain_ms / plain_tokens, wm = marked_ms / marked_tokens;
  state.counters["plain_ms_per_token"] = plain;
  state.counters["wm_ms_per_token"] = wm;
  state.counters["overhead_pct"] = 100.0 * (wm / plain - 1.0);
  state.SetLabel(std::string(SchemeName(scheme)) + " delta " + std::to_string(state.range(1)) +
                 (same_text ? ", same tokens" : ", different tokens"));
}
BENCHMARK(BM_DecodeOverhead)
    ->ArgsProduct({{0, 1, 2}, {0, 2}})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(4.0);

std::vector<int32_t> Ids(int64_t n) {
  GenerateOptions g;
  g.max_new_tokens = static_cast<int32_t>(n);
  g.ignore_eos = true;
  std::vector<int32_t> ids = Prompt();
  const GenerateResult r = TheEngine().Generate(Prompt(), g);
  ids.insert(ids.end(), r.tokens.begin(), r.tokens.end());
  return ids;
}

// The forward pass alone, as detection runs it (all logits, routing).
void BM_Prefill(benchmark::State& state) {
  const std::vector<int32_t> ids = Ids(state.range(0));
  for (auto _ : state) benchmark::DoNotOptimize(TheEngine().Score(ids));
  state.counters["tok_per_s"] = benchmark::Counter(static_cast<double>(ids.size()), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Prefill)->Arg(256)->Unit(benchmark::kMillisecond);

void BM_DetectFull(benchmark::State& state) {
  Engine& e = TheEngine();
  const std::vector<int32_t> ids = Ids(state.range(0));
  GreenLists lists(EvaluationKey(), KeyedBy::kExpert, e.load_stats().router_hash, e.config().vocab_size, 0.25);
  DetectInput in{ids, static_cast<int64_t>(Prompt().size()), true, false};
  for (auto _ : state) {
    const auto tokens = ScoreInput(e, in, lists, 3);
    benchmark::DoNotOptimize(Summarize(tokens, lists.p0(), DetectOptions()));
  }
  state.counters["tok_per_s"] = benchmark::Counter(static_cast<double>(ids.size()), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_DetectFull)->Arg(256)->Unit(benchmark::kMillisecond);

const ExpertOracle& Oracle() {
  static const ExpertOracle oracle = [] {
    Engine& e = TheEngine();
    std::ifstream in("data/heldout/jargon.txt");
    std::string text((std::istreambuf_iterator<char>(in)), {});
    std::vector<TopLogprobs> x;
    std::vector<int32_t> y;
    CollectOracleExamples(e, text.substr(0, 60000), 256, 4000, 3, 20, &x, &y);
    OracleInfo info;
    info.router_hash = e.load_stats().router_hash;
    info.router_layer = 3;
    info.num_experts = 8;
    info.vocab_size = 4096;
    info.top_k = 20;
    return ExpertOracle::Train(x, y, info, OracleTrainOptions());
  }();
  return oracle;
}

void BM_DetectPepiWithModel(benchmark::State& state) {
  Engine& e = TheEngine();
  const ExpertOracle& oracle = Oracle();
  const std::vector<int32_t> ids = Ids(state.range(0));
  GreenLists lists(EvaluationKey(), KeyedBy::kExpert, e.load_stats().router_hash, e.config().vocab_size, 0.25);
  const int64_t V = e.config().vocab_size, T = static_cast<int64_t>(ids.size());
  for (auto _ : state) {
    const ScoreResult r = e.Score(ids);
    const std::vector<int32_t> seeds = PredictExperts(oracle, r, V, static_cast<int64_t>(Prompt().size()));
    benchmark::DoNotOptimize(Summarize(ScoreBySeeds(ids, Prompt().size(), seeds, lists), lists.p0(), DetectOptions()));
  }
  state.counters["tok_per_s"] = benchmark::Counter(static_cast<double>(T), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_DetectPepiWithModel)->Arg(256)->Unit(benchmark::kMillisecond);

// 100,000 tokens of top-20 log-probabilities in a file, read and scored
// without a model.
void BM_DetectPepiFromLogprobsFile(benchmark::State& state) {
  const ExpertOracle& oracle = Oracle();
  const std::string path = "/tmp/epwa_bench_logprobs.json";
  const int64_t n = state.range(0);
  {
    std::mt19937 gen(1);
    LogprobsFile f;
    f.vocab_size = 4096;
    for (int64_t i = 0; i < n; ++i) {
      std::vector<float> logits(4096);
      for (float& v : logits) v = std::normal_distribution<float>(0, 3)(gen);
      f.tokens.push_back({static_cast<int32_t>(gen() % 4096), TopKFromLogits(logits, 20)});
    }
    std::ofstream(path) << LogprobsJson(f).dump();
  }
  GreenLists lists(EvaluationKey(), KeyedBy::kExpert, TheEngine().load_stats().router_hash, 4096, 0.25);
  for (auto _ : state) {
    const LogprobsFile f = ReadLogprobsFile(path, 4096);
    benchmark::DoNotOptimize(Summarize(ScoreLogprobs(f, oracle, lists), lists.p0(), DetectOptions()));
  }
  state.counters["tok_per_s"] = benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
  std::remove(path.c_str());
}
BENCHMARK(BM_DetectPepiFromLogprobsFile)->Arg(100000)->Unit(benchmark::kMillisecond)->Iterations(3);

// One Apply call (argmax of the router + bias on n_green logits) at the
// vocabulary sizes of real models; KGW builds a new list per previous token.
void BM_Apply(benchmark::State& state) {
  const int64_t V = state.range(0);
  const Scheme scheme = static_cast<Scheme>(state.range(1));
  ModelConfig c;
  c.vocab_size = V;
  c.num_experts = 8;
  c.num_experts_per_tok = 2;
  c.num_layers = 32;
  WatermarkParams p;
  p.scheme = scheme;
  WatermarkProcessor proc(EvaluationKey(), p, c, std::string(64, 'a'));
  RoutingTrace trace;
  std::vector<int32_t> layers(32);
  for (int i = 0; i < 32; ++i) layers[i] = i;
  trace.Reset(1, 0, layers, 8, 2);
  std::vector<float> logits(static_cast<size_t>(V), 0.f);
  std::vector<int32_t> ctx = {0};
  int32_t step = 0;
  for (auto _ : state) {
    trace.MutableLogits(0, 31)[step % 8] = static_cast<float>(step);
    ctx[0] = static_cast<int32_t>((int64_t{step} * 7919) % V);  // a new previous token each step
    proc.Apply(logits, trace, ctx);
    ++step;
  }
  state.SetLabel(SchemeName(scheme));
}
BENCHMARK(BM_Apply)->ArgsProduct({{4096, 32000, 152064}, {0, 1, 2}})->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace epwa::wm

BENCHMARK_MAIN();
