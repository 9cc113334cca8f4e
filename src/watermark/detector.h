// Watermark detection: which tokens of a sequence can be scored, under which
// green list, and the statistics over them (full, CSPV).
//
// Alignment: token t was sampled from the logits computed at position t - 1,
// so its green list is keyed by the router decision at position t - 1 (or by
// token t - 1 for KGW). Pairing it with the decision at t (the original
// framework's mistake) scores against unrelated lists.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "model/routing.h"
#include "watermark/green_list.h"
#include "watermark/processor.h"

namespace epwa::wm {

struct TokenScore {
  int64_t position = 0;  // index of the token in the scored sequence
  int32_t token = 0;
  int32_t seed = 0;         // expert index (GSG/EWP) or previous token (KGW)
  float confidence = 1.0f;  // router softmax top-1 at position - 1 (1 for KGW)
  float margin = 1.0f;      // router top-1 minus top-2 probability (1 for KGW)
  bool green = false;
  // EPW-A v2: the packed context item that keyed this vote (ContextItem::
  // Packed), what deduplication keys on with the token; 0 for v1 and KGW,
  // which dedup on (seed, token).
  uint64_t context = 0;
};

// Tokens ids[first .. T) under the experts that the routing trace (covering
// all of `ids`, from position 0) chose at the previous positions, in router
// slot `slot`. `shift` is the alignment under test: 1 is correct; the
// alignment test uses 0 (the original's pairing) and 2.
std::vector<TokenScore> ScoreByRouting(std::span<const int32_t> ids, int64_t first,
                                       const RoutingTrace& routing, int slot, GreenLists& lists,
                                       int shift = 1);
// Tokens ids[first .. T) under per-position seeds: seeds[t - 1] keys token t
// (experts predicted by the PEPI oracle, for example).
std::vector<TokenScore> ScoreBySeeds(std::span<const int32_t> ids, int64_t first,
                                     std::span<const int32_t> seeds, GreenLists& lists);
// EPW-A v2: the votes of tokens ids[first .. T) under the context items of
// position t - 1 (ContextItemsV2 of `lists.keyed_by()`): one vote per token
// for (a) and (b), one per MoE layer for (c). `seed` is the expert of router
// slot `slot` at t - 1 (for recovery statistics); confidence and margin are
// those of the vote's own layer ((b): the slot's).
std::vector<TokenScore> ScoreByContext(std::span<const int32_t> ids, int64_t first,
                                       const RoutingTrace& routing, int slot, GreenLists& lists);
// KGW: token t under the list keyed by token t - 1.
std::vector<TokenScore> ScoreByPreviousToken(std::span<const int32_t> ids, int64_t first,
                                             GreenLists& lists);

struct DetectOptions {
  double z_threshold = 4.0;
  bool dedup = true;        // score each (seed, token) pair once
  double min_margin = 0.0;  // skip tokens whose router margin is below this
  int64_t min_tokens = 16;  // fewer scorable tokens is an error
};

struct Summary {
  int64_t candidates = 0;          // tokens that had a predecessor to key them
  int64_t scored = 0;
  int64_t green = 0;
  int64_t skipped_repeats = 0;     // (seed, token) pairs seen before
  int64_t skipped_low_margin = 0;  // router margin below --min-margin
  double p0 = 0;
  double green_fraction = 0;
  double z = 0;
  double p_value = 1;   // one-sided, exact binomial
  double log10_p = 0;   // kept because p underflows double for long texts
  bool detected = false;
};

// The tokens that survive the margin filter and deduplication, in order.
std::vector<TokenScore> FilterTokens(std::span<const TokenScore> tokens, const DetectOptions& o,
                                     int64_t* skipped_repeats, int64_t* skipped_low_margin);
// Counts and tests `tokens` after filtering. Does not enforce min_tokens.
Summary Summarize(std::span<const TokenScore> tokens, double p0, const DetectOptions& o);
// Summarize, then throws epwa::Error when fewer than o.min_tokens were scored.
Summary SummarizeChecked(std::span<const TokenScore> tokens, double p0, const DetectOptions& o);

// CSPV: rank the filtered tokens by router confidence and score a sample of
// `sample` of them: the lowest-confidence third, the highest-confidence third
// and a uniformly random rest from the middle (seeded by `seed`). Each stratum
// is also reported on its own.
struct CspvResult {
  int64_t population = 0;  // tokens after filtering
  Summary sample, low, high, random;
};
CspvResult Cspv(std::span<const TokenScore> tokens, double p0, const DetectOptions& o,
                int64_t sample, uint64_t seed);

}  // namespace epwa::wm
