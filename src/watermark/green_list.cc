#include "watermark/green_list.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "base/error.h"
#include "runtime/sampler.h"

namespace epwa::wm {
namespace {

// The 16-byte domain-separation tag: "EPW-A green v1" and one zero byte.
constexpr char kTag[16] = "EPW-A green v1\0";
constexpr uint8_t kKindExpert = 1;
constexpr uint8_t kKindKgw = 2;
// EPW-A v2: its own tag, so no v2 message can equal a v1 message.
constexpr char kTagV2[16] = "EPW-A green v2\0";
constexpr uint8_t kKindContextList = 3;
constexpr uint8_t kKindContextRank = 4;

void PutU32(std::vector<uint8_t>& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

Seed Hmac(const SecretKey& key, const std::vector<uint8_t>& message) {
  Seed seed{};
  unsigned int length = 0;
  const auto* ok = HMAC(EVP_sha256(), key.bytes().data(), static_cast<int>(key.bytes().size()),
                        message.data(), message.size(), seed.data(), &length);
  Require(ok != nullptr && length == seed.size(), "HMAC-SHA256 failed (OpenSSL)");
  return seed;
}

std::vector<uint8_t> Header(uint8_t kind, int64_t vocab) {
  Require(vocab >= 2 && vocab <= (int64_t{1} << 31) - 1, "the vocabulary size must be in [2, 2^31)");
  std::vector<uint8_t> m(kTag, kTag + 16);
  m.push_back(kind);
  PutU32(m, static_cast<uint32_t>(vocab));
  return m;
}

uint64_t LoadLe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

Rng SeededRng(const Seed& seed) {
  return Rng::FromState(LoadLe64(seed.data()), LoadLe64(seed.data() + 8), LoadLe64(seed.data() + 16),
                        LoadLe64(seed.data() + 24));
}

uint64_t Below(Rng& rng, uint64_t bound) {
  unsigned __int128 m = static_cast<unsigned __int128>(rng.Next()) * bound;
  uint64_t low = static_cast<uint64_t>(m);
  if (low < bound) {
    const uint64_t threshold = (0 - bound) % bound;
    while (low < threshold) {
      m = static_cast<unsigned __int128>(rng.Next()) * bound;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

int64_t GreenCount(double gamma, int64_t vocab) {
  Require(std::isfinite(gamma) && gamma > 0.0 && gamma < 1.0,
          "--gamma must be strictly between 0 and 1");
  const double n = std::floor(gamma * static_cast<double>(vocab) + 0.5);
  Require(n >= 1 && n <= static_cast<double>(vocab - 1),
          "--gamma " + std::to_string(gamma) + " gives " + std::to_string(static_cast<int64_t>(n)) +
              " green tokens out of " + std::to_string(vocab) + "; it must leave at least one green and one red token");
  return static_cast<int64_t>(n);
}

std::array<uint8_t, 32> ParseRouterHash(const std::string& hex) {
  Require(hex.size() == 64, "a router hash is 64 hex digits (epwa hash prints it)");
  std::array<uint8_t, 32> out{};
  auto nibble = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    throw Error("a router hash is 64 hex digits; '" + hex + "' is not");
  };
  for (size_t i = 0; i < 32; ++i) out[i] = static_cast<uint8_t>(nibble(hex[2 * i]) * 16 + nibble(hex[2 * i + 1]));
  return out;
}

Seed ExpertSeed(const SecretKey& key, int64_t vocab, int32_t expert,
                std::span<const uint8_t, 32> router_hash) {
  Require(expert >= 0, "an expert index must not be negative");
  std::vector<uint8_t> m = Header(kKindExpert, vocab);
  PutU32(m, static_cast<uint32_t>(expert));
  m.insert(m.end(), router_hash.begin(), router_hash.end());
  return Hmac(key, m);
}

Seed KgwSeed(const SecretKey& key, int64_t vocab, int32_t previous_token) {
  Require(previous_token >= 0, "a token id must not be negative");
  std::vector<uint8_t> m = Header(kKindKgw, vocab);
  PutU32(m, static_cast<uint32_t>(previous_token));
  return Hmac(key, m);
}

namespace {
std::vector<uint8_t> ContextMessage(uint8_t kind, int64_t vocab, std::span<const uint8_t, 32> router_hash,
                                    const ContextItem& item) {
  Require(vocab >= 2 && vocab <= (int64_t{1} << 31) - 1, "the vocabulary size must be in [2, 2^31)");
  Require(item.layer >= -1 && item.layer < 255 && item.expert >= -1 && item.expert < (1 << 24) - 1 &&
              item.token >= -1,
          "a watermark context item is out of range");
  std::vector<uint8_t> m(kTagV2, kTagV2 + 16);
  m.push_back(kind);
  PutU32(m, static_cast<uint32_t>(vocab));
  m.insert(m.end(), router_hash.begin(), router_hash.end());
  PutU32(m, static_cast<uint32_t>(item.layer));
  PutU32(m, static_cast<uint32_t>(item.expert));
  PutU32(m, static_cast<uint32_t>(item.token));
  return m;
}

uint64_t Finalize64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
}  // namespace

Seed ContextSeed(const SecretKey& key, int64_t vocab, std::span<const uint8_t, 32> router_hash,
                 const ContextItem& item) {
  return Hmac(key, ContextMessage(kKindContextList, vocab, router_hash, item));
}

Seed RankSeed(const SecretKey& key, int64_t vocab, std::span<const uint8_t, 32> router_hash,
              const ContextItem& item) {
  return Hmac(key, ContextMessage(kKindContextRank, vocab, router_hash, item));
}

uint64_t SelfSaltRank(uint64_t k0, uint64_t k1, int32_t token) {
  return Finalize64(k0 ^ Finalize64(k1 + static_cast<uint64_t>(static_cast<uint32_t>(token))));
}

void GreenIds(const Seed& seed, int64_t vocab, int64_t n_green, std::vector<int32_t>& scratch,
              std::vector<int32_t>& out) {
  Rng rng = SeededRng(seed);
  // `scratch` is kept as the identity permutation between calls: the swaps
  // are undone afterwards, so a list costs O(n_green) rather than O(vocab)
  // (KGW builds one per new previous token).
  if (static_cast<int64_t>(scratch.size()) != vocab) {
    scratch.resize(static_cast<size_t>(vocab));
    std::iota(scratch.begin(), scratch.end(), 0);
  }
  std::vector<int64_t> swapped(static_cast<size_t>(n_green));
  for (int64_t i = 0; i < n_green; ++i) {
    const int64_t j = i + static_cast<int64_t>(Below(rng, static_cast<uint64_t>(vocab - i)));
    std::swap(scratch[i], scratch[j]);
    swapped[i] = j;
  }
  out.assign(scratch.begin(), scratch.begin() + n_green);
  for (int64_t i = n_green - 1; i >= 0; --i) std::swap(scratch[i], scratch[swapped[i]]);
}

GreenMask::GreenMask(std::span<const int32_t> green_ids, int64_t vocab)
    : vocab_(vocab), bits_(static_cast<size_t>((vocab + 63) / 64), 0) {
  for (int32_t id : green_ids) bits_[static_cast<size_t>(id) >> 6] |= uint64_t{1} << (id & 63);
  ids_.assign(green_ids.begin(), green_ids.end());
}

GreenLists::GreenLists(const SecretKey& key, KeyedBy keyed_by, const std::string& router_hash_hex,
                       int64_t vocab, double gamma)
    : key_(key), keyed_by_(keyed_by), vocab_(vocab), n_green_(GreenCount(gamma, vocab)) {
  if (keyed_by != KeyedBy::kPreviousToken) router_hash_ = ParseRouterHash(router_hash_hex);
}

size_t GreenLists::MaxCachedLists() const {
  // KGW and v2 can meet every token of the vocabulary in a context; a bound
  // keeps each cache near 256 MB even for 256k-token vocabularies.
  const size_t mask_bytes = static_cast<size_t>(vocab_ / 8 + 4 * n_green_ + 64);
  return std::max<size_t>(64, (size_t{256} << 20) / mask_bytes);
}

void GreenLists::ReserveItems(size_t n) {
  if (item_cache_.size() + n > std::max(MaxCachedLists(), n)) item_cache_.clear();
}

const GreenMask& GreenLists::ForItem(const ContextItem& item) {
  const uint64_t packed = item.Packed();
  auto it = item_cache_.find(packed);
  if (it != item_cache_.end()) return *it->second;
  if (item_cache_.size() >= std::max<size_t>(MaxCachedLists(), 256)) item_cache_.clear();
  GreenIds(ContextSeed(key_, vocab_, router_hash_, item), vocab_, n_green_, scratch_, ids_);
  auto mask = std::make_unique<GreenMask>(ids_, vocab_);
  const GreenMask& ref = *mask;
  item_cache_.emplace(packed, std::move(mask));
  return ref;
}

const std::array<uint64_t, 2>& GreenLists::RankKey(const ContextItem& item) {
  const uint64_t packed = item.Packed();
  auto it = rank_keys_.find(packed);
  if (it != rank_keys_.end()) return it->second;
  if (rank_keys_.size() >= (size_t{1} << 20)) rank_keys_.clear();
  const Seed s = RankSeed(key_, vocab_, router_hash_, item);
  return rank_keys_.emplace(packed, std::array<uint64_t, 2>{LoadLe64(s.data()), LoadLe64(s.data() + 8)})
      .first->second;
}

size_t GreenLists::MinRanked(std::span<const std::array<uint64_t, 2>> keys, int32_t token) {
  size_t best = 0;
  uint64_t best_rank = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    const uint64_t r = SelfSaltRank(keys[i][0], keys[i][1], token);
    if (i == 0 || r < best_rank) {
      best = i;
      best_rank = r;
    }
  }
  return best;
}

size_t GreenLists::MinItem(std::span<const ContextItem> items, int32_t token) {
  Require(!items.empty(), "a min-hash context needs at least one item");
  std::vector<std::array<uint64_t, 2>> keys;
  for (const ContextItem& item : items) keys.push_back(RankKey(item));
  return MinRanked(keys, token);
}

const GreenMask& GreenLists::For(int32_t seed_value) {
  auto it = cache_.find(seed_value);
  if (it != cache_.end()) return *it->second;
  if (cache_.size() >= MaxCachedLists()) cache_.clear();
  const Seed seed = keyed_by_ == KeyedBy::kExpert
                        ? ExpertSeed(key_, vocab_, seed_value, router_hash_)
                        : KgwSeed(key_, vocab_, seed_value);
  GreenIds(seed, vocab_, n_green_, scratch_, ids_);
  auto mask = std::make_unique<GreenMask>(ids_, vocab_);
  const GreenMask& ref = *mask;
  cache_.emplace(seed_value, std::move(mask));
  return ref;
}

}  // namespace epwa::wm
