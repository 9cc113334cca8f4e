#include "watermark/oracle.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <iterator>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>

#include "base/error.h"
#include "base/file_read.h"
#include "base/sha256.h"
#include "base/thread_pool.h"
#include "io/atomic_file.h"
#include "kernels/kernels.h"

namespace epwa::wm {
namespace {

constexpr char kMagic[8] = {'E', 'P', 'W', 'O', 'R', 'C', 'L', '1'};
constexpr int kFormatVersion = 1;
constexpr size_t kDigestBytes = 32;
constexpr size_t kHeaderBytes = 16;  // magic + u64 JSON length

// ---------------------------------------------------------------------------
// Feature design.
//
// Every design maps a canonical top-k list (ids[i], lp[i]), i < n, to a sparse
// set of (row, value) pairs. The model sums value * embed[row] over them (an
// "embedding bag", [width]); rows are grouped into tables of vocab_size rows,
// followed by a few rows that do not belong to a token:
//   present  row v, value 1          "token v is in the top-k"
//   lp       row v, value L(lp)      "... and this likely": L(lp) = max(lp, -30) / 10
//   top1     row v, value 1          "token v is the most likely token"
//   conf     12 rows, one-hot        bucket of the top-1 log-probability
// Which tokens the model considers next says much about its hidden state,
// and so about the router's decision: the presence and top-1 tables carry most
// of the signal at small k. The lp table adds how likely each listed token is
// (sum_v embed[v] * lp_v is linear in the logits, which are linear in the
// final hidden state). The floor at -30 keeps a tiny logprob (say -1e30) from
// swamping the sum; the division by 10 keeps values near 1 for the optimiser.
//
// Choices, measured on tiny-moe over the Jargon File (first 80% of paragraphs
// to train, 355k positions; the rest, 84k, held out; chance 12.5%, most
// common expert 32%), held-out accuracy at k = 20 / k = 5:
//   bag, linear                    81.1 / -
//   bag_lp, linear                 82.3 / -
//   bag_lp_top1, linear            82.5 / 75.6
//   bag_lp_top1, 32 hidden units   84.2 / -
//   bag_lp_top1, 64 hidden units   84.8 / 78.6   (the default)
//   bag_lp_top1, 128 hidden units  85.1 / -      (twice the time)
//   + exp(lp)-weighted and "second most likely" tables, 64 hidden:
//                                  84.8 / 78.9   (twice the time; dropped)
//
// At most kMaxTopK = 1024 entries are used. On a quarter of the training
// positions, held-out accuracy rises with k up to 1024 (k = 20: 82.6%, 64:
// 86.3%, 256: 88.6%, 1024: 90.1%) and falls beyond (2048: 89.1%). With the
// whole vocabulary listed the presence features are the same for every
// example, all their rows move together at every Adam step, and training
// degrades (linear: 84.6%) or diverges (hidden layer). A full distribution is
// therefore best given to an oracle with top_k = 1024, which uses its first
// 1024 entries.

struct DesignSpec {
  const char* name;
  bool present, lp, top1_conf;
};

constexpr DesignSpec kDesigns[] = {
    {"bag", true, false, false},
    {"bag_lp", true, true, false},
    {"bag_lp_top1", true, true, true},
};
constexpr int kNumDesigns = static_cast<int>(std::size(kDesigns));

// Thresholds on -lp(top-1) that split the confidence buckets; the last
// bucket takes everything larger.
constexpr float kConfEdges[] = {0.02f, 0.05f, 0.1f, 0.2f, 0.35f, 0.5f,
                                0.7f,  1.0f,  1.5f, 2.0f, 3.0f};
constexpr int kConfRows = static_cast<int>(std::size(kConfEdges)) + 1;

int DesignFromName(const std::string& name) {
  for (int d = 0; d < kNumDesigns; ++d)
    if (name == kDesigns[d].name) return d;
  return -1;
}

std::string DesignNames() {
  std::string s;
  for (int d = 0; d < kNumDesigns; ++d) s += std::string(d ? ", " : "") + kDesigns[d].name;
  return s;
}

int64_t DesignRows(int design, int64_t vocab) {
  const DesignSpec& s = kDesigns[design];
  return vocab * (int64_t{s.present} + s.lp) + (s.top1_conf ? vocab + kConfRows : 0);
}

inline float LpValue(float lp) { return std::max(lp, -30.f) * 0.1f; }

// Calls f(row, value) for every feature of a canonical list of n entries.
template <typename F>
inline void ForEachFeature(int design, int64_t vocab, const int32_t* ids, const float* lps,
                           int n, F&& f) {
  const DesignSpec& s = kDesigns[design];
  int64_t base = 0;
  if (s.present) {
    for (int i = 0; i < n; ++i) f(base + ids[i], 1.f);
    base += vocab;
  }
  if (s.lp) {
    for (int i = 0; i < n; ++i) f(base + ids[i], LpValue(lps[i]));
    base += vocab;
  }
  // An empty list has no top-1 token, so it gets no confidence row either.
  if (s.top1_conf && n > 0) {
    f(base + ids[0], 1.f);
    base += vocab;
    int b = 0;
    while (b < kConfRows - 1 && -lps[0] > kConfEdges[b]) ++b;
    f(base + b, 1.f);
  }
}

// ---------------------------------------------------------------------------
// Input validation and canonical order.

bool Before(int32_t id_a, float lp_a, int32_t id_b, float lp_b) {
  return lp_a > lp_b || (lp_a == lp_b && id_a < id_b);
}

// Checks one input and tells whether it is already in canonical order.
// `what` (with `index` when >= 0) names the input in messages: "the
// top-logprobs input", "training example 7". Messages are only built on
// failure, because this runs per position on the detector's hot path.
bool ValidateInput(const TopLogprobs& x, int vocab, const char* what, int64_t index = -1) {
  auto fail = [&](const std::string& problem) {
    std::string name = what;
    if (index >= 0) name += " " + std::to_string(index);
    throw Error(name + " " + problem);
  };
  if (x.ids.size() != x.logprobs.size())
    fail("has " + std::to_string(x.ids.size()) + " ids but " + std::to_string(x.logprobs.size()) +
         " logprobs; they must pair up");
  const size_t n = x.ids.size();
  bool canonical = true;
  for (size_t i = 0; i < n; ++i) {
    const int32_t id = x.ids[i];
    const float lp = x.logprobs[i];
    if (id < 0 || id >= vocab)
      fail("entry " + std::to_string(i) + " has token id " + std::to_string(id) +
           ", outside the vocabulary [0, " + std::to_string(vocab) + ")");
    if (!std::isfinite(lp))
      fail("entry " + std::to_string(i) + " has a non-finite logprob (" + std::to_string(lp) + ")");
    if (lp > 0.f)
      fail("entry " + std::to_string(i) + " has a positive logprob (" + std::to_string(lp) +
           "), but log-probabilities are at most 0");
    if (i > 0 && !Before(x.ids[i - 1], x.logprobs[i - 1], id, lp)) canonical = false;
  }
  // Repeated ids: a quadratic scan for the usual short lists; a bitmap over
  // the vocabulary (kept per thread, cleared after use) for long ones.
  if (n <= 32) {
    for (size_t i = 0; i < n; ++i)
      for (size_t j = i + 1; j < n; ++j)
        if (x.ids[i] == x.ids[j])
          fail("lists token id " + std::to_string(x.ids[i]) + " more than once");
  } else {
    thread_local std::vector<uint64_t> seen;  // [ceil(vocab / 64)] bits
    if (seen.size() < static_cast<size_t>(vocab) / 64 + 1) seen.assign(vocab / 64 + 1, 0);
    size_t i = 0;
    for (; i < n; ++i) {
      const uint32_t id = static_cast<uint32_t>(x.ids[i]);
      const uint64_t bit = uint64_t{1} << (id % 64);
      if (seen[id / 64] & bit) break;
      seen[id / 64] |= bit;
    }
    for (size_t j = 0; j < i; ++j) seen[static_cast<uint32_t>(x.ids[j]) / 64] = 0;
    if (i < n) fail("lists token id " + std::to_string(x.ids[i]) + " more than once");
  }
  return canonical;
}

// A validated input, canonically ordered, cut to the first top_k entries.
struct View {
  const int32_t* ids;
  const float* lps;
  int n;
};

// Sorts a copy of x into canonical order.
TopLogprobs Canonical(const TopLogprobs& x) {
  std::vector<size_t> order(x.ids.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return Before(x.ids[a], x.logprobs[a], x.ids[b], x.logprobs[b]);
  });
  TopLogprobs out;
  out.ids.reserve(order.size());
  out.logprobs.reserve(order.size());
  for (size_t i : order) {
    out.ids.push_back(x.ids[i]);
    out.logprobs.push_back(x.logprobs[i]);
  }
  return out;
}

int ArgMax(const float* v, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (v[i] > v[best]) best = i;
  return best;
}

// Kernels over contiguous floats, written as blocks of 8 over non-aliasing
// pointers: GCC's -O2 vectoriser (the "very cheap" model) only vectorises
// loops whose trip count is a known multiple of the vector width, and these
// loops are where training and prediction spend their time.
inline void Axpy(float a, const float* __restrict x, float* __restrict y, int n) {
  int j = 0;
  for (; j + 8 <= n; j += 8)
    for (int u = 0; u < 8; ++u) y[j + u] += a * x[j + u];
  for (; j < n; ++j) y[j] += a * x[j];
}

inline float Dot(const float* __restrict x, const float* __restrict y, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int j = 0;
  for (; j + 8 <= n; j += 8)
    for (int u = 0; u < 8; ++u) acc[u] += x[j + u] * y[j + u];
  float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; j < n; ++j) sum += x[j] * y[j];
  return sum;
}

