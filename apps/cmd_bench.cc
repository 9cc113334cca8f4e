// epwa bench: prefill and decode speed on a model large enough to leave the
// caches, set against the machine's own measured limits (read bandwidth for
// decode, fp32 FMA peak for prefill) in the same run. With --parallel LIST,
// continuous batching instead: the same model and prompts at several batch
// sizes (one command, so that both benches share the model defaulting and
// every flag).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "base/error.h"
#include "base/meminfo.h"
#include "base/timer.h"
#include "cli.h"
#include "kernels/kernels.h"
#include "runtime/batch_divergence.h"
#include "runtime/batch_engine.h"
#include "synth/synth.h"

namespace epwa::cli {
namespace {

// Bytes of weights one decode step streams, and multiply-adds per token.
struct StepCost {
  double decode_bytes = 0;       // weights read per decoded token
  double flops_per_token = 0;    // 2 x multiply-adds of the matrix products per prompt token
  double lm_head_flops = 0;      // once per forward (only the last row's logits are needed)
  // flops_per_token split by the instruction prefill does them with, and
  // the lm_head's (once per forward) by its own.
  std::map<kernels::PrefillDot, double> flops_by_dot;
  kernels::PrefillDot lm_head_dot = kernels::PrefillDot::kFp32Fma;
  // Attention's own multiply-adds (fp32 FMA), which grow with the context:
  // per layer, 2 x the scores' and the values' widths over all query heads
  // per key a query sees, and the layer's sliding window (0: none).
  std::vector<std::pair<double, int64_t>> attention_flops_per_key;

  // Weights a prefill reads whatever its length (attention, routers, the
  // lm_head) and, per MoE layer, the bytes of one expert.
  double prefill_fixed_bytes = 0;
  std::vector<double> expert_bytes_per_layer;
  double experts = 1, experts_per_token = 1;

  // Weights a prefill of `tokens` tokens reads: with E experts chosen k at a
  // time, uniform routing leaves an expert unused with probability
  // (1 - k / E)^tokens, so E (1 - (1 - k / E)^tokens) are read per layer
  // (nearly all of them from a few dozen tokens on).
  double PrefillBytes(int64_t tokens) const {
    const double used =
        experts * (1.0 - std::pow(1.0 - experts_per_token / experts, static_cast<double>(tokens)));
    double bytes = prefill_fixed_bytes;
    for (double b : expert_bytes_per_layer) bytes += used * b;
    return bytes;
  }

