// Tests of the PEPI expert oracle: top-k extraction, training on a synthetic
// problem, determinism, prediction invariants, the file format and the
// rejection of every bad input. Needs no model files; runs in a few seconds.
#include "watermark/oracle.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "base/error.h"

namespace epwa::wm {
namespace {

// A scratch folder made with mkdtemp (unique even across parallel test
// runs) and removed with its contents at the end of the test.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = ::testing::TempDir() + "epwa_oracle_test_XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string File(const std::string& name) const { return path_ + "/" + name; }
  size_t Count() const {
    return static_cast<size_t>(std::distance(std::filesystem::directory_iterator(path_),
                                             std::filesystem::directory_iterator()));
  }

 private:
  std::string path_;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// The naive reference: log-softmax with the same arithmetic, then a stable
// sort by descending log-probability (stable keeps lower ids first on ties).
TopLogprobs NaiveTopK(const std::vector<float>& logits, int k) {
  float mx = -std::numeric_limits<float>::infinity();
  for (float x : logits) mx = std::max(mx, x);
  double sum = 0;
  for (float x : logits) sum += std::exp(static_cast<double>(x) - mx);
  const float lse = mx + static_cast<float>(std::log(sum));
  std::vector<float> lp(logits.size());
  for (size_t v = 0; v < logits.size(); ++v) lp[v] = logits[v] - lse;
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return lp[a] > lp[b]; });
  TopLogprobs out;
  for (int i = 0; i < std::min<int>(k, static_cast<int>(logits.size())); ++i) {
    if (std::isinf(lp[order[i]])) break;  // masked tokens are not listed
    out.ids.push_back(order[i]);
    out.logprobs.push_back(lp[order[i]]);
  }
  return out;
}

TEST(TopKFromLogits, MatchesNaiveReferenceWithTies) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    const int vocab = 1 + static_cast<int>(rng() % 300);
    std::vector<float> logits(vocab);
    // Few distinct values, so ties are everywhere; some -inf (masked) entries.
    for (float& x : logits) {
      const int r = static_cast<int>(rng() % 12);
      x = r == 11 ? -std::numeric_limits<float>::infinity() : static_cast<float>(r) * 0.75f - 3.f;
    }
    logits[rng() % vocab] = 2.f;  // at least one finite logit
    for (int k : {1, 2, 5, 20, vocab, vocab + 3}) {
      const TopLogprobs got = TopKFromLogits(logits, k);
      const TopLogprobs want = NaiveTopK(logits, k);
      ASSERT_EQ(got.ids, want.ids) << "vocab " << vocab << " k " << k;
      ASSERT_EQ(got.logprobs, want.logprobs) << "vocab " << vocab << " k " << k;
    }
  }
}

TEST(TopKFromLogits, LogprobsAreNormalisedOverTheWholeVocabulary) {
  std::vector<float> logits = {1.f, 3.f, 3.f, -2.f, 0.5f};
  const TopLogprobs t = TopKFromLogits(logits, 3);
  ASSERT_EQ(t.ids, (std::vector<int32_t>{1, 2, 0}));  // the tie 1 == 2 goes to the lower id
  double z = 0;
  for (float x : logits) z += std::exp(static_cast<double>(x));
  for (size_t i = 0; i < t.ids.size(); ++i)
    EXPECT_NEAR(t.logprobs[i], logits[t.ids[i]] - std::log(z), 1e-5);
  // A peaked row: the top log-probability may round to 0 but never above it.
  const TopLogprobs peaked = TopKFromLogits(std::vector<float>{100.f, 0.f, -50.f}, 3);
  for (float lp : peaked.logprobs) EXPECT_LE(lp, 0.f);
}

TEST(TopKFromLogits, RejectsBadRows) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_THROW(TopKFromLogits(std::vector<float>{}, 3), Error);
  EXPECT_THROW(TopKFromLogits(std::vector<float>{1.f, 2.f}, 0), Error);
  EXPECT_THROW(TopKFromLogits(std::vector<float>{1.f, nan}, 1), Error);
  EXPECT_THROW(TopKFromLogits(std::vector<float>{1.f, inf}, 1), Error);
  EXPECT_THROW(TopKFromLogits(std::vector<float>{-inf, -inf}, 1), Error);
  // Masked tokens are never listed.
  const TopLogprobs masked = TopKFromLogits(std::vector<float>{-inf, 0.f, -inf, -1.f}, 4);
  EXPECT_EQ(masked.ids, (std::vector<int32_t>{1, 3}));
}

