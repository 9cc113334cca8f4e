// Green lists of scheme EPW-A v1 (docs/watermark.md): HMAC-SHA256 seeds and
// the keyed partial Fisher-Yates permutation, plus a cache of membership
// bitmaps for generation and detection.
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

// What a green list is keyed by.
enum class KeyedBy { kExpert, kPreviousToken };

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
  std::vector<int32_t> scratch_, ids_;
};

}  // namespace epwa::wm