struct AdamStep {
  float b1, b2, eps, step_size;
};

// One Adam update of n parameters with gradient g * scale + decay * w.
inline void AdamUpdate(const AdamStep& a, float scale, float decay, const float* __restrict g,
                       float* __restrict w, float* __restrict m, float* __restrict v, int n) {
  auto one = [&](int j) {
    const float grad = g[j] * scale + decay * w[j];
    m[j] = a.b1 * m[j] + (1.f - a.b1) * grad;
    v[j] = a.b2 * v[j] + (1.f - a.b2) * grad * grad;
    w[j] -= a.step_size * m[j] / (std::sqrt(v[j]) + a.eps);
  };
  int j = 0;
  for (; j + 8 <= n; j += 8)
    for (int u = 0; u < 8; ++u) one(j + u);
  for (; j < n; ++j) one(j);
}

// Deterministic, library-independent randomness (std::shuffle and the std
// distributions differ between standard libraries).
uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Uniform in [-a, a).
float Uniform(uint64_t& state, float a) {
  const float u = static_cast<float>(SplitMix64(state) >> 40) * (1.f / 16777216.f);
  return (2.f * u - 1.f) * a;
}

// ---------------------------------------------------------------------------
// Little-endian encoding helpers.

void PutU64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t GetU64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

void PutFloats(std::string& out, const std::vector<float>& v) {
  for (float f : v) {
    const uint32_t u = std::bit_cast<uint32_t>(f);
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((u >> (8 * i)) & 0xff));
  }
}