// A synthetic problem: vocabulary 64, 4 experts, expert e "owns" tokens
// [16e, 16e + 16). Each example lists 5 tokens: four from its expert's range
// and one at random, with random descending log-probabilities.
struct Synthetic {
  std::vector<TopLogprobs> x;
  std::vector<int32_t> labels;
};

Synthetic MakeSynthetic(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  Synthetic s;
  for (int i = 0; i < n; ++i) {
    const int e = static_cast<int>(rng() % 4);
    std::vector<int32_t> ids;
    while (ids.size() < 5) {
      const int32_t id = ids.size() == 2 ? static_cast<int32_t>(rng() % 64)
                                         : static_cast<int32_t>(16 * e + rng() % 16);
      if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
    }
    std::vector<float> lps;
    float lp = -0.1f - static_cast<float>(rng() % 100) * 0.01f;
    for (size_t j = 0; j < ids.size(); ++j) {
      lps.push_back(lp);
      lp -= 0.05f + static_cast<float>(rng() % 100) * 0.02f;
    }
    s.x.push_back({ids, lps});
    s.labels.push_back(e);
  }
  return s;
}

OracleInfo SmallInfo(int top_k = 5) {
  OracleInfo info;
  info.router_hash = "abc123";
  info.router_layer = 3;
  info.num_experts = 4;
  info.vocab_size = 64;
  info.top_k = top_k;
  info.corpus = "synthetic";
  return info;
}

OracleTrainOptions FastOptions(int hidden) {
  OracleTrainOptions o;
  o.epochs = 4;
  o.learning_rate = hidden ? 0.01 : 0.05;
  o.batch_size = 32;
  o.heldout_fraction = 0.25;
  o.hidden = hidden;
  o.seed = 11;
  return o;
}

TEST(ExpertOracle, LearnsASeparableProblem) {
  const Synthetic s = MakeSynthetic(4000, 1);
  for (int hidden : {0, 16}) {
    const ExpertOracle o = ExpertOracle::Train(s.x, s.labels, SmallInfo(), FastOptions(hidden));
    const OracleInfo& i = o.info();
    EXPECT_EQ(i.heldout_examples, 1000);
    EXPECT_EQ(i.train_examples, 3000);
    EXPECT_GT(i.heldout_accuracy, 0.97) << "hidden " << hidden;
    EXPECT_GT(i.train_accuracy, 0.97) << "hidden " << hidden;
    EXPECT_LT(i.heldout_prior_accuracy, 0.4);
    EXPECT_EQ(i.hidden, hidden);
    EXPECT_EQ(i.features, "bag_lp_top1");
    EXPECT_EQ(i.router_hash, "abc123");
    // The reported held-out accuracy is what PredictExpert does on the last quarter.
    int correct = 0;
    for (size_t k = 3000; k < s.x.size(); ++k) correct += o.PredictExpert(s.x[k]) == s.labels[k];
    EXPECT_DOUBLE_EQ(i.heldout_accuracy, correct / 1000.0);
  }
}

TEST(ExpertOracle, TrainingIsDeterministicAndIndependentOfThreads) {
  const Synthetic s = MakeSynthetic(1500, 2);
  for (int hidden : {0, 8}) {
    OracleTrainOptions opts = FastOptions(hidden);
    const ExpertOracle a = ExpertOracle::Train(s.x, s.labels, SmallInfo(), opts);
    const ExpertOracle b = ExpertOracle::Train(s.x, s.labels, SmallInfo(), opts);
    opts.threads = 3;
    const ExpertOracle c = ExpertOracle::Train(s.x, s.labels, SmallInfo(), opts);
    EXPECT_EQ(a.Parameters(), b.Parameters());
    EXPECT_EQ(a.Parameters(), c.Parameters());
    EXPECT_EQ(a.info().heldout_accuracy, c.info().heldout_accuracy);
    opts.seed = 12;
    const ExpertOracle d = ExpertOracle::Train(s.x, s.labels, SmallInfo(), opts);
    EXPECT_NE(a.Parameters(), d.Parameters());
  }
  // Batches big enough that Train splits them over its threads.
  OracleTrainOptions big = FastOptions(128);
  big.batch_size = 512;
  const ExpertOracle one = ExpertOracle::Train(s.x, s.labels, SmallInfo(), big);
  big.threads = 4;
  const ExpertOracle four = ExpertOracle::Train(s.x, s.labels, SmallInfo(), big);
  EXPECT_EQ(one.Parameters(), four.Parameters());
}