  // Attention flops per token of a `tokens`-token prompt: token t sees
  // min(t + 1, window) keys.
  double AttentionFlopsPerToken(int64_t tokens) const {
    double flops = 0;
    for (const auto& [per_key, window] : attention_flops_per_key) {
      double keys = 0;
      for (int64_t t = 0; t < tokens; ++t) keys += static_cast<double>(window > 0 ? std::min(t + 1, window) : t + 1);
      flops += per_key * keys;
    }
    return tokens > 0 ? flops / static_cast<double>(tokens) : 0.0;
  }
};

// The machine's peaks, measured in the same run.
struct Peaks {
  double fma_gflops = 0;
  double int8_gops = 0;
  double bf16_gflops = 0;
  double Of(kernels::PrefillDot dot) const {
    switch (dot) {
      case kernels::PrefillDot::kInt8: return int8_gops;
      case kernels::PrefillDot::kBf16: return bf16_gflops;
      case kernels::PrefillDot::kBf16Split: return bf16_gflops / 3;  // three tile products per multiply-add
      case kernels::PrefillDot::kFp32Fma: break;
    }
    return fma_gflops;
  }
};

// The fastest a prefill of `tokens` tokens could run in tokens/s if every
// multiply-add ran at the peak of its own instruction: the limit the
// measured prefill is set against.
double PrefillLimitTokensPerS(const StepCost& cost, const Peaks& peaks, int tokens) {
  double seconds = 0;
  for (const auto& [dot, flops] : cost.flops_by_dot) seconds += flops / (peaks.Of(dot) * 1e9);
  seconds += cost.lm_head_flops / tokens / (peaks.Of(cost.lm_head_dot) * 1e9);
  seconds += cost.AttentionFlopsPerToken(tokens) / (peaks.fma_gflops * 1e9);
  return seconds > 0 ? 1.0 / seconds : 0.0;
}

StepCost CostOf(const Engine& engine) {
  const ModelConfig& c = engine.config();
  const ModelWeights& w = engine.weights();
  StepCost cost;
  // Codes plus scales for quantized weights.
  auto bytes = [](const WeightView& v) { return static_cast<double>(v.Bytes() + v.ScaleBytes()); };
  for (const LayerWeights& l : w.layers) {
    const double attn = bytes(l.q) + bytes(l.k) + bytes(l.v) + bytes(l.o);
    const double attn_params = static_cast<double>(l.q.rows * l.q.cols + l.k.rows * l.k.cols +
                                                   l.v.rows * l.v.cols + l.o.rows * l.o.cols);
    const ExpertWeights& e = l.experts[0];
    const double expert = bytes(e.gate) + bytes(e.up) + bytes(e.gate_up) + bytes(e.down);
    const double expert_params = static_cast<double>(3 * e.Ff() * e.down.rows);
    const double used = c.IsMoe() ? static_cast<double>(c.num_experts_per_tok) : 1.0;
    cost.decode_bytes += attn + used * expert + l.router.size() * sizeof(float);
    cost.prefill_fixed_bytes += attn + static_cast<double>(l.router.size() * sizeof(float));
    cost.expert_bytes_per_layer.push_back(expert);
    cost.flops_per_token += 2.0 * (attn_params + used * expert_params +
                                   static_cast<double>(l.router.size()));
    cost.flops_by_dot[kernels::PrefillDotFor(l.q.dtype)] += 2.0 * attn_params;
    cost.flops_by_dot[kernels::PrefillDotFor(e.down.dtype)] += 2.0 * used * expert_params;
    cost.flops_by_dot[kernels::PrefillDot::kFp32Fma] += 2.0 * static_cast<double>(l.router.size());
  }
  // Scores and values per query head: head_dim each, or under latent
  // attention (absorbed) the latent plus rotary width and the latent width.
  const double widths = c.Latent() ? static_cast<double>(2 * c.kv_lora_rank + c.head_dim)
                                   : static_cast<double>(2 * c.head_dim);
  for (int64_t layer = 0; layer < c.num_layers; ++layer)
    cost.attention_flops_per_key.emplace_back(2.0 * widths * static_cast<double>(c.num_heads), c.WindowOf(layer));
  cost.decode_bytes += bytes(w.lm_head);
  cost.prefill_fixed_bytes += bytes(w.lm_head);
  if (c.IsMoe()) {
    cost.experts = static_cast<double>(c.num_experts);
    cost.experts_per_token = static_cast<double>(c.num_experts_per_tok);
  }
  cost.lm_head_flops = 2.0 * static_cast<double>(w.lm_head.rows * w.lm_head.cols);
  cost.lm_head_dot = kernels::PrefillDotFor(w.lm_head.dtype);
  return cost;
}

// The p-th percentile (0..100) of `v` by the nearest-rank method; 0 for none.
double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  return v[std::clamp<size_t>(rank, 1, v.size()) - 1];
}

// "1,2,4,8" -> {1, 2, 4, 8}.
std::vector<int> ParseCounts(const std::string& text) {
  std::vector<int> out;
  for (int32_t n : ParseIdList(text, "--parallel")) {
    Require(n >= 1 && n <= 4096, "--parallel expects sequence counts from 1 to 4096, got " + std::to_string(n));
    out.push_back(n);
  }
  return out;
}

// One row of the batched bench.
struct BatchRow {
  int sequences = 0;
  double decode_tokens_per_s = 0;   // all sequences together, while all decode
  std::vector<double> ttft_ms;      // per sequence: submit to first token
  std::vector<double> token_ms;     // per generated token after the first: the gap before it
  double experts_per_layer = 0;     // distinct experts a decode step streams, per MoE layer
  int64_t steps = 0;
};

// Submits `n` prompts at once and runs them to the end: the figures of one repeat.
BatchRow RunBatch(Engine& engine, const std::vector<std::vector<int32_t>>& prompts, int n,
                  const GenerateOptions& options, int64_t batch_tokens) {
  BatchEngine batch(engine, BatchOptions{.parallel = n, .batch_tokens = batch_tokens});
  std::vector<SequenceResult> results(static_cast<size_t>(n));
  std::vector<double> submitted(static_cast<size_t>(n));
  // Distinct experts per (step, MoE layer) among decode rows: the expert
  // weights that step had to stream.
  std::map<int64_t, std::vector<std::set<int32_t>>> used;
  Stopwatch clock;
  for (int i = 0; i < n; ++i) {
    GenerateOptions o = options;
    o.logits_processor = [&used, &batch](std::span<float>, const RoutingTrace& r, std::span<const int32_t>) {
      if (r.num_tokens() != 1) return;  // a prompt's last row, not a decode step
      auto& layers = used[batch.stats().steps];
      layers.resize(static_cast<size_t>(r.num_moe_layers()));
      for (int64_t m = 0; m < r.num_moe_layers(); ++m)
        for (int32_t e : r.Experts(0, m)) layers[static_cast<size_t>(m)].insert(e);
    };
    submitted[i] = clock.Millis();
    batch.Submit(prompts[i], std::move(o), [&results, i](SequenceResult&& r) { results[i] = std::move(r); });
  }
  batch.RunUntilIdle();
  BatchRow row;
  row.sequences = n;
  row.steps = batch.stats().steps;
  // The decode window: from the moment every sequence has its first token
  // to the last token; the rate counts the tokens sampled inside it.
  double window_start = 0, window_end = 0;
  for (int i = 0; i < n; ++i) {
    const SequenceResult& r = results[i];
    if (r.error) std::rethrow_exception(r.error);
    Require(!r.token_ms.empty(), "bench: a sequence generated no token");
    window_start = std::max(window_start, submitted[i] + r.token_ms.front());
    window_end = std::max(window_end, submitted[i] + r.token_ms.back());
    row.ttft_ms.push_back(r.token_ms.front());
    for (size_t k = 1; k < r.token_ms.size(); ++k) row.token_ms.push_back(r.token_ms[k] - r.token_ms[k - 1]);
  }
  int64_t in_window = 0;
  for (int i = 0; i < n; ++i)
    for (double t : results[i].token_ms) in_window += submitted[i] + t > window_start;
  row.decode_tokens_per_s = window_end > window_start ? in_window / ((window_end - window_start) / 1e3) : 0;
  double sum = 0;
  int64_t count = 0;
  for (const auto& [step, layers] : used)
    for (const auto& set : layers) {
      sum += static_cast<double>(set.size());
      ++count;
    }
  row.experts_per_layer = count ? sum / static_cast<double>(count) : 0;
  return row;
}

// epwa bench --parallel 1,2,4,8: aggregate decode speed, time to first token
// and per-token latency for N sequences generated together.
int BenchBatch(const ModelFlags& model_flags, const std::vector<int>& counts, int32_t prompt_tokens,
               int32_t gen_tokens, int32_t repeats, int64_t batch_tokens, bool divergence, bool as_json) {
  const int max_n = *std::max_element(counts.begin(), counts.end());
  ModelFlags mf = model_flags;
  mf.parallel = max_n;
  // Every prompt of the largest batch fits one forward pass unless told
  // otherwise, so that all sequences start decoding in the same step.
  mf.batch_tokens = batch_tokens > 0 ? batch_tokens : static_cast<int64_t>(max_n) * prompt_tokens;
  if (mf.ctx == 0) mf.ctx = prompt_tokens + gen_tokens;
  auto engine = LoadEngine(mf, /*quiet=*/as_json);
  // Fixed pseudo-random prompts (ids away from the special tokens), one per sequence.
  const int64_t V = engine->config().vocab_size;
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(max_n));
  Rng rng(7);
  for (auto& p : prompts) {
    p.resize(static_cast<size_t>(prompt_tokens));
    for (auto& id : p) id = static_cast<int32_t>(3 + rng.Next() % static_cast<uint64_t>(V - 3));
  }
  GenerateOptions o;
  o.max_new_tokens = gen_tokens;
  o.ignore_eos = true;  // every sequence generates exactly gen_tokens
  o.sampler.temperature = 0.0f;
  o.sampler.repeat_penalty = 1.0f;

