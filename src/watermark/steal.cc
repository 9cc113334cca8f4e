#include "watermark/steal.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <unordered_map>

#include "base/error.h"
#include "runtime/batch_engine.h"
#include "watermark/detector.h"
#include "watermark/pipeline.h"

namespace epwa::wm {
namespace {

// The contexts an attacker with the model observes before the token that
// follows position t (see the header).
std::vector<ContextItem> ObservableItems(Scheme s, const RoutingTrace& routing, int64_t t, int slot,
                                         int32_t token) {
  const KeyedBy keyed = KeyedByOf(s);
  if (keyed == KeyedBy::kPreviousToken) return {{-1, -1, token}};
  if (keyed == KeyedBy::kExpert) return {{slot, ChooseExpert(routing, t, slot).expert, -1}};
  return ContextItemsV2(keyed, routing, t, slot, token);
}

// Token counts after each observed context.
struct Counts {
  std::unordered_map<uint64_t, std::unordered_map<int32_t, int32_t>> after;
  std::unordered_map<uint64_t, int64_t> total;
  std::unordered_map<uint64_t, ContextItem> items;
  std::vector<int64_t> unigram;
  int64_t tokens = 0;

  explicit Counts(int64_t vocab) : unigram(static_cast<size_t>(vocab), 0) {}
  // Counts the generated part ids[first ..) of one text whose forward pass
  // gave `routing`.
  void Add(Scheme s, const std::vector<int32_t>& ids, int64_t first, const RoutingTrace& routing, int slot) {
    for (int64_t t = std::max<int64_t>(first, 1); t < static_cast<int64_t>(ids.size()); ++t) {
      ++unigram[static_cast<size_t>(ids[t])];
      ++tokens;
      for (const ContextItem& item : ObservableItems(s, routing, t - 1, slot, ids[t - 1])) {
        const uint64_t k = item.Packed();
        ++after[k][ids[t]];
        ++total[k];
        items.emplace(k, item);
      }
    }
  }
};

// What the attacker believes: per context, the tokens it thinks green.
using Learned = std::unordered_map<uint64_t, std::vector<int32_t>>;

// A token is believed green after a context when it is at least min_ratio
// times as frequent there in watermarked text as in the attacker's own
// unwatermarked text, both smoothed towards the unwatermarked unigram
// frequency (weight kPrior) so that a token seen once is not enough.
Learned Learn(const Counts& wm, const Counts& base, const StealOptions& o) {
  constexpr double kPrior = 5.0;
  const double vocab = static_cast<double>(base.unigram.size());
  auto unigram = [&](int32_t v) {
    return (static_cast<double>(base.unigram[static_cast<size_t>(v)]) + 1.0) / (static_cast<double>(base.tokens) + vocab);
  };
  Learned learned;
  for (const auto& [k, tokens] : wm.after) {
    const double n_wm = static_cast<double>(wm.total.at(k));
    const auto base_it = base.after.find(k);
    const double n_base = base_it == base.after.end() ? 0.0 : static_cast<double>(base.total.at(k));
    std::vector<int32_t> green;
    for (const auto& [v, c] : tokens) {
      if (c < o.min_count) continue;
      const double u = unigram(v);
      double c_base = 0;
      if (base_it != base.after.end()) {
        const auto f = base_it->second.find(v);
        if (f != base_it->second.end()) c_base = f->second;
      }
      const double p_wm = (c + kPrior * u) / (n_wm + kPrior);
      const double p_base = (c_base + kPrior * u) / (n_base + kPrior);
      if (p_wm >= o.min_ratio * p_base) green.push_back(v);
    }
    if (!green.empty()) learned.emplace(k, std::move(green));
  }
  return learned;
}

// The generated ids of every (prompt, options) pair (GenerateAll: batched
// when the engine's plan holds several sequences).
std::vector<std::vector<int32_t>> GeneratedIds(Engine& engine, const std::vector<std::vector<int32_t>>& prompts,
                                               std::vector<GenerateOptions> options) {
  std::vector<GenerateResult> results = GenerateAll(engine, prompts, std::move(options));
  std::vector<std::vector<int32_t>> out(results.size());
  for (size_t i = 0; i < results.size(); ++i) out[i] = std::move(results[i].tokens);
  return out;
}

}  // namespace

std::vector<StealResult> EvaluateStealing(Engine& engine, const SecretKey& key, const StealOptions& o) {
  const ModelConfig& c = engine.config();
  Require(!o.prompts.empty(), "stealing needs prompts");
  Require(!o.observed.empty(), "stealing needs at least one number of observed outputs");
  std::vector<int> observed = o.observed;
  std::sort(observed.begin(), observed.end());
  Require(observed.front() >= 1, "the number of observed outputs must be positive");
  const int max_n = observed.back();
  const std::string& hash = engine.load_stats().router_hash;
  auto note = [&](const std::string& s) {
    if (o.progress) o.progress(s);
  };
  const GenerateOptions base = EvaluationGenerateOptions(engine, o.new_tokens);
  // Outputs run through the model this many at a time (Engine::ScoreBatch
  // gives each the routing Engine::Score would, bit for bit).
  const size_t batch = static_cast<size_t>(std::max(1, o.score_batch_texts));
  auto prompt_of = [&](int i) { return engine.EncodePrompt(o.prompts[static_cast<size_t>(i) % o.prompts.size()]); };

  // The attacker's own unwatermarked outputs (seeds apart from the ones the
  // watermarked outputs use), kept to be counted under each scheme.
  note("stealing: the attacker's unwatermarked outputs");
  std::vector<std::vector<int32_t>> base_texts;  // prompt + generated
  std::vector<int64_t> base_first;
  {
    std::vector<GenerateOptions> opts;
    for (int i = 0; i < max_n; ++i) {
      base_texts.push_back(prompt_of(i + 7));
      base_first.push_back(static_cast<int64_t>(base_texts.back().size()));
      opts.push_back(base);
      opts.back().sampler.seed = o.seed + 5000000 + static_cast<uint64_t>(i);
    }
    const auto generated = GeneratedIds(engine, base_texts, std::move(opts));
    for (int i = 0; i < max_n; ++i) base_texts[i].insert(base_texts[i].end(), generated[i].begin(), generated[i].end());
  }

  std::vector<StealResult> results;
  for (Scheme scheme : o.schemes) {
    Require(c.IsMoe() || !UsesRouter(scheme), "router-keyed schemes need an MoE model");
    note(std::string("stealing: ") + SchemeName(scheme));
    const int slot = UsesRouter(scheme) ? ResolveRouterLayer(scheme, o.router_layer, c.NumMoeLayers()) : 0;
    GreenLists lists(key, KeyedByOf(scheme), hash, c.vocab_size, o.gamma);
    // KGW's contexts are tokens: no forward pass at all.
    const bool reads_routing = KeyedByOf(scheme) != KeyedBy::kPreviousToken;
    const int64_t deepest = DeepestSlotRead(KeyedByOf(scheme), slot, c.NumMoeLayers());
    const RoutingTrace no_routing;  // what KGW's counts are given (they read none)
    StealResult res;
    res.scheme = scheme;
    // The attacker counts its own outputs' contexts from their routing; the
    // same passes score them under the key (the control).
    Counts base_counts(c.vocab_size);
    for (size_t b = 0; b < base_texts.size(); b += batch) {
      std::vector<DetectInput> ins;
      for (size_t i = b; i < std::min(base_texts.size(), b + batch); ++i) {
        ins.emplace_back();
        ins.back().ids = base_texts[i];
        ins.back().first = base_first[i];
      }
      std::vector<ScoreResult> passes;
      const auto tokens = ScoreInputs(engine, ins, lists, slot, /*logits=*/false, reads_routing ? &passes : nullptr);
      for (size_t k = 0; k < ins.size(); ++k) {
        base_counts.Add(scheme, ins[k].ids, ins[k].first, reads_routing ? passes[k].routing : no_routing, slot);
        const Summary s = Summarize(tokens[k], lists.p0(), o.detect);
        if (s.scored >= o.detect.min_tokens) res.attacker_plain.z.push_back(s.z);
        else ++res.attacker_plain.too_short;
      }
    }
    Counts wm_counts(c.vocab_size);
    int seen = 0;
    for (int n : observed) {
      // Watermarked outputs, counted as the attacker would: it runs the model
      // over each one to learn the routing.
      {
        std::vector<std::unique_ptr<WatermarkProcessor>> procs;
        std::vector<std::vector<int32_t>> prompts;
        std::vector<GenerateOptions> opts;
        WatermarkParams p;
        p.scheme = scheme;
        p.gamma = o.gamma;
        p.delta = o.delta;
        p.router_layer = o.router_layer;
        for (int i = seen; i < n; ++i) {
          procs.push_back(std::make_unique<WatermarkProcessor>(key, p, c, hash));
          WatermarkProcessor* proc = procs.back().get();
          prompts.push_back(prompt_of(i));
          GenerateOptions g = base;
          g.sampler.seed = o.seed + static_cast<uint64_t>(i);
          g.logits_processor = [proc](std::span<float> logits, const RoutingTrace& routing,
                                      std::span<const int32_t> context) { proc->Apply(logits, routing, context); };
          opts.push_back(std::move(g));
        }
        const auto generated = GeneratedIds(engine, prompts, std::move(opts));
        for (size_t b = 0; b < prompts.size(); b += batch) {
          std::vector<std::vector<int32_t>> texts;
          for (size_t i = b; i < std::min(prompts.size(), b + batch); ++i) {
            texts.push_back(prompts[i]);
            texts.back().insert(texts.back().end(), generated[i].begin(), generated[i].end());
          }
          // Routing through the deepest router the scheme's contexts read.
          const std::vector<ScoreResult> passes =
              reads_routing ? engine.ScoreBatch(texts, /*logits=*/false, deepest) : std::vector<ScoreResult>();
          for (size_t k = 0; k < texts.size(); ++k)
            wm_counts.Add(scheme, texts[k], static_cast<int64_t>(prompts[b + k].size()),
                          reads_routing ? passes[k].routing : no_routing, slot);
        }
        seen = n;
      }
      const Learned learned = Learn(wm_counts, base_counts, o);
      int64_t pairs = 0, truly_green = 0;
      for (const auto& [k, tokens] : learned) {
        const ContextItem& item = wm_counts.items.at(k);
        const GreenMask& mask = KeyedByOf(scheme) == KeyedBy::kPreviousToken ? lists.For(item.token)
                                : KeyedByOf(scheme) == KeyedBy::kExpert      ? lists.For(item.expert)
                                                                             : lists.ForItem(item);
        for (int32_t v : tokens) {
          ++pairs;
          truly_green += mask.Contains(v);
        }
      }
      res.observed.push_back(n);
      res.learned_pairs.push_back(pairs);
      res.learned_precision.push_back(pairs ? static_cast<double>(truly_green) / pairs : 0.0);
      note("stealing: " + std::string(SchemeName(scheme)) + " spoofing after " + std::to_string(n) +
           " outputs (" + std::to_string(pairs) + " pairs believed green)");
      // Spoofs: the model with no key, biased towards what was learned.
      ZSet spoofed;
      std::vector<std::vector<int32_t>> spoof_prompts;
      std::vector<GenerateOptions> spoof_opts;
      for (int i = 0; i < o.spoof_texts; ++i) {
        spoof_prompts.push_back(prompt_of(max_n + 11 + i));
        GenerateOptions g = base;
        g.sampler.seed = o.seed + 9000000 + static_cast<uint64_t>(i);
        g.logits_processor = [&learned, &o, scheme, slot](std::span<float> logits, const RoutingTrace& routing,
                                                          std::span<const int32_t> context) {
          if (context.empty() || routing.num_tokens() == 0) return;
          const auto items =
              ObservableItems(scheme, routing, routing.num_tokens() - 1, slot, context.back());
          const float bias = static_cast<float>(o.spoof_delta / static_cast<double>(items.size()));
          for (const ContextItem& item : items) {
            const auto it = learned.find(item.Packed());
            if (it == learned.end()) continue;
            for (int32_t v : it->second) logits[static_cast<size_t>(v)] += bias;
          }
        };
        spoof_opts.push_back(std::move(g));
      }
      const auto spoofs = GeneratedIds(engine, spoof_prompts, std::move(spoof_opts));
      for (size_t b = 0; b < spoofs.size(); b += batch) {
        std::vector<DetectInput> ins;
        for (size_t i = b; i < std::min(spoofs.size(), b + batch); ++i) {
          ins.emplace_back();
          ins.back().first = static_cast<int64_t>(spoof_prompts[i].size());
          ins.back().ids = spoof_prompts[i];
          ins.back().ids.insert(ins.back().ids.end(), spoofs[i].begin(), spoofs[i].end());
        }
        for (const std::vector<TokenScore>& tokens : ScoreInputs(engine, ins, lists, slot)) {
          const Summary s = Summarize(tokens, lists.p0(), o.detect);
          if (s.scored >= o.detect.min_tokens) spoofed.z.push_back(s.z);
          else ++spoofed.too_short;
        }
      }
      res.spoofed.push_back(std::move(spoofed));
    }
    results.push_back(std::move(res));
  }
  return results;
}

nlohmann::json StealJson(const std::vector<StealResult>& results, const StealOptions& o) {
  const double t = o.detect.z_threshold;
  nlohmann::json out = nlohmann::json::array();
  for (const StealResult& r : results) {
    nlohmann::json runs = nlohmann::json::array();
    for (size_t i = 0; i < r.observed.size(); ++i)
      runs.push_back({{"observed_outputs", r.observed[i]},
                      {"spoofed", r.spoofed[i].Json(t)},
                      {"spoof_success", r.spoofed[i].z.empty() ? 0.0
                                                              : static_cast<double>(r.spoofed[i].Detected(t)) /
                                                                    static_cast<double>(r.spoofed[i].z.size() +
                                                                                        r.spoofed[i].too_short)},
                      {"learned_pairs", r.learned_pairs[i]},
                      {"learned_precision", r.learned_precision[i]}});
    out.push_back({{"scheme", SchemeName(r.scheme)}, {"attacker_unbiased", r.attacker_plain.Json(t)}, {"runs", runs}});
  }
  return {{"spoof_texts", o.spoof_texts},
          {"spoof_delta", o.spoof_delta},
          {"min_ratio", o.min_ratio},
          {"min_count", o.min_count},
          {"schemes", out}};
}

}  // namespace epwa::wm
