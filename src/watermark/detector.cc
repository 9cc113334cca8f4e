#include "watermark/detector.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_set>

#include "base/error.h"
#include "runtime/sampler.h"
#include "watermark/stats.h"

namespace epwa::wm {

std::vector<TokenScore> ScoreByRouting(std::span<const int32_t> ids, int64_t first,
                                       const RoutingTrace& routing, int slot, GreenLists& lists,
                                       int shift) {
  const int64_t T = static_cast<int64_t>(ids.size());
  Require(routing.num_tokens() == T && routing.first_position() == 0,
          "the routing trace does not cover the scored sequence");
  Require(slot >= 0 && slot < routing.num_moe_layers(), "the router layer is outside the trace");
  std::vector<TokenScore> out;
  for (int64_t t = std::max<int64_t>(first, shift); t < T; ++t) {
    const int64_t from = t - shift;
    if (from >= T) continue;
    const ExpertChoice c = ChooseExpert(routing, from, slot);
    TokenScore s;
    s.position = t;
    s.token = ids[t];
    s.seed = c.expert;
    s.confidence = c.confidence;
    s.margin = c.margin;
    s.green = lists.For(c.expert).Contains(ids[t]);
    out.push_back(s);
  }
  return out;
}

std::vector<TokenScore> ScoreByContext(std::span<const int32_t> ids, int64_t first,
                                       const RoutingTrace& routing, int slot, GreenLists& lists) {
  const int64_t T = static_cast<int64_t>(ids.size());
  Require(routing.num_tokens() == T && routing.first_position() == 0,
          "the routing trace does not cover the scored sequence");
  Require(slot >= 0 && slot < routing.num_moe_layers(), "the router layer is outside the trace");
  const KeyedBy keyed = lists.keyed_by();
  std::vector<TokenScore> out;
  for (int64_t t = std::max<int64_t>(first, 1); t < T; ++t) {
    const std::vector<ContextItem> items = ContextItemsV2(keyed, routing, t - 1, slot, ids[t - 1]);
    const ExpertChoice at_slot = ChooseExpert(routing, t - 1, slot);
    TokenScore s;
    s.position = t;
    s.token = ids[t];
    s.seed = at_slot.expert;
    s.confidence = at_slot.confidence;
    s.margin = at_slot.margin;
    if (keyed == KeyedBy::kMinHash) {
      const ContextItem& item = items[lists.MinItem(items, ids[t])];
      s.context = item.Packed();
      s.green = lists.ForItem(item).Contains(ids[t]);
      out.push_back(s);
      continue;
    }
    for (const ContextItem& item : items) {
      if (keyed == KeyedBy::kLayerVotes) {
        const ExpertChoice c = ChooseExpert(routing, t - 1, item.layer);
        s.confidence = c.confidence;
        s.margin = c.margin;
      }
      s.context = item.Packed();
      s.green = lists.ForItem(item).Contains(ids[t]);
      out.push_back(s);
    }
  }
  return out;
}

std::vector<TokenScore> ScoreBySeeds(std::span<const int32_t> ids, int64_t first,
                                     std::span<const int32_t> seeds, GreenLists& lists) {
  const int64_t T = static_cast<int64_t>(ids.size());
  Require(static_cast<int64_t>(seeds.size()) >= T - 1, "one seed per predicting position is needed");
  std::vector<TokenScore> out;
  for (int64_t t = std::max<int64_t>(first, 1); t < T; ++t) {
    TokenScore s;
    s.position = t;
    s.token = ids[t];
    s.seed = seeds[t - 1];
    s.green = lists.For(s.seed).Contains(ids[t]);
    out.push_back(s);
  }
  return out;
}

std::vector<TokenScore> ScoreByPreviousToken(std::span<const int32_t> ids, int64_t first,
                                             GreenLists& lists) {
  return ScoreBySeeds(ids, first, ids, lists);
}

std::vector<TokenScore> FilterTokens(std::span<const TokenScore> tokens, const DetectOptions& o,
                                     int64_t* skipped_repeats, int64_t* skipped_low_margin) {
  std::vector<TokenScore> kept;
  // (context, token) pairs; v1 and KGW put their seed in the context.
  struct PairHash {
    size_t operator()(const std::pair<uint64_t, int32_t>& p) const {
      return std::hash<uint64_t>()(p.first * 0x9e3779b97f4a7c15ULL ^ static_cast<uint32_t>(p.second));
    }
  };
  std::unordered_set<std::pair<uint64_t, int32_t>, PairHash> seen;
  int64_t repeats = 0, low = 0;
  for (const TokenScore& s : tokens) {
    if (s.margin < o.min_margin) {
      ++low;
      continue;
    }
    if (o.dedup) {
      const uint64_t context = s.context != 0 ? s.context : static_cast<uint32_t>(s.seed);
      if (!seen.insert({context, s.token}).second) {
        ++repeats;
        continue;
      }
    }
    kept.push_back(s);
  }
  if (skipped_repeats) *skipped_repeats = repeats;
  if (skipped_low_margin) *skipped_low_margin = low;
  return kept;
}

namespace {
Summary Count(std::span<const TokenScore> kept, double p0, double z_threshold) {
  Summary s;
  s.p0 = p0;
  s.scored = static_cast<int64_t>(kept.size());
  for (const TokenScore& t : kept) s.green += t.green ? 1 : 0;
  s.green_fraction = s.scored ? static_cast<double>(s.green) / s.scored : 0.0;
  s.z = ZScore(s.green, s.scored, p0);
  s.log10_p = s.scored ? Log10BinomialUpperTail(s.green, s.scored, p0) : 0.0;
  s.p_value = std::pow(10.0, s.log10_p);
  s.detected = s.scored > 0 && s.z > z_threshold;
  return s;
}
}  // namespace

Summary Summarize(std::span<const TokenScore> tokens, double p0, const DetectOptions& o) {
  int64_t repeats = 0, low = 0;
  const std::vector<TokenScore> kept = FilterTokens(tokens, o, &repeats, &low);
  Summary s = Count(kept, p0, o.z_threshold);
  s.candidates = static_cast<int64_t>(tokens.size());
  s.skipped_repeats = repeats;
  s.skipped_low_margin = low;
  return s;
}

Summary SummarizeChecked(std::span<const TokenScore> tokens, double p0, const DetectOptions& o) {
  Summary s = Summarize(tokens, p0, o);
  Require(s.scored >= o.min_tokens,
          "only " + std::to_string(s.scored) + " tokens could be scored (" +
              std::to_string(s.candidates) + " with a predecessor, " +
              std::to_string(s.skipped_repeats) + " repeats and " +
              std::to_string(s.skipped_low_margin) +
              " low-margin tokens skipped); detection needs at least " +
              std::to_string(o.min_tokens) + " (--min-tokens) for a meaningful z-score");
  return s;
}

CspvResult Cspv(std::span<const TokenScore> tokens, double p0, const DetectOptions& o,
                int64_t sample, uint64_t seed) {
  Require(sample >= 3, "--sample must be at least 3 (one token per stratum)");
  CspvResult r;
  int64_t repeats = 0, low_margin = 0;
  std::vector<TokenScore> kept = FilterTokens(tokens, o, &repeats, &low_margin);
  r.population = static_cast<int64_t>(kept.size());
  // Ascending confidence; positions break ties so the ranking is reproducible.
  std::stable_sort(kept.begin(), kept.end(), [](const TokenScore& a, const TokenScore& b) {
    return a.confidence < b.confidence;
  });
  const int64_t n = r.population;
  const int64_t take = std::min(sample, n);
  const int64_t third = take / 3;
  std::vector<TokenScore> low(kept.begin(), kept.begin() + third);
  std::vector<TokenScore> high(kept.end() - third, kept.end());
  std::vector<TokenScore> middle(kept.begin() + third, kept.end() - third);
  // Partial Fisher-Yates with the documented PRNG: the random stratum is the
  // first (take - 2 * third) of a shuffle of the middle.
  Rng rng(seed);
  const int64_t rest = std::min<int64_t>(take - 2 * third, static_cast<int64_t>(middle.size()));
  for (int64_t i = 0; i < rest; ++i) {
    const int64_t j = i + static_cast<int64_t>(rng.Next() % static_cast<uint64_t>(middle.size() - i));
    std::swap(middle[i], middle[j]);
  }
  middle.resize(static_cast<size_t>(rest));
  std::vector<TokenScore> all = low;
  all.insert(all.end(), middle.begin(), middle.end());
  all.insert(all.end(), high.begin(), high.end());
  r.sample = Count(all, p0, o.z_threshold);
  r.low = Count(low, p0, o.z_threshold);
  r.high = Count(high, p0, o.z_threshold);
  r.random = Count(middle, p0, o.z_threshold);
  r.sample.candidates = static_cast<int64_t>(tokens.size());
  r.sample.skipped_repeats = repeats;
  r.sample.skipped_low_margin = low_margin;
  return r;
}

}  // namespace epwa::wm