  std::vector<RecordedSequence> alone;
  if (divergence)
    alone = RecordGeneration(*engine, prompts, o, BatchOptions{.parallel = 1, .batch_tokens = mf.batch_tokens});

  json rows = json::array();
  double single = 0;
  for (int n : counts) {
    BatchRow best;
    std::vector<double> ttft, per_token;
    for (int r = 0; r < repeats; ++r) {
      BatchRow row = RunBatch(*engine, prompts, n, o, mf.batch_tokens);
      ttft.insert(ttft.end(), row.ttft_ms.begin(), row.ttft_ms.end());
      per_token.insert(per_token.end(), row.token_ms.begin(), row.token_ms.end());
      if (row.decode_tokens_per_s > best.decode_tokens_per_s) best = row;
    }
    if (n == 1) single = best.decode_tokens_per_s;
    json j{{"parallel", n},
           {"decode_tokens_per_s", best.decode_tokens_per_s},
           {"ratio_vs_single", single > 0 ? json(best.decode_tokens_per_s / single) : json(nullptr)},
           {"ttft_p50_ms", Percentile(ttft, 50)},
           {"ttft_p99_ms", Percentile(ttft, 99)},
           {"token_p50_ms", Percentile(per_token, 50)},
           {"token_p99_ms", Percentile(per_token, 99)},
           {"experts_per_layer_per_step", best.experts_per_layer},
           {"steps", best.steps}};
    if (divergence) {
      std::vector<std::vector<int32_t>> some(prompts.begin(), prompts.begin() + n);
      const std::vector<RecordedSequence> together =
          RecordGeneration(*engine, some, o, BatchOptions{.parallel = n, .batch_tokens = mf.batch_tokens});
      const DivergenceReport d =
          CompareGenerations(std::vector<RecordedSequence>(alone.begin(), alone.begin() + n), together);
      j["divergence"] = {{"sequences_with_other_tokens", d.token_diverged},
                         {"first_token_divergence", d.first_token_divergence},
                         {"steps_compared", d.steps_compared},
                         {"expert_choices_compared", d.expert_choices_compared},
                         {"expert_choices_differ", d.expert_choices_differ},
                         {"first_expert_divergence", d.first_expert_divergence},
                         {"max_abs_logit_diff", d.max_abs_logit_diff},
                         {"max_rel_logit_diff", d.max_rel_logit_diff},
                         {"flip_margins", d.flip_margins}};
    }
    rows.push_back(j);
  }
  if (as_json) {
    PrintJson(json{{"model", mf.model_dir},
                   {"isa", kernels::IsaName(kernels::ActiveIsa())},
                   {"threads", engine->threads()},
                   {"quant", engine->load_stats().quant_level},
                   {"prompt_tokens", prompt_tokens},
                   {"gen_tokens", gen_tokens},
                   {"batch_tokens", mf.batch_tokens},
                   {"repeats", repeats},
                   {"rows", rows}});
    return 0;
  }
  const ModelConfig& c = engine->config();
  std::printf("model   %s (%s, %lld layers, %lld experts top-%lld, %s), %d threads, %s\n",
              mf.model_dir.c_str(), c.architecture.c_str(), (long long)c.num_layers,
              (long long)c.num_experts, (long long)c.num_experts_per_tok,
              engine->load_stats().quant_level.c_str(), engine->threads(),
              kernels::IsaName(kernels::ActiveIsa()));
  std::printf("run     %d prompt tokens + %d generated per sequence, greedy, all submitted at once; "
              "best of %d (latencies pooled)\n\n", prompt_tokens, gen_tokens, repeats);
  std::printf("%8s %14s %8s %10s %10s %10s %10s %14s%s\n", "parallel", "decode_tok/s", "vs_1",
              "ttft_p50", "ttft_p99", "tok_p50", "tok_p99", "experts/layer",
              divergence ? "   divergence (tokens, experts, max|dlogit|)" : "");
  for (const json& j : rows) {
    std::string div;
    if (divergence) {
      const json& d = j["divergence"];
      std::ostringstream os;
      os << "   " << d["sequences_with_other_tokens"].get<int64_t>() << "/" << j["parallel"].get<int>()
         << " seqs, " << d["expert_choices_differ"].get<int64_t>() << "/"
         << d["expert_choices_compared"].get<int64_t>() << ", " << d["max_abs_logit_diff"].get<double>();
      div = os.str();
    }
    std::printf("%8d %14.2f %7.2fx %8.1fms %8.1fms %8.1fms %8.1fms %14.1f%s\n", j["parallel"].get<int>(),
                j["decode_tokens_per_s"].get<double>(),
                j["ratio_vs_single"].is_null() ? 0.0 : j["ratio_vs_single"].get<double>(),
                j["ttft_p50_ms"].get<double>(), j["ttft_p99_ms"].get<double>(),
                j["token_p50_ms"].get<double>(), j["token_p99_ms"].get<double>(),
                j["experts_per_layer_per_step"].get<double>(), div.c_str());
  }
  return 0;
}

}  // namespace

