// epwa bench: prefill and decode speed on a model large enough to leave the
// caches, set against the machine's own measured limits (read bandwidth for
// decode, fp32 FMA peak for prefill) in the same run.
#include <cstdio>
#include <filesystem>

#include "base/error.h"
#include "base/timer.h"
#include "cli.h"
#include "kernels/kernels.h"
#include "synth/synth.h"

namespace epwa::cli {
namespace {

// Bytes of weights one decode step streams, and multiply-adds per token.
struct StepCost {
  double decode_bytes = 0;       // weights read per decoded token
  double flops_per_token = 0;    // 2 x multiply-adds of the matrix products per prompt token
  double lm_head_flops = 0;      // once per forward (only the last row's logits are needed)
};

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
    const double expert = bytes(e.gate) + bytes(e.up) + bytes(e.down);
    const double expert_params = static_cast<double>(3 * e.gate.rows * e.gate.cols);
    const double used = c.IsMoe() ? static_cast<double>(c.num_experts_per_tok) : 1.0;
    cost.decode_bytes += attn + used * expert + l.router.size() * sizeof(float);
    cost.flops_per_token += 2.0 * (attn_params + used * expert_params +
                                   static_cast<double>(l.router.size()));
  }
  cost.decode_bytes += bytes(w.lm_head);
  cost.lm_head_flops = 2.0 * static_cast<double>(w.lm_head.rows * w.lm_head.cols);
  return cost;
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
  };
  auto f = std::make_shared<Flags>();
  AddModelFlags(cmd, &f->model);
  cmd->add_option("--out-dir", f->out_dir,
                  "where to synthesise the bench-moe model when -m is not given");
  cmd->add_option("--prompt-tokens", f->prompt_tokens, "prefill length")->check(CLI::Range(1, 8192));
  cmd->add_option("--gen-tokens", f->gen_tokens, "decode length")->check(CLI::Range(2, 8192));
  cmd->add_option("--repeats", f->repeats, "runs; the best is reported")->check(CLI::Range(1, 100));
  cmd->add_flag("--json", f->json, "print one JSON object");
  return [f]() {
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
    auto engine = LoadEngine(mf, /*quiet=*/f->json);
    ThreadPool pool(engine->threads());
    // This machine's memory bandwidth drifts with its neighbours' load, so
    // the probes run before and after the model and the higher figure is the
    // denominator: the reported fractions are, if anything, understated.
    double bandwidth = kernels::MeasureReadBandwidthGBs(pool);
    double peak = kernels::MeasureFmaPeakGflops(pool);
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
    peak = std::max(peak, kernels::MeasureFmaPeakGflops(pool));
    const double decode_gbs = best_decode * cost.decode_bytes / 1e9;
    const double prefill_gflops =
        best_prefill * (cost.flops_per_token + cost.lm_head_flops / f->prompt_tokens) / 1e9;
    json j{{"model", mf.model_dir},
           {"isa", kernels::IsaName(kernels::ActiveIsa())},
           {"threads", engine->threads()},
           {"weight_bytes", engine->tensors().TotalBytes()},
           {"decode_bytes_per_token", cost.decode_bytes},
           {"measured_read_bandwidth_gbs", bandwidth},
           {"measured_fma_peak_gflops", peak},
           {"prefill_tokens", f->prompt_tokens},
           {"prefill_tokens_per_s", best_prefill},
           {"prefill_gflops", prefill_gflops},
           {"prefill_fraction_of_peak", prefill_gflops / peak},
           {"decode_tokens", f->gen_tokens},
           {"decode_tokens_per_s", best_decode},
           {"decode_gbs", decode_gbs},
           {"decode_fraction_of_bandwidth", decode_gbs / bandwidth}};
    if (f->json) {
      PrintJson(j);
      return 0;
    }
    std::printf("model      %s (%.0f MB of weights, %.0f MB streamed per decoded token)\n",
                mf.model_dir.c_str(), engine->tensors().TotalBytes() / 1e6, cost.decode_bytes / 1e6);
    std::printf("machine    %d threads, %s; measured read bandwidth %.1f GB/s, fp32 FMA peak %.1f GFLOP/s\n",
                engine->threads(), kernels::IsaName(kernels::ActiveIsa()), bandwidth, peak);
    std::printf("prefill    %d tokens: %.1f tok/s, %.1f GFLOP/s = %.0f%% of FMA peak\n",
                f->prompt_tokens, best_prefill, prefill_gflops, 100 * prefill_gflops / peak);
    std::printf("decode     %d tokens: %.2f tok/s, %.2f GB/s = %.0f%% of read bandwidth\n",
                f->gen_tokens, best_decode, decode_gbs, 100 * decode_gbs / bandwidth);
    return 0;
  };
}

}  // namespace epwa::cli
