// Library-level determinism: the same seed gives the same tokens whatever
// the thread count, and prefill + decode equals one long forward pass.
#include <gtest/gtest.h>

#include "runtime/engine.h"
#include "test_util.h"

namespace epwa {
namespace {

std::vector<int32_t> GenerateWith(const std::string& model, int threads, uint64_t seed) {
  auto engine = Engine::Load({model, threads});
  GenerateOptions o;
  o.max_new_tokens = 24;
  o.sampler.seed = seed;
  return engine->Generate(engine->EncodePrompt("Once upon a time"), o).tokens;
}

TEST(Golden, SameSeedSameTokensForAnyThreadCount) {
  testing::TempDir dir;
  const std::string model = testing::MakeModel(dir, "tiny-random-moe");
  const auto one = GenerateWith(model, 1, 7);
  EXPECT_EQ(one.size(), 24u);
  EXPECT_EQ(GenerateWith(model, 2, 7), one);
  EXPECT_EQ(GenerateWith(model, 3, 7), one);
  EXPECT_NE(GenerateWith(model, 2, 8), one);
}

TEST(Golden, DecodeLogitsEqualFullForwardLogits) {
  testing::TempDir dir;
  auto engine = Engine::Load({testing::MakeModel(dir, "tiny-random-moe"), 2});
  GenerateOptions o;
  o.max_new_tokens = 12;
  o.sampler.temperature = 0.0f;
  std::vector<std::vector<float>> step_logits;
  o.logits_processor = [&](std::span<float> logits, const RoutingTrace&, std::span<const int32_t>) {
    step_logits.emplace_back(logits.begin(), logits.end());
  };
  const std::vector<int32_t> prompt = engine->EncodePrompt("The clock in the square");
  GenerateResult g = engine->Generate(prompt, o);
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), g.tokens.begin(), g.tokens.end());
  ScoreResult s = engine->Score(all);
  const int64_t V = engine->config().vocab_size;
  for (size_t k = 0; k < step_logits.size(); ++k) {
    const int64_t row = static_cast<int64_t>(prompt.size() + k) - 1;
    for (int64_t v = 0; v < V; ++v)
      ASSERT_NEAR(step_logits[k][v], s.logits[row * V + v], 2e-4) << "step " << k;
  }
}

}  // namespace
}  // namespace epwa
