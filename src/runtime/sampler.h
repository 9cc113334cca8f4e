// Token sampling: greedy, temperature, top-k, top-p, min-p and repetition
// penalty, driven by a small documented PRNG so a seed reproduces output
// exactly on every machine.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace epwa {

// xoshiro256** (Blackman & Vigna), seeded by running SplitMix64 on the user's
// seed four times. Chosen over std::mt19937 + std::uniform_real_distribution
// because the standard leaves the distribution's algorithm to the library, so
// the same seed could give different text with another standard library.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  // Starts from the given state words as they are (no SplitMix64), for
  // generators whose state is itself specified, such as the watermark's
  // keyed permutation (docs/watermark.md).
  static Rng FromState(uint64_t s0, uint64_t s1, uint64_t s2, uint64_t s3);
  uint64_t Next();
  // Uniform in [0, 1) with 24 random bits: (Next() >> 40) * 2^-24.
  float Uniform();

 private:
  uint64_t s_[4];
};

struct SamplerParams {
  float temperature = 0.8f;      // 0 = greedy (argmax)
  int32_t top_k = 40;            // 0 = off
  float top_p = 0.95f;           // 1 = off
  float min_p = 0.05f;           // 0 = off
  float repeat_penalty = 1.1f;   // 1 = off
  int32_t repeat_last_n = 64;    // how many recent tokens the penalty looks at
  uint64_t seed = 0;
};

// Applies the processing chain in a fixed order and draws one token:
//   1. repetition penalty on tokens among the last repeat_last_n of `context`
//      (as Hugging Face: positive logits divided by the penalty, negative ones
//      multiplied by it);
//   2. temperature == 0: return the argmax (lowest id on ties);
//   3. logits / temperature, softmax;
//   4. top-k, then top-p (smallest set with cumulative probability >= top_p,
//      at least one token), then min-p (drop probability < min_p x max);
//   5. renormalise and draw with one Uniform() by inverse CDF over the
//      survivors in descending probability (ties: lower id first).
class Sampler {
 public:
  explicit Sampler(const SamplerParams& params);
  // `logits` is modified in place (penalty); `context` is every token so far.
  int32_t Sample(std::span<float> logits, std::span<const int32_t> context);
  const SamplerParams& params() const { return params_; }

 private:
  SamplerParams params_;
  Rng rng_;
  std::vector<int32_t> order_;
  std::vector<float> probs_;
};

}  // namespace epwa