std::vector<float> GetFloats(const unsigned char* p, size_t count) {
  std::vector<float> v(count);
  for (size_t j = 0; j < count; ++j) {
    uint32_t u = 0;
    for (int i = 0; i < 4; ++i) u |= uint32_t{p[4 * j + i]} << (8 * i);
    v[j] = std::bit_cast<float>(u);
  }
  return v;
}

// The raw 32-byte SHA-256 of data[0, n).
std::string Digest(const void* data, size_t n) {
  Sha256 sha;
  sha.Add(data, n);
  const std::string hex = sha.Hex();
  auto nibble = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  std::string bytes;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    bytes.push_back(static_cast<char>(nibble(hex[i]) * 16 + nibble(hex[i + 1])));
  return bytes;
}

// Typed JSON field access for Load: each failure names the file and the field.
const nlohmann::json& Field(const nlohmann::json& obj, const char* key, const std::string& file) {
  Require(obj.is_object() && obj.contains(key),
          "expert oracle file '" + file + "' has no \"" + key + "\" in its metadata");
  return obj.at(key);
}

int64_t IntField(const nlohmann::json& obj, const char* key, int64_t lo, int64_t hi,
                 const std::string& file) {
  const auto& v = Field(obj, key, file);
  Require(v.is_number_integer(),
          "expert oracle file '" + file + "' has a non-integer \"" + key + "\" in its metadata");
  const int64_t x = v.is_number_unsigned() && v.get<uint64_t>() > uint64_t{INT64_MAX}
                        ? INT64_MAX
                        : v.get<int64_t>();
  Require(x >= lo && x <= hi, "expert oracle file '" + file + "' has \"" + key + "\" = " +
                                  std::to_string(x) + ", outside [" + std::to_string(lo) +
                                  ", " + std::to_string(hi) + "]");
  return x;
}

uint64_t U64Field(const nlohmann::json& obj, const char* key, const std::string& file) {
  const auto& v = Field(obj, key, file);
  Require(v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0),
          "expert oracle file '" + file + "' has a bad \"" + key + "\" in its metadata");
  return v.get<uint64_t>();
}

double DoubleField(const nlohmann::json& obj, const char* key, const std::string& file) {
  const auto& v = Field(obj, key, file);
  Require(v.is_number() && std::isfinite(v.get<double>()),
          "expert oracle file '" + file + "' has a non-numeric \"" + key + "\" in its metadata");
  return v.get<double>();
}

std::string StringField(const nlohmann::json& obj, const char* key, const std::string& file) {
  const auto& v = Field(obj, key, file);
  Require(v.is_string(),
          "expert oracle file '" + file + "' has a non-string \"" + key + "\" in its metadata");
  return v.get<std::string>();
}

std::vector<int64_t> ShapeOf(const nlohmann::json& tensor, const std::string& file) {
  const auto& shape = Field(tensor, "shape", file);
  Require(shape.is_array(),
          "expert oracle file '" + file + "' has a tensor shape that is not a list");
  std::vector<int64_t> dims;
  for (const auto& d : shape) {
    Require(d.is_number_integer() && d.get<int64_t>() >= 0,
            "expert oracle file '" + file + "' has a tensor shape with a bad dimension");
    dims.push_back(d.get<int64_t>());
  }
  return dims;
}

void ValidateInfo(const OracleInfo& info) {
  Require(info.num_experts >= 2 && info.num_experts <= ExpertOracle::kMaxExperts,
          "an expert oracle needs between 2 and " + std::to_string(ExpertOracle::kMaxExperts) +
              " experts, not " + std::to_string(info.num_experts));
  Require(info.vocab_size >= 1 && info.vocab_size <= ExpertOracle::kMaxVocab,
          "an expert oracle needs a vocabulary of 1 to " +
              std::to_string(ExpertOracle::kMaxVocab) + " tokens, not " +
              std::to_string(info.vocab_size));
  const int max_k = std::min(info.vocab_size, ExpertOracle::kMaxTopK);
  Require(info.top_k >= 1 && info.top_k <= max_k,
          "an expert oracle's top_k must lie in [1, " + std::to_string(max_k) + "], not " +
              std::to_string(info.top_k) +
              " (for a full distribution use 1024: only an input's first top_k entries count)");
}

}  // namespace

// ---------------------------------------------------------------------------

TopLogprobs TopKFromLogits(std::span<const float> logits, int k) {
  Require(!logits.empty(), "cannot take the top-k of an empty logits row");
  Require(k >= 1,
          "the number of top log-probabilities must be at least 1, not " + std::to_string(k));
  float mx = -std::numeric_limits<float>::infinity();
  for (size_t v = 0; v < logits.size(); ++v) {
    const float x = logits[v];
    if (std::isnan(x) || x == std::numeric_limits<float>::infinity())
      throw Error("logit " + std::to_string(v) + " is " + std::to_string(x) +
                  "; logits must be finite or -inf");
    mx = std::max(mx, x);
  }
  Require(std::isfinite(mx), "every logit is -inf, so the row is no distribution");
  // The normaliser in double: a float sum over a large vocabulary loses digits.
  double sum = 0;
  for (float x : logits) sum += std::exp(static_cast<double>(x) - mx);
  // sum >= 1, so lse >= mx even after rounding and no log-probability is positive.
  const float lse = mx + static_cast<float>(std::log(sum));
  // Masked (-inf) tokens are impossible, and an API lists no impossible
  // tokens, so they are never returned; the result is always valid oracle input.
  const size_t finite = static_cast<size_t>(std::count_if(
      logits.begin(), logits.end(), [](float x) { return x != -std::numeric_limits<float>::infinity(); }));
  const size_t kk = std::min(static_cast<size_t>(k), finite);
  std::vector<float> lp(logits.size());  // [vocab]
  for (size_t v = 0; v < logits.size(); ++v) lp[v] = logits[v] - lse;
  std::vector<int32_t> order(logits.size());  // [vocab]
  std::iota(order.begin(), order.end(), 0);
  // (logprob descending, id ascending) is a strict total order, so the result
  // does not depend on the sorting algorithm.
  std::partial_sort(order.begin(), order.begin() + kk, order.end(), [&](int32_t a, int32_t b) {
    return lp[a] > lp[b] || (lp[a] == lp[b] && a < b);
  });
  TopLogprobs out;
  out.ids.assign(order.begin(), order.begin() + kk);
  out.logprobs.resize(kk);
  for (size_t i = 0; i < kk; ++i) out.logprobs[i] = lp[out.ids[i]];
  return out;
}

