// Green lists of schemes EPW-A v1 and v2 (docs/watermark.md): HMAC-SHA256
// seeds and the keyed partial Fisher-Yates permutation, plus a cache of
// membership bitmaps for generation and detection.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/sampler.h"
#include "watermark/key.h"

namespace epwa::wm {

inline constexpr char kSchemeName[] = "EPW-A v1";

using Seed = std::array<uint8_t, 32>;

// floor(gamma * V + 0.5); throws epwa::Error unless 1 <= n <= V - 1.
int64_t GreenCount(double gamma, int64_t vocab);

// "122f...": 64 hex digits -> 32 bytes; throws epwa::Error otherwise.
std::array<uint8_t, 32> ParseRouterHash(const std::string& hex);

Seed ExpertSeed(const SecretKey& key, int64_t vocab, int32_t expert,
                std::span<const uint8_t, 32> router_hash);
Seed KgwSeed(const SecretKey& key, int64_t vocab, int32_t previous_token);

// xoshiro256** whose state is the seed's four little-endian u64 words.
Rng SeededRng(const Seed& seed);
// Uniform on [0, bound): Lemire's multiply-and-reject, as docs/watermark.md specifies.
uint64_t Below(Rng& rng, uint64_t bound);

// The first n_green ids of the keyed forward Fisher-Yates shuffle, in
// shuffle order. `scratch` ([vocab]) is working memory that callers keep
// between calls (it is left as the identity permutation).
void GreenIds(const Seed& seed, int64_t vocab, int64_t n_green, std::vector<int32_t>& scratch,
              std::vector<int32_t>& out);

// Membership bitmap of one green list: [vocab] bits.
class GreenMask {
 public:
  GreenMask() = default;
  GreenMask(std::span<const int32_t> green_ids, int64_t vocab);
  bool Contains(int32_t token) const {
    return token >= 0 && token < vocab_ &&
           ((bits_[static_cast<size_t>(token) >> 6] >> (token & 63)) & 1) != 0;
  }
  // The green ids in shuffle order (not sorted: sorting would cost more than
  // building the list, which KGW does for every new previous token).
  const std::vector<int32_t>& ids() const { return ids_; }

 private:
  int64_t vocab_ = 0;
  std::vector<uint64_t> bits_;
  std::vector<int32_t> ids_;
};

// What a green list is keyed by. The first two are EPW-A v1 (one list per
// expert; KGW's per previous token); the others are EPW-A v2's variants
// (docs/watermark.md, "EPW-A v2"), whose lists are keyed by context items.
enum class KeyedBy {
  kExpert,         // v1: the expert the router chose at t - 1 (one MoE layer)
  kPreviousToken,  // KGW h=1: the token at t - 1
  kExpertToken,    // v2 (a): the pair (expert at t - 1 in one MoE layer, token at t - 1)
  kMinHash,        // v2 (b): self-salted min-hash over the experts of every layer at t - 1
                   //         and the token at t - 1
  kLayerVotes,     // v2 (c): one vote per MoE layer, each keyed by (that layer's expert at
                   //         t - 1, token at t - 1)
};
inline bool IsV2(KeyedBy k) {
  return k == KeyedBy::kExpertToken || k == KeyedBy::kMinHash || k == KeyedBy::kLayerVotes;
}
// The deepest MoE layer (router slot) whose choices a keying reads, with
// `slot` the keying's own router slot and `moe_layers` the model's count:
// one layer for v1 and (a), every layer for (b) and (c), none (-1) for KGW.
// Detection's forward passes stop there (Engine::ScoreBatch).
inline int DeepestSlotRead(KeyedBy k, int slot, int64_t moe_layers) {
  if (k == KeyedBy::kPreviousToken) return -1;
  if (k == KeyedBy::kMinHash || k == KeyedBy::kLayerVotes) return static_cast<int>(moe_layers) - 1;
  return slot;
}

// One element of a v2 context: a MoE layer's expert, a token, or both (an
// absent part is -1). Packed into 64 bits for caches and deduplication.
struct ContextItem {
  int32_t layer = -1;
  int32_t expert = -1;
  int32_t token = -1;
  uint64_t Packed() const {
    return (static_cast<uint64_t>(static_cast<uint32_t>(layer + 1) & 0xffu) << 56) |
           (static_cast<uint64_t>(static_cast<uint32_t>(expert + 1) & 0xffffffu) << 32) |
           static_cast<uint32_t>(token + 1);
  }
};

// The v2 list seed of one context item and the key of its self-salting rank
// (HMAC-SHA256 with the v2 tag; docs/watermark.md gives the bytes).
Seed ContextSeed(const SecretKey& key, int64_t vocab, std::span<const uint8_t, 32> router_hash,
                 const ContextItem& item);
Seed RankSeed(const SecretKey& key, int64_t vocab, std::span<const uint8_t, 32> router_hash,
              const ContextItem& item);
// The self-salting rank of candidate `token` under an item whose rank seed
// starts with the little-endian words k0, k1: a keyed 64-bit mix (the
// splitmix64 finaliser applied twice). Only its order matters: the item of
// smallest rank keys the candidate's list.
uint64_t SelfSaltRank(uint64_t k0, uint64_t k1, int32_t token);

// Green lists of one (key, scheme, router hash, vocabulary, gamma), built on
// first use and kept: the E expert lists are tiny, and the previous-token
// lists of KGW are cached up to a bound so long texts do not rebuild lists
// for frequent tokens.
class GreenLists {
 public:
  // `router_hash_hex` is required (non-empty) for kExpert.
  GreenLists(const SecretKey& key, KeyedBy keyed_by, const std::string& router_hash_hex,
             int64_t vocab, double gamma);
  const GreenMask& For(int32_t seed_value);  // expert index or previous token id
  // v2: the list of one context item (cached like KGW's).
  const GreenMask& ForItem(const ContextItem& item);
  // Makes room for n more item lists now, so that the references of the next
  // n ForItem calls stay valid together (a full cache is cleared at once).
  void ReserveItems(size_t n);
  // v2 (b): the index in `items` of the item that keys `token`'s list: the
  // smallest SelfSaltRank, the first on ties.
  size_t MinItem(std::span<const ContextItem> items, int32_t token);
  // The rank key (k0, k1) of an item, cached; with MinRanked, a caller
  // ranking every candidate fetches the keys once.
  const std::array<uint64_t, 2>& RankKey(const ContextItem& item);
  static size_t MinRanked(std::span<const std::array<uint64_t, 2>> keys, int32_t token);
  KeyedBy keyed_by() const { return keyed_by_; }
  int64_t vocab() const { return vocab_; }
  int64_t n_green() const { return n_green_; }
  // Null-hypothesis probability that a token is green: n_green / vocab.
  double p0() const { return static_cast<double>(n_green_) / static_cast<double>(vocab_); }

 private:
  SecretKey key_;
  KeyedBy keyed_by_;
  std::array<uint8_t, 32> router_hash_{};
  int64_t vocab_;
  int64_t n_green_;
  std::unordered_map<int32_t, std::unique_ptr<GreenMask>> cache_;
  std::unordered_map<uint64_t, std::unique_ptr<GreenMask>> item_cache_;
  std::unordered_map<uint64_t, std::array<uint64_t, 2>> rank_keys_;
  size_t MaxCachedLists() const;
  std::vector<int32_t> scratch_, ids_;
};

}  // namespace epwa::wm
