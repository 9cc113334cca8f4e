// epwa eval watermark: the watermark's evaluation protocol on a model
// (src/watermark/evaluate.h): detection rates, false alarms on human and
// unwatermarked text, z distributions, expert recovery and decode cost.
#include <cmath>
#include <cstdio>
#include <sstream>

#include "base/error.h"
#include "base/file_read.h"
#include "cli.h"
#include "watermark/evaluate.h"

namespace epwa::cli {
namespace {

void PrintZ(const char* what, const wm::ZSet& s, double threshold) {
  const json j = s.Json(threshold);
  if (s.z.empty()) {
    std::printf("  %-34s no scorable texts\n", what);
    return;
  }
  std::printf("  %-34s %4zu texts  detected %4d (%5.1f%%)  z mean %6.2f sd %5.2f  median %6.2f  "
              "p5 %6.2f  p95 %6.2f  max %6.2f\n",
              what, s.z.size(), s.Detected(threshold), 100.0 * j["rate"].get<double>(),
              j["mean"].get<double>(), j["sd"].get<double>(), j["median"].get<double>(),
              j["p05"].get<double>(), j["p95"].get<double>(), j["max"].get<double>());
}

}  // namespace

Runner RegisterEvalWatermark(CLI::App& eval, CLI::App** out_cmd) {
  auto* cmd = eval.add_subcommand(
      "watermark", "round trip, false alarms, z distributions, expert recovery and decode cost of "
                   "the watermark on a model");
  *out_cmd = cmd;
  struct Flags {
    ModelFlags model;
    std::string key_file, human = "data/heldout/jargon.txt", oracle_file, schemes = "gsg,ewp,kgw";
    std::string substitution = "0.1,0.2,0.3";
    std::string detect_quant;
    wm::EvalOptions o;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  AddModelFlags(cmd, &f->model);
  cmd->add_option("--key-file", f->key_file,
                  "secret key (default: the public evaluation key, so figures can be rerun)");
  cmd->add_option("--human", f->human, "held-out human text (default data/heldout/jargon.txt)");
  cmd->add_option("--schemes", f->schemes, "comma-separated schemes to generate (default gsg,ewp,kgw)");
  cmd->add_option("--generations", f->o.generations, "watermarked texts per scheme (default 100)")
      ->check(CLI::Range(1, 1000000));
  cmd->add_option("--tokens", f->o.new_tokens, "tokens per generation (default 200)")->check(CLI::Range(16, 100000));
  cmd->add_option("--null-generations", f->o.null_generations, "unwatermarked texts (default 200)")
      ->check(CLI::Range(0, 1000000));
  cmd->add_option("--paragraphs", f->o.human_paragraphs, "human paragraphs (default 1000)")
      ->check(CLI::Range(0, 10000000));
  cmd->add_option("--gamma", f->o.gamma, "green fraction (default 0.25)")->check(FiniteNumber());
  cmd->add_option("--delta", f->o.delta, "bias (default 2.0)")->check(FiniteNumber());
  cmd->add_option("--router-layer", f->o.router_layer, "MoE layer keying the lists (default -1)");
  cmd->add_option("--z-threshold", f->o.detect.z_threshold, "detection threshold (default 4)")
      ->check(FiniteNumber());
  cmd->add_option("--oracle", f->oracle_file, "also evaluate PEPI with this oracle");
  cmd->add_option("--seed", f->o.seed, "first sampler seed (default 1)")->transform(Uint64Number());
  cmd->add_option("--substitution", f->substitution,
                  "fractions of generated tokens replaced by random ids, comma-separated (default "
                  "0.1,0.2,0.3; empty: none)");
  cmd->add_option("--detect-quant", f->detect_quant,
                  "also detect with the model loaded at this level (int8, int4, ...): router flips "
                  "between precisions");
  cmd->add_option("--detect-min-margin", f->o.other_min_margin,
                  "router margin filter for --detect-quant (default 0.1)")
      ->check(FiniteNumber() & CLI::Range(0.0, 1.0));
  cmd->add_flag("--json", f->json, "print one JSON object");
  return [f]() {
    f->o.schemes.clear();
    std::stringstream ss(f->schemes);
    for (std::string s; std::getline(ss, s, ',');) f->o.schemes.push_back(wm::ParseScheme(s));
    f->o.human_text = ReadRegularFile(f->human, kMaxTextInputBytes, "the --human text");
    std::stringstream rates(f->substitution);
    for (std::string r; std::getline(rates, r, ',');) {
      double v = -1;
      try {
        v = std::stod(r);
      } catch (const std::exception&) {
      }
      Require(v > 0 && v < 1, "--substitution takes fractions between 0 and 1, got '" + r + "'");
      f->o.substitution_rates.push_back(v);
    }
    if (f->model.ctx == 0) f->model.ctx = 512;
    auto engine = LoadEngine(f->model, /*quiet=*/f->json);
    std::optional<wm::ExpertOracle> oracle;
    if (!f->oracle_file.empty()) {
      oracle = wm::ExpertOracle::Load(f->oracle_file);
      Require(oracle->info().router_hash == engine->load_stats().router_hash,
              "the oracle was trained on another model");
      f->o.oracle = &*oracle;
    }
    std::unique_ptr<Engine> other;
    if (!f->detect_quant.empty()) {
      ModelFlags m = f->model;
      m.quant = f->detect_quant;
      other = LoadEngine(m, /*quiet=*/true);
      f->o.other_engine = other.get();
    }
    const wm::SecretKey key = f->key_file.empty() ? wm::EvaluationKey() : wm::SecretKey::FromFile(f->key_file);
    if (!f->json) f->o.progress = [](const std::string& s) { std::fprintf(stderr, "eval: %s...\n", s.c_str()); };
    const wm::EvalReport r = wm::EvaluateWatermark(*engine, key, f->o);
    json j = r.Json(f->o);
    j["model_dir"] = f->model.model_dir;
    j["quant"] = engine->load_stats().quant_level;
    j["key"] = f->key_file.empty() ? "public evaluation key" : "from --key-file";
    if (f->json) {
      PrintJson(j);
      return 0;
    }
    const double t = f->o.detect.z_threshold;
    std::printf("gamma %.2f, delta %.1f, %d tokens per text, z threshold %.1f, dedup on, weights %s\n",
                f->o.gamma, f->o.delta, f->o.new_tokens, t, engine->load_stats().quant_level.c_str());
    for (const wm::SchemeEval& s : r.schemes) {
      std::printf("%s: %d watermarked generations (mean bias %.2f, identical to unwatermarked: %d; "
                  "%.1f distinct scored pairs per text)\n",
                  wm::SchemeName(s.scheme), f->o.generations, s.mean_bias, s.identical_to_plain,
                  s.mean_scored_pairs);
      PrintZ("full, with prompt", s.full_prompt, t);
      PrintZ("full, without prompt", s.full_no_prompt, t);
      for (size_t a = 0; a < s.substituted.size(); ++a) {
        const std::string what = std::to_string(static_cast<int>(std::lround(100 * f->o.substitution_rates[a]))) +
                                 "% of tokens substituted";
        PrintZ(what.c_str(), s.substituted[a], t);
      }
      if (s.scheme == wm::Scheme::kKgw) continue;
      PrintZ("cspv (sample)", s.cspv, t);
      if (oracle) PrintZ("pepi", s.pepi, t);
      if (other) {
        const std::string lvl = "detected at " + other->load_stats().quant_level;
        PrintZ(lvl.c_str(), s.other_level, t);
        char what[96];
        std::snprintf(what, sizeof what, "  ... with --min-margin %.2f", f->o.other_min_margin);
        PrintZ(what, s.other_level_margin, t);
        std::printf("  experts at %s agree with %s on %.2f%% of tokens; %.2f%% of the %.1f%% above the "
                    "margin\n",
                    other->load_stats().quant_level.c_str(), engine->load_stats().quant_level.c_str(),
                    100 * s.other_level_expert_agreement, 100 * s.other_level_expert_agreement_margin,
                    100 * s.other_level_margin_kept);
      }
      PrintZ("misaligned: expert at t (original)", s.shift0, t);
      PrintZ("misaligned: expert at t-2", s.shift2, t);
      PrintZ("misaligned at t, expert changed", s.shift0_changed, t);
      std::printf("  the router keeps its expert from one position to the next %.1f%% of the time\n",
                  100 * s.adjacent_same_expert);
      std::printf("  expert recovery: %.1f%% with the prompt, %.1f%% without%s\n",
                  100 * s.expert_recovery_prompt, 100 * s.expert_recovery_no_prompt,
                  oracle ? (", PEPI oracle agrees " + std::to_string(100 * s.pepi_agreement).substr(0, 4) + "%").c_str() : "");
    }
    std::printf("held-out human paragraphs (%lld used, %lld too short):\n",
                (long long)r.human_paragraphs_used, (long long)r.human_paragraphs_skipped);
    PrintZ("full (dedup)", r.human_full, t);
    PrintZ("full without dedup", r.human_no_dedup, t);
    PrintZ("cspv", r.human_cspv, t);
    if (oracle) PrintZ("pepi", r.human_pepi, t);
    PrintZ("kgw", r.human_kgw, t);
    std::printf("unwatermarked generations:\n");
    PrintZ("full (dedup)", r.plain_full, t);
    PrintZ("full without dedup", r.plain_no_dedup, t);
    PrintZ("cspv", r.plain_cspv, t);
    if (oracle) PrintZ("pepi", r.plain_pepi, t);
    PrintZ("kgw", r.plain_kgw, t);
    std::printf("decode: %.3f ms/token unwatermarked", r.plain_decode_ms_per_token);
    for (const wm::SchemeEval& s : r.schemes)
      std::printf(", %s %.3f (%+.1f%%)", wm::SchemeName(s.scheme), s.decode_ms_per_token,
                  100 * (s.decode_ms_per_token / r.plain_decode_ms_per_token - 1));
    std::printf("\n%.1f s in all\n", r.seconds);
    return 0;
  };
}

}  // namespace epwa::cli