TEST(ExpertOracle, PredictionInvariants) {
  const Synthetic s = MakeSynthetic(1000, 3);
  const ExpertOracle o = ExpertOracle::Train(s.x, s.labels, SmallInfo(3), FastOptions(8));
  std::vector<float> p(4), q(4);
  for (size_t i = 0; i < 50; ++i) {
    o.Predict(s.x[i], p);
    EXPECT_NEAR(std::accumulate(p.begin(), p.end(), 0.0), 1.0, 1e-5);
    for (float v : p) EXPECT_TRUE(v >= 0.f && v <= 1.f);
    EXPECT_EQ(o.PredictExpert(s.x[i]),
              static_cast<int32_t>(std::max_element(p.begin(), p.end()) - p.begin()));
    // Only the first top_k = 3 entries count.
    TopLogprobs cut = s.x[i];
    cut.ids.resize(3);
    cut.logprobs.resize(3);
    o.Predict(cut, q);
    EXPECT_EQ(p, q);
    // Order does not matter: inputs are put in canonical order first.
    TopLogprobs reversed = s.x[i];
    std::reverse(reversed.ids.begin(), reversed.ids.end());
    std::reverse(reversed.logprobs.begin(), reversed.logprobs.end());
    o.Predict(reversed, q);
    EXPECT_EQ(p, q);
  }
  // Fewer entries than top_k, or none at all, are allowed.
  o.Predict(TopLogprobs{{5}, {-0.2f}}, p);
  EXPECT_NEAR(std::accumulate(p.begin(), p.end(), 0.0), 1.0, 1e-5);
  o.Predict(TopLogprobs{}, p);
  EXPECT_NEAR(std::accumulate(p.begin(), p.end(), 0.0), 1.0, 1e-5);
  // Extremely small (but finite) log-probabilities do not overflow anything.
  o.Predict(TopLogprobs{{1, 2}, {-1e30f, -3e38f}}, p);
  for (float v : p) EXPECT_TRUE(std::isfinite(v));
}

TEST(ExpertOracle, RejectsBadInputs) {
  const Synthetic s = MakeSynthetic(300, 4);
  const ExpertOracle o = ExpertOracle::Train(s.x, s.labels, SmallInfo(), FastOptions(0));
  std::vector<float> p(4);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<TopLogprobs> bad = {
      {{64}, {-1.f}},              // id == vocab_size
      {{-1}, {-1.f}},              // negative id
      {{3, 4}, {-1.f, nan}},       // NaN
      {{3, 4}, {-1.f, -inf}},      // -inf
      {{3}, {inf}},                // +inf
      {{3}, {0.5f}},               // positive
      {{3, 4}, {-1.f}},            // sizes differ
      {{3, 3}, {-1.f, -2.f}},      // repeated id
  };
  for (const TopLogprobs& x : bad) {
    EXPECT_THROW(o.Predict(x, p), Error);
    EXPECT_THROW(o.PredictExpert(x), Error);
  }
  // A repeated id in a long list (the bitmap path), and the list after it still works.
  TopLogprobs long_list;
  for (int i = 0; i < 40; ++i) {
    long_list.ids.push_back(i);
    long_list.logprobs.push_back(-0.1f * static_cast<float>(i + 1));
  }
  EXPECT_NO_THROW(o.Predict(long_list, p));
  TopLogprobs repeated = long_list;
  repeated.ids[39] = 7;
  EXPECT_THROW(o.Predict(repeated, p), Error);
  EXPECT_NO_THROW(o.Predict(long_list, p));
  try {
    o.Predict(TopLogprobs{{99}, {-1.f}}, p);
    FAIL() << "an out-of-range id was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("99"), std::string::npos) << e.what();
  }
  std::vector<float> small(3);
  EXPECT_THROW(o.Predict(s.x[0], small), Error);

  // Training inputs.
  std::vector<int32_t> labels = s.labels;
  labels[5] = 4;
  EXPECT_THROW(ExpertOracle::Train(s.x, labels, SmallInfo(), FastOptions(0)), Error);
  std::vector<TopLogprobs> xs = s.x;
  xs[7].logprobs[0] = nan;
  EXPECT_THROW(ExpertOracle::Train(xs, s.labels, SmallInfo(), FastOptions(0)), Error);
  EXPECT_THROW(ExpertOracle::Train(std::span(s.x).first(10), s.labels, SmallInfo(), FastOptions(0)),
               Error);
  OracleTrainOptions opts = FastOptions(0);
  opts.features = "no_such_design";
  EXPECT_THROW(ExpertOracle::Train(s.x, s.labels, SmallInfo(), opts), Error);
  opts = FastOptions(0);
  opts.heldout_fraction = 1.0;
  EXPECT_THROW(ExpertOracle::Train(s.x, s.labels, SmallInfo(), opts), Error);
  OracleInfo info = SmallInfo();
  info.top_k = 0;
  EXPECT_THROW(ExpertOracle::Train(s.x, s.labels, info, FastOptions(0)), Error);
  info = SmallInfo();
  info.num_experts = 1;
  EXPECT_THROW(ExpertOracle::Train(s.x, s.labels, info, FastOptions(0)), Error);
  info = SmallInfo();
  info.top_k = 65;  // more than the vocabulary
  EXPECT_THROW(ExpertOracle::Train(s.x, s.labels, info, FastOptions(0)), Error);
  info.vocab_size = 4096;
  info.top_k = ExpertOracle::kMaxTopK + 1;
  EXPECT_THROW(ExpertOracle::Train(s.x, s.labels, info, FastOptions(0)), Error);
}

