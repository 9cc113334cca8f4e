#include "watermark/evaluate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "base/error.h"
#include "base/sha256.h"
#include "base/text.h"
#include "base/timer.h"
#include "runtime/batch_engine.h"
#include "watermark/pipeline.h"
#include "watermark/stats.h"

namespace epwa::wm {

int ZSet::Detected(double threshold) const {
  return static_cast<int>(std::count_if(z.begin(), z.end(), [&](double v) { return v > threshold; }));
}

nlohmann::json ZSet::Json(double threshold, bool raw) const {
  nlohmann::json j{{"n", z.size()}, {"too_short", too_short}, {"detected", Detected(threshold)}};
  if (raw) j["z"] = z;
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

GenerateOptions EvaluationGenerateOptions(const Engine& engine, int new_tokens) {
  GenerateOptions base;
  base.max_new_tokens = new_tokens;
  base.ignore_eos = true;
  const GenerationDefaults& d = engine.defaults();
  if (d.temperature) base.sampler.temperature = *d.temperature;
  if (d.top_k) base.sampler.top_k = *d.top_k;
  if (d.top_p) base.sampler.top_p = *d.top_p;
  return base;
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

double RocAuc(const std::vector<double>& positives, const std::vector<double>& negatives) {
  if (positives.empty() || negatives.empty()) return 0;
  std::vector<double> neg = negatives;
  std::sort(neg.begin(), neg.end());
  double wins = 0;
  for (double z : positives) {
    const auto lo = std::lower_bound(neg.begin(), neg.end(), z);
    const auto hi = std::upper_bound(neg.begin(), neg.end(), z);
    wins += static_cast<double>(lo - neg.begin()) + 0.5 * static_cast<double>(hi - lo);
  }
  return wins / (static_cast<double>(positives.size()) * static_cast<double>(neg.size()));
}

double ThresholdAtFpr(const std::vector<double>& negatives, double fpr) {
  if (negatives.empty()) return 0;
  std::vector<double> neg = negatives;
  std::sort(neg.begin(), neg.end(), std::greater<double>());
  // Detection is z > threshold: with the (k + 1)-th largest negative as the
  // threshold, at most k = floor(fpr * N) negatives lie above it.
  const size_t k = std::min(neg.size() - 1, static_cast<size_t>(std::floor(fpr * static_cast<double>(neg.size()))));
  return neg[k];
}

std::optional<int64_t> TokensToDetect(std::span<const TokenScore> tokens, int64_t first, double p0,
                                      const DetectOptions& o, double p) {
  const std::vector<TokenScore> kept = FilterTokens(tokens, o, nullptr, nullptr);
  const double log10_target = std::log10(p);
  int64_t n = 0, green = 0;
  for (size_t i = 0; i < kept.size(); ++i) {
    ++n;
    green += kept[i].green ? 1 : 0;
    // Votes of one position are counted together: the tally is tested once
    // the position's last vote is in.
    if (i + 1 < kept.size() && kept[i + 1].position == kept[i].position) continue;
    if (green > 0 && Log10BinomialUpperTail(green, n, p0) <= log10_target) return kept[i].position - first + 1;
  }
  return std::nullopt;
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
  // EPW-A v2 lists, one per v2 scheme evaluated.
  std::map<Scheme, GreenLists> v2_lists{};
  std::map<Scheme, int> v2_slots{};
  int SlotOf(Scheme s) const { return IsV2(KeyedByOf(s)) ? v2_slots.at(s) : slot; }

  GreenLists& ListsOf(Scheme s) {
    if (s == Scheme::kKgw) return kgw_lists;
    if (!IsV2(KeyedByOf(s))) return expert_lists;
    return v2_lists.at(s);
  }
  // A scheme's tokens on an input whose forward pass is `pass` (unused by KGW).
  std::vector<TokenScore> FromPass(Scheme s, const DetectInput& in, const ScoreResult& pass) {
    if (s == Scheme::kKgw) return ScoreByPreviousToken(in.ids, in.first, kgw_lists);
    if (IsV2(KeyedByOf(s))) return ScoreByContext(in.ids, in.first, pass.routing, SlotOf(s), ListsOf(s));
    return ScoreByRouting(in.ids, in.first, pass.routing, slot, expert_lists);
  }
  // The deepest MoE layer (an index into MoeLayers) whose routing scheme
  // `s` reads: its detection passes stop there (Engine::ScoreBatch).
  int64_t DeepestRead(Scheme s) const {
    return DeepestSlotRead(KeyedByOf(s), SlotOf(s), engine.config().NumMoeLayers());
  }

  // Every forward pass of the evaluation's scoring goes through here:
  // Engine::ScoreBatch over o.score_batch_texts inputs at a time, so that
  // each expert's weights stream once per pass for all of them rather than
  // once per text. ScoreBatch's results equal Score's bit for bit, so the
  // batch size changes the time, never a figure. Counted for the report's
  // scoring throughput.
  std::vector<ScoreResult> Passes(std::span<const std::vector<int32_t>> texts, bool logits,
                                  int64_t through_slot = -1) {
    Stopwatch watch;
    std::vector<ScoreResult> out = PassesOn(engine, texts, logits, through_slot);
    score_ms += watch.Millis();
    texts_scored += static_cast<int64_t>(texts.size());
    for (const std::vector<int32_t>& t : texts) tokens_scored += static_cast<int64_t>(t.size());
    return out;
  }
  std::vector<ScoreResult> Passes(std::span<const DetectInput> ins, bool logits, int64_t through_slot = -1) {
    return Passes(IdsOf(ins), logits, through_slot);
  }
  // The same passes on engine `e` (the other precision's), uncounted.
  std::vector<ScoreResult> PassesOn(Engine& e, std::span<const std::vector<int32_t>> texts, bool logits,
                                    int64_t through_slot = -1) const {
    std::vector<ScoreResult> out;
    out.reserve(texts.size());
    const size_t batch = static_cast<size_t>(std::max(1, o.score_batch_texts));
    for (size_t b = 0; b < texts.size(); b += batch)
      for (ScoreResult& r :
           e.ScoreBatch(texts.subspan(b, std::min(batch, texts.size() - b)), logits, logits ? -1 : through_slot))
        out.push_back(std::move(r));
    return out;
  }
  static std::vector<std::vector<int32_t>> IdsOf(std::span<const DetectInput> ins) {
    std::vector<std::vector<int32_t>> texts;
    texts.reserve(ins.size());
    for (const DetectInput& in : ins) texts.push_back(in.ids);
    return texts;
  }
  // How many texts of about `tokens` ids each to hold passes with logits
  // for at once: o.score_batch_texts, fewer where their logits ([T, vocab]
  // floats each) would pass kLogitsBudget.
  size_t TextsWithLogits(int64_t tokens) const {
    constexpr double kLogitsBudget = 1024.0 * 1024 * 1024;
    const double per_text = 4.0 * static_cast<double>(std::max<int64_t>(1, tokens)) *
                            static_cast<double>(engine.config().vocab_size);
    const double fit = std::max(1.0, std::floor(kLogitsBudget / per_text));
    return static_cast<size_t>(std::min(fit, static_cast<double>(std::max(1, o.score_batch_texts))));
  }

  // Z of each input under scheme `s`, the forward passes batched and
  // stopped at the deepest router the scheme reads (none for KGW).
  std::vector<std::optional<double>> ZMany(Scheme s, const std::vector<DetectInput>& ins) {
    std::vector<std::optional<double>> out;
    if (s == Scheme::kKgw) {
      for (const DetectInput& in : ins) out.push_back(ZOf(FromPass(s, in, ScoreResult{}), ListsOf(s).p0(), o.detect));
      return out;
    }
    const std::vector<ScoreResult> passes = Passes(ins, /*logits=*/false, DeepestRead(s));
    for (size_t i = 0; i < ins.size(); ++i) out.push_back(ZOf(FromPass(s, ins[i], passes[i]), ListsOf(s).p0(), o.detect));
    return out;
  }
  int64_t texts_scored = 0, tokens_scored = 0;
  double score_ms = 0;

  // Full, no-dedup, CSPV and PEPI z of one input, plus the per-position
  // experts recovered by the forward pass ([T], -1 where unknown) and the
  // oracle's predictions.
  struct Result {
    std::optional<double> full, no_dedup, cspv, pepi, kgw, shift0, shift2, shift0_changed;
    int64_t scored = 0;  // distinct (expert, token) pairs scored by `full`
    int64_t adjacent_same = 0, adjacent = 0;  // positions whose expert equals the previous one's
    std::vector<int32_t> experts, predicted;
  };
  // From the input's forward pass `pass` (its logits are read for PEPI
  // only, when `all` and an oracle is given).
  Result Run(const DetectInput& in, bool all, const ScoreResult& pass) {
    Result r;
    const auto tokens = ScoreByRouting(in.ids, in.first, pass.routing, slot, expert_lists);
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

// Mean negative log-likelihood (natural log) of ids[first ..) under the
// forward pass's logits, and how many tokens it covers.
std::pair<double, int64_t> Nll(const ScoreResult& pass, int64_t first, int64_t vocab) {
  double nll = 0;
  int64_t n = 0;
  for (int64_t t = std::max<int64_t>(first, 1); t < static_cast<int64_t>(pass.ids.size()); ++t) {
    const float* row = pass.logits.data() + (t - 1) * vocab;
    const float mx = *std::max_element(row, row + vocab);
    double sum = 0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v] - mx));
    nll += std::log(sum) + mx - row[pass.ids[t]];
    ++n;
  }
  return {nll, n};
}

// Distinct bigrams and bigrams of a token sequence.
std::pair<int64_t, int64_t> Distinct2(const std::vector<int32_t>& ids) {
  std::set<std::pair<int32_t, int32_t>> seen;
  for (size_t i = 1; i < ids.size(); ++i) seen.insert({ids[i - 1], ids[i]});
  return {static_cast<int64_t>(seen.size()), ids.size() > 1 ? static_cast<int64_t>(ids.size() - 1) : 0};
}

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
                     {"full_with_prompt", s.full_prompt.Json(t, o.raw_z)},
                     {"full_without_prompt", s.full_no_prompt.Json(t, o.raw_z)},
                     {"mean_bias", s.mean_bias},
                     {"mean_scored_pairs", s.mean_scored_pairs},
                     {"identical_to_plain", s.identical_to_plain},
                     {"decode_ms_per_token", s.decode_ms_per_token},
                     {"version", SchemeVersion(s.scheme)},
                     {"null_human", s.human.Json(t, o.raw_z)},
                     {"null_unwatermarked", s.plain.Json(t, o.raw_z)},
                     {"roc_auc", s.roc_auc},
                     {"tpr_at_fpr_1pct", s.tpr_at_fpr_1pct},
                     {"tpr_at_fpr_0.1pct", s.tpr_at_fpr_01pct},
                     {"threshold_fpr_1pct", s.threshold_fpr_1pct},
                     {"threshold_fpr_0.1pct", s.threshold_fpr_01pct},
                     {"size_p_value", o.size_p_value},
                     {"size_median_tokens", std::isfinite(s.size_median) ? nlohmann::json(s.size_median) : nlohmann::json()},
                     {"size_never", s.size_never},
                     {"perplexity", s.perplexity},
                     {"distinct2", s.distinct2}};
    if (UsesRouter(s.scheme)) {
      j["cspv"] = s.cspv.Json(t, o.raw_z);
      j["expert_recovery_with_prompt"] = s.expert_recovery_prompt;
      j["expert_recovery_without_prompt"] = s.expert_recovery_no_prompt;
    }
    if (KeyedByOf(s.scheme) == KeyedBy::kExpert) {
      j["misaligned_shift0"] = s.shift0.Json(t, o.raw_z);
      j["misaligned_shift2"] = s.shift2.Json(t, o.raw_z);
      j["misaligned_shift0_expert_changed"] = s.shift0_changed.Json(t, o.raw_z);
      j["adjacent_same_expert"] = s.adjacent_same_expert;
    }
    auto pct = [](double r) { return std::to_string(static_cast<int>(std::lround(100 * r))) + "pct"; };
    for (size_t a = 0; a < s.substituted.size(); ++a)
      j["substituted_" + pct(o.substitution_rates[a])] = s.substituted[a].Json(t, o.raw_z);
    for (size_t a = 0; a < s.deleted.size(); ++a) j["deleted_" + pct(o.deletion_rates[a])] = s.deleted[a].Json(t, o.raw_z);
    for (size_t a = 0; a < s.inserted.size(); ++a) j["inserted_" + pct(o.insertion_rates[a])] = s.inserted[a].Json(t, o.raw_z);
    for (size_t a = 0; a < s.synonyms.size(); ++a) j["synonyms_" + pct(o.synonym_rates[a])] = s.synonyms[a].Json(t, o.raw_z);
    nlohmann::json by_length = nlohmann::json::object();
    for (size_t k = 0; k < s.by_length.size(); ++k)
      if (o.z_lengths[k] <= o.new_tokens) by_length[std::to_string(o.z_lengths[k])] = s.by_length[k].Json(t, o.raw_z);
    j["z_by_length"] = by_length;
    for (size_t a = 0; a < s.copy_paste.size(); ++a)
      j["copy_paste_" + pct(o.copy_paste_fractions[a])] = s.copy_paste[a].Json(t, o.raw_z);
    if (o.synonyms || !o.synonym_rates.empty()) j["retokenized"] = s.retokenized.Json(t, o.raw_z);
    if (!o.emoji_text.empty()) j["emoji"] = s.emoji.Json(t, o.raw_z);
    if (o.other_engine && UsesRouter(s.scheme)) {
      j["other_level"] = {{"level", o.other_engine->load_stats().quant_level},
                          {"full", s.other_level.Json(t, o.raw_z)},
                          {"full_min_margin", s.other_level_margin.Json(t, o.raw_z)},
                          {"min_margin", o.other_min_margin},
                          {"expert_agreement", s.other_level_expert_agreement},
                          {"expert_agreement_above_margin", s.other_level_expert_agreement_margin},
                          {"tokens_above_margin", s.other_level_margin_kept}};
    }
    if (o.oracle && KeyedByOf(s.scheme) == KeyedBy::kExpert) {
      j["pepi"] = s.pepi.Json(t, o.raw_z);
      j["pepi_expert_agreement"] = s.pepi_agreement;
    }
    schemes_json.push_back(j);
  }
  nlohmann::json human{{"full", human_full.Json(t, o.raw_z)}, {"full_no_dedup", human_no_dedup.Json(t, o.raw_z)},
                       {"cspv", human_cspv.Json(t, o.raw_z)}, {"kgw", human_kgw.Json(t, o.raw_z)},
                       {"paragraphs", human_paragraphs_used}, {"paragraphs_too_short", human_paragraphs_skipped}};
  nlohmann::json plain{{"full", plain_full.Json(t, o.raw_z)}, {"full_no_dedup", plain_no_dedup.Json(t, o.raw_z)},
                       {"cspv", plain_cspv.Json(t, o.raw_z)}, {"kgw", plain_kgw.Json(t, o.raw_z)}};
  if (o.oracle) {
    human["pepi"] = human_pepi.Json(t, o.raw_z);
    plain["pepi"] = plain_pepi.Json(t, o.raw_z);
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
                   {"generation_parallel", generation_parallel},
                   {"scoring", {{"texts", texts_scored},
                                {"tokens", tokens_scored},
                                {"seconds", scoring_seconds},
                                {"tokens_per_second", scoring_seconds > 0 ? tokens_scored / scoring_seconds : 0.0},
                                {"batch_texts", score_batch_texts}}},
                   {"plain_perplexity", plain_perplexity},
                   {"plain_distinct2", plain_distinct2},
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
                ResolveRouterLayer(Scheme::kGsg, o.router_layer, c.NumMoeLayers())};
  for (Scheme s : o.schemes)
    if (IsV2(KeyedByOf(s))) {
      det.v2_lists.emplace(s, GreenLists(key, KeyedByOf(s), hash, c.vocab_size, o.gamma));
      det.v2_slots[s] = ResolveRouterLayer(s, o.router_layer, c.NumMoeLayers());
    }
  std::map<Scheme, ZSet> human_null, plain_null;
  auto add_null = [&](std::map<Scheme, ZSet>& null, const DetectInput& in, const ScoreResult& pass) {
    for (Scheme s : o.schemes) Add(null[s], ZOf(det.FromPass(s, in, pass), det.ListsOf(s).p0(), o.detect));
  };
  auto note = [&](const std::string& s) {
    if (o.progress) o.progress(s);
  };

  const std::vector<std::string> paragraphs = o.human_texts.empty() ? Paragraphs(o.human_text) : o.human_texts;
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
  // Human tokens for the copy-paste attack: the last paragraphs of the
  // corpus (the first ones are the negatives), tokenized one after another.
  std::vector<int32_t> human_pool;
  if (!o.copy_paste_fractions.empty()) {
    for (size_t k = paragraphs.size(); k-- > 0 && static_cast<int64_t>(human_pool.size()) < 50 * o.new_tokens;) {
      const std::vector<int32_t> ids = engine.tokenizer().Encode(paragraphs[k]);
      human_pool.insert(human_pool.end(), ids.begin(), ids.end());
    }
  }

  const GenerateOptions base = EvaluationGenerateOptions(engine, o.new_tokens);

  // Unwatermarked generations first: they are negatives, and the reference
  // the guard compares watermarked text with.
  const int n_plain = std::max(o.null_generations, o.generations);
  std::vector<std::vector<int32_t>> plain_tokens(static_cast<size_t>(n_plain));
  std::vector<std::vector<int32_t>> prompt_ids(static_cast<size_t>(n_plain));
  double plain_decode_ms = 0, plain_nll = 0;
  int64_t plain_decoded = 0, plain_nll_n = 0, plain_distinct = 0, plain_bigrams = 0;
  report.generation_parallel = engine.load_stats().plan_parallel;
  note("unwatermarked generations");
  // All generated first, batched when the engine holds several sequences
  // (GenerateAll), then scored one by one.
  std::vector<GenerateOptions> plain_options(static_cast<size_t>(n_plain), base);
  for (int i = 0; i < n_plain; ++i) {
    prompt_ids[i] = engine.EncodePrompt(prompts[static_cast<size_t>(i) % prompts.size()]);
    plain_options[i].sampler.seed = o.seed + static_cast<uint64_t>(i);
  }
  const std::vector<GenerateResult> plain_results = GenerateAll(engine, prompt_ids, std::move(plain_options));
  // Scored a chunk of texts at a time: the negatives without their prompts
  // (routing; logits for PEPI), the first o.generations with them for the
  // perplexity (logits).
  const int64_t text_tokens = (n_plain > 0 ? static_cast<int64_t>(prompt_ids[0].size()) : 0) + o.new_tokens;
  const size_t plain_chunk = det.TextsWithLogits(text_tokens);
  for (int c0 = 0; c0 < n_plain; c0 += static_cast<int>(plain_chunk)) {
    const int c1 = std::min(n_plain, c0 + static_cast<int>(plain_chunk));
    std::vector<DetectInput> nulls;
    std::vector<std::vector<int32_t>> with_prompts;
    for (int i = c0; i < c1; ++i) {
      const std::vector<int32_t>& tokens = plain_results[i].tokens;
      if (i < o.null_generations) nulls.push_back(InputFromIds(engine, std::nullopt, tokens));
      if (i < o.generations) {
        with_prompts.push_back(prompt_ids[i]);
        with_prompts.back().insert(with_prompts.back().end(), tokens.begin(), tokens.end());
      }
    }
    const std::vector<ScoreResult> null_passes = det.Passes(nulls, o.oracle != nullptr);
    const std::vector<ScoreResult> prompt_passes = det.Passes(with_prompts, /*logits=*/true);
    for (int i = c0; i < c1; ++i) {
      const GenerateResult& r = plain_results[i];
      plain_tokens[i] = r.tokens;
      plain_decode_ms += r.stats.decode_ms;
      plain_decoded += std::max<int64_t>(0, r.stats.generated_tokens - 1);
      if (i < o.null_generations) {
        const DetectInput& in = nulls[static_cast<size_t>(i - c0)];
        const ScoreResult& pass = null_passes[static_cast<size_t>(i - c0)];
        const auto res = det.Run(in, true, pass);
        AddAll(res, report.plain_full, report.plain_no_dedup, report.plain_cspv, report.plain_pepi,
               report.plain_kgw, o.oracle != nullptr);
        add_null(plain_null, in, pass);
      }
      if (i < o.generations) {
        const auto [nll, n] = Nll(prompt_passes[static_cast<size_t>(i - c0)],
                                  static_cast<int64_t>(prompt_ids[i].size()), c.vocab_size);
        plain_nll += nll;
        plain_nll_n += n;
        const auto [d2, b2] = Distinct2(r.tokens);
        plain_distinct += d2;
        plain_bigrams += b2;
      }
    }
  }
  report.plain_decode_ms_per_token = plain_decode_ms / std::max<int64_t>(1, plain_decoded);
  report.plain_perplexity = std::exp(plain_nll / std::max<int64_t>(1, plain_nll_n));
  report.plain_distinct2 = static_cast<double>(plain_distinct) / std::max<int64_t>(1, plain_bigrams);

  for (Scheme scheme : o.schemes) {
    note(std::string("watermarked generations: ") + SchemeName(scheme));
    SchemeEval se;
    se.scheme = scheme;
    const bool v2 = IsV2(KeyedByOf(scheme));
    GreenLists& lists = det.ListsOf(scheme);
    int64_t recovered_p = 0, recovered_np = 0, steps = 0, agree = 0, agree_n = 0;
    int64_t adjacent_same = 0, adjacent = 0, scored_pairs = 0;
    int64_t other_recovered = 0, other_n = 0, other_recovered_margin = 0, other_n_margin = 0;
    se.substituted.resize(o.substitution_rates.size());
    se.deleted.resize(o.deletion_rates.size());
    se.inserted.resize(o.insertion_rates.size());
    se.synonyms.resize(o.synonym_rates.size());
    se.copy_paste.resize(o.copy_paste_fractions.size());
    se.by_length.resize(o.z_lengths.size());
    double decode_ms = 0, bias = 0, nll = 0;
    int64_t decoded = 0, nll_n = 0, distinct = 0, bigrams = 0;
    std::vector<double> sizes;
    // Every generation of this scheme first (batched as the unwatermarked
    // ones), each with its own processor, then each text's detections.
    WatermarkParams params;
    params.scheme = scheme;
    params.gamma = o.gamma;
    params.delta = o.delta;
    params.router_layer = o.router_layer;
    std::vector<std::unique_ptr<WatermarkProcessor>> processors;
    std::vector<GenerateOptions> marked_options(static_cast<size_t>(o.generations), base);
    for (int i = 0; i < o.generations; ++i) {
      processors.push_back(std::make_unique<WatermarkProcessor>(key, params, c, hash));
      WatermarkProcessor* proc = processors.back().get();
      marked_options[i].sampler.seed = o.seed + static_cast<uint64_t>(i);
      marked_options[i].logits_processor = [proc](std::span<float> logits, const RoutingTrace& routing,
                                                  std::span<const int32_t> context) {
        proc->Apply(logits, routing, context);
      };
    }
    const std::vector<GenerateResult> marked_results = GenerateAll(
        engine, std::span(prompt_ids).first(static_cast<size_t>(o.generations)), std::move(marked_options));
    // A chunk of texts at a time: their passes with the prompt (logits, for
    // the perplexity and PEPI) and without it (routing) batched, then every
    // attacked copy of the chunk's texts scored in one batch at its end.
    const size_t scheme_chunk = det.TextsWithLogits(text_tokens);
    const int64_t scorable = std::min<int64_t>(plan_ctx, engine.max_context());
    for (int c0 = 0; c0 < o.generations; c0 += static_cast<int>(scheme_chunk)) {
      const int c1 = std::min(o.generations, c0 + static_cast<int>(scheme_chunk));
      std::vector<DetectInput> withs, withouts;
      for (int i = c0; i < c1; ++i) {
        const std::string& prompt = prompts[static_cast<size_t>(i) % prompts.size()];
        withs.push_back(InputFromIds(engine, prompt, marked_results[i].tokens));
        withouts.push_back(InputFromIds(engine, std::nullopt, marked_results[i].tokens));
      }
      const std::vector<ScoreResult> with_passes = det.Passes(withs, /*logits=*/true);
      // KGW reads no routing; the others' passes without the prompt stop at
      // the router they read.
      const std::vector<ScoreResult> without_passes =
          scheme == Scheme::kKgw ? std::vector<ScoreResult>(withs.size())
                                 : det.Passes(withouts, false, det.DeepestRead(scheme));
      // The other precision's passes, in batches as ours (not counted in the
      // report's scoring figures, which are this model's).
      std::vector<ScoreResult> other_passes;
      if (o.other_engine && scheme != Scheme::kKgw)
        other_passes = det.PassesOn(*o.other_engine, Detectors::IdsOf(withs), /*logits=*/false,
                                    det.DeepestRead(scheme));
      // Attacked copies of the chunk's texts, scored together at its end: an
      // input and the set its z joins (each set gets its texts in order).
      std::vector<ZSet*> pending_sets;
      std::vector<DetectInput> pending;
      // A copy longer than the plan counts as too short to score, as one
      // without tokens does.
      auto pend = [&](ZSet& out, DetectInput in) {
        if (static_cast<int64_t>(in.ids.size()) > scorable) {
          ++out.too_short;
          return;
        }
        pending_sets.push_back(&out);
        pending.push_back(std::move(in));
      };
      for (int i = c0; i < c1; ++i) {
        const WatermarkProcessor& proc = *processors[i];
        const GenerateResult& r = marked_results[i];
        decode_ms += r.stats.decode_ms;
        decoded += std::max<int64_t>(0, r.stats.generated_tokens - 1);
        bias += proc.mean_bias();
        se.identical_to_plain += r.tokens == plain_tokens[i];
        const auto [d2, b2] = Distinct2(r.tokens);
        distinct += d2;
        bigrams += b2;

        const std::string prompt = prompts[static_cast<size_t>(i) % prompts.size()];
        const DetectInput& with = withs[static_cast<size_t>(i - c0)];
        const DetectInput& without = withouts[static_cast<size_t>(i - c0)];
        // Token-level attacks on the generated ids (the prompt kept), detected
        // with the prompt: a fraction of the tokens replaced by uniformly
        // random ids, deleted, or followed by an inserted random id.
        auto attack = [&](ZSet& out, uint64_t stream, auto edit) {
          Rng rng(o.seed * 1000003 + static_cast<uint64_t>(i) * 101 + stream);
          std::vector<int32_t> attacked;
          for (int32_t id : r.tokens) edit(rng, id, attacked);
          if (attacked.empty()) {
            ++out.too_short;
            return;
          }
          pend(out, InputFromIds(engine, prompt, attacked));
        };
        auto random_id = [&](Rng& rng) {
          return static_cast<int32_t>(rng.Next() % static_cast<uint64_t>(c.vocab_size));
        };
        for (size_t a = 0; a < o.substitution_rates.size(); ++a)
          attack(se.substituted[a], a, [&](Rng& rng, int32_t id, std::vector<int32_t>& out) {
            out.push_back(rng.Uniform() < o.substitution_rates[a] ? random_id(rng) : id);
          });
        for (size_t a = 0; a < o.deletion_rates.size(); ++a)
          attack(se.deleted[a], 100 + a, [&](Rng& rng, int32_t id, std::vector<int32_t>& out) {
            if (rng.Uniform() >= o.deletion_rates[a]) out.push_back(id);
          });
        for (size_t a = 0; a < o.insertion_rates.size(); ++a)
          attack(se.inserted[a], 200 + a, [&](Rng& rng, int32_t id, std::vector<int32_t>& out) {
            out.push_back(id);
            if (rng.Uniform() < o.insertion_rates[a]) out.push_back(random_id(rng));
          });
        if (!o.emoji_text.empty()) {
          const std::vector<int32_t> emoji_ids = engine.tokenizer().Encode(o.emoji_text);
          Require(!emoji_ids.empty(), "the emoji text tokenizes to nothing");
          const int32_t emoji = emoji_ids[0];
          WatermarkProcessor eproc(key, params, c, hash);
          GenerateOptions ge = base;
          ge.max_new_tokens = 2 * o.new_tokens;
          ge.sampler.seed = o.seed + static_cast<uint64_t>(i);
          ge.logits_processor = [&](std::span<float> logits, const RoutingTrace& routing,
                                    std::span<const int32_t> context) {
            eproc.Apply(logits, routing, context);
            // After a token of the answer, the emoji (the model "obeys" the
            // user's instruction); after the emoji, the answer goes on.
            if (static_cast<int64_t>(context.size()) > static_cast<int64_t>(prompt_ids[i].size()) &&
                context.back() != emoji) {
              std::fill(logits.begin(), logits.end(), -1e30f);
              logits[static_cast<size_t>(emoji)] = 0.f;
            }
          };
          const GenerateResult re = engine.Generate(prompt_ids[i], ge);
          std::vector<int32_t> stripped;
          for (int32_t id : re.tokens)
            if (id != emoji) stripped.push_back(id);
          if (stripped.empty())
            ++se.emoji.too_short;
          else
            pend(se.emoji, InputFromIds(engine, prompt, stripped));
        }
        // Copy-paste: the first w watermarked tokens inside human text.
        for (size_t a = 0; a < o.copy_paste_fractions.size(); ++a) {
          const int64_t total = o.new_tokens;
          const int64_t w = std::min<int64_t>(
              static_cast<int64_t>(r.tokens.size()),
              std::llround(o.copy_paste_fractions[a] * static_cast<double>(total)));
          const int64_t h = total - w;
          if (static_cast<int64_t>(human_pool.size()) <= h || w <= 0) {
            ++se.copy_paste[a].too_short;
            continue;
          }
          Rng rng(o.seed * 1000003 + static_cast<uint64_t>(i) * 101 + 400 + a);
          const int64_t from =
              static_cast<int64_t>(rng.Next() % static_cast<uint64_t>(human_pool.size() - h));
          const int64_t at = static_cast<int64_t>(rng.Next() % static_cast<uint64_t>(h + 1));
          std::vector<int32_t> mixed(human_pool.begin() + from, human_pool.begin() + from + at);
          mixed.insert(mixed.end(), r.tokens.begin(), r.tokens.begin() + w);
          mixed.insert(mixed.end(), human_pool.begin() + from + at, human_pool.begin() + from + h);
          pend(se.copy_paste[a], InputFromIds(engine, std::nullopt, mixed));
        }
        // Text-level attacks: the decoded text, edited, then tokenized again
        // as a detector given text would.
        if (!o.synonym_rates.empty() || o.synonyms) {
          const std::string text = engine.tokenizer().Decode(r.tokens);
          auto detect_text = [&](ZSet& out, const std::string& t) {
            std::optional<DetectInput> in;
            try {
              in = InputFromText(engine, prompt, t);
            } catch (const Error&) {
              ++out.too_short;  // nothing left to tokenize
              return;
            }
            pend(out, std::move(*in));
          };
          detect_text(se.retokenized, text);
          for (size_t a = 0; a < o.synonym_rates.size(); ++a) {
            Require(o.synonyms != nullptr,
                    "the synonym attack needs WordNet (apt-get install wordnet-base)");
            detect_text(
                se.synonyms[a],
                text::SubstituteSynonyms(
                    text, o.synonym_rates[a],
                    o.seed * 1000003 + static_cast<uint64_t>(i) * 101 + 300 + a, *o.synonyms));
          }
        }
        const ScoreResult& pw = with_passes[static_cast<size_t>(i - c0)];
        const ScoreResult& pn = without_passes[static_cast<size_t>(i - c0)];
        std::vector<TokenScore> tokens_with;
        if (scheme == Scheme::kKgw || v2) {
          tokens_with = det.FromPass(scheme, with, pw);
          const auto tokens_without = det.FromPass(scheme, without, pn);
          scored_pairs += ScoredOf(tokens_with, lists.p0(), o.detect);
          Add(se.full_prompt, ZOf(tokens_with, lists.p0(), o.detect));
          Add(se.full_no_prompt, ZOf(tokens_without, lists.p0(), o.detect));
          if (v2) {
            const CspvResult cs = Cspv(tokens_with, lists.p0(), o.detect, o.cspv_sample, o.seed);
            if (cs.population >= o.detect.min_tokens)
              se.cspv.z.push_back(cs.sample.z);
            else
              ++se.cspv.too_short;
            const auto& used = proc.experts_used();
            for (size_t st = 0; st < used.size(); ++st) {
              ++steps;
              const int slot = det.SlotOf(scheme);
              recovered_p +=
                  ChooseExpert(pw.routing, with.first + static_cast<int64_t>(st) - 1, slot)
                      .expert == used[st];
              if (without.first + static_cast<int64_t>(st) >= 1)
                recovered_np +=
                    ChooseExpert(pn.routing, without.first + static_cast<int64_t>(st) - 1, slot)
                        .expert == used[st];
            }
            if (o.other_engine) {
              const auto other =
                  det.FromPass(scheme, with, other_passes[static_cast<size_t>(i - c0)]);
              Add(se.other_level, ZOf(other, lists.p0(), o.detect));
              DetectOptions margin = o.detect;
              margin.min_margin = o.other_min_margin;
              Add(se.other_level_margin, ZOf(other, lists.p0(), margin));
            }
          }
        } else {
          const auto rw = det.Run(with, true, pw);
          tokens_with = det.FromPass(scheme, with, pw);
          const auto rn = det.Run(without, false, pn);
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
            const auto tokens =
                det.FromPass(scheme, with, other_passes[static_cast<size_t>(i - c0)]);
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
          for (size_t st = 0; st < used.size(); ++st) {
            ++steps;
            recovered_p += rw.experts[with.first + st - 1] == used[st];
            if (without.first + static_cast<int64_t>(st) >= 1)
              recovered_np += rn.experts[without.first + st - 1] == used[st];
            if (o.oracle && with.first + static_cast<int64_t>(st) >= 1) {
              agree += rw.predicted[with.first + st - 1] == used[st];
              ++agree_n;
            }
          }
        }
        // Quality and size from the forward pass over prompt + text.
        const auto [text_nll, text_n] = Nll(pw, with.first, c.vocab_size);
        nll += text_nll;
        nll_n += text_n;
        for (size_t k = 0; k < o.z_lengths.size(); ++k) {
          if (o.z_lengths[k] > o.new_tokens) continue;
          std::vector<TokenScore> prefix;
          for (const TokenScore& ts : tokens_with)
            if (ts.position - with.first < o.z_lengths[k]) prefix.push_back(ts);
          Add(se.by_length[k],
              ZOf(prefix, lists.p0(),
                  DetectOptions{o.detect.z_threshold, o.detect.dedup, o.detect.min_margin, 1}));
        }
        const auto needed =
            TokensToDetect(tokens_with, with.first, lists.p0(), o.detect, o.size_p_value);
        sizes.push_back(needed ? static_cast<double>(*needed)
                               : std::numeric_limits<double>::infinity());
        se.size_never += needed ? 0 : 1;
      }
      if (!pending.empty()) {
        const std::vector<std::optional<double>> zs = det.ZMany(scheme, pending);
        for (size_t k = 0; k < zs.size(); ++k) Add(*pending_sets[k], zs[k]);
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
    se.perplexity = std::exp(nll / std::max<int64_t>(1, nll_n));
    se.distinct2 = static_cast<double>(distinct) / std::max<int64_t>(1, bigrams);
    if (!sizes.empty()) {
      std::sort(sizes.begin(), sizes.end());
      se.size_median = sizes[(sizes.size() - 1) / 2];
    }
    report.schemes.push_back(std::move(se));
  }

  note("held-out human paragraphs");
  // In chunks of at most the paragraphs still needed, so that no more are
  // scored than one by one, and the same ones.
  size_t next_paragraph = 0;
  while (next_paragraph < paragraphs.size() && report.human_paragraphs_used < o.human_paragraphs) {
    const size_t per_chunk = o.oracle ? det.TextsWithLogits(plan_ctx) : static_cast<size_t>(std::max(1, o.score_batch_texts));
    const size_t wanted = std::min(per_chunk, static_cast<size_t>(o.human_paragraphs - report.human_paragraphs_used));
    std::vector<DetectInput> chunk;
    while (next_paragraph < paragraphs.size() && chunk.size() < wanted) {
      DetectInput in = InputFromText(engine, std::nullopt, paragraphs[next_paragraph++]);
      if (static_cast<int64_t>(in.ids.size()) > plan_ctx) in.ids.resize(static_cast<size_t>(plan_ctx));
      if (static_cast<int64_t>(in.ids.size()) - in.first < o.detect.min_tokens + 1) {
        ++report.human_paragraphs_skipped;
        continue;
      }
      chunk.push_back(std::move(in));
    }
    const std::vector<ScoreResult> passes = det.Passes(chunk, o.oracle != nullptr);
    for (size_t k = 0; k < chunk.size(); ++k) {
      const auto r = det.Run(chunk[k], true, passes[k]);
      if (!r.full) {
        ++report.human_paragraphs_skipped;  // too many repeats to score
        continue;
      }
      ++report.human_paragraphs_used;
      AddAll(r, report.human_full, report.human_no_dedup, report.human_cspv, report.human_pepi,
             report.human_kgw, o.oracle != nullptr);
      add_null(human_null, chunk[k], passes[k]);
    }
  }
  for (SchemeEval& se : report.schemes) {
    se.human = human_null[se.scheme];
    se.plain = plain_null[se.scheme];
    se.roc_auc = RocAuc(se.full_prompt.z, se.human.z);
    se.threshold_fpr_1pct = ThresholdAtFpr(se.human.z, 0.01);
    se.threshold_fpr_01pct = ThresholdAtFpr(se.human.z, 0.001);
    auto tpr = [&](double threshold) {
      if (se.full_prompt.z.empty()) return 0.0;
      return static_cast<double>(std::count_if(se.full_prompt.z.begin(), se.full_prompt.z.end(),
                                               [&](double z) { return z > threshold; })) /
             static_cast<double>(se.full_prompt.z.size() + se.full_prompt.too_short);
    };
    se.tpr_at_fpr_1pct = tpr(se.threshold_fpr_1pct);
    se.tpr_at_fpr_01pct = tpr(se.threshold_fpr_01pct);
  }
  report.texts_scored = det.texts_scored;
  report.tokens_scored = det.tokens_scored;
  report.scoring_seconds = det.score_ms / 1e3;
  report.score_batch_texts = std::max(1, o.score_batch_texts);
  report.seconds = total.Millis() / 1e3;
  return report;
}

}  // namespace epwa::wm