std::vector<float> ExpertOracle::Parameters() const {
  std::vector<float> all(embed_);
  all.insert(all.end(), embed_bias_.begin(), embed_bias_.end());
  all.insert(all.end(), out_.begin(), out_.end());
  all.insert(all.end(), out_bias_.begin(), out_bias_.end());
  return all;
}

void ExpertOracle::Forward(const int32_t* ids, const float* lps, int n, float* h,
                           float* scores) const {
  const int W = width();
  const int E = info_.num_experts;
  std::copy(embed_bias_.begin(), embed_bias_.end(), h);
  const float* emb = embed_.data();
  ForEachFeature(design_, info_.vocab_size, ids, lps, n,
                 [&](int64_t row, float value) { Axpy(value, emb + row * W, h, W); });
  if (info_.hidden == 0) {
    std::copy(h, h + E, scores);
    return;
  }
  std::copy(out_bias_.begin(), out_bias_.end(), scores);
  for (int d = 0; d < W; ++d)
    if (h[d] > 0.f) Axpy(h[d], out_.data() + static_cast<size_t>(d) * E, scores, E);  // ReLU
}

void ExpertOracle::PredictChecked(const TopLogprobs& x, float* probs) const {
  const bool canonical = ValidateInput(x, info_.vocab_size, "the top-logprobs input");
  const int n = static_cast<int>(std::min<size_t>(x.ids.size(), info_.top_k));
  float h[kMaxWidth];  // [width]
  if (canonical) {
    Forward(x.ids.data(), x.logprobs.data(), n, h, probs);
  } else {
    const TopLogprobs c = Canonical(x);
    Forward(c.ids.data(), c.logprobs.data(), n, h, probs);
  }
  kernels::Softmax(probs, info_.num_experts);
}

void ExpertOracle::Predict(const TopLogprobs& x, std::span<float> probs_out) const {
  if (probs_out.size() != static_cast<size_t>(info_.num_experts))
    throw Error("the expert probabilities need room for " + std::to_string(info_.num_experts) +
                " experts, not " + std::to_string(probs_out.size()));
  PredictChecked(x, probs_out.data());
}

int32_t ExpertOracle::PredictExpert(const TopLogprobs& x) const {
  // The argmax of the probabilities, not of the raw scores, so that
  // PredictExpert always agrees with Predict even where rounding ties them.
  float probs[kMaxExperts];  // [num_experts]
  PredictChecked(x, probs);
  return ArgMax(probs, info_.num_experts);
}

// ---------------------------------------------------------------------------
// Training: mini-batch Adam on the log loss.
//
// Each batch is cut into kShards parts, a fixed number independent of the
// thread count. Each shard adds its examples' gradients into its own buffers,
// and the shards are then added up in shard order, so the floating-point
// result is the same whether one thread or four did the work. Only the
// embedding rows some example of the batch touched are updated ("lazy" Adam,
// and lazy L2): with 4096-row tables and ~40 features per example, a dense
// update of every row would cost far more than the gradient itself.

namespace {
// "10%" or "2.5%": a held-out fraction for messages.
std::string HeldoutPercent(double fraction) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3g%%", 100 * fraction);
  return buf;
}
}  // namespace

int64_t ExpertOracle::MinTrainingExamples(double heldout_fraction) {
  if (!(heldout_fraction > 0 && heldout_fraction < 1)) return 1;
  // The smallest n with floor(n * f) >= 1 (one held out) and n - floor(n * f)
  // >= 1 (one to train on), computed the same way Train splits.
  int64_t n = std::max<int64_t>(2, static_cast<int64_t>(std::ceil(1 / heldout_fraction)) - 1);
  while (static_cast<int64_t>(std::floor(n * heldout_fraction)) < 1 ||
         n - static_cast<int64_t>(std::floor(n * heldout_fraction)) < 1)
    ++n;
  return n;
}

