// The watermark's building blocks against their specification: green lists
// against the independent Python reference's vectors
// (tools/watermark_reference.py -> tests/data/watermark_vectors.json), the
// statistics against exact binomial tails and their null distribution, the
// logits processor, the detector's alignment, dedup and CSPV, and key files.
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/sha256.h"
#include "watermark/detector.h"
#include "watermark/green_list.h"
#include "watermark/hex_test_util.h"
#include "watermark/key.h"
#include "watermark/processor.h"
#include "watermark/stats.h"

namespace epwa::wm {
namespace {

nlohmann::json Vectors() {
  std::ifstream in("tests/data/watermark_vectors.json");
  EXPECT_TRUE(in.good()) << "run from the repository root";
  return nlohmann::json::parse(in);
}
SecretKey TestKey(uint8_t salt = 0) {
  std::vector<uint8_t> k(32);
  for (int i = 0; i < 32; ++i) k[i] = static_cast<uint8_t>(i * 7 + salt);
  return SecretKey::FromBytes(k);
}
const std::string kHash = "122fa78b170b6890516ab6b2bc89d333f6085853245f331a3fb80bd2183dd1f8";

TEST(GreenList, MatchesReferenceVectors) {
  const nlohmann::json v = Vectors();
  ASSERT_EQ(v["scheme"], "EPW-A green v1");
  ASSERT_GE(v["green_lists"].size(), 10u);
  for (const auto& c : v["green_lists"]) {
    SCOPED_TRACE(c.dump().substr(0, 200));
    const SecretKey key = SecretKey::FromBytes(FromHex(c["key_hex"]));
    const int64_t V = c["vocab"];
    const int64_t n = GreenCount(c["gamma"].get<double>(), V);
    EXPECT_EQ(n, c["n_green"].get<int64_t>());
    Seed seed;
    if (c["kind"] == "epw") {
      const auto hash = ParseRouterHash(c["router_hash_hex"]);
      seed = ExpertSeed(key, V, c["expert"].get<int32_t>(), hash);
    } else {
      seed = KgwSeed(key, V, c["previous_token"].get<int32_t>());
    }
    EXPECT_EQ(ToHex(seed), c["seed_hex"].get<std::string>());
    std::vector<int32_t> scratch, ids;
    GreenIds(seed, V, n, scratch, ids);
    const auto& first = c["first_ids"];
    for (size_t i = 0; i < first.size(); ++i) EXPECT_EQ(ids[i], first[i].get<int32_t>()) << i;
    std::vector<int32_t> sorted = ids;
    std::sort(sorted.begin(), sorted.end());
    Sha256 sha;
    int64_t sum = 0;
    for (int32_t id : sorted) {
      const uint8_t le[4] = {uint8_t(id), uint8_t(id >> 8), uint8_t(id >> 16), uint8_t(id >> 24)};
      sha.Add(le, 4);
      sum += id;
    }
    EXPECT_EQ(sha.Hex(), c["sorted_ids_sha256"].get<std::string>());
    EXPECT_EQ(sum, c["id_sum"].get<int64_t>());
  }
}

TEST(GreenList, BoundedDrawRejectionPathMatchesReference) {
  const nlohmann::json b = Vectors()["below"];
  Seed seed;
  const auto bytes = FromHex(b["seed_hex"]);
  std::copy(bytes.begin(), bytes.end(), seed.begin());
  Rng rng = SeededRng(seed);
  for (const auto& expected : b["outputs"])
    EXPECT_EQ(Below(rng, b["bound"].get<uint64_t>()), expected.get<uint64_t>());
}

TEST(GreenList, CountAndRangeChecks) {
  EXPECT_EQ(GreenCount(0.25, 4096), 1024);
  EXPECT_EQ(GreenCount(0.29, 100), 29);  // floor(28.999... + 0.5)
  EXPECT_THROW(GreenCount(0.0, 100), Error);
  EXPECT_THROW(GreenCount(1.0, 100), Error);
  EXPECT_THROW(GreenCount(0.001, 100), Error);  // no green token
  EXPECT_THROW(GreenCount(NAN, 100), Error);
  EXPECT_THROW(ParseRouterHash("12"), Error);
  EXPECT_THROW(ParseRouterHash(std::string(64, 'g')), Error);
}

// Every list has exactly n_green members, and across keys each token is
// green with probability p0: the count over K independent keys is
// Binomial(K, p0), so no token strays beyond ~5 sd (a false failure has
// probability < 1e-3 over all tokens).
TEST(GreenList, FractionWithinStatisticalBounds) {
  const int64_t V = 4096;
  const int K = 200;
  std::vector<int> green_count(V, 0);
  for (int k = 0; k < K; ++k) {
    GreenLists lists(TestKey(static_cast<uint8_t>(k)), KeyedBy::kExpert, kHash, V, 0.25);
    const GreenMask& m = lists.For(k % 8);
    ASSERT_EQ(static_cast<int64_t>(m.ids().size()), 1024);
    for (int32_t id : m.ids()) ++green_count[id];
  }
  const double mean = K * 0.25, sd = std::sqrt(K * 0.25 * 0.75);
  double chi2 = 0;
  for (int64_t t = 0; t < V; ++t) {
    EXPECT_LT(std::abs(green_count[t] - mean), 5.2 * sd) << "token " << t;
    chi2 += (green_count[t] - mean) * (green_count[t] - mean) / (sd * sd);
  }
  // chi2 / V has mean 1 and sd sqrt(2 / V) ~ 0.022 under uniformity.
  EXPECT_NEAR(chi2 / V, 1.0, 0.12);
  // Different experts and different keys give (nearly) disjoint-at-chance lists.
  GreenLists a(TestKey(1), KeyedBy::kExpert, kHash, V, 0.25);
  GreenLists b(TestKey(2), KeyedBy::kExpert, kHash, V, 0.25);
  int overlap_expert = 0, overlap_key = 0;
  for (int32_t id : a.For(0).ids()) {
    overlap_expert += a.For(1).Contains(id);
    overlap_key += b.For(0).Contains(id);
  }
  EXPECT_NEAR(overlap_expert, 256, 60);
  EXPECT_NEAR(overlap_key, 256, 60);
}

TEST(Stats, BinomialTailMatchesExactReference) {
  // The document must outlive the loop: a range-for over a member of a
  // temporary reads freed memory (found by the ASan build).
  const nlohmann::json vectors = Vectors();
  for (const auto& c : vectors["binomial"]) {
    SCOPED_TRACE(c.dump());
    const std::string p = c["p"];
    const double p0 = std::stod(p.substr(0, p.find('/'))) / std::stod(p.substr(p.find('/') + 1));
    const int64_t n = c["n"], k = c["k"];
    const double expected = c["log10_tail"];
    const double got = Log10BinomialUpperTail(k, n, p0);
    EXPECT_NEAR(got, expected, 1e-9 * std::max(1.0, std::abs(expected)));
    EXPECT_NEAR(ZScore(k, n, p0), c["z"].get<double>(), 1e-9);
  }
}

// Under the null (tokens independent of the lists) z is approximately
// standard normal and the exact p-value is (super-)uniform: P(p <= a) <= a.
TEST(Stats, NullDistributionOfZAndP) {
  std::mt19937_64 gen(42);
  std::bernoulli_distribution green(0.25);
  const int trials = 4000, n = 200;
  double sum = 0, sum2 = 0;
  int p_below_5pct = 0;
  for (int t = 0; t < trials; ++t) {
    int g = 0;
    for (int i = 0; i < n; ++i) g += green(gen);
    const double z = ZScore(g, n, 0.25);
    sum += z;
    sum2 += z * z;
    p_below_5pct += std::pow(10.0, Log10BinomialUpperTail(g, n, 0.25)) <= 0.05;
  }
  const double mean = sum / trials, sd = std::sqrt(sum2 / trials - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.06);
  EXPECT_NEAR(sd, 1.0, 0.05);
  EXPECT_LE(p_below_5pct, trials * 0.05 + 3 * std::sqrt(trials * 0.05 * 0.95));
  EXPECT_GE(p_below_5pct, trials * 0.03);
}

ModelConfig MoeConfig(int64_t vocab = 64, int64_t experts = 4, int64_t layers = 2) {
  ModelConfig c;
  c.vocab_size = vocab;
  c.num_experts = experts;
  c.num_experts_per_tok = 2;
  c.num_layers = layers;
  return c;
}
RoutingTrace Trace(const std::vector<std::vector<float>>& last_layer_logits, int64_t layers = 2) {
  RoutingTrace r;
  std::vector<int32_t> moe(layers);
  std::iota(moe.begin(), moe.end(), 0);
  const int64_t E = static_cast<int64_t>(last_layer_logits[0].size());
  r.Reset(static_cast<int64_t>(last_layer_logits.size()), 0, moe, E, 2);
  for (size_t t = 0; t < last_layer_logits.size(); ++t)
    std::copy(last_layer_logits[t].begin(), last_layer_logits[t].end(), r.MutableLogits(t, layers - 1));
  return r;
}

TEST(Processor, ChooseExpertArgmaxTiesAndMargin) {
  const std::vector<float> tie = {1.f, 3.f, 3.f, 0.f};
  ExpertChoice c = ChooseExpert(tie);
  EXPECT_EQ(c.expert, 1);
  EXPECT_NEAR(c.margin, 0.f, 1e-7);
  const std::vector<float> clear = {0.f, 0.f, 5.f, 0.f};
  c = ChooseExpert(clear);
  EXPECT_EQ(c.expert, 2);
  const double p = std::exp(5.0) / (std::exp(5.0) + 3);
  EXPECT_NEAR(c.confidence, p, 1e-6);
  EXPECT_NEAR(c.margin, p - 1 / (std::exp(5.0) + 3), 1e-6);
}

TEST(Processor, GsgBiasesExactlyTheGreenListOfTheLastLayersExpert) {
  WatermarkParams p;
  p.gamma = 0.25;
  p.delta = 2.0;
  WatermarkProcessor proc(TestKey(), p, MoeConfig(), kHash);
  std::vector<float> logits(64, 0.f);
  const std::vector<int32_t> ctx = {1, 2};
  // Two positions in this step; the last one (expert 3) predicts.
  proc.Apply(logits, Trace({{9, 0, 0, 0}, {0, 1, 0, 2}}), ctx);
  GreenLists lists(TestKey(), KeyedBy::kExpert, kHash, 64, 0.25);
  int biased = 0;
  for (int32_t t = 0; t < 64; ++t) {
    EXPECT_FLOAT_EQ(logits[t], lists.For(3).Contains(t) ? 2.f : 0.f) << t;
    biased += logits[t] > 0;
  }
  EXPECT_EQ(biased, 16);
  EXPECT_EQ(proc.experts_used(), std::vector<int32_t>{3});
}

TEST(Processor, EwpScalesByRouterConfidenceAndTable) {
  WatermarkParams p;
  p.scheme = Scheme::kEwp;
  p.expert_deltas = {1, 2, 3, 4};
  WatermarkProcessor proc(TestKey(), p, MoeConfig(), kHash);
  std::vector<float> logits(64, 0.f);
  const std::vector<float> router = {0.f, 2.f, 0.f, 0.f};
  proc.Apply(logits, Trace({router}), std::vector<int32_t>{5});
  const float expected = 2.0f * ChooseExpert(router).confidence;
  float max_bias = 0;
  for (float v : logits) max_bias = std::max(max_bias, v);
  EXPECT_NEAR(max_bias, expected, 1e-6);
}

TEST(Processor, RefusesMissingRoutingDenseModelsAndBadLayers) {
  WatermarkParams p;
  WatermarkProcessor proc(TestKey(), p, MoeConfig(), kHash);
  std::vector<float> logits(64, 0.f);
  RoutingTrace empty;
  EXPECT_THROW(proc.Apply(logits, empty, std::vector<int32_t>{1}), Error);
  ModelConfig dense = MoeConfig(64, 0);
  try {
    WatermarkProcessor d(TestKey(), p, dense, "");
    FAIL() << "gsg on a dense model must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("kgw"), std::string::npos) << e.what();
  }
  p.scheme = Scheme::kKgw;
  EXPECT_NO_THROW(WatermarkProcessor(TestKey(), p, dense, ""));
  p.scheme = Scheme::kGsg;
  p.router_layer = 2;
  EXPECT_THROW(WatermarkProcessor(TestKey(), p, MoeConfig(), kHash), Error);
  p.router_layer = -3;
  EXPECT_THROW(WatermarkProcessor(TestKey(), p, MoeConfig(), kHash), Error);
  EXPECT_THROW(ParseScheme("epw"), Error);
}

TEST(Processor, KgwKeysByThePreviousToken) {
  WatermarkParams p;
  p.scheme = Scheme::kKgw;
  WatermarkProcessor proc(TestKey(), p, MoeConfig(64, 0), "");
  std::vector<float> logits(64, 0.f);
  proc.Apply(logits, RoutingTrace(), std::vector<int32_t>{4, 17});
  GreenLists lists(TestKey(), KeyedBy::kPreviousToken, "", 64, 0.25);
  for (int32_t t = 0; t < 64; ++t) EXPECT_EQ(logits[t] > 0, lists.For(17).Contains(t)) << t;
}

// A synthetic sequence whose token t is green under the expert chosen at
// t - 1: the correct alignment scores every token green, the original's
// (shift 0) and shift 2 score at chance (|z| < 4.5 fails by chance with
// probability ~1e-5).
TEST(Detector, AlignmentMattersAndDedupCountsPairsOnce) {
  const int64_t V = 4096, T = 400;
  GreenLists lists(TestKey(), KeyedBy::kExpert, kHash, V, 0.25);
  std::mt19937 gen(7);
  std::vector<std::vector<float>> router(T, std::vector<float>(8));
  std::vector<int32_t> ids(T);
  for (int64_t t = 0; t < T; ++t) {
    // Random logits with the top expert (3 t) mod 8, so that the experts at
    // t, t - 1 and t - 2 always differ and a misaligned pairing has no
    // chance of borrowing the right list.
    for (float& v : router[t]) v = std::uniform_real_distribution<float>(-1, 1)(gen);
    router[t][(3 * t) % 8] = 2.0f;
    if (t > 0) {
      const int32_t e = ChooseExpert(router[t - 1]).expert;
      const auto& green = lists.For(e).ids();
      ids[t] = green[std::uniform_int_distribution<size_t>(0, green.size() - 1)(gen)];
    }
  }
  const RoutingTrace trace = Trace(router, 1);
  DetectOptions o;
  const Summary right = Summarize(ScoreByRouting(ids, 1, trace, 0, lists, 1), lists.p0(), o);
  const Summary off0 = Summarize(ScoreByRouting(ids, 1, trace, 0, lists, 0), lists.p0(), o);
  const Summary off2 = Summarize(ScoreByRouting(ids, 1, trace, 0, lists, 2), lists.p0(), o);
  EXPECT_EQ(right.green, right.scored);
  EXPECT_GT(right.z, 15);
  EXPECT_TRUE(right.detected);
  EXPECT_LT(std::abs(off0.z), 4.5);
  EXPECT_LT(std::abs(off2.z), 4.5);
  EXPECT_FALSE(off0.detected);

  // One repeated (expert, token) pair: 50 copies of the same red token count once.
  std::vector<TokenScore> repeats(50, TokenScore{1, 3, 0, 1, 1, false});
  DetectOptions no_dedup = o;
  no_dedup.dedup = false;
  EXPECT_EQ(Summarize(repeats, 0.25, o).scored, 1);
  EXPECT_EQ(Summarize(repeats, 0.25, o).skipped_repeats, 49);
  EXPECT_EQ(Summarize(repeats, 0.25, no_dedup).scored, 50);
  EXPECT_THROW(SummarizeChecked(repeats, 0.25, o), Error);  // 1 < min_tokens
}

TEST(Detector, CspvStrataAndMinMargin) {
  std::vector<TokenScore> tokens;
  for (int i = 0; i < 300; ++i) {
    TokenScore s;
    s.position = i + 1;
    s.token = i;
    s.seed = i % 8;
    s.confidence = static_cast<float>(i) / 300.f;
    s.margin = static_cast<float>(i) / 600.f;
    s.green = (i % 4 == 0) || i >= 200;  // high-confidence tokens all green
    tokens.push_back(s);
  }
  DetectOptions o;
  const CspvResult r = Cspv(tokens, 0.25, o, 30, 1);
  EXPECT_EQ(r.population, 300);
  EXPECT_EQ(r.low.scored, 10);
  EXPECT_EQ(r.high.scored, 10);
  EXPECT_EQ(r.random.scored, 10);
  EXPECT_EQ(r.sample.scored, 30);
  EXPECT_EQ(r.high.green, 10);
  // Lowest confidences are tokens 0..9: green at 0, 4, 8.
  EXPECT_EQ(r.low.green, 3);
  o.min_margin = 0.25;  // margins i/600 < 0.25 for i < 150
  const Summary s = Summarize(tokens, 0.25, o);
  EXPECT_EQ(s.skipped_low_margin, 150);
  EXPECT_EQ(s.scored, 150);
}

class KeyFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("epwa_key_test_" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

TEST_F(KeyFileTest, KeygenWritesMode0600AndNeverOverwrites) {
  const std::string path = (dir_ / "a.key").string();
  WriteNewKeyFile(path, false);
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(st.st_size, 32);
  const SecretKey a = SecretKey::FromFile(path);
  EXPECT_THROW(WriteNewKeyFile(path, false), Error);
  EXPECT_TRUE(std::equal(a.bytes().begin(), a.bytes().end(), SecretKey::FromFile(path).bytes().begin()));
  WriteNewKeyFile(path, true);
  const SecretKey b = SecretKey::FromFile(path);
  EXPECT_FALSE(std::equal(a.bytes().begin(), a.bytes().end(), b.bytes().begin()));
  // No temporary files are left behind.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir_), {}), 1);
}

TEST_F(KeyFileTest, BadKeyFilesAreClearErrorsThatNeverShowTheKey) {
  EXPECT_THROW(SecretKey::FromFile((dir_ / "missing").string()), Error);
  for (size_t n : {0, 31, 33, 64}) {
    const std::string path = (dir_ / ("k" + std::to_string(n))).string();
    std::ofstream(path) << std::string(n, 'Z');
    try {
      SecretKey::FromFile(path);
      FAIL() << n;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("exactly 32 bytes"), std::string::npos) << msg;
      EXPECT_EQ(msg.find("ZZ"), std::string::npos) << msg;
    }
  }
  EXPECT_THROW(SecretKey::FromFile(dir_.string()), Error);  // a directory
  EXPECT_EQ(ResolveKeyPath("a", "b"), "a");
  EXPECT_EQ(ResolveKeyPath("", "b"), "b");
  EXPECT_THROW(ResolveKeyPath("", nullptr), Error);
}

// Hostile-input sweep F4: a FIFO at the key path must be refused at once
// (the blocking open() used to wait forever for a writer).
TEST_F(KeyFileTest, AFifoKeyIsRefusedWithoutHanging) {
  const std::string fifo = (dir_ / "fifo.key").string();
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  try {
    SecretKey::FromFile(fifo);
    FAIL() << "a FIFO was accepted as a key file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("FIFO"), std::string::npos) << e.what();
  }
  const std::string missing = (dir_ / "missing.key").string();
  try {
    SecretKey::FromFile(missing);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("epwa keygen --out " + missing), std::string::npos) << e.what();
  }
}

// F1: keygen --force replaces a key file and nothing else: not a FIFO, a
// folder, a symbolic link (nor the file it names) or a device node.
TEST_F(KeyFileTest, ForceNeverReplacesSomethingThatIsNotARegularFile) {
  const std::string fifo = (dir_ / "fifo").string();
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_THROW(WriteNewKeyFile(fifo, true), Error);
  struct stat st {};
  ASSERT_EQ(lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));

