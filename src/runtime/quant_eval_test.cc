// The comparison's statistics against values computed by hand.
#include "runtime/quant_eval.h"

#include <gtest/gtest.h>

#include <cmath>

namespace epwa {
namespace {

RoutingTrace Trace(const std::vector<int32_t>& top1) {
  RoutingTrace r;
  r.Reset(static_cast<int64_t>(top1.size()), 0, {0}, /*num_experts=*/4, /*top_k=*/2);
  for (size_t t = 0; t < top1.size(); ++t) {
    r.MutableExperts(static_cast<int64_t>(t), 0)[0] = top1[t];
    r.MutableExperts(static_cast<int64_t>(t), 0)[1] = (top1[t] + 1) % 4;
  }
  return r;
}

TEST(QuantComparison, IdenticalLogitsGiveZeroKlAndFullAgreement) {
  const std::vector<int32_t> ids = {0, 1, 2};
  const std::vector<float> logits = {1, 2, 3, 0, 5, 1, 2, 2, 2};  // [3, 3]
  QuantComparison c;
  c.AddWindow(ids, logits, logits, 3, Trace({0, 1, 2}), Trace({0, 1, 2}));
  EXPECT_EQ(c.positions(), 2);
  EXPECT_NEAR(c.MeanKl(), 0.0, 1e-15);
  EXPECT_EQ(c.Top1Agreement(), 1.0);
  EXPECT_EQ(c.RouterTop1Agreement(), std::vector<double>{1.0});
  EXPECT_DOUBLE_EQ(c.Perplexity(), c.ReferencePerplexity());
}

TEST(QuantComparison, MatchesHandComputation) {
  // One scored position, vocab 2. Reference logits (0, 0): p = (1/2, 1/2).
  // Candidate (log 3, 0): q = (3/4, 1/4). KL(p||q) = 1/2 log(2/3) + 1/2 log 2.
  const std::vector<int32_t> ids = {0, 1};
  const std::vector<float> ref = {0, 0, 9, 9};
  const std::vector<float> cand = {static_cast<float>(std::log(3.0)), 0, 9, 9};
  QuantComparison c;
  c.AddWindow(ids, ref, cand, 2, Trace({1, 3}), Trace({1, 2}));
  EXPECT_EQ(c.positions(), 1);
  EXPECT_NEAR(c.MeanKl(), 0.5 * std::log(2.0 / 3.0) + 0.5 * std::log(2.0), 1e-7);
  EXPECT_NEAR(c.ReferencePerplexity(), 2.0, 1e-12);  // next token 1 has p = 1/2
  EXPECT_NEAR(c.Perplexity(), 4.0, 1e-6);            // and q = 1/4
  // Reference argmax is token 0 (first of a tie); candidate argmax is token 0.
  EXPECT_EQ(c.Top1Agreement(), 1.0);
  // Router: position 0 agrees, position 1 does not.
  EXPECT_EQ(c.RouterTop1Agreement(), std::vector<double>{0.5});
}

}  // namespace
}  // namespace epwa
