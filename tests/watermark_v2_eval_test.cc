// EPW-A v2 against KGW on both bundled models, with the protocol of
// `epwa eval watermark` at a reduced size (30 texts of 200 tokens per scheme,
// 300 held-out human paragraphs, 20 unwatermarked generations): the bars
// the full-size run (README, "The watermark, v2") is held to, scaled to what
// 30 texts can show.
//   null:      no human or unwatermarked text detected at z = 4 by any
//              scheme; z of human text has mean near 0 and sd near 1;
//   power:     every scheme detects (nearly) every text with the prompt;
//   the rest:  figures the full run reports, bounded so a regression shows.
// The figures are printed so a CI log shows them. Sanitizer builds run a
// third of these sizes (kTexts and the rest below).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "base/file_read.h"
#include "runtime/engine.h"
#include "watermark/evaluate.h"

namespace epwa::wm {
namespace {

// The sizes above, or a third of them in a sanitizer build
// (tests/CMakeLists.txt), whose bars below scale with them.
#ifdef EPWA_SANITIZED_BUILD
constexpr int kTexts = 10, kNullGenerations = 10, kHumanParagraphs = 100;
#else
constexpr int kTexts = 30, kNullGenerations = 20, kHumanParagraphs = 300;
#endif

class WatermarkV2Eval : public ::testing::TestWithParam<const char*> {};

TEST_P(WatermarkV2Eval, NullPowerAndRobustness) {
  LoadOptions lo(std::string("models/") + GetParam(), 1);
  lo.plan_ctx = 512;
  lo.use_cache = false;
  auto engine = Engine::Load(lo);
  EvalOptions o;
  o.schemes = {Scheme::kKgw, Scheme::kEpw2Et, Scheme::kEpw2MinHash, Scheme::kEpw2Votes};
  o.generations = kTexts;
  o.null_generations = kNullGenerations;
  o.human_paragraphs = kHumanParagraphs;
  o.human_text = ReadRegularFile("data/heldout/jargon.txt", kMaxTextInputBytes, "the held-out text");
  ASSERT_FALSE(o.human_text.empty());
  o.substitution_rates = {0.1, 0.3};
  o.deletion_rates = {0.1};
  o.insertion_rates = {0.1};
  o.copy_paste_fractions = {0.25};
  const EvalReport r = EvaluateWatermark(*engine, EvaluationKey(), o);
  const nlohmann::json j = r.Json(o);
  for (const auto& s : j["schemes"])
    std::printf("%s %s: with prompt %d/%d (median z %.2f), without %d/%d, AUC %.4f, size %s, "
                "30%% substitution %d/%d, 10%% deletion %d/%d, 10%% insertion %d/%d, human max z %.2f, "
                "perplexity %.2f (plain %.2f)\n",
                GetParam(), s["scheme"].get<std::string>().c_str(), s["full_with_prompt"]["detected"].get<int>(),
                kTexts, s["full_with_prompt"]["median"].get<double>(),
                s["full_without_prompt"]["detected"].get<int>(), kTexts, s["roc_auc"].get<double>(),
                s["size_median_tokens"].dump().c_str(), s["substituted_30pct"]["detected"].get<int>(), kTexts,
                s["deleted_10pct"]["detected"].get<int>(), kTexts, s["inserted_10pct"]["detected"].get<int>(), kTexts,
                s["null_human"]["max"].get<double>(), s["perplexity"].get<double>(),
                j["plain_perplexity"].get<double>());

  ASSERT_EQ(r.schemes.size(), 4u);
  for (const SchemeEval& s : r.schemes) {
    SCOPED_TRACE(SchemeName(s.scheme));
    // The null: exact for every scheme, on human text and on the model's own
    // unwatermarked text.
    EXPECT_EQ(s.human.Detected(4.0), 0);
    EXPECT_EQ(s.plain.Detected(4.0), 0);
    ASSERT_GE(s.human.z.size(), static_cast<size_t>(kHumanParagraphs * 29 / 30));
    // The mean's tolerance grows as 1 / sqrt(n) when the samples shrink.
    const double wider = std::sqrt(300.0 / kHumanParagraphs);
    const nlohmann::json h = s.human.Json(4.0);
    EXPECT_NEAR(h["mean"].get<double>(), 0.0, 0.25 * wider);
    EXPECT_NEAR(h["sd"].get<double>(), 1.0, 0.2 * std::sqrt(wider));
    // Power: 200 tokens are plenty for every scheme with the prompt.
    EXPECT_GE(s.full_prompt.Detected(4.0), kTexts - 1);
    EXPECT_GT(s.roc_auc, 0.99);
    EXPECT_EQ(s.identical_to_plain, 0);
    // 10% of the tokens edited leaves most texts detectable.
    EXPECT_GE(s.substituted[0].Detected(4.0), s.scheme == Scheme::kEpw2Votes ? kTexts / 3 : kTexts * 25 / 30);
    // The watermark costs perplexity, but boundedly (delta 2).
    EXPECT_LT(s.perplexity, 3.0 * r.plain_perplexity);
    if (s.scheme == Scheme::kKgw) continue;
    EXPECT_GT(s.expert_recovery_prompt, 0.99);
  }
}

INSTANTIATE_TEST_SUITE_P(BundledModels, WatermarkV2Eval, ::testing::Values("tiny-moe", "tiny-qwen3-moe"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

}  // namespace
}  // namespace epwa::wm
