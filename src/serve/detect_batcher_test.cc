// DetectBatcher on the bundled tiny-moe: detections that wait for the model
// together run as one batched pass, score exactly as each input alone, are
// grouped by scheme, and an input that cannot be scored fails alone.
#include "serve/detect_batcher.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "base/error.h"

namespace epwa {
namespace {

std::unique_ptr<Engine> LoadTinyMoe() {
  LoadOptions o("models/tiny-moe", 2);
  o.use_cache = false;
  o.plan_ctx = 96;
  return Engine::Load(o);
}

wm::SecretKey TestKey() {
  std::vector<uint8_t> bytes(32);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(7 * i + 3);
  return wm::SecretKey::FromBytes(bytes);
}

struct Case {
  wm::DetectInput input;
  wm::Scheme scheme;
};

class DetectBatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    engine_ = LoadTinyMoe();
    hash_ = engine_->load_stats().router_hash;
  }
  int SlotOf(wm::Scheme scheme) const {
    if (scheme == wm::Scheme::kKgw) return -1;  // keyed by the previous token: no router
    return wm::ResolveRouterLayer(scheme, wm::kSchemeDefaultLayer, engine_->config().NumMoeLayers());
  }
  // The scores of each case alone, with fresh lists: the reference.
  std::vector<wm::TokenScore> Alone(const Case& c) {
    wm::GreenLists lists(key_, wm::KeyedByOf(c.scheme), hash_, engine_->config().vocab_size, 0.25);
    return wm::ScoreInput(*engine_, c.input, lists, SlotOf(c.scheme));
  }
  wm::DetectInput Text(const std::string& text) { return wm::InputFromText(*engine_, std::nullopt, text); }

  // Runs every case on its own thread while the model is held, waits until
  // all of them wait, then lets the model go.
  std::vector<std::pair<std::vector<wm::TokenScore>, std::string>> RunTogether(DetectBatcher& batcher,
                                                                              const std::vector<Case>& cases) {
    std::vector<std::pair<std::vector<wm::TokenScore>, std::string>> out(cases.size());
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> busy(model_mutex_);
      for (size_t i = 0; i < cases.size(); ++i)
        threads.emplace_back([&, i] {
          try {
            out[i].first = batcher.Score(cases[i].input, cases[i].scheme, SlotOf(cases[i].scheme));
          } catch (const Error& e) {
            out[i].second = e.what();
          }
        });
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (batcher.Waiting() < cases.size() && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      EXPECT_EQ(batcher.Waiting(), cases.size());
    }
    for (std::thread& t : threads) t.join();
    return out;
  }

  static void ExpectSame(const std::vector<wm::TokenScore>& got, const std::vector<wm::TokenScore>& want) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].position, want[i].position);
      EXPECT_EQ(got[i].token, want[i].token);
      EXPECT_EQ(got[i].seed, want[i].seed) << "position " << got[i].position;
      EXPECT_EQ(got[i].confidence, want[i].confidence);
      EXPECT_EQ(got[i].margin, want[i].margin);
      EXPECT_EQ(got[i].green, want[i].green);
      EXPECT_EQ(got[i].context, want[i].context);
    }
  }

  std::unique_ptr<Engine> engine_;
  std::string hash_;
  const wm::SecretKey key_ = TestKey();
  std::mutex model_mutex_;
};

TEST_F(DetectBatcherTest, WaitingDetectionsShareOnePassAndScoreAsAlone) {
  DetectBatcher batcher(*engine_, model_mutex_, key_, hash_, 0.25);
  std::vector<Case> cases;
  for (const char* text : {"Once upon a time there was a small dog.", "The sea was calm",
                           "She opened the door and looked out at the rain for a long while.", "Hi",
                           "Numbers: 1 2 3 4 5 6 7 8 9 10 11 12"})
    cases.push_back({Text(text), wm::kDefaultScheme});
  const auto got = RunTogether(batcher, cases);
  EXPECT_EQ(batcher.batches(), 1);
  EXPECT_EQ(batcher.inputs(), static_cast<int64_t>(cases.size()));
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(got[i].second, "");
    ExpectSame(got[i].first, Alone(cases[i]));
  }
}

TEST_F(DetectBatcherTest, SchemesRunInSeparatePasses) {
  std::atomic<int64_t> passes{0};
  DetectBatcher batcher(*engine_, model_mutex_, key_, hash_, 0.25, &passes);
  const std::vector<Case> cases = {{Text("A long road home."), wm::Scheme::kGsg},
                                   {Text("A long road home."), wm::Scheme::kEpw2Et},
                                   {Text("Bread and butter for breakfast."), wm::Scheme::kGsg},
                                   {Text("Bread and butter for breakfast."), wm::Scheme::kKgw},
                                   {Text("Green fields under a grey sky."), wm::Scheme::kEpw2Votes}};
  const auto got = RunTogether(batcher, cases);
  EXPECT_EQ(batcher.batches(), 4);  // gsg (2 inputs), epw2-et, kgw, epw2-votes
  EXPECT_EQ(passes.load(), 4);
  EXPECT_EQ(batcher.inputs(), 5);
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(got[i].second, "");
    ExpectSame(got[i].first, Alone(cases[i]));
  }
}

TEST_F(DetectBatcherTest, AnInputThatCannotBeScoredFailsAlone) {
  DetectBatcher batcher(*engine_, model_mutex_, key_, hash_, 0.25);
  wm::DetectInput too_long = Text("x");
  too_long.ids.assign(200, too_long.ids.back());  // beyond the 96 tokens planned
  const std::vector<Case> cases = {{Text("First of three."), wm::kDefaultScheme},
                                   {too_long, wm::kDefaultScheme},
                                   {Text("Third, and last."), wm::kDefaultScheme}};
  const auto got = RunTogether(batcher, cases);
  EXPECT_EQ(batcher.batches(), 1);
  EXPECT_EQ(got[0].second, "");
  EXPECT_NE(got[1].second.find("200 tokens"), std::string::npos) << got[1].second;
  EXPECT_EQ(got[2].second, "");
  ExpectSame(got[0].first, Alone(cases[0]));
  ExpectSame(got[2].first, Alone(cases[2]));
}

}  // namespace
}  // namespace epwa
