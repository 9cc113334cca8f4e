// Watermark flags and reports shared by `run` and `detect`.
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "base/error.h"
#include "cli.h"

namespace epwa::cli {

CLI::Validator FiniteNumber() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        // Only a value that parses as a number is judged here; anything else
        // is left to the option's own conversion, which names the problem.
        char* end = nullptr;
        const double v = std::strtod(text.c_str(), &end);
        if (end == text.c_str() || *end != '\0') return std::string();
        return std::isfinite(v) ? std::string() : "must be a finite number, not " + text;
      },
      "FINITE");
}

void AddWatermarkFlags(CLI::App* cmd, WatermarkFlags* f, bool generation) {
  f->scheme_option = cmd->add_option(
      "--watermark", f->scheme,
      generation ? "embed a watermark: EPW-A v1 gsg (router-keyed, fixed delta) or ewp (router-keyed, delta "
                   "weighted by router confidence); EPW-A v2 epw2-et (keyed by the first MoE layer's expert "
                   "and the previous token: the most robust), epw2-minhash or epw2-votes; or kgw "
                   "(previous-token baseline)"
                 : "the scheme to test for: epw2-et (default), epw2-minhash, epw2-votes, gsg or ewp (v1: "
                   "the same router-keyed green lists; name it to find text marked before v2) or kgw");
  f->needs_scheme.push_back(cmd->add_option(
      "--key-file", f->key_file, "secret key file from epwa keygen (default: $EPWA_KEY_FILE)"));
  f->needs_scheme.push_back(
      cmd->add_option("--gamma", f->gamma, "fraction of the vocabulary that is green (default 0.25)")
          ->check(FiniteNumber()));
  f->needs_scheme.push_back(cmd->add_option(
      "--router-layer", f->router_layer,
      "MoE layer whose router keys the green lists: 0-based, negative from the end (default: -1, "
      "the last, for gsg/ewp; 0, the first, for epw2-et)"));
  if (generation) {
    f->needs_scheme.push_back(
        cmd->add_option("--delta", f->delta, "logit bias added to green tokens (default 2.0)")
            ->check(FiniteNumber()));
    f->needs_scheme.push_back(cmd->add_option(
        "--expert-deltas", f->expert_deltas,
        "EWP: JSON array with one base delta per expert (default: 2 x delta for each)"));
  }
}

wm::SecretKey LoadKey(const WatermarkFlags& flags) {
  return wm::SecretKey::FromFile(wm::ResolveKeyPath(flags.key_file, std::getenv("EPWA_KEY_FILE")));
}

wm::WatermarkParams WatermarkParamsFrom(const WatermarkFlags& flags, const Engine& engine) {
  wm::WatermarkParams p;
  p.scheme = flags.scheme.empty() ? wm::kDefaultScheme : wm::ParseScheme(flags.scheme);
  p.gamma = flags.gamma;
  p.delta = flags.delta;
  p.router_layer = flags.router_layer;
  if (!flags.expert_deltas.empty()) {
    Require(p.scheme == wm::Scheme::kEwp, "--expert-deltas only applies to --watermark ewp");
    p.expert_deltas = wm::ReadExpertDeltas(flags.expert_deltas, engine.config().num_experts);
  }
  return p;
}

std::unique_ptr<wm::WatermarkProcessor> MakeWatermark(const WatermarkFlags& flags, const Engine& engine) {
  if (flags.scheme.empty()) {
    for (const CLI::Option* o : flags.needs_scheme)
      Require(o->count() == 0, o->get_name() + " only applies with --watermark");
    return nullptr;
  }
  const wm::WatermarkParams params = WatermarkParamsFrom(flags, engine);
  const wm::SecretKey key = LoadKey(flags);
  return std::make_unique<wm::WatermarkProcessor>(key, params, engine.config(),
                                                  engine.load_stats().router_hash);
}

json WatermarkJson(const wm::WatermarkProcessor& w, const Engine& engine) {
  const wm::WatermarkParams& p = w.params();
  json j{{"scheme", wm::SchemeName(p.scheme)},
         {"version", wm::SchemeVersion(p.scheme)},
         {"gamma", p.gamma},
         {"delta", p.delta},
         {"steps", w.steps()},
         {"mean_bias", w.mean_bias()}};
  if (p.scheme != wm::Scheme::kKgw) {
    j["router_layer"] = w.router_slot();
    j["router_hash"] = engine.load_stats().router_hash;
    j["experts_used"] = w.experts_used();
  }
  if (p.scheme == wm::Scheme::kEwp) j["expert_deltas"] = p.expert_deltas;
  return j;
}

void PrintWatermarkLine(const wm::WatermarkProcessor& w, const Engine& engine) {
  const wm::WatermarkParams& p = w.params();
  std::string keyed = "the previous token";
  if (p.scheme != wm::Scheme::kKgw)
    keyed = "router layer " + std::to_string(w.router_slot()) + " (IRSH " +
            engine.load_stats().router_hash.substr(0, 16) + "...)";
  std::fprintf(stderr, "watermark: %s (%s), gamma %.3g, delta %.3g, keyed by %s; %lld steps, mean bias %.3f\n",
               wm::SchemeName(p.scheme), wm::SchemeVersion(p.scheme), p.gamma, p.delta, keyed.c_str(),
               static_cast<long long>(w.steps()), w.mean_bias());
}

}  // namespace epwa::cli
