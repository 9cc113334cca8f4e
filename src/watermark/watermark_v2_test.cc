// EPW-A v2 (docs/watermark.md, "EPW-A v2"): context seeds, ranks and scoring
// against the independent Python reference's vectors
// (tools/watermark_reference.py v2vectors -> tests/data/watermark_v2_vectors.json),
// the null distribution of every variant by simulation, and the agreement of
// the logits processor (generation) with the detector (scoring).
#include <cmath>
#include <fstream>
#include <numeric>
#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "base/sha256.h"
#include "watermark/detector.h"
#include "watermark/green_list.h"
#include "watermark/hex_test_util.h"
#include "watermark/key.h"
#include "watermark/processor.h"

namespace epwa::wm {
namespace {

std::array<uint8_t, 32> Hash32(const std::string& hex) {
  std::array<uint8_t, 32> h{};
  const auto bytes = FromHex(hex);
  std::copy(bytes.begin(), bytes.end(), h.begin());
  return h;
}
const std::string kHash = "122fa78b170b6890516ab6b2bc89d333f6085853245f331a3fb80bd2183dd1f8";

// A routing trace whose every (position, layer) first choice is experts[t][l]
// (logit 4 for it, 0 for the rest, so the argmax and the router's own first
// choice agree).
RoutingTrace TraceOf(const std::vector<std::vector<int32_t>>& experts, int64_t num_experts) {
  RoutingTrace r;
  const int64_t layers = static_cast<int64_t>(experts[0].size());
  std::vector<int32_t> moe(static_cast<size_t>(layers));
  std::iota(moe.begin(), moe.end(), 0);
  r.Reset(static_cast<int64_t>(experts.size()), 0, moe, num_experts, 1);
  for (size_t t = 0; t < experts.size(); ++t)
    for (int64_t l = 0; l < layers; ++l) {
      r.MutableLogits(static_cast<int64_t>(t), l)[experts[t][l]] = 4.f;
      r.MutableExperts(static_cast<int64_t>(t), l)[0] = experts[t][l];
    }
  return r;
}

KeyedBy KeyedByName(const std::string& name) { return KeyedByOf(ParseScheme(name)); }

TEST(GreenListV2, MatchesReferenceVectors) {
  std::ifstream in("tests/data/watermark_v2_vectors.json");
  ASSERT_TRUE(in.good()) << "run from the repository root";
  const nlohmann::json v = nlohmann::json::parse(in);
  ASSERT_GE(v["seeds"].size(), 6u);
  for (const auto& c : v["seeds"]) {
    SCOPED_TRACE(c.dump().substr(0, 240));
    const SecretKey key = SecretKey::FromBytes(FromHex(c["key_hex"]));
    const auto hash = Hash32(c["router_hash_hex"]);
    const int64_t V = c["vocab"];
    const ContextItem item{c["item"][0].get<int32_t>(), c["item"][1].get<int32_t>(), c["item"][2].get<int32_t>()};
    const Seed list = ContextSeed(key, V, hash, item);
    const Seed rank = RankSeed(key, V, hash, item);
    EXPECT_EQ(ToHex(list), c["list_seed_hex"]);
    EXPECT_EQ(ToHex(rank), c["rank_seed_hex"]);
    GreenLists lists(key, KeyedBy::kExpertToken, ToHex(hash), V, c["gamma"]);
    const auto& ids = lists.ForItem(item).ids();
    ASSERT_EQ(static_cast<int64_t>(ids.size()), c["n_green"].get<int64_t>());
    for (size_t i = 0; i < c["first_ids"].size(); ++i) EXPECT_EQ(ids[i], c["first_ids"][i].get<int32_t>());
    std::vector<int32_t> sorted = ids;
    std::sort(sorted.begin(), sorted.end());
    Sha256 sha;
    for (int32_t id : sorted) {
      const uint8_t le[4] = {static_cast<uint8_t>(id), static_cast<uint8_t>(id >> 8), static_cast<uint8_t>(id >> 16),
                             static_cast<uint8_t>(id >> 24)};
      sha.Add(le, 4);
    }
    EXPECT_EQ(sha.Hex(), c["sorted_ids_sha256"]);
    const auto& k = lists.RankKey(item);
    ASSERT_EQ(c["rank_tokens"].size(), c["ranks"].size());
    for (size_t i = 0; i < c["ranks"].size(); ++i)
      EXPECT_EQ(SelfSaltRank(k[0], k[1], c["rank_tokens"][i].get<int32_t>()), c["ranks"][i].get<uint64_t>());
  }
  ASSERT_GE(v["scoring"].size(), 3u);
  for (const auto& c : v["scoring"]) {
    SCOPED_TRACE(c["scheme"].get<std::string>());
    const SecretKey key = SecretKey::FromBytes(FromHex(c["key_hex"]));
    const int64_t V = c["vocab"];
    GreenLists lists(key, KeyedByName(c["scheme"]), c["router_hash_hex"], V, c["gamma"]);
    const std::vector<int32_t> ids = c["ids"];
    const std::vector<std::vector<int32_t>> experts = c["experts"];
    const RoutingTrace trace = TraceOf(experts, c["experts_per_layer"].get<int64_t>());
    const auto votes = ScoreByContext(ids, c["first"], trace, c["slot"], lists);
    ASSERT_EQ(votes.size(), c["votes"].size());
    for (size_t i = 0; i < votes.size(); ++i) {
      const auto& want = c["votes"][i];
      EXPECT_EQ(votes[i].position, want["position"].get<int64_t>()) << i;
      EXPECT_EQ(votes[i].token, want["token"].get<int32_t>()) << i;
      const ContextItem item{want["item"][0].get<int32_t>(), want["item"][1].get<int32_t>(),
                             want["item"][2].get<int32_t>()};
      EXPECT_EQ(votes[i].context, item.Packed()) << i;
      EXPECT_EQ(votes[i].green, want["green"].get<bool>()) << i;
    }
    const Summary s = Summarize(votes, lists.p0(), DetectOptions{});
    EXPECT_EQ(s.scored, c["n"].get<int64_t>());
    EXPECT_EQ(s.green, c["green"].get<int64_t>());
    EXPECT_NEAR(s.z, std::stod(c["z_17g"].get<std::string>()), 1e-12);
  }
}

TEST(GreenListV2, ItemsAreSeparateFromV1AndFromEachOther) {
  const SecretKey key = SecretKey::FromBytes(std::vector<uint8_t>(32, 9));
  const auto hash = Hash32(kHash);
  // A v2 item never yields a v1 seed, and the -1 parts are part of the message.
  EXPECT_NE(ContextSeed(key, 4096, hash, {0, 3, -1}), ExpertSeed(key, 4096, 3, hash));
  EXPECT_NE(ContextSeed(key, 4096, hash, {0, 3, -1}), ContextSeed(key, 4096, hash, {0, 3, 0}));
  EXPECT_NE(ContextSeed(key, 4096, hash, {-1, -1, 5}), KgwSeed(key, 4096, 5));
  EXPECT_NE(ContextSeed(key, 4096, hash, {1, 2, 3}), RankSeed(key, 4096, hash, {1, 2, 3}));
  EXPECT_NE((ContextItem{0, 1, 2}.Packed()), (ContextItem{1, 0, 2}.Packed()));
  EXPECT_NE((ContextItem{-1, -1, 0}.Packed()), (ContextItem{0, -1, -1}.Packed()));
}

// Under the null (ids chosen without the key) every variant's z has mean 0
// and standard deviation 1: the votes of distinct (item, token) pairs are
// independent coin flips of probability p0, including the L votes of one
// token in epw2-votes and the candidate-chosen item of epw2-minhash.
TEST(GreenListV2, NullDistributionBySimulation) {
  std::mt19937_64 rng(20261202);
  const int64_t V = 2000, E = 8, L = 4, T = 120;
  for (const char* name : {"epw2-et", "epw2-minhash", "epw2-votes"}) {
    SCOPED_TRACE(name);
    std::vector<double> zs;
    for (int text = 0; text < 400; ++text) {
      std::vector<uint8_t> kb(32);
      for (auto& b : kb) b = static_cast<uint8_t>(rng());
      GreenLists lists(SecretKey::FromBytes(kb), KeyedByName(name), kHash, V, 0.25);
      std::vector<int32_t> ids(T);
      std::vector<std::vector<int32_t>> experts(T, std::vector<int32_t>(L));
      for (int64_t t = 0; t < T; ++t) {
        ids[t] = static_cast<int32_t>(rng() % V);
        for (auto& e : experts[t]) e = static_cast<int32_t>(rng() % E);
      }
      const Summary s = Summarize(ScoreByContext(ids, 1, TraceOf(experts, E), 0, lists), lists.p0(), DetectOptions{});
      zs.push_back(s.z);
    }
    const double mean = std::accumulate(zs.begin(), zs.end(), 0.0) / zs.size();
    double var = 0;
    for (double z : zs) var += (z - mean) * (z - mean);
    const double sd = std::sqrt(var / (zs.size() - 1));
    // 400 texts: the mean's standard error is 0.05 and the sd's about 0.035.
    EXPECT_NEAR(mean, 0.0, 0.2);
    EXPECT_NEAR(sd, 1.0, 0.15);
  }
}

// What generation biases is exactly what detection scores as green: for each
// variant, the bias the processor adds to candidate v equals delta times the
// share of v's votes that ScoreByContext finds green when v follows.
TEST(GreenListV2, ProcessorBiasMatchesDetectorVotes) {
  const int64_t V = 300, E = 6, L = 3;
  ModelConfig config;
  config.vocab_size = V;
  config.num_experts = E;
  config.num_experts_per_tok = 1;
  config.num_layers = L;
  const SecretKey key = SecretKey::FromBytes(std::vector<uint8_t>(32, 3));
  for (const char* name : {"epw2-et", "epw2-minhash", "epw2-votes"}) {
    SCOPED_TRACE(name);
    WatermarkParams p;
    p.scheme = ParseScheme(name);
    p.delta = 2.0;
    WatermarkProcessor proc(key, p, config, kHash);
    EXPECT_EQ(proc.router_slot(), 0) << "v2's default router layer is the first MoE layer";
    const std::vector<std::vector<int32_t>> experts = {{1, 4, 2}, {5, 0, 3}};
    const std::vector<int32_t> context = {11, 42};
    std::vector<float> logits(V, 0.f);
    proc.Apply(logits, TraceOf(experts, E), context);
    GreenLists lists(key, KeyedByOf(p.scheme), kHash, V, p.gamma);
    int biased = 0;
    for (int32_t v = 0; v < V; ++v) {
      // The detector's view: token v at position 2 after the context.
      std::vector<int32_t> ids = context;
      ids.push_back(v);
      std::vector<std::vector<int32_t>> ex = experts;
      ex.push_back({0, 0, 0});
      const auto votes = ScoreByContext(ids, 2, TraceOf(ex, E), 0, lists);
      ASSERT_FALSE(votes.empty());
      double green = 0;
      for (const auto& vote : votes) green += vote.green;
      EXPECT_NEAR(logits[v], p.delta * green / static_cast<double>(votes.size()), 1e-5) << v;
      biased += logits[v] > 0;
    }
    EXPECT_GT(biased, 0);
  }
}

TEST(GreenListV2, DedupCountsEachItemTokenPairOnce) {
  const int64_t V = 500, E = 4;
  GreenLists lists(SecretKey::FromBytes(std::vector<uint8_t>(32, 1)), KeyedBy::kExpertToken, kHash, V, 0.25);
  // "7 9" repeated under the same expert: the pair ((0, e, 7), 9) is scored once.
  const std::vector<int32_t> ids = {7, 9, 7, 9, 7, 9};
  const std::vector<std::vector<int32_t>> experts(6, std::vector<int32_t>{2});
  const auto votes = ScoreByContext(ids, 1, TraceOf(experts, E), 0, lists);
  ASSERT_EQ(votes.size(), 5u);
  const Summary s = Summarize(votes, lists.p0(), DetectOptions{});
  EXPECT_EQ(s.scored, 2);  // ((0,2,7), 9) and ((0,2,9), 7)
  EXPECT_EQ(s.skipped_repeats, 3);
}

}  // namespace
}  // namespace epwa::wm
