#include "runtime/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

namespace epwa {
namespace {

// Values computed independently (Python, from the published algorithm):
// SplitMix64 seeding of xoshiro256** with seed 7.
TEST(Rng, MatchesPublishedAlgorithm) {
  Rng rng(7);
  EXPECT_EQ(rng.Next(), 0xb358faf74ef9765aull);
  EXPECT_EQ(rng.Next(), 0x475c3d964f482cd2ull);
  EXPECT_EQ(rng.Next(), 0xd6f1d349952c7996ull);
  EXPECT_EQ(rng.Next(), 0xfb2938731e807240ull);
}

TEST(Rng, UniformIsInUnitInterval) {
  Rng rng(1);
  double sum = 0;
  for (int i = 0; i < 100000; ++i) {
    float u = rng.Uniform();
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
  }
  EXPECT_NEAR(sum / 100000, 0.5, 0.005);
}

SamplerParams Plain(float temperature) {
  SamplerParams p;
  p.temperature = temperature;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.repeat_penalty = 1.0f;
  return p;
}

TEST(Sampler, GreedyTakesArgmaxLowestIdOnTies) {
  Sampler s(Plain(0.0f));
  std::vector<float> logits = {0.1f, 3.0f, -1.0f, 3.0f};
  EXPECT_EQ(s.Sample(logits, {}), 1);
}

// The empirical frequencies follow softmax(logits / T): a chi-square test
// against the exact probabilities (df = 3, 99.9% critical value 16.27).
TEST(Sampler, FrequenciesMatchSoftmaxAtTemperature) {
  const std::vector<float> base = {1.0f, 2.0f, 0.0f, -1.0f};
  const float temperature = 0.7f;
  std::vector<double> p(4);
  double z = 0;
  for (int i = 0; i < 4; ++i) z += p[i] = std::exp(base[i] / temperature);
  for (auto& x : p) x /= z;
  Sampler s(Plain(temperature));
  const int n = 200000;
  std::vector<int> counts(4, 0);
  for (int i = 0; i < n; ++i) {
    std::vector<float> logits = base;
    counts[s.Sample(logits, {})]++;
  }
  double chi2 = 0;
  for (int i = 0; i < 4; ++i) chi2 += std::pow(counts[i] - n * p[i], 2) / (n * p[i]);
  EXPECT_LT(chi2, 16.27);
}

TEST(Sampler, TopKOneIsGreedy) {
  SamplerParams params = Plain(1.5f);
  params.top_k = 1;
  Sampler s(params);
  for (int i = 0; i < 100; ++i) {
    std::vector<float> logits = {0.5f, 0.4f, 0.6f, 0.1f};
    ASSERT_EQ(s.Sample(logits, {}), 2);
  }
}

TEST(Sampler, TopPKeepsSmallestSetReachingMass) {
  // Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.75 keeps {0, 1}.
  SamplerParams params = Plain(1.0f);
  params.top_p = 0.75f;
  Sampler s(params);
  const std::vector<float> base = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  std::map<int, int> seen;
  for (int i = 0; i < 5000; ++i) {
    std::vector<float> logits = base;
    seen[s.Sample(logits, {})]++;
  }
  EXPECT_EQ(seen.count(2), 0u);
  EXPECT_EQ(seen.count(3), 0u);
  // Within the kept set, the ratio stays 5:3.
  EXPECT_NEAR(static_cast<double>(seen[0]) / (seen[0] + seen[1]), 0.625, 0.03);
}

TEST(Sampler, MinPDropsTokensBelowFractionOfTop) {
  // Probabilities 0.6, 0.25, 0.1, 0.05; min_p 0.2 keeps p >= 0.12: {0, 1}.
  SamplerParams params = Plain(1.0f);
  params.min_p = 0.2f;
  Sampler s(params);
  const std::vector<float> base = {std::log(0.6f), std::log(0.25f), std::log(0.1f), std::log(0.05f)};
  for (int i = 0; i < 3000; ++i) {
    std::vector<float> logits = base;
    int t = s.Sample(logits, {});
    ASSERT_TRUE(t == 0 || t == 1) << t;
  }
}

TEST(Sampler, RepetitionPenaltyFollowsHuggingFaceRule) {
  SamplerParams params = Plain(0.0f);
  params.repeat_penalty = 2.0f;
  Sampler s(params);
  std::vector<float> logits = {2.0f, 1.5f, -1.0f};
  const std::vector<int32_t> context = {0, 2};
  // Token 0: 2.0 / 2 = 1.0 < 1.5, so greedy now picks token 1.
  EXPECT_EQ(s.Sample(logits, context), 1);
  EXPECT_FLOAT_EQ(logits[0], 1.0f);
  EXPECT_FLOAT_EQ(logits[1], 1.5f);
  EXPECT_FLOAT_EQ(logits[2], -2.0f);
}

TEST(Sampler, SameSeedSameSequence) {
  SamplerParams params = Plain(1.0f);
  params.seed = 42;
  Sampler a(params), b(params);
  for (int i = 0; i < 200; ++i) {
    std::vector<float> la = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f}, lb = la;
    ASSERT_EQ(a.Sample(la, {}), b.Sample(lb, {}));
  }
}

}  // namespace
}  // namespace epwa