// A full distribution goes to an oracle with top_k <= kMaxTopK, which uses
// its first top_k entries.
TEST(ExpertOracle, FullDistributionInputsUseTheirFirstTopKEntries) {
  const int vocab = 1500;
  std::mt19937 rng(9);
  std::vector<TopLogprobs> x;
  std::vector<int32_t> labels;
  for (int i = 0; i < 200; ++i) {
    std::vector<float> logits(vocab);
    const int e = static_cast<int>(rng() % 2);
    for (int v = 0; v < vocab; ++v)
      logits[v] = static_cast<float>(rng() % 1000) * 0.01f + (v % 2 == e ? 3.f : 0.f);
    x.push_back(TopKFromLogits(logits, vocab));  // every entry
    labels.push_back(e);
  }
  OracleInfo info;
  info.num_experts = 2;
  info.vocab_size = vocab;
  info.top_k = ExpertOracle::kMaxTopK;
  OracleTrainOptions opts = FastOptions(0);
  opts.epochs = 10;
  const ExpertOracle o = ExpertOracle::Train(x, labels, info, opts);
  EXPECT_GT(o.info().heldout_accuracy, 0.8);
  std::vector<float> full(2), cut(2);
  TopLogprobs first = x[0];
  first.ids.resize(ExpertOracle::kMaxTopK);
  first.logprobs.resize(ExpertOracle::kMaxTopK);
  o.Predict(x[0], full);
  o.Predict(first, cut);
  EXPECT_EQ(full, cut);
}

TEST(ExpertOracle, SaveLoadRoundTrip) {
  ScratchDir dir;
  const Synthetic s = MakeSynthetic(800, 5);
  for (int hidden : {0, 8}) {
    const ExpertOracle o = ExpertOracle::Train(s.x, s.labels, SmallInfo(), FastOptions(hidden));
    const std::string path = dir.File("oracle" + std::to_string(hidden) + ".bin");
    o.Save(path);
    const ExpertOracle l = ExpertOracle::Load(path);
    EXPECT_EQ(l.Parameters(), o.Parameters());
    const OracleInfo &a = o.info(), &b = l.info();
    EXPECT_EQ(a.router_hash, b.router_hash);
    EXPECT_EQ(a.router_layer, b.router_layer);
    EXPECT_EQ(a.num_experts, b.num_experts);
    EXPECT_EQ(a.vocab_size, b.vocab_size);
    EXPECT_EQ(a.top_k, b.top_k);
    EXPECT_EQ(a.corpus, b.corpus);
    EXPECT_EQ(a.features, b.features);
    EXPECT_EQ(a.hidden, b.hidden);
    EXPECT_EQ(a.train_examples, b.train_examples);
    EXPECT_EQ(a.heldout_examples, b.heldout_examples);
    EXPECT_EQ(a.train_accuracy, b.train_accuracy);
    EXPECT_EQ(a.heldout_accuracy, b.heldout_accuracy);
    EXPECT_EQ(a.heldout_log_loss, b.heldout_log_loss);
    EXPECT_EQ(a.seed, b.seed);
    std::vector<float> p(4), q(4);
    for (const TopLogprobs& x : s.x) {
      o.Predict(x, p);
      l.Predict(x, q);
      ASSERT_EQ(p, q);
    }
    // Saving again over the file replaces it and leaves no temporary behind.
    l.Save(path);
    EXPECT_EQ(ExpertOracle::Load(path).Parameters(), o.Parameters());
  }
  EXPECT_EQ(dir.Count(), 2u);
}

// Expects Load to throw epwa::Error with a message that names the file.
void ExpectRejected(const std::string& path, const std::string& context) {
  try {
    ExpertOracle::Load(path);
    ADD_FAILURE() << "accepted: " << context;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << context << ": " << e.what();
  }
}