  const std::string folder = (dir_ / "folder").string();
  std::filesystem::create_directory(folder);
  EXPECT_THROW(WriteNewKeyFile(folder, true), Error);
  EXPECT_TRUE(std::filesystem::is_directory(folder));

  const std::string target = (dir_ / "real.key").string();
  WriteNewKeyFile(target, false);
  const SecretKey before = SecretKey::FromFile(target);
  const std::string link = (dir_ / "link.key").string();
  std::filesystem::create_symlink(target, link);
  try {
    WriteNewKeyFile(link, true);
    FAIL() << "keygen --force replaced a symbolic link";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("symbolic link"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(std::filesystem::is_symlink(link));
  const SecretKey after = SecretKey::FromFile(target);
  EXPECT_TRUE(std::equal(before.bytes().begin(), before.bytes().end(), after.bytes().begin()));

  // Nothing but what the test made: no temporary key files left behind.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir_), {}), 4);
}

// F1 as found: as root, `keygen --out /dev/null --force` turned /dev/null into
// a regular file holding the key. A node like /dev/null (char 1, 3) is made
// here rather than touching the real /dev; creating one needs privileges.
TEST_F(KeyFileTest, ForceNeverReplacesADeviceNode) {
  const std::string dev = (dir_ / "null").string();
  if (mknod(dev.c_str(), S_IFCHR | 0666, makedev(1, 3)) != 0)
    GTEST_SKIP() << "mknod not permitted here: " << std::strerror(errno);
  try {
    WriteNewKeyFile(dev, true);
    FAIL() << "keygen --force replaced a device node";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("character device"), std::string::npos) << e.what();
  }
  struct stat st {};
  ASSERT_EQ(lstat(dev.c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir_), {}), 1);
}

TEST(KeyBytes, OnlyExactly32BytesAreAKey) {
  const std::vector<uint8_t> bytes(33, 7);
  EXPECT_NO_THROW(SecretKey::FromFileBytes(std::span(bytes).first(32), "k"));
  EXPECT_THROW(SecretKey::FromFileBytes(std::span(bytes), "k"), Error);
  EXPECT_THROW(SecretKey::FromFileBytes(std::span(bytes).first(0), "k"), Error);
}

}  // namespace
}  // namespace epwa::wm
