#include "watermark/evaluate.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "base/error.h"
#include "base/sha256.h"
#include "base/text.h"
#include "base/timer.h"
#include "watermark/pipeline.h"

namespace epwa::wm {

int ZSet::Detected(double threshold) const {
  return static_cast<int>(std::count_if(z.begin(), z.end(), [&](double v) { return v > threshold; }));
}

nlohmann::json ZSet::Json(double threshold) const {
  nlohmann::json j{{"n", z.size()}, {"too_short", too_short}, {"detected", Detected(threshold)}};
  if (z.empty()) return j;
  std::vector<double> s = z;
  std::sort(s.begin(), s.end());
  const double mean = std::accumulate(s.begin(), s.end(), 0.0) / s.size();
  double var = 0;
  for (double v : s) var += (v - mean) * (v - mean);
  auto q = [&](double p) { return s[static_cast<size_t>(std::round(p * (s.size() - 1)))]; };
  j["rate"] = static_cast<double>(Detected(threshold)) / s.size();
  j["mean"] = mean;
  j["sd"] = s.size() > 1 ? std::sqrt(var / (s.size() - 1)) : 0.0;
  j["min"] = s.front();
  j["p05"] = q(0.05);
  j["median"] = q(0.5);
  j["p95"] = q(0.95);
  j["max"] = s.back();
  return j;
}

SecretKey EvaluationKey() {
  Sha256 sha;
  const std::string text = "epwa evaluation key";
  sha.Add(text.data(), text.size());
  const std::string hex = sha.Hex();
  std::vector<uint8_t> bytes;
  for (size_t i = 0; i < 64; i += 2) bytes.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return SecretKey::FromBytes(bytes);
}

std::vector<std::string> Paragraphs(const std::string& text) {
  std::vector<std::string> out;
  std::string current;
  std::stringstream ss(text);
  for (std::string line; std::getline(ss, line);) {
    if (TrimWhitespace(line).empty()) {
      if (!TrimWhitespace(current).empty()) out.push_back(std::string(TrimWhitespace(current)));
      current.clear();
    } else {
      current += line;
      current += '\n';
    }
  }
  if (!TrimWhitespace(current).empty()) out.push_back(std::string(TrimWhitespace(current)));
  return out;
}

namespace {

// Tokens a detector scores on one input (distinct pairs after dedup).
int64_t ScoredOf(std::span<const TokenScore> tokens, double p0, const DetectOptions& o) {
  return Summarize(tokens, p0, o).scored;
}

// z of one detector on one input; nullopt when too short to score.
std::optional<double> ZOf(std::span<const TokenScore> tokens, double p0, const DetectOptions& o) {
  const Summary s = Summarize(tokens, p0, o);
  if (s.scored < o.min_tokens) return std::nullopt;
  return s.z;
}
void Add(ZSet& set, std::optional<double> z) {
  if (z) set.z.push_back(*z);
  else ++set.too_short;
}

struct Detectors {
  Engine& engine;
  const EvalOptions& o;
  GreenLists expert_lists;
  GreenLists kgw_lists;
  int slot;

