#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_set>

namespace epwa {

namespace {
uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Rng::Rng(uint64_t seed) {
  uint64_t state = seed;
  for (auto& s : s_) s = SplitMix64(state);
}

Rng Rng::FromState(uint64_t s0, uint64_t s1, uint64_t s2, uint64_t s3) {
  Rng rng(0);
  rng.s_[0] = s0;
  rng.s_[1] = s1;
  rng.s_[2] = s2;
  rng.s_[3] = s3;
  return rng;
}

uint64_t Rng::Next() {
  const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = Rotl(s_[3], 45);
  return result;
}

float Rng::Uniform() { return static_cast<float>(Next() >> 40) * (1.0f / 16777216.0f); }

Sampler::Sampler(const SamplerParams& params) : params_(params), rng_(params.seed) {}

int32_t Sampler::Sample(std::span<float> logits, std::span<const int32_t> context) {
  const int32_t V = static_cast<int32_t>(logits.size());
  if (params_.repeat_penalty != 1.0f && params_.repeat_last_n != 0) {
    const size_t n = params_.repeat_last_n < 0
                         ? context.size()
                         : std::min<size_t>(context.size(), params_.repeat_last_n);
    std::unordered_set<int32_t> seen(context.end() - n, context.end());
    for (int32_t id : seen) {
      if (id < 0 || id >= V) continue;
      float& l = logits[id];
      l = l > 0 ? l / params_.repeat_penalty : l * params_.repeat_penalty;
    }
  }
  if (params_.temperature <= 0.0f) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }

  // Softmax at temperature over the whole vocabulary.
  probs_.resize(V);
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (int32_t i = 0; i < V; ++i) {
    probs_[i] = std::exp((logits[i] - max_logit) / params_.temperature);
    sum += probs_[i];
  }
  for (auto& p : probs_) p = static_cast<float>(p / sum);

  // Candidates in descending probability; with top-k only the k best need
  // sorting.
  order_.resize(V);
  std::iota(order_.begin(), order_.end(), 0);
  auto better = [&](int32_t a, int32_t b) {
    return probs_[a] != probs_[b] ? probs_[a] > probs_[b] : a < b;
  };
  int32_t keep = V;
  if (params_.top_k > 0 && params_.top_k < V) {
    keep = params_.top_k;
    std::partial_sort(order_.begin(), order_.begin() + keep, order_.end(), better);
  } else {
    std::sort(order_.begin(), order_.end(), better);
  }
  if (params_.top_p < 1.0f) {
    // Renormalise over the survivors of top-k before the cumulative cut, as
    // Hugging Face's warpers do (each works on the previous one's output).
    double kept_mass = 0;
    for (int32_t i = 0; i < keep; ++i) kept_mass += probs_[order_[i]];
    double cumulative = 0;
    int32_t n = 0;
    while (n < keep) {
      cumulative += probs_[order_[n]] / kept_mass;
      ++n;
      if (cumulative >= params_.top_p) break;
    }
    keep = std::max(n, 1);
  }
  if (params_.min_p > 0.0f) {
    const float threshold = params_.min_p * probs_[order_[0]];
    int32_t n = 1;
    while (n < keep && probs_[order_[n]] >= threshold) ++n;
    keep = n;
  }
  double total = 0;
  for (int32_t i = 0; i < keep; ++i) total += probs_[order_[i]];
  const double target = static_cast<double>(rng_.Uniform()) * total;
  double cumulative = 0;
  for (int32_t i = 0; i < keep; ++i) {
    cumulative += probs_[order_[i]];
    if (target < cumulative) return order_[i];
  }
  return order_[keep - 1];
}

}  // namespace epwa