Runner RegisterBench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "prefill/decode tokens/s vs measured bandwidth and FMA peak");
  struct Flags {
    ModelFlags model;
    std::string out_dir = "build/bench-moe";
    int32_t prompt_tokens = 128;
    int32_t gen_tokens = 32;
    int32_t repeats = 3;
    bool json = false;
    std::string parallel;
    int64_t batch_tokens = 0;
    bool divergence = false;
  };
  auto f = std::make_shared<Flags>();
  AddModelFlags(cmd, &f->model);
  cmd->add_option("--out-dir", f->out_dir,
                  "where to synthesise the bench-moe model when -m is not given");
  cmd->add_option("--prompt-tokens", f->prompt_tokens, "prefill length")->check(CLI::Range(1, 8192));
  cmd->add_option("--gen-tokens", f->gen_tokens, "decode length")->check(CLI::Range(2, 8192));
  cmd->add_option("--repeats", f->repeats, "runs; the best is reported")->check(CLI::Range(1, 100));
  cmd->add_flag("--json", f->json, "print one JSON object");
  cmd->add_option("--parallel", f->parallel,
                  "continuous batching instead: for each count in a list such as 1,2,4,8, that many "
                  "sequences generated together (aggregate decode tok/s, ratio to 1, p50/p99 time to "
                  "first token and per-token latency)");
  cmd->add_option("--batch-tokens", f->batch_tokens,
                  "with --parallel: rows per forward pass (default: every prompt at once)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  cmd->add_flag("--divergence", f->divergence,
                "with --parallel: also generate each prompt alone and report how often tokens and "
                "chosen experts differ, and the largest logit difference");
  return [f]() {
    Require(f->parallel.empty() || f->repeats >= 1, "--repeats must be at least 1");
    Require(!f->parallel.empty() || (f->batch_tokens == 0 && !f->divergence),
            "--batch-tokens and --divergence go with --parallel");
    ModelFlags mf = f->model;
    if (mf.model_dir.empty()) {
      mf.model_dir = f->out_dir;
      if (!std::filesystem::exists(mf.model_dir + "/config.json")) {
        SynthOptions so;
        so.preset = "bench-moe";
        so.out_dir = mf.model_dir;
        so.force = true;
        std::fprintf(stderr, "bench: writing the bench-moe model to %s ...\n", so.out_dir.c_str());
        WriteSynthModel(so);
      }
    }
    if (!f->parallel.empty())
      return BenchBatch(mf, ParseCounts(f->parallel), f->prompt_tokens, f->gen_tokens, f->repeats,
                        f->batch_tokens, f->divergence, f->json);
    auto engine = LoadEngine(mf, /*quiet=*/f->json);
    ThreadPool pool(engine->threads());
    // This machine's memory bandwidth drifts with its neighbours' load, so
    // the probes run before and after the model and the higher figure is the
    // denominator: the reported fractions are, if anything, understated.
    double bandwidth = kernels::MeasureReadBandwidthGBs(pool);
    Peaks peaks{kernels::MeasureFmaPeakGflops(pool), kernels::MeasureInt8DotPeakGops(pool),
                kernels::MeasureBf16DotPeakGflops(pool)};
    const StepCost cost = CostOf(*engine);

    // A fixed pseudo-random prompt of the requested length (ids from the
    // middle of the vocabulary, away from special tokens).
    std::vector<int32_t> prompt(f->prompt_tokens);
    Rng rng(7);
    const int64_t V = engine->config().vocab_size;
    for (auto& id : prompt) id = static_cast<int32_t>(3 + rng.Next() % static_cast<uint64_t>(V - 3));
    GenerateOptions o;
    o.max_new_tokens = f->gen_tokens;
    o.sampler.temperature = 0.0f;
    o.sampler.repeat_penalty = 1.0f;
    double best_prefill = 0, best_decode = 0;
    for (int r = 0; r < f->repeats; ++r) {
      GenerateResult g = engine->Generate(prompt, o);
      best_prefill = std::max(best_prefill, g.stats.prefill_tokens_per_s);
      best_decode = std::max(best_decode, g.stats.decode_tokens_per_s);
    }
    bandwidth = std::max(bandwidth, kernels::MeasureReadBandwidthGBs(pool));
    peaks.fma_gflops = std::max(peaks.fma_gflops, kernels::MeasureFmaPeakGflops(pool));
    peaks.int8_gops = std::max(peaks.int8_gops, kernels::MeasureInt8DotPeakGops(pool));
    peaks.bf16_gflops = std::max(peaks.bf16_gflops, kernels::MeasureBf16DotPeakGflops(pool));
    // Attention reads the cache up to each step's position: on average the
    // prompt plus half the generated tokens, every layer's keys and values.
    const double mean_context = f->prompt_tokens + 0.5 * f->gen_tokens;
    const double kv_bytes = mean_context * static_cast<double>(KVCache::BytesFor(
                                               engine->config(), 1, engine->kv_cache_dtype()));
    const double decode_gbs = best_decode * (cost.decode_bytes + kv_bytes) / 1e9;
    // A decode step that reads less than about twice the last-level cache
    // finds part of its bytes still there from the step before (a 4-layer
    // OLMoE at int4 reads 359 MB a token; an Emerald Rapids L3 holds 300
    // MiB), so its share of the DRAM bandwidth reads high: say so.
    const uint64_t llc_bytes = ProbeLastLevelCacheBytes();
    const bool step_near_cache = llc_bytes > 0 && cost.decode_bytes + kv_bytes < 2.0 * static_cast<double>(llc_bytes);
    const double prefill_gflops = best_prefill *
                                  (cost.flops_per_token + cost.lm_head_flops / f->prompt_tokens +
                                   cost.AttentionFlopsPerToken(f->prompt_tokens)) /
                                  1e9;
    const double prefill_limit = PrefillLimitTokensPerS(cost, peaks, f->prompt_tokens);
    // The other limit a prefill meets: it must read its weights once, which
    // at a few dozen rows per expert (an MoE prompt of a hundred tokens, or
    // the tile unit's speed) takes longer than their products.
    const double prefill_bytes = cost.PrefillBytes(f->prompt_tokens);
    const double prefill_read_limit = prefill_bytes > 0 ? f->prompt_tokens / (prefill_bytes / (bandwidth * 1e9)) : 0.0;
    // The instruction that does most of the prefill's work, to name the limit.
    kernels::PrefillDot main_dot = kernels::PrefillDot::kFp32Fma;
    double most = 0;
    for (const auto& [dot, flops] : cost.flops_by_dot)
      if (flops > most) most = flops, main_dot = dot;
    json j{{"model", mf.model_dir},
           {"isa", kernels::IsaName(kernels::ActiveIsa())},
           {"threads", engine->threads()},
           {"weight_bytes", engine->tensors().TotalBytes()},
           {"decode_bytes_per_token", cost.decode_bytes},
           {"decode_kv_cache_bytes_per_token", kv_bytes},
           {"kv_cache", KvCacheTypeName(engine->kv_cache_dtype())},
           {"measured_read_bandwidth_gbs", bandwidth},
           {"measured_fma_peak_gflops", peaks.fma_gflops},
           {"measured_int8_dot_peak_gops", peaks.int8_gops},
           {"measured_bf16_dot_peak_gflops", peaks.bf16_gflops},
           {"prefill_instruction", kernels::PrefillDotName(main_dot)},
           {"prefill_limit_tokens_per_s", prefill_limit},
           {"prefill_tokens", f->prompt_tokens},
           {"prefill_tokens_per_s", best_prefill},
           {"prefill_gflops", prefill_gflops},
           {"prefill_attention_flops_per_token", cost.AttentionFlopsPerToken(f->prompt_tokens)},
           {"prefill_fraction_of_peak", prefill_limit > 0 ? best_prefill / prefill_limit : 0.0},
           {"prefill_fraction_of_fma_peak", prefill_gflops / peaks.fma_gflops},
           {"prefill_weight_bytes", prefill_bytes},
           {"prefill_read_limit_tokens_per_s", prefill_read_limit},
           {"prefill_fraction_of_read_limit", prefill_read_limit > 0 ? best_prefill / prefill_read_limit : 0.0},
           {"decode_tokens", f->gen_tokens},
           {"decode_tokens_per_s", best_decode},
           {"decode_gbs", decode_gbs},
           {"decode_fraction_of_bandwidth", decode_gbs / bandwidth},
           {"last_level_cache_bytes", llc_bytes},
           {"decode_step_within_twice_last_level_cache", step_near_cache}};
    if (f->json) {
      PrintJson(j);
      return 0;
    }
    std::printf("model      %s (%.0f MB of weights, %.0f MB streamed per decoded token)\n",
                mf.model_dir.c_str(), engine->tensors().TotalBytes() / 1e6, cost.decode_bytes / 1e6);
    std::printf("machine    %d threads, %s; measured read bandwidth %.1f GB/s, peaks: fp32 FMA %.1f GFLOP/s, "
                "int8 dot %.1f GOP/s, bf16 dot %.1f GFLOP/s\n",
                engine->threads(), kernels::IsaName(kernels::ActiveIsa()), bandwidth, peaks.fma_gflops,
                peaks.int8_gops, peaks.bf16_gflops);
    std::printf("prefill    %d tokens: %.1f tok/s, %.1f GOP/s = %.0f%% of the %s peak (limit %.0f tok/s; %.0f%% of "
                "the fp32 FMA peak)\n",
                f->prompt_tokens, best_prefill, prefill_gflops, 100 * best_prefill / prefill_limit,
                kernels::PrefillDotName(main_dot), prefill_limit, 100 * prefill_gflops / peaks.fma_gflops);
    std::printf("           reads %.0f MB of weights: %.0f%% of what the read bandwidth allows (%.0f tok/s)\n",
                prefill_bytes / 1e6, 100 * best_prefill / prefill_read_limit, prefill_read_limit);
    std::printf("decode     %d tokens: %.2f tok/s, %.2f GB/s = %.0f%% of read bandwidth (per token %.0f MB of "
                "weights and %.0f MB of %s KV cache)\n",
                f->gen_tokens, best_decode, decode_gbs, 100 * decode_gbs / bandwidth, cost.decode_bytes / 1e6,
                kv_bytes / 1e6, KvCacheTypeName(engine->kv_cache_dtype()));
    if (step_near_cache) {
      std::printf("           a step's %.0f MB are under twice the %.0f MB last-level cache: part of them may come "
                  "from it, so the share of the read bandwidth reads high\n",
                  (cost.decode_bytes + kv_bytes) / 1e6, static_cast<double>(llc_bytes) / 1e6);
    }
    return 0;
  };
}

}  // namespace epwa::cli