  // Full, no-dedup, CSPV and PEPI z of one input, plus the per-position
  // experts recovered by the forward pass ([T], -1 where unknown) and the
  // oracle's predictions.
  struct Result {
    std::optional<double> full, no_dedup, cspv, pepi, kgw, shift0, shift2, shift0_changed;
    int64_t scored = 0;  // distinct (expert, token) pairs scored by `full`
    int64_t adjacent_same = 0, adjacent = 0;  // positions whose expert equals the previous one's
    std::vector<int32_t> experts, predicted;
  };
  Result Run(const DetectInput& in, bool all) {
    Result r;
    ScoreResult pass;
    const auto tokens = ScoreInput(engine, in, expert_lists, slot, 1, &pass);
    const double p0 = expert_lists.p0();
    r.full = ZOf(tokens, p0, o.detect);
    r.scored = ScoredOf(tokens, p0, o.detect);
    r.kgw = ZOf(ScoreByPreviousToken(in.ids, in.first, kgw_lists), kgw_lists.p0(), o.detect);
    const int64_t T = static_cast<int64_t>(in.ids.size());
    r.experts.assign(static_cast<size_t>(T), -1);
    for (int64_t t = 0; t < T; ++t) r.experts[t] = ChooseExpert(pass.routing, t, slot).expert;
    if (!all) return r;
    DetectOptions nd = o.detect;
    nd.dedup = false;
    r.no_dedup = ZOf(tokens, p0, nd);
    const CspvResult c = Cspv(tokens, p0, o.detect, o.cspv_sample, o.seed);
    if (c.population >= o.detect.min_tokens) r.cspv = c.sample.z;
    const auto shift0 = ScoreByRouting(in.ids, in.first, pass.routing, slot, expert_lists, 0);
    r.shift0 = ZOf(shift0, p0, o.detect);
    // The router often keeps its expert from one position to the next, and
    // there the misaligned pairing happens to use the right list. Where the
    // expert changed, misalignment must score at chance.
    std::vector<TokenScore> changed;
    for (const TokenScore& s : shift0) {
      if (s.position < 1) continue;
      const bool same = r.experts[s.position] == r.experts[s.position - 1];
      r.adjacent_same += same;
      ++r.adjacent;
      if (!same) changed.push_back(s);
    }
    r.shift0_changed = ZOf(changed, p0, o.detect);
    r.shift2 = ZOf(ScoreByRouting(in.ids, in.first, pass.routing, slot, expert_lists, 2), p0, o.detect);
    if (o.oracle) {
      r.predicted = PredictExperts(*o.oracle, pass, engine.config().vocab_size, in.first);
      r.pepi = ZOf(ScoreBySeeds(in.ids, in.first, r.predicted, expert_lists), p0, o.detect);
    }
    return r;
  }
};

void AddAll(const Detectors::Result& r, ZSet& full, ZSet& no_dedup, ZSet& cspv, ZSet& pepi, ZSet& kgw,
            bool with_pepi) {
  Add(full, r.full);
  Add(no_dedup, r.no_dedup);
  Add(cspv, r.cspv);
  if (with_pepi) Add(pepi, r.pepi);
  Add(kgw, r.kgw);
}

}  // namespace

nlohmann::json EvalReport::Json(const EvalOptions& o) const {
  const double t = o.detect.z_threshold;
  nlohmann::json schemes_json = nlohmann::json::array();
  for (const SchemeEval& s : schemes) {
    nlohmann::json j{{"scheme", SchemeName(s.scheme)},
                     {"full_with_prompt", s.full_prompt.Json(t)},
                     {"full_without_prompt", s.full_no_prompt.Json(t)},
                     {"mean_bias", s.mean_bias},
                     {"mean_scored_pairs", s.mean_scored_pairs},
                     {"identical_to_plain", s.identical_to_plain},
                     {"decode_ms_per_token", s.decode_ms_per_token}};
    if (s.scheme != Scheme::kKgw) {
      j["misaligned_shift0"] = s.shift0.Json(t);
      j["misaligned_shift2"] = s.shift2.Json(t);
      j["misaligned_shift0_expert_changed"] = s.shift0_changed.Json(t);
      j["adjacent_same_expert"] = s.adjacent_same_expert;
      j["cspv"] = s.cspv.Json(t);
      j["expert_recovery_with_prompt"] = s.expert_recovery_prompt;
      j["expert_recovery_without_prompt"] = s.expert_recovery_no_prompt;
    }
    for (size_t a = 0; a < s.substituted.size(); ++a)
      j["substituted_" + std::to_string(static_cast<int>(std::lround(100 * o.substitution_rates[a]))) + "pct"] =
          s.substituted[a].Json(t);
    if (o.other_engine && s.scheme != Scheme::kKgw) {
      j["other_level"] = {{"level", o.other_engine->load_stats().quant_level},
                          {"full", s.other_level.Json(t)},
                          {"full_min_margin", s.other_level_margin.Json(t)},
                          {"min_margin", o.other_min_margin},
                          {"expert_agreement", s.other_level_expert_agreement},
                          {"expert_agreement_above_margin", s.other_level_expert_agreement_margin},
                          {"tokens_above_margin", s.other_level_margin_kept}};
    }
    if (o.oracle && s.scheme != Scheme::kKgw) {
      j["pepi"] = s.pepi.Json(t);
      j["pepi_expert_agreement"] = s.pepi_agreement;
    }
    schemes_json.push_back(j);
  }
  nlohmann::json human{{"full", human_full.Json(t)}, {"full_no_dedup", human_no_dedup.Json(t)},
                       {"cspv", human_cspv.Json(t)}, {"kgw", human_kgw.Json(t)},
                       {"paragraphs", human_paragraphs_used}, {"paragraphs_too_short", human_paragraphs_skipped}};
  nlohmann::json plain{{"full", plain_full.Json(t)}, {"full_no_dedup", plain_no_dedup.Json(t)},
                       {"cspv", plain_cspv.Json(t)}, {"kgw", plain_kgw.Json(t)}};
  if (o.oracle) {
    human["pepi"] = human_pepi.Json(t);
    plain["pepi"] = plain_pepi.Json(t);
  }
  nlohmann::json j{{"gamma", o.gamma},
                   {"delta", o.delta},
                   {"new_tokens", o.new_tokens},
                   {"generations_per_scheme", o.generations},
                   {"z_threshold", t},
                   {"min_tokens", o.detect.min_tokens},
                   {"cspv_sample", o.cspv_sample},
                   {"schemes", schemes_json},
                   {"human", human},
                   {"unwatermarked_generations", plain},
                   {"plain_decode_ms_per_token", plain_decode_ms_per_token},
                   {"seconds", seconds}};
  if (o.oracle)
    j["oracle"] = {{"heldout_accuracy", o.oracle->info().heldout_examples > 0
                                            ? nlohmann::json(o.oracle->info().heldout_accuracy)
                                            : nlohmann::json()},
                   {"chance", 1.0 / o.oracle->info().num_experts},
                   {"top_k", o.oracle->info().top_k}};
  return j;
}

EvalReport EvaluateWatermark(Engine& engine, const SecretKey& key, const EvalOptions& o) {
  Stopwatch total;
  EvalReport report;
  const ModelConfig& c = engine.config();
  Require(c.IsMoe(), "the watermark evaluation needs an MoE model");
  const std::string& hash = engine.load_stats().router_hash;
  Detectors det{engine, o, GreenLists(key, KeyedBy::kExpert, hash, c.vocab_size, o.gamma),
                GreenLists(key, KeyedBy::kPreviousToken, "", c.vocab_size, o.gamma),
                ResolveRouterLayer(o.router_layer, c.NumMoeLayers())};
  auto note = [&](const std::string& s) {
    if (o.progress) o.progress(s);
  };

  const std::vector<std::string> paragraphs = Paragraphs(o.human_text);
  Require(!paragraphs.empty(), "the held-out text has no paragraphs");
  // Prompts: the first words of successive paragraphs.
  std::vector<std::string> prompts;
  for (const std::string& p : paragraphs) {
    std::stringstream ss(p);
    std::string word, prompt;
    for (int w = 0; w < o.prompt_words && ss >> word; ++w) prompt += (w ? " " : "") + word;
    if (!prompt.empty()) prompts.push_back(prompt);
  }
  const int64_t plan_ctx = engine.load_stats().plan_ctx;

  GenerateOptions base;
  base.max_new_tokens = o.new_tokens;
  base.ignore_eos = true;
  const GenerationDefaults& d = engine.defaults();
  if (d.temperature) base.sampler.temperature = *d.temperature;
  if (d.top_k) base.sampler.top_k = *d.top_k;
  if (d.top_p) base.sampler.top_p = *d.top_p;

  // Unwatermarked generations first: they are negatives, and the reference
  // the guard compares watermarked text with.
  const int n_plain = std::max(o.null_generations, o.generations);
  std::vector<std::vector<int32_t>> plain_tokens(static_cast<size_t>(n_plain));
  std::vector<std::vector<int32_t>> prompt_ids(static_cast<size_t>(n_plain));
  double plain_decode_ms = 0;
  int64_t plain_decoded = 0;
  note("unwatermarked generations");
  for (int i = 0; i < n_plain; ++i) {
    prompt_ids[i] = engine.EncodePrompt(prompts[static_cast<size_t>(i) % prompts.size()]);
    GenerateOptions g = base;
    g.sampler.seed = o.seed + static_cast<uint64_t>(i);
    const GenerateResult r = engine.Generate(prompt_ids[i], g);
    plain_tokens[i] = r.tokens;
    plain_decode_ms += r.stats.decode_ms;
    plain_decoded += std::max<int64_t>(0, r.stats.generated_tokens - 1);
    if (i < o.null_generations) {
      const auto res = det.Run(InputFromIds(engine, std::nullopt, r.tokens), true);
      AddAll(res, report.plain_full, report.plain_no_dedup, report.plain_cspv, report.plain_pepi,
             report.plain_kgw, o.oracle != nullptr);
    }
  }
  report.plain_decode_ms_per_token = plain_decode_ms / std::max<int64_t>(1, plain_decoded);

  for (Scheme scheme : o.schemes) {
    note(std::string("watermarked generations: ") + SchemeName(scheme));
    SchemeEval se;
    se.scheme = scheme;
    int64_t recovered_p = 0, recovered_np = 0, steps = 0, agree = 0, agree_n = 0;
    int64_t adjacent_same = 0, adjacent = 0, scored_pairs = 0;
    int64_t other_recovered = 0, other_n = 0, other_recovered_margin = 0, other_n_margin = 0;
    se.substituted.resize(o.substitution_rates.size());
    double decode_ms = 0, bias = 0;
    int64_t decoded = 0;
    for (int i = 0; i < o.generations; ++i) {
      WatermarkParams p;
      p.scheme = scheme;
      p.gamma = o.gamma;
      p.delta = o.delta;
      p.router_layer = o.router_layer;
      WatermarkProcessor proc(key, p, c, hash);
      GenerateOptions g = base;
      g.sampler.seed = o.seed + static_cast<uint64_t>(i);
      g.logits_processor = [&](std::span<float> logits, const RoutingTrace& routing,
                               std::span<const int32_t> context) { proc.Apply(logits, routing, context); };
      const GenerateResult r = engine.Generate(prompt_ids[i], g);
      decode_ms += r.stats.decode_ms;
      decoded += std::max<int64_t>(0, r.stats.generated_tokens - 1);
      bias += proc.mean_bias();
      se.identical_to_plain += r.tokens == plain_tokens[i];

      const std::string prompt = prompts[static_cast<size_t>(i) % prompts.size()];
      DetectInput with = InputFromIds(engine, prompt, r.tokens);
      DetectInput without = InputFromIds(engine, std::nullopt, r.tokens);
      // Robustness: a fraction of the generated tokens replaced by uniformly
      // random ids (the prompt kept), detected with the prompt.
      for (size_t a = 0; a < o.substitution_rates.size(); ++a) {
        Rng rng(o.seed * 1000003 + static_cast<uint64_t>(i) * 101 + a);
        std::vector<int32_t> attacked = r.tokens;
        for (int32_t& id : attacked)
          if (rng.Uniform() < o.substitution_rates[a]) id = static_cast<int32_t>(rng.Next() % c.vocab_size);
        const DetectInput in = InputFromIds(engine, prompt, attacked);
        Add(se.substituted[a], scheme == Scheme::kKgw
                                   ? ZOf(ScoreByPreviousToken(in.ids, in.first, det.kgw_lists), det.kgw_lists.p0(), o.detect)
                                   : det.Run(in, false).full);
      }
      if (scheme == Scheme::kKgw) {
        scored_pairs += ScoredOf(ScoreByPreviousToken(with.ids, with.first, det.kgw_lists), det.kgw_lists.p0(), o.detect);
        Add(se.full_prompt, ZOf(ScoreByPreviousToken(with.ids, with.first, det.kgw_lists), det.kgw_lists.p0(), o.detect));
        Add(se.full_no_prompt, ZOf(ScoreByPreviousToken(without.ids, without.first, det.kgw_lists), det.kgw_lists.p0(), o.detect));
        continue;
      }
      const auto rw = det.Run(with, true);
      const auto rn = det.Run(without, false);
      scored_pairs += rw.scored;
      Add(se.full_prompt, rw.full);
      Add(se.full_no_prompt, rn.full);
      Add(se.shift0, rw.shift0);
      Add(se.shift2, rw.shift2);
      Add(se.shift0_changed, rw.shift0_changed);
      adjacent_same += rw.adjacent_same;
      adjacent += rw.adjacent;
      Add(se.cspv, rw.cspv);
      if (o.oracle) Add(se.pepi, rw.pepi);
      // Another precision: the same ids detected by an engine at another
      // quantization level, whose router may flip on close calls.
      if (o.other_engine) {
        ScoreResult pass;
        const auto tokens = ScoreInput(*o.other_engine, with, det.expert_lists, det.slot, 1, &pass);
        Add(se.other_level, ZOf(tokens, det.expert_lists.p0(), o.detect));
        DetectOptions margin = o.detect;
        margin.min_margin = o.other_min_margin;
        Add(se.other_level_margin, ZOf(tokens, det.expert_lists.p0(), margin));
        for (size_t k = 0; k < tokens.size(); ++k) {
          other_recovered += tokens[k].seed == rw.experts[tokens[k].position - 1];
          ++other_n;
          if (tokens[k].margin >= o.other_min_margin) {
            other_recovered_margin += tokens[k].seed == rw.experts[tokens[k].position - 1];
            ++other_n_margin;
          }
        }
      }
      // Expert recovery: generation step s keyed token s with the expert the
      // processor saw; detection recovers it at position first + s - 1.
      const auto& used = proc.experts_used();
      for (size_t s = 0; s < used.size(); ++s) {
        ++steps;
        recovered_p += rw.experts[with.first + s - 1] == used[s];
        if (without.first + static_cast<int64_t>(s) >= 1)
          recovered_np += rn.experts[without.first + s - 1] == used[s];
        if (o.oracle && with.first + static_cast<int64_t>(s) >= 1) {
          agree += rw.predicted[with.first + s - 1] == used[s];
          ++agree_n;
        }
      }
    }
    se.expert_recovery_prompt = steps ? static_cast<double>(recovered_p) / steps : 0;
    se.expert_recovery_no_prompt = steps ? static_cast<double>(recovered_np) / steps : 0;
    se.other_level_expert_agreement = other_n ? static_cast<double>(other_recovered) / other_n : 0;
    se.other_level_expert_agreement_margin =
        other_n_margin ? static_cast<double>(other_recovered_margin) / other_n_margin : 0;
    se.other_level_margin_kept = other_n ? static_cast<double>(other_n_margin) / other_n : 0;
    se.adjacent_same_expert = adjacent ? static_cast<double>(adjacent_same) / adjacent : 0;
    se.mean_scored_pairs = static_cast<double>(scored_pairs) / std::max(1, o.generations);
    se.pepi_agreement = agree_n ? static_cast<double>(agree) / agree_n : 0;
    se.mean_bias = bias / std::max(1, o.generations);
    se.decode_ms_per_token = decode_ms / std::max<int64_t>(1, decoded);
    report.schemes.push_back(std::move(se));
  }

  note("held-out human paragraphs");
  for (const std::string& p : paragraphs) {
    if (report.human_paragraphs_used >= o.human_paragraphs) break;
    DetectInput in = InputFromText(engine, std::nullopt, p);
    if (static_cast<int64_t>(in.ids.size()) > plan_ctx) in.ids.resize(static_cast<size_t>(plan_ctx));
    if (static_cast<int64_t>(in.ids.size()) - in.first < o.detect.min_tokens + 1) {
      ++report.human_paragraphs_skipped;
      continue;
    }
    const auto r = det.Run(in, true);
    if (!r.full) {
      ++report.human_paragraphs_skipped;  // too many repeats to score
      continue;
    }
    ++report.human_paragraphs_used;
    AddAll(r, report.human_full, report.human_no_dedup, report.human_cspv, report.human_pepi,
           report.human_kgw, o.oracle != nullptr);
  }
  report.seconds = total.Millis() / 1e3;
  return report;
}

}  // namespace epwa::wm