TEST(ExpertOracle, LoadRejectsDamagedFiles) {
  ScratchDir dir;
  // A small oracle: vocabulary 8, 2 experts, 4 hidden units.
  OracleInfo info;
  info.num_experts = 2;
  info.vocab_size = 8;
  info.top_k = 2;
  std::vector<TopLogprobs> x = {{{1, 2}, {-0.1f, -2.f}}, {{5, 6}, {-0.3f, -1.f}},
                                {{2, 1}, {-0.2f, -3.f}}, {{6, 7}, {-0.5f, -0.9f}}};
  std::vector<int32_t> labels = {0, 1, 0, 1};
  OracleTrainOptions opts;
  opts.epochs = 2;
  opts.hidden = 4;
  opts.heldout_fraction = 0;
  const std::string good_path = dir.File("good.bin");
  ExpertOracle::Train(x, labels, info, opts).Save(good_path);
  const std::string good = ReadAll(good_path);
  ASSERT_GT(good.size(), 48u);
  EXPECT_NO_THROW(ExpertOracle::Load(good_path));

  const std::string bad = dir.File("bad.bin");
  for (size_t n = 0; n < good.size(); ++n) {
    WriteAll(bad, good.substr(0, n));
    ExpectRejected(bad, "truncated to " + std::to_string(n) + " bytes");
  }
  for (size_t i = 0; i < good.size(); ++i) {
    std::string flipped = good;
    flipped[i] = static_cast<char>(flipped[i] ^ 0x20);
    WriteAll(bad, flipped);
    ExpectRejected(bad, "byte " + std::to_string(i) + " flipped");
  }
  WriteAll(bad, good + "x");
  ExpectRejected(bad, "a trailing byte");
  std::string magic = good;
  magic[7] = '2';
  WriteAll(bad, magic);
  ExpectRejected(bad, "wrong magic");
  ExpectRejected(dir.File("missing.bin"), "a missing file");
  // A folder where the file should be.
  ExpectRejected(dir.File(""), "a folder");
}

TEST(ExpertOracle, SaveFailsCleanlyIntoAMissingFolder) {
  ScratchDir dir;
  const Synthetic s = MakeSynthetic(100, 6);
  const ExpertOracle o = ExpertOracle::Train(s.x, s.labels, SmallInfo(), FastOptions(0));
  EXPECT_THROW(o.Save(dir.File("no/such/folder/oracle.bin")), Error);
  EXPECT_EQ(dir.Count(), 0u);
}

// Hostile-input sweep F15: a corpus so small that the held-out part rounds
// down to nothing used to train anyway and store a "held-out accuracy" of 0/0
// as 0%. Train refuses it and says how many examples it needs.
TEST(ExpertOracle, RefusesTooFewExamplesToHoldAnyOut) {
  const Synthetic s = MakeSynthetic(40, 3);
  OracleTrainOptions opts = FastOptions(0);
  opts.heldout_fraction = 0.1;
  EXPECT_EQ(ExpertOracle::MinTrainingExamples(0.1), 10);
  EXPECT_EQ(ExpertOracle::MinTrainingExamples(0.25), 4);
  EXPECT_EQ(ExpertOracle::MinTrainingExamples(0.9), 2);
  EXPECT_EQ(ExpertOracle::MinTrainingExamples(0.0), 1);
  try {
    ExpertOracle::Train(std::span(s.x).first(5), std::span(s.labels).first(5), SmallInfo(), opts);
    FAIL() << "5 examples with 10% held out were accepted";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("only 5 examples"), std::string::npos) << msg;
    EXPECT_NE(msg.find("at least 10"), std::string::npos) << msg;
  }
  // The smallest accepted set really holds one example out.
  const ExpertOracle o =
      ExpertOracle::Train(std::span(s.x).first(10), std::span(s.labels).first(10), SmallInfo(), opts);
  EXPECT_EQ(o.info().heldout_examples, 1);
  EXPECT_EQ(o.info().train_examples, 9);
}

// F4: the oracle file is read without blocking, so a FIFO (or a folder) is
// refused at once with a message that says what it is.
TEST(ExpertOracle, LoadRefusesFifosAndFolders) {
  ScratchDir dir;
  const std::string fifo = dir.File("oracle.fifo");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  try {
    ExpertOracle::Load(fifo);
    FAIL() << "a FIFO was loaded as an oracle";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("FIFO"), std::string::npos) << e.what();
  }
  try {
    ExpertOracle::Load(dir.File(""));
    FAIL() << "a folder was loaded as an oracle";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("folder"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace epwa::wm
