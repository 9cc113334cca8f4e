// Detection's forward passes stop at the deepest router a keying reads
// (DeepestSlotRead): ScoreInput and ScoreInputs must give exactly the token
// scores of a whole forward pass, for every keying and router layer, on the
// bundled models.
#include "watermark/pipeline.h"

#include <array>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "base/error.h"
#include "runtime/engine.h"
#include "watermark/detector.h"
#include "watermark/green_list.h"
#include "watermark/key.h"

namespace epwa::wm {
namespace {

std::unique_ptr<Engine> LoadBundled(const std::string& name) {
  LoadOptions o("models/" + name, 2);
  o.use_cache = false;
  return Engine::Load(o);
}

// The scores of one input from a whole forward pass, as detection computed
// them before its passes stopped early.
std::vector<TokenScore> FromWholePass(Engine& engine, const DetectInput& in, GreenLists& lists, int slot) {
  const ScoreResult pass = engine.Score(in.ids);
  if (IsV2(lists.keyed_by())) return ScoreByContext(in.ids, in.first, pass.routing, slot, lists);
  return ScoreByRouting(in.ids, in.first, pass.routing, slot, lists, 1);
}

void ExpectSameScores(const std::vector<TokenScore>& got, const std::vector<TokenScore>& want,
                      const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].position, want[i].position) << what << " score " << i;
    EXPECT_EQ(got[i].token, want[i].token) << what << " score " << i;
    EXPECT_EQ(got[i].seed, want[i].seed) << what << " score " << i;
    EXPECT_EQ(got[i].confidence, want[i].confidence) << what << " score " << i;
    EXPECT_EQ(got[i].margin, want[i].margin) << what << " score " << i;
    EXPECT_EQ(got[i].green, want[i].green) << what << " score " << i;
    EXPECT_EQ(got[i].context, want[i].context) << what << " score " << i;
  }
}

TEST(DeepestSlotRead, OneLayerForOneLayerKeyingsEveryLayerForTheOthers) {
  EXPECT_EQ(DeepestSlotRead(KeyedBy::kExpert, 2, 4), 2);
  EXPECT_EQ(DeepestSlotRead(KeyedBy::kExpertToken, 0, 4), 0);
  EXPECT_EQ(DeepestSlotRead(KeyedBy::kMinHash, 0, 4), 3);
  EXPECT_EQ(DeepestSlotRead(KeyedBy::kLayerVotes, 1, 4), 3);
  EXPECT_EQ(DeepestSlotRead(KeyedBy::kPreviousToken, 0, 4), -1);
}

TEST(ScoreInputs, StoppedPassesScoreAsAWholePassDoes) {
  std::array<uint8_t, 32> bytes{};
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(7 * i + 3);
  const SecretKey key = SecretKey::FromBytes(bytes);
  for (const char* name : {"tiny-moe", "tiny-qwen3-moe"}) {
    auto engine = LoadBundled(name);
    const int64_t layers = engine->config().NumMoeLayers();
    ASSERT_GE(layers, 2) << name;
    std::vector<DetectInput> inputs;
    for (const char* text : {"The history of the computer begins with the abacus, and with it",
                             "Routers pick experts; the watermark keys its green lists on them.",
                             "A short one."}) {
      DetectInput in;
      in.ids = engine->EncodePrompt(text);
      inputs.push_back(in);
    }
    for (KeyedBy keyed : {KeyedBy::kExpert, KeyedBy::kExpertToken, KeyedBy::kMinHash, KeyedBy::kLayerVotes}) {
      GreenLists lists(key, keyed, engine->load_stats().router_hash, engine->config().vocab_size, 0.25);
      for (int slot = 0; slot < layers; ++slot) {
        const std::string what = std::string(name) + " keying " + std::to_string(static_cast<int>(keyed)) +
                                 " slot " + std::to_string(slot);
        const std::vector<std::vector<TokenScore>> batched = ScoreInputs(*engine, inputs, lists, slot);
        ASSERT_EQ(batched.size(), inputs.size()) << what;
        for (size_t i = 0; i < inputs.size(); ++i) {
          const std::vector<TokenScore> whole = FromWholePass(*engine, inputs[i], lists, slot);
          ExpectSameScores(batched[i], whole, what + " batched input " + std::to_string(i));
          ExpectSameScores(ScoreInput(*engine, inputs[i], lists, slot), whole,
                           what + " alone input " + std::to_string(i));
        }
      }
    }
  }
}

}  // namespace
}  // namespace epwa::wm