ExpertOracle ExpertOracle::Train(std::span<const TopLogprobs> x, std::span<const int32_t> labels,
                                 const OracleInfo& info_in, const OracleTrainOptions& opts) {
  ValidateInfo(info_in);
  const int design = DesignFromName(opts.features);
  Require(design >= 0, "unknown expert oracle feature design '" + opts.features +
                           "' (known: " + DesignNames() + ")");
  Require(opts.hidden >= 0 && opts.hidden <= kMaxWidth,
          "the expert oracle's hidden layer must have 0 (none) to " + std::to_string(kMaxWidth) +
              " units, not " + std::to_string(opts.hidden));
  Require(opts.epochs >= 1,
          "training the expert oracle needs at least 1 epoch, not " + std::to_string(opts.epochs));
  Require(std::isfinite(opts.learning_rate) && opts.learning_rate > 0,
          "the expert oracle's learning rate must be a positive number");
  Require(std::isfinite(opts.l2) && opts.l2 >= 0,
          "the expert oracle's L2 penalty must be a non-negative number");
  Require(opts.heldout_fraction >= 0 && opts.heldout_fraction < 1,
          "the expert oracle's held-out fraction must lie in [0, 1)");
  Require(opts.batch_size >= 1, "the expert oracle's batch size must be at least 1");
  Require(x.size() == labels.size(), "the expert oracle got " + std::to_string(x.size()) +
                                         " examples but " + std::to_string(labels.size()) +
                                         " labels");
  const int64_t total = static_cast<int64_t>(x.size());
  const int64_t heldout = static_cast<int64_t>(std::floor(total * opts.heldout_fraction));
  const int64_t ntrain = total - heldout;
  Require(ntrain >= 1, "the expert oracle needs at least one training example");
  // A held-out part that rounds down to nothing would report an accuracy of
  // 0/0, stored as 0% as if it had been measured; refuse instead.
  Require(opts.heldout_fraction == 0 || heldout >= 1,
          "the expert oracle got only " + std::to_string(total) +
              " examples, too few to hold out a fraction " + HeldoutPercent(opts.heldout_fraction) +
              " of them for measuring its accuracy: it needs at least " +
              std::to_string(MinTrainingExamples(opts.heldout_fraction)));

  ExpertOracle o;
  o.info_ = info_in;
  o.info_.features = kDesigns[design].name;
  o.info_.hidden = opts.hidden;
  o.design_ = design;
  const int E = info_in.num_experts;
  const int64_t V = info_in.vocab_size;
  const int H = opts.hidden;
  const int W = o.width();
  o.rows_ = DesignRows(design, V);
  o.embed_.assign(static_cast<size_t>(o.rows_) * W, 0.f);
  o.embed_bias_.assign(W, 0.f);
  // The embedding starts at zero, so that rows of tokens training never sees
  // stay zero and such tokens contribute nothing at prediction time. A linear
  // model (convex loss) needs nothing else. A hidden layer needs its symmetry
  // broken: random output weights give each unit a different gradient, and a
  // small positive bias keeps every unit active (ReLU) at the start.
  uint64_t init_rng = opts.seed ^ 0x6f7261636c65ULL;  // "oracle"
  if (H > 0) {
    std::fill(o.embed_bias_.begin(), o.embed_bias_.end(), 0.1f);
    o.out_.resize(static_cast<size_t>(H) * E);
    for (float& w : o.out_) w = Uniform(init_rng, 0.35f);  // std 0.2
    o.out_bias_.assign(E, 0.f);
  }

  // Validate every example once and keep a canonical view of each; only
  // unsorted inputs are copied.
  std::deque<TopLogprobs> copies;  // a deque: references stay valid as it grows
  std::vector<View> views(total);
  for (int64_t i = 0; i < total; ++i) {
    if (labels[i] < 0 || labels[i] >= E)
      throw Error("training example " + std::to_string(i) + " has expert label " +
                  std::to_string(labels[i]) + ", outside [0, " + std::to_string(E) + ")");
    const TopLogprobs* src = &x[i];
    if (!ValidateInput(x[i], info_in.vocab_size, "training example", i)) {
      copies.push_back(Canonical(x[i]));
      src = &copies.back();
    }
    views[i] = {src->ids.data(), src->logprobs.data(),
                static_cast<int>(std::min<size_t>(src->ids.size(), info_in.top_k))};
  }

  const int threads = std::min(kShards, opts.threads <= 0 ? ThreadPool::HardwareThreads()
                                                          : opts.threads);
  std::unique_ptr<ThreadPool> pool;
  if (threads > 1) pool = std::make_unique<ThreadPool>(threads);

  struct Shard {
    std::vector<float> grad;        // [rows, W], zero outside `touched`
    std::vector<uint8_t> mark;      // [rows]: 1 for rows in `touched`
    std::vector<int64_t> touched;   // rows with a gradient in this batch
    std::vector<float> embed_bias;  // [W] gradient
    std::vector<float> out;         // [H, E] gradient
    std::vector<float> out_bias;    // [E] gradient
    std::vector<float> h, p, dh;    // [W], [E], [W] scratch
  };
  std::vector<Shard> shards(kShards);
  for (Shard& s : shards) {
    s.grad.assign(o.embed_.size(), 0.f);
    s.mark.assign(o.rows_, 0);
    s.embed_bias.assign(W, 0.f);
    s.out.assign(o.out_.size(), 0.f);
    s.out_bias.assign(o.out_bias_.size(), 0.f);
    s.h.assign(W, 0.f);
    s.p.assign(E, 0.f);
    s.dh.assign(W, 0.f);
  }
  // Adam moments, shaped like the parameters they belong to.
  std::vector<float> m_embed(o.embed_.size(), 0.f), v_embed(o.embed_.size(), 0.f);
  std::vector<float> m_ebias(W, 0.f), v_ebias(W, 0.f);
  std::vector<float> m_out(o.out_.size(), 0.f), v_out(o.out_.size(), 0.f);
  std::vector<float> m_obias(o.out_bias_.size(), 0.f), v_obias(o.out_bias_.size(), 0.f);
  static_assert(kShards <= 8, "union_mark holds one bit per shard");
  std::vector<uint8_t> union_mark(o.rows_, 0);  // [rows]: bit s = shard s touched the row
  std::vector<int64_t> union_rows;

  std::vector<int64_t> order(ntrain);
  std::iota(order.begin(), order.end(), int64_t{0});
  uint64_t shuffle_rng = opts.seed;
  const int64_t batches_per_epoch = (ntrain + opts.batch_size - 1) / opts.batch_size;
  const int64_t total_steps = batches_per_epoch * opts.epochs;
  int64_t step = 0;

  // Runs fn over [0, n) on the pool when there is one and the work is worth
  // waking it for. Every caller's result is independent of how [0, n) is split.
  auto parallel = [&](int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    if (pool) {
      pool->ParallelFor(n, grain, fn);
    } else {
      fn(0, n);
    }
  };
  // Multiply-adds per example, roughly; batches below ~1M of them finish in
  // well under a millisecond and run on one thread, as handing them to the
  // pool would cost more than it saves.
  double mean_entries = 0;
  for (int64_t i = 0; i < ntrain; ++i) mean_entries += views[i].n;
  mean_entries /= static_cast<double>(ntrain);
  const double work_per_example = (2 * mean_entries + 2) * W * 2 + 3.0 * H * E;

  for (int epoch = 0; epoch < opts.epochs; ++epoch) {
    for (int64_t i = ntrain - 1; i > 0; --i)
      std::swap(order[i], order[SplitMix64(shuffle_rng) % static_cast<uint64_t>(i + 1)]);
    for (int64_t start = 0; start < ntrain; start += opts.batch_size) {
      const int64_t end = std::min(ntrain, start + opts.batch_size);
      const int64_t bsize = end - start;
      // Gradients of the batch's log loss, one shard per contiguous slice.
      const bool split = work_per_example * static_cast<double>(bsize) > 1e6;
      parallel(kShards, split ? 1 : kShards, [&](int64_t s_begin, int64_t s_end) {
        for (int64_t s = s_begin; s < s_end; ++s) {
          Shard& sh = shards[s];
          float* h = sh.h.data();
          float* p = sh.p.data();
          float* dh = sh.dh.data();
          const int64_t lo = start + bsize * s / kShards;
          const int64_t hi = start + bsize * (s + 1) / kShards;
          for (int64_t j = lo; j < hi; ++j) {
            const int64_t ex = order[j];
            const View& vw = views[ex];
            o.Forward(vw.ids, vw.lps, vw.n, h, p);
            kernels::Softmax(p, E);
            p[labels[ex]] -= 1.f;  // d(loss)/d(score) = probabilities - one-hot
            if (H == 0) {
              std::copy(p, p + E, dh);
            } else {
              for (int e = 0; e < E; ++e) sh.out_bias[e] += p[e];
              for (int d = 0; d < H; ++d) {
                if (h[d] <= 0.f) {
                  dh[d] = 0.f;
                  continue;
                }
                Axpy(h[d], p, sh.out.data() + static_cast<size_t>(d) * E, E);
                dh[d] = Dot(o.out_.data() + static_cast<size_t>(d) * E, p, E);
              }
            }
            for (int d = 0; d < W; ++d) sh.embed_bias[d] += dh[d];
            ForEachFeature(design, V, vw.ids, vw.lps, vw.n, [&](int64_t row, float value) {
              if (!sh.mark[row]) {
                sh.mark[row] = 1;
                sh.touched.push_back(row);
              }
              Axpy(value, dh, sh.grad.data() + row * W, W);
            });
          }
        }
      });

      // One Adam step; the learning rate decays linearly to a tenth.
      ++step;
      const double lr =
          opts.learning_rate *
          (1.0 - 0.9 * static_cast<double>(step - 1) / std::max<int64_t>(1, total_steps - 1));
      const double c1 = 1.0 - std::pow(0.9, static_cast<double>(step));
      const double c2 = 1.0 - std::pow(0.999, static_cast<double>(step));
      const AdamStep adam{0.9f, 0.999f, 1e-8f, static_cast<float>(lr * std::sqrt(c2) / c1)};
      const float inv_b = 1.f / static_cast<float>(bsize);
      const float l2 = static_cast<float>(opts.l2);

      // union_mark[r] gets bit s for each shard s that touched row r.
      union_rows.clear();
      for (int s = 0; s < kShards; ++s) {
        Shard& sh = shards[s];
        for (int64_t r : sh.touched) {
          sh.mark[r] = 0;
          if (!union_mark[r]) union_rows.push_back(r);
          union_mark[r] |= static_cast<uint8_t>(1u << s);
        }
        sh.touched.clear();
      }
      // Rows are independent, so any split over threads gives the same
      // result. Each row's gradient is the shards' sum in shard order.
      parallel(static_cast<int64_t>(union_rows.size()), std::max(1, 16384 / W),
               [&](int64_t a, int64_t b) {
                 float g[kMaxWidth];  // [W]
                 for (int64_t u = a; u < b; ++u) {
                   const int64_t r = union_rows[u];
                   const size_t at = static_cast<size_t>(r) * W;
                   std::fill(g, g + W, 0.f);
                   for (int s = 0; s < kShards; ++s) {
                     if (!(union_mark[r] & (1u << s))) continue;  // zero there
                     float* sg = shards[s].grad.data() + at;
                     Axpy(1.f, sg, g, W);
                     std::fill(sg, sg + W, 0.f);
                   }
                   union_mark[r] = 0;
                   AdamUpdate(adam, inv_b, l2, g,
                              o.embed_.data() + at, m_embed.data() + at, v_embed.data() + at, W);
                 }
               });
      auto dense_step = [&](std::vector<float>& w, std::vector<float>& m, std::vector<float>& v,
                            std::vector<float> Shard::*grad, float decay) {
        std::vector<float> g(w.size(), 0.f);
        for (Shard& sh : shards) {
          std::vector<float>& sg = sh.*grad;
          Axpy(1.f, sg.data(), g.data(), static_cast<int>(g.size()));
          std::fill(sg.begin(), sg.end(), 0.f);
        }
        AdamUpdate(adam, inv_b, decay, g.data(), w.data(), m.data(), v.data(),
                   static_cast<int>(w.size()));
      };
      dense_step(o.embed_bias_, m_ebias, v_ebias, &Shard::embed_bias, 0.f);
      dense_step(o.out_, m_out, v_out, &Shard::out, l2);
      dense_step(o.out_bias_, m_obias, v_obias, &Shard::out_bias, 0.f);
    }
  }

  // Accuracy on both parts and the held-out log loss. Examples are
  // independent; per-part sums added in part order keep the result the same
  // for any thread count.
  auto evaluate = [&](int64_t lo, int64_t hi, int64_t* correct, double* loss) {
    constexpr int kParts = 64;
    std::vector<int64_t> c(kParts, 0);
    std::vector<double> l(kParts, 0.0);
    parallel(kParts, 1, [&](int64_t pa, int64_t pb) {
      std::vector<float> h(W), p(E);
      for (int64_t part = pa; part < pb; ++part) {
        const int64_t a = lo + (hi - lo) * part / kParts, b = lo + (hi - lo) * (part + 1) / kParts;
        for (int64_t i = a; i < b; ++i) {
          o.Forward(views[i].ids, views[i].lps, views[i].n, h.data(), p.data());
          kernels::Softmax(p.data(), E);
          c[part] += ArgMax(p.data(), E) == labels[i];
          l[part] -= std::log(std::max(p[labels[i]], 1e-30f));
        }
      }
    });
    *correct = std::accumulate(c.begin(), c.end(), int64_t{0});
    *loss = std::accumulate(l.begin(), l.end(), 0.0);
  };
  int64_t train_correct = 0, held_correct = 0;
  double train_loss = 0, held_loss = 0;
  evaluate(0, ntrain, &train_correct, &train_loss);
  evaluate(ntrain, total, &held_correct, &held_loss);

  std::vector<int64_t> counts(E, 0);
  for (int64_t i = 0; i < ntrain; ++i) ++counts[labels[i]];
  const int prior =
      static_cast<int>(std::max_element(counts.begin(), counts.end()) - counts.begin());
  int64_t prior_correct = 0;
  for (int64_t i = ntrain; i < total; ++i) prior_correct += labels[i] == prior;

  OracleInfo& inf = o.info_;
  inf.train_examples = ntrain;
  inf.heldout_examples = heldout;
  inf.train_accuracy = static_cast<double>(train_correct) / ntrain;
  inf.heldout_accuracy = heldout ? static_cast<double>(held_correct) / heldout : 0.0;
  inf.heldout_log_loss = heldout ? held_loss / heldout : 0.0;
  inf.heldout_prior_accuracy = heldout ? static_cast<double>(prior_correct) / heldout : 0.0;
  inf.epochs = opts.epochs;
  inf.learning_rate = opts.learning_rate;
  inf.l2 = opts.l2;
  inf.batch_size = opts.batch_size;
  inf.seed = opts.seed;
  return o;
}

// ---------------------------------------------------------------------------
// Files.

void ExpertOracle::Save(const std::string& path) const {
  const OracleInfo& i = info_;
  const int W = width();
  nlohmann::json tensors = nlohmann::json::array(
      {{{"name", "embed"}, {"shape", {rows_, W}}}, {{"name", "embed_bias"}, {"shape", {W}}}});
  if (i.hidden > 0) {
    tensors.push_back({{"name", "out"}, {"shape", {i.hidden, i.num_experts}}});
    tensors.push_back({{"name", "out_bias"}, {"shape", {i.num_experts}}});
  }
  const nlohmann::json meta = {
      {"format", "epwa-expert-oracle"},
      {"version", kFormatVersion},
      {"info",
       {{"router_hash", i.router_hash},
        {"router_layer", i.router_layer},
        {"num_experts", i.num_experts},
        {"vocab_size", i.vocab_size},
        {"top_k", i.top_k},
        {"corpus", i.corpus},
        {"features", i.features},
        {"hidden", i.hidden},
        {"train_examples", i.train_examples},
        {"heldout_examples", i.heldout_examples},
        {"train_accuracy", i.train_accuracy},
        {"heldout_accuracy", i.heldout_accuracy},
        {"heldout_log_loss", i.heldout_log_loss},
        {"heldout_prior_accuracy", i.heldout_prior_accuracy},
        {"epochs", i.epochs},
        {"learning_rate", i.learning_rate},
        {"l2", i.l2},
        {"batch_size", i.batch_size},
        {"seed", i.seed}}},
      {"tensors", tensors},
  };
  // Invalid UTF-8 in a free-text field would make dump() throw; replace it.
  const std::string json = meta.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::string bytes(kMagic, sizeof(kMagic));
  PutU64(bytes, json.size());
  bytes += json;
  PutFloats(bytes, embed_);
  PutFloats(bytes, embed_bias_);
  PutFloats(bytes, out_);
  PutFloats(bytes, out_bias_);
  bytes += Digest(bytes.data(), bytes.size());
  AtomicFile file(path);
  file.Write(bytes.data(), bytes.size());
  file.Commit();
}

ExpertOracle ExpertOracle::Load(const std::string& path) {
  // ReadRegularFile opens without blocking (a FIFO cannot hang detection)
  // and refuses folders and devices. The limit is far above a real oracle
  // (a 150k-token vocabulary with 64 hidden units is ~120 MB) and still
  // below what would exhaust a detector's memory.
  constexpr uint64_t kMaxOracleFileBytes = 4ull << 30;
  return FromBytes(ReadRegularFile(path, kMaxOracleFileBytes, "the expert oracle file"), path);
}

ExpertOracle ExpertOracle::FromBytes(const std::string& data, const std::string& path) {
  const std::string where = "expert oracle file '" + path + "'";
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  const size_t size = data.size();

  Require(size >= sizeof(kMagic) && std::memcmp(p, kMagic, sizeof(kMagic)) == 0,
          where + " does not start with the magic \"EPWORCL1\", so it is no expert oracle");
  Require(size >= kHeaderBytes, where + " is truncated inside its header");
  const uint64_t json_len = GetU64(p + sizeof(kMagic));
  Require(json_len <= size - kHeaderBytes,
          where + " is truncated: its metadata needs " + std::to_string(json_len) +
              " bytes but only " + std::to_string(size - kHeaderBytes) + " follow the header");
  const nlohmann::json meta =
      nlohmann::json::parse(data.begin() + kHeaderBytes, data.begin() + kHeaderBytes + json_len,
                            nullptr, /*allow_exceptions=*/false);
  Require(!meta.is_discarded() && meta.is_object(),
          where + " has metadata that is not a valid JSON object");

  Require(StringField(meta, "format", path) == "epwa-expert-oracle",
          where + " has metadata of another format than \"epwa-expert-oracle\"");
  const int64_t version = IntField(meta, "version", 0, INT32_MAX, path);
  Require(version == kFormatVersion, where + " has format version " + std::to_string(version) +
                                         ", but this build reads version " +
                                         std::to_string(kFormatVersion));

  ExpertOracle o;
  const nlohmann::json& ij = Field(meta, "info", path);
  Require(ij.is_object(), where + " has an \"info\" entry that is not an object");
  OracleInfo& i = o.info_;
  i.router_hash = StringField(ij, "router_hash", path);
  i.router_layer = static_cast<int>(IntField(ij, "router_layer", INT32_MIN, INT32_MAX, path));
  i.num_experts = static_cast<int>(IntField(ij, "num_experts", 2, kMaxExperts, path));
  i.vocab_size = static_cast<int>(IntField(ij, "vocab_size", 1, kMaxVocab, path));
  i.top_k = static_cast<int>(IntField(ij, "top_k", 1, std::min(i.vocab_size, kMaxTopK), path));
  i.corpus = StringField(ij, "corpus", path);
  i.features = StringField(ij, "features", path);
  i.hidden = static_cast<int>(IntField(ij, "hidden", 0, kMaxWidth, path));
  i.train_examples = IntField(ij, "train_examples", 0, INT64_MAX, path);
  i.heldout_examples = IntField(ij, "heldout_examples", 0, INT64_MAX, path);
  i.train_accuracy = DoubleField(ij, "train_accuracy", path);
  i.heldout_accuracy = DoubleField(ij, "heldout_accuracy", path);
  i.heldout_log_loss = DoubleField(ij, "heldout_log_loss", path);
  i.heldout_prior_accuracy = DoubleField(ij, "heldout_prior_accuracy", path);
  i.epochs = static_cast<int>(IntField(ij, "epochs", 0, INT32_MAX, path));
  i.learning_rate = DoubleField(ij, "learning_rate", path);
  i.l2 = DoubleField(ij, "l2", path);
  i.batch_size = static_cast<int>(IntField(ij, "batch_size", 0, INT32_MAX, path));
  i.seed = U64Field(ij, "seed", path);
  o.design_ = DesignFromName(i.features);
  Require(o.design_ >= 0, where + " uses the unknown feature design '" + i.features +
                              "' (this build knows " + DesignNames() + ")");

  // Exactly the tensors the design and hidden size imply, in file order.
  o.rows_ = DesignRows(o.design_, i.vocab_size);
  const int64_t W = o.width();
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors = {
      {"embed", {o.rows_, W}}, {"embed_bias", {W}}};
  if (i.hidden > 0) {
    expected_tensors.push_back({"out", {i.hidden, i.num_experts}});
    expected_tensors.push_back({"out_bias", {i.num_experts}});
  }
  const nlohmann::json& tensors = Field(meta, "tensors", path);
  Require(tensors.is_array() && tensors.size() == expected_tensors.size(),
          where + " must list " + std::to_string(expected_tensors.size()) +
              " tensors for its design");
  uint64_t floats = 0;
  for (size_t t = 0; t < expected_tensors.size(); ++t) {
    const auto& [name, shape] = expected_tensors[t];
    Require(StringField(tensors[t], "name", path) == name,
            where + " must list tensor \"" + name + "\" in place " + std::to_string(t));
    std::string dims;
    for (int64_t d : shape) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
    Require(ShapeOf(tensors[t], path) == shape,
            where + " has a tensor \"" + name + "\" whose shape is not the [" + dims +
                "] its design and vocabulary imply");
    // Dimensions are bounded (rows < 2^27, width <= 2^10), so no overflow.
    floats += static_cast<uint64_t>(std::accumulate(shape.begin(), shape.end(), int64_t{1},
                                                    std::multiplies<int64_t>()));
  }

  const uint64_t expected = kHeaderBytes + json_len + 4 * floats + kDigestBytes;
  Require(size >= expected, where + " is truncated: it has " + std::to_string(size) +
                                " bytes but its metadata describes " + std::to_string(expected));
  Require(size == expected, where + " has " + std::to_string(size - expected) +
                                " unexpected bytes after its checksum");
  Require(Digest(p, size - kDigestBytes) == std::string(data.end() - kDigestBytes, data.end()),
          where + " fails its SHA-256 checksum, so the file is corrupt");

  const unsigned char* wp = p + kHeaderBytes + json_len;
  auto take = [&](size_t count) {
    std::vector<float> v = GetFloats(wp, count);
    wp += 4 * count;
    return v;
  };
  o.embed_ = take(static_cast<size_t>(o.rows_) * W);
  o.embed_bias_ = take(W);
  if (i.hidden > 0) {
    o.out_ = take(static_cast<size_t>(i.hidden) * i.num_experts);
    o.out_bias_ = take(i.num_experts);
  }
  const std::vector<float> all = o.Parameters();
  Require(std::all_of(all.begin(), all.end(), [](float f) { return std::isfinite(f); }),
          where + " has a non-finite weight");
  return o;
}

}  // namespace epwa::wm
