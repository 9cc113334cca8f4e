// Group-wise quantized weights (Q8, Q4, NF4) on every instruction-set path
// this CPU supports: Quantize against the literal scalar reference, the
// reconstruction error against its theoretical bound, DequantizeRow against
// WeightView::At, and MatMul against a double-accumulating product of the
// dequantized weights, with a tolerance derived from the int8 activation
// quantization of the decode kernels.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "base/error.h"
#include "kernels/kernels.h"
#include "kernels/reference.h"
#include "kernels/scoped_isa_test_util.h"

namespace epwa::kernels {
namespace {

ThreadPool& TwoThreads() {
  static ThreadPool pool(2);
  return pool;
}

constexpr DType kQuantTypes[] = {DType::kQ8, DType::kQ4, DType::kNF4};

// A float matrix [rows, cols] stored in `dtype` two bytes past an aligned
// address, holding `values` rounded to the dtype.
struct FloatMatrix {
  std::vector<uint8_t> storage;
  WeightView view;
};

FloatMatrix MakeFloatMatrix(DType dtype, int64_t rows, int64_t cols, const std::vector<float>& values) {
  FloatMatrix m;
  const size_t elem = DTypeSize(dtype);
  m.storage.resize(2 + static_cast<size_t>(rows * cols) * elem);
  uint8_t* base = m.storage.data() + 2;
  for (int64_t i = 0; i < rows * cols; ++i) {
    const float v = values[static_cast<size_t>(i)];
    if (dtype == DType::kF32) {
      std::memcpy(base + 4 * i, &v, 4);
    } else {
      const uint16_t h = dtype == DType::kF16 ? F32ToF16(v) : F32ToBF16(v);
      std::memcpy(base + 2 * i, &h, 2);
    }
  }
  m.view = WeightView{dtype, base, rows, cols};
  return m;
}

// A quantized matrix. The codes start one byte past an aligned address and
// the buffers end exactly where the data does, so that misaligned access is
// exercised and over-reads show up in sanitizer builds.
struct QuantMatrix {
  std::vector<uint8_t> codes;
  std::vector<uint16_t> scales;
  WeightView view;
};

QuantMatrix EmptyQuantMatrix(DType dtype, int64_t rows, int64_t cols) {
  QuantMatrix q;
  q.codes.assign(1 + static_cast<size_t>(CodeRowBytes(dtype, cols) * rows), 0xee);
  q.scales.assign(static_cast<size_t>(rows * (cols / kQuantGroup)), 0xeeee);
  q.view = WeightView{dtype, q.codes.data() + 1, rows, cols, q.scales.data()};
  return q;
}

QuantMatrix ReferenceQuantize(const WeightView& src, DType dtype) {
  QuantMatrix q = EmptyQuantMatrix(dtype, src.rows, src.cols);
  reference::Quantize(src, dtype, q.codes.data() + 1, q.scales.data());
  return q;
}

std::vector<float> Gaussian(int64_t n, uint32_t seed, float sigma = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, sigma);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = dist(rng);
  return v;
}

// Rows of 32-element groups chosen to hit the edge cases of the scale and
// rounding rules, followed by random rows.
std::vector<float> EdgeValues(int64_t rows, int64_t cols, uint32_t seed) {
  std::vector<float> v = Gaussian(rows * cols, seed);
  std::mt19937 rng(seed + 1);
  std::uniform_real_distribution<float> uniform(-1.f, 1.f);
  const int64_t groups = rows * cols / 32;
  for (int64_t g = 0; g < groups; ++g) {
    float* x = v.data() + g * 32;
    switch (g % 12) {
      case 0: std::fill(x, x + 32, 0.f); break;                              // All zero.
      case 1: x[7] = 1000.f; break;                                          // One huge outlier.
      case 2: x[31] = -1000.f; break;                                        // A negative outlier.
      case 3: x[3] = -5.f; x[4] = 5.f; break;                                // Extremes of both signs.
      case 4: for (int j = 0; j < 32; ++j) x[j] *= 1e-6f; break;             // fp16-subnormal scales.
      case 5: for (int j = 0; j < 32; ++j) x[j] *= 1e-9f; break;             // Below fp16's range.
      case 6: for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j - 16) * 0.25f; break;  // Exact levels.
      case 7: for (int j = 0; j < 32; ++j) x[j] = -std::fabs(x[j]); break;   // All negative.
      case 8: for (int j = 0; j < 32; ++j) x[j] = uniform(rng) * 60000.f; break;  // Near fp16's top.
      case 9: std::fill(x, x + 32, -0.f); x[5] = 0.f; break;                 // Signed zeros.
      case 10: for (int j = 0; j < 32; ++j) x[j] = (j % 2 ? 1.f : -1.f) * (0.5f + j); break;
      default: break;
    }
  }
  return v;
}

// ---------------------------------------------------------------------------
// Quantize: identical codes and scales on every path.

using QuantizeParam = std::tuple<Isa, DType, DType>;  // ISA, source dtype, target dtype.

class QuantizeTest : public ::testing::TestWithParam<QuantizeParam> {};

TEST_P(QuantizeTest, MatchesReferenceExactly) {
  const auto [isa, source, target] = GetParam();
  ScopedIsa scoped(isa);
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{12, 32}, {7, 96}, {24, 512}, {3, 2048}}) {
    const FloatMatrix src = MakeFloatMatrix(source, rows, cols, EdgeValues(rows, cols, static_cast<uint32_t>(cols)));
    const QuantMatrix want = ReferenceQuantize(src.view, target);
    QuantMatrix got = EmptyQuantMatrix(target, rows, cols);
    Quantize(src.view, target, got.codes.data() + 1, got.scales.data(), TwoThreads());
    ASSERT_EQ(got.scales, want.scales) << rows << "x" << cols;
    ASSERT_EQ(got.codes, want.codes) << rows << "x" << cols;
  }
}

std::string QuantizeName(const ::testing::TestParamInfo<QuantizeParam>& info) {
  const auto [isa, source, target] = info.param;
  return std::string(IsaName(isa)) + "_" + DTypeName(source) + "_to_" + DTypeName(target);
}

INSTANTIATE_TEST_SUITE_P(AllPaths, QuantizeTest,
                         ::testing::Combine(::testing::ValuesIn(SupportedIsas()),
                                            ::testing::Values(DType::kF32, DType::kF16, DType::kBF16),
                                            ::testing::ValuesIn(kQuantTypes)),
                         QuantizeName);

// Known values, worked out by hand from the rules in tensor/dtype.h.
TEST(QuantizeRules, WorkedExamples) {
  std::vector<float> x(32, 0.f);
  x[0] = 2.f;
  x[1] = -1.f;
  x[16] = 0.5f;
  const FloatMatrix src = MakeFloatMatrix(DType::kF32, 1, 32, x);
  // Q4: the element of largest magnitude is +2, so the scale is 2 / -8 =
  // -0.25 and 2 maps to level -8 (nibble 0) exactly; -1 to level 4 (nibble
  // 12); 0.5 to level -2 (nibble 6); zeros to nibble 8.
  const QuantMatrix q4 = ReferenceQuantize(src.view, DType::kQ4);
  EXPECT_EQ(F16ToF32(q4.scales[0]), -0.25f);
  EXPECT_EQ(q4.view.Row(0)[0], 0x60);  // Element 0 in the low nibble, element 16 in the high one.
  EXPECT_EQ(q4.view.Row(0)[1], 0x8c);
  EXPECT_EQ(q4.view.At(0, 0), 2.f);
  EXPECT_EQ(q4.view.At(0, 1), -1.f);
  EXPECT_EQ(q4.view.At(0, 16), 0.5f);
  EXPECT_EQ(q4.view.At(0, 2), 0.f);
  // NF4: scale 2 (exact in fp16); 2 -> 1.0 (nibble 15), -1 -> -0.5 whose
  // nearest level is -0.5250730514526367 (nibble 2), 0.5 -> 0.25 whose
  // nearest level is 0.24611230194568634 (nibble 10), 0 -> nibble 7.
  const QuantMatrix nf4 = ReferenceQuantize(src.view, DType::kNF4);
  EXPECT_EQ(F16ToF32(nf4.scales[0]), 2.f);
  EXPECT_EQ(nf4.view.Row(0)[0], 0xaf);
  EXPECT_EQ(nf4.view.Row(0)[1], 0x72);
  // Q8: scale 2 / 127 rounded up to fp16.
  const QuantMatrix q8 = ReferenceQuantize(src.view, DType::kQ8);
  EXPECT_GE(F16ToF32(q8.scales[0]), 2.f / 127.f);
  EXPECT_EQ(static_cast<int8_t>(q8.view.Row(0)[0]), 127);
}

// ---------------------------------------------------------------------------
// Reconstruction error against the bounds the rules imply.

// The largest gap between consecutive NF4 levels (between 0.7229568 and 1).
double NF4MaxGap() {
  double gap = 0.0;
  for (int i = 0; i < 15; ++i) gap = std::max(gap, static_cast<double>(kNF4Codebook[i + 1] - kNF4Codebook[i]));
  return gap;
}

TEST(QuantizeRules, ErrorWithinTheoreticalBound) {
  const int64_t rows = 64, cols = 1024;
  for (uint32_t seed : {1u, 2u}) {
    std::vector<float> values = EdgeValues(rows, cols, seed);
    const FloatMatrix src = MakeFloatMatrix(DType::kF32, rows, cols, values);
    for (DType target : kQuantTypes) {
      QuantMatrix q = EmptyQuantMatrix(target, rows, cols);
      Quantize(src.view, target, q.codes.data() + 1, q.scales.data(), TwoThreads());
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) {
          const double x = values[static_cast<size_t>(r * cols + c)];
          const double signed_scale = F16ToF32(q.scales[static_cast<size_t>(r * (cols / 32) + c / 32)]);
          const double s = std::fabs(signed_scale);
          const double err = std::fabs(x - q.view.At(r, c));
          // x * (1 / s) is rounded twice in float (relative 2^-23 each).
          const double slack = 1e-6 * std::fabs(x) + 1e-6 * s;
          double bound = s / 2;  // Round to nearest on a uniform grid of step s.
          if (target == DType::kQ4 && x / signed_scale > 7.5) bound = s;  // -m clips to level 7 (Q4_0 rule).
          if (target == DType::kNF4) bound = s * NF4MaxGap() / 2;  // Nearest of the codebook levels.
          ASSERT_LE(err, bound + slack) << DTypeName(target) << " r=" << r << " c=" << c << " x=" << x
                                        << " scale=" << s;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// DequantizeRow == WeightView::At, bit for bit.

class QuantIsaTest : public PerIsaTest {};

TEST_P(QuantIsaTest, DequantizeRowMatchesAt) {
  const int64_t rows = 5, cols = 608;
  const FloatMatrix src = MakeFloatMatrix(DType::kBF16, rows, cols, EdgeValues(rows, cols, 3));
  for (DType target : kQuantTypes) {
    const QuantMatrix q = ReferenceQuantize(src.view, target);
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<float> out(static_cast<size_t>(cols) + 1, 42.f);
      DequantizeRow(q.view, r, out.data());
      for (int64_t c = 0; c < cols; ++c) ASSERT_EQ(out[c], q.view.At(r, c)) << DTypeName(target) << " " << r << " " << c;
      EXPECT_EQ(out[cols], 42.f) << "DequantizeRow wrote past the end";
    }
  }
  // Float dtypes go through ConvertToF32.
  std::vector<float> out(static_cast<size_t>(cols));
  DequantizeRow(src.view, 2, out.data());
  for (int64_t c = 0; c < cols; ++c) ASSERT_EQ(out[c], src.view.At(2, c));
}

// ---------------------------------------------------------------------------
// MatMul.

// The tolerance for y[m, n] against the double-accumulated product of x and
// the dequantized weights (reference::MatMul):
//
// * Every path: 1e-5 * sum_k |x[m, k] w[n, k]|, float accumulation as for the
//   float dtypes (kernels_test.cc).
// * Integer decode paths: the activation row is quantized per group g with
//   s_x[g] = max_{k in g} |x[k]| / 127 and rounded to nearest, so each x[k]
//   moves by at most s_x[g] / 2 and the product by at most
//   sum_g (s_x[g] / 2) * sum_{k in g} |w[n, k]|. The integer products are
//   exact; the float steps (s_w * s_x, the int-to-float sums) are covered by
//   the first term; the factor 1.001 covers x * (127 / max) being rounded in
//   float before rne.
// * NF4 integer decode: the kernels use round(codebook * 127) / 127, which
//   moves each weight by at most |s_w[g]| / 254, adding
//   sum_g (|s_w[g]| / 254) * sum_{k in g} |x[k]|.
//
// The scalar path and every path with float activations dequantize exactly
// and are held to the first term alone (ExactQuantPath); the integer paths
// (AVX-512 and AVX2 decode and prefill) are allowed the activation and level
// terms.
void ExpectQuantMatMulClose(const float* x, int64_t M, const WeightView& w, const std::vector<float>& y,
                            bool exact_weights, const std::string& what) {
  const int64_t N = w.rows, K = w.cols, G = K / 32;
  std::vector<float> want(static_cast<size_t>(M * N));
  reference::MatMul(x, M, w, want.data());
  std::vector<float> wf(static_cast<size_t>(N * K));  // [N, K] dequantized
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) wf[static_cast<size_t>(n * K + k)] = w.At(n, k);
  int failures = 0;
  for (int64_t m = 0; m < M && failures < 5; ++m) {
    const float* xm = x + m * K;
    for (int64_t n = 0; n < N && failures < 5; ++n) {
      const float* wn = wf.data() + n * K;
      double magnitude = 0.0, activation = 0.0, levels = 0.0;
      for (int64_t g = 0; g < G; ++g) {
        double xmax = 0.0, wsum = 0.0, xsum = 0.0;
        for (int64_t k = g * 32; k < g * 32 + 32; ++k) {
          magnitude += std::fabs(static_cast<double>(xm[k]) * wn[k]);
          xmax = std::max(xmax, static_cast<double>(std::fabs(xm[k])));
          wsum += std::fabs(wn[k]);
          xsum += std::fabs(xm[k]);
        }
        activation += xmax / 127.0 / 2.0 * wsum;
        if (w.dtype == DType::kNF4) levels += std::fabs(F16ToF32(w.F16ScaleRow(n)[g])) / 254.0 * xsum;
      }
      double tolerance = 1e-5 * magnitude + 1e-30;
      if (!exact_weights) tolerance += 1.001 * activation + 1.001 * levels;
      const float got = y[static_cast<size_t>(m * N + n)], ref = want[static_cast<size_t>(m * N + n)];
      if (!(std::fabs(got - ref) <= tolerance)) {
        ADD_FAILURE() << what << " y[" << m << ", " << n << "] = " << got << ", reference " << ref
                      << ", tolerance " << tolerance << " (magnitude " << magnitude << ")";
        ++failures;
      }
    }
  }
}

using QuantMatMulParam = std::tuple<Isa, DType, int, int>;  // ISA, dtype, shape index, M.

constexpr std::pair<int64_t, int64_t> kShapes[] = {
    {33, 32},    // N, K: a single group per row.
    {129, 96},   // Three groups: an odd last pair; rows in groups of 4 plus a tail.
    {17, 544},   // 17 groups: more than one block of 16 groups.
    {7, 2048},   // Long rows.
};

class QuantMatMulTest : public ::testing::TestWithParam<QuantMatMulParam> {};

TEST_P(QuantMatMulTest, MatchesDequantizedReference) {
  const auto [isa, dtype, shape, M] = GetParam();
  const auto [N, K] = kShapes[shape];
  ScopedIsa scoped(isa);
  const FloatMatrix src = MakeFloatMatrix(DType::kBF16, N, K, Gaussian(N * K, static_cast<uint32_t>(N * K + M), 0.05f));
  const QuantMatrix q = ReferenceQuantize(src.view, dtype);
  std::vector<float> x = Gaussian(M * K, static_cast<uint32_t>(M + 17));
  x[0] = 9.f;  // One large activation, which coarsens its group's int8 grid.
  std::vector<float> y(static_cast<size_t>(M * N), std::numeric_limits<float>::quiet_NaN());
  MatMul(x.data(), M, q.view, y.data(), TwoThreads());
  ExpectQuantMatMulClose(x.data(), M, q.view, y, ExactQuantPath(isa), "");
  // With float activations every row count equals the dequantized product.
  ScopedFloatActivations exact;
  std::fill(y.begin(), y.end(), std::numeric_limits<float>::quiet_NaN());
  MatMul(x.data(), M, q.view, y.data(), TwoThreads());
  ExpectQuantMatMulClose(x.data(), M, q.view, y, true, "float activations");
}

std::string QuantMatMulName(const ::testing::TestParamInfo<QuantMatMulParam>& info) {
  const auto [isa, dtype, shape, M] = info.param;
  const auto [N, K] = kShapes[shape];
  return std::string(IsaName(isa)) + "_" + DTypeName(dtype) + "_N" + std::to_string(N) + "_K" + std::to_string(K) +
         "_M" + std::to_string(M);
}

INSTANTIATE_TEST_SUITE_P(Shapes, QuantMatMulTest,
                         ::testing::Combine(::testing::ValuesIn(SupportedIsas()), ::testing::ValuesIn(kQuantTypes),
                                            ::testing::Values(0, 1, 2, 3),
                                            ::testing::Values(1, 2, 3, 4, 5, 8, 9, 11, 17, 64, 130)),
                         QuantMatMulName);

// The integer decode error is real but small: on Gaussian data it stays well
// inside the bound above, and far below the weight quantization error itself.
TEST_P(QuantIsaTest, DecodeErrorIsSmallOnTypicalData) {
  const int64_t N = 256, K = 1024;
  const FloatMatrix src = MakeFloatMatrix(DType::kF32, N, K, Gaussian(N * K, 9, 0.02f));
  const std::vector<float> x = Gaussian(K, 10);
  for (DType dtype : kQuantTypes) {
    const QuantMatrix q = ReferenceQuantize(src.view, dtype);
    std::vector<float> y(N), want(N);
    MatMul(x.data(), 1, q.view, y.data(), TwoThreads());
    reference::MatMul(x.data(), 1, q.view, want.data());
    double err = 0.0, norm = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      err += (y[n] - want[n]) * (y[n] - want[n]);
      norm += want[n] * want[n];
    }
    EXPECT_LT(std::sqrt(err / norm), 0.01) << DTypeName(dtype);
  }
}

// Each output element is computed by the same instruction sequence whichever
// thread owns it, so the result must not depend on the thread count.
TEST_P(QuantIsaTest, MatMulIsIndependentOfThreadCount) {
  ThreadPool one(1), three(3);
  const int64_t N = 301, K = 352;
  const FloatMatrix src = MakeFloatMatrix(DType::kBF16, N, K, Gaussian(N * K, 5));
  for (DType dtype : kQuantTypes) {
    const QuantMatrix q = ReferenceQuantize(src.view, dtype);
    for (int64_t M : {1, 3, 6, 37}) {
      const std::vector<float> x = Gaussian(M * K, 6);
      std::vector<float> y1(static_cast<size_t>(M * N));
      MatMul(x.data(), M, q.view, y1.data(), one);
      // Nor on how many chunks the decode regions are cut into.
      for (int chunks : {1, 3, internal::kDefaultDecodeChunksPerThread, 8}) {
        const ScopedDecodeChunks cut(chunks);
        std::vector<float> y3(y1.size()), many(2 * y1.size());
        MatMul(x.data(), M, q.view, y3.data(), three);
        const std::vector<MatMulJob> jobs = {{x.data(), M, &q.view, many.data()},
                                             {x.data(), M, &q.view, many.data() + y1.size()}};
        MatMulMany(jobs, three);
        EXPECT_EQ(y1, y3) << DTypeName(dtype) << " M=" << M << " chunks=" << chunks;
        EXPECT_TRUE(std::equal(y1.begin(), y1.end(), many.begin()) && std::equal(y1.begin(), y1.end(), many.begin() + y1.size()))
            << DTypeName(dtype) << " M=" << M << " chunks=" << chunks << " (MatMulMany)";
      }
    }
    // Quantize too.
    QuantMatrix a = EmptyQuantMatrix(dtype, N, K), b = EmptyQuantMatrix(dtype, N, K);
    Quantize(src.view, dtype, a.codes.data() + 1, a.scales.data(), one);
    Quantize(src.view, dtype, b.codes.data() + 1, b.scales.data(), three);
    EXPECT_EQ(a.codes, b.codes);
    EXPECT_EQ(a.scales, b.scales);
  }
}

// Under ScopedRowInvariantMatMul a row's output is the same bits alone or
// among 13 rows, with int8 or float activations (see kernels.h).
TEST_P(QuantIsaTest, RowInvariantMatMulGivesEachRowTheSameBits) {
  const int64_t M = 13, N = 70, K = 96;
  const FloatMatrix src = MakeFloatMatrix(DType::kBF16, N, K, Gaussian(N * K, 41));
  const std::vector<float> x = Gaussian(M * K, 42);
  for (bool float_x : {false, true}) {
    std::optional<ScopedFloatActivations> exact;
    if (float_x) exact.emplace();
    for (DType dtype : kQuantTypes) {
      const QuantMatrix q = ReferenceQuantize(src.view, dtype);
      const ScopedRowInvariantMatMul invariant;
      std::vector<float> all(static_cast<size_t>(M * N)), one(static_cast<size_t>(N));
      MatMul(x.data(), M, q.view, all.data(), TwoThreads());
      for (int64_t m = 0; m < M; m += 3) {
        MatMul(x.data() + m * K, 1, q.view, one.data(), TwoThreads());
        EXPECT_TRUE(std::equal(one.begin(), one.end(), all.begin() + m * N))
            << DTypeName(dtype) << " row " << m << (float_x ? " float activations" : "");
        // MatMulMany too, as scoring's grouped experts take it: the 13 rows
        // in one job, row m alone in another and rows m.. in a third.
        const int64_t rest = M - m;
        std::vector<float> many(static_cast<size_t>((M + 1 + rest) * N), std::numeric_limits<float>::quiet_NaN());
        const std::vector<MatMulJob> jobs = {{x.data(), M, &q.view, many.data()},
                                             {x.data() + m * K, 1, &q.view, many.data() + M * N},
                                             {x.data() + m * K, rest, &q.view, many.data() + (M + 1) * N}};
        MatMulMany(jobs, TwoThreads());
        EXPECT_TRUE(std::equal(all.begin(), all.end(), many.begin())) << DTypeName(dtype) << " row " << m;
        EXPECT_TRUE(std::equal(one.begin(), one.end(), many.begin() + M * N)) << DTypeName(dtype) << " row " << m;
        EXPECT_TRUE(std::equal(all.begin() + m * N, all.end(), many.begin() + (M + 1) * N))
            << DTypeName(dtype) << " row " << m;
      }
    }
  }
}

// MatMulMany gives every quantized job exactly MatMul's result, with int8 or
// float activations. Jobs 3-5 reuse an earlier job's x, as q, k and v or an
// expert's gate and up do: job 3 with the same rows and width (quantized
// once for both), job 4 with the same pointer read as a narrower matrix, and
// job 5 with fewer of its rows, neither of which may share the quantized x.
// The second set of row counts stays within every path's fused decode (AVX2
// decodes up to 4 rows of x); the first goes beyond it.
TEST_P(QuantIsaTest, MatMulManyEqualsEachMatMul) {
  const FloatMatrix s1 = MakeFloatMatrix(DType::kBF16, 70, 96, Gaussian(70 * 96, 61));
  const FloatMatrix s2 = MakeFloatMatrix(DType::kBF16, 129, 544, Gaussian(129 * 544, 62));
  constexpr int kJobs = 6;
  const std::vector<std::array<int64_t, kJobs>> row_sets = {{1, 5, 8, 5, 5, 3}, {1, 4, 3, 4, 4, 2}};
  for (bool float_x : {false, true}) {
    std::optional<ScopedFloatActivations> exact;
    if (float_x) exact.emplace();
    for (DType dtype : kQuantTypes) {
      for (const std::array<int64_t, kJobs>& rows : row_sets) {
        const QuantMatrix q1 = ReferenceQuantize(s1.view, dtype),
                          q2 = ReferenceQuantize(s2.view, dtype);
        const WeightView* ws[kJobs] = {&q1.view, &q2.view, &q1.view, &q2.view, &q1.view, &q1.view};
        const int x_of[kJobs] = {0, 1, 2, 1, 1, 2};  // which job's x each job reads
        std::vector<std::vector<float>> xs, got, want;
        std::vector<MatMulJob> jobs;
        for (int j = 0; j < 3; ++j)
          xs.push_back(Gaussian(rows[j] * ws[j]->cols, static_cast<uint32_t>(70 + j)));
        for (int j = 0; j < kJobs; ++j) {
          got.emplace_back(static_cast<size_t>(rows[j] * ws[j]->rows));
          want.emplace_back(got.back().size());
        }
        for (int j = 0; j < kJobs; ++j)
          jobs.push_back({xs[x_of[j]].data(), rows[j], ws[j], got[j].data()});
        MatMulMany(jobs, TwoThreads());
        for (int j = 0; j < kJobs; ++j) {
          MatMul(xs[x_of[j]].data(), rows[j], *ws[j], want[j].data(), TwoThreads());
          EXPECT_EQ(got[j], want[j]) << DTypeName(dtype) << " job " << j << " rows " << rows[j]
                                     << (float_x ? " float activations" : "");
        }
      }
    }
  }
}

// An MoE layer's prefill through MatMulMany: many experts, each with the
// handful of rows routed to it (decode-sized and prefill-sized mixed), gate
// and up sharing their x, and the down products after; every job gets
// exactly MatMul's result, with int8 or float activations. A job beyond the
// many-job prefill's limits (more rows than it packs at once) sends the whole
// call through MatMul one job at a time, with the same results.
TEST_P(QuantIsaTest, MatMulManyPrefillEqualsEachMatMul) {
  // Gate and up rows long enough (2048) for the AVX-512 decode's passes up
  // to 13 rows of x (UsesDecode), down's short (544).
  constexpr int64_t kHidden = 2048;
  const FloatMatrix gate_src = MakeFloatMatrix(DType::kBF16, 70, kHidden, Gaussian(70 * kHidden, 81));
  const FloatMatrix up_src = MakeFloatMatrix(DType::kBF16, 129, kHidden, Gaussian(129 * kHidden, 82));
  const FloatMatrix down_src = MakeFloatMatrix(DType::kBF16, kHidden, 544, Gaussian(kHidden * 544, 83));
  for (bool float_x : {false, true}) {
    std::optional<ScopedFloatActivations> exact;
    if (float_x) exact.emplace();
    for (DType dtype : kQuantTypes) {
      const QuantMatrix gate = ReferenceQuantize(gate_src.view, dtype), up = ReferenceQuantize(up_src.view, dtype),
                        down = ReferenceQuantize(down_src.view, dtype);
      for (const std::vector<int64_t>& expert_rows :
           {std::vector<int64_t>{9, 1, 16, 3, 33, 8, 12, 40, 2, 17, 10, 11, 13}, {300, 4, 20}}) {
        std::vector<std::vector<float>> xs, got, want;
        std::vector<MatMulJob> jobs;
        xs.reserve(2 * expert_rows.size());
        got.reserve(3 * expert_rows.size());
        for (size_t e = 0; e < expert_rows.size(); ++e) {
          const int64_t M = expert_rows[e];
          xs.push_back(Gaussian(M * kHidden, static_cast<uint32_t>(90 + e)));   // the expert's rows of x
          xs.push_back(Gaussian(M * 544, static_cast<uint32_t>(190 + e)));  // its activated gate, for down
          for (const WeightView* w : {&gate.view, &up.view}) {
            got.emplace_back(static_cast<size_t>(M * w->rows), std::numeric_limits<float>::quiet_NaN());
            jobs.push_back({xs[2 * e].data(), M, w, got.back().data()});
          }
          got.emplace_back(static_cast<size_t>(M * kHidden), std::numeric_limits<float>::quiet_NaN());
          jobs.push_back({xs[2 * e + 1].data(), M, &down.view, got.back().data()});
        }
        // Gate and up of every expert in one call, then the down products in another.
        std::vector<MatMulJob> first, second;
        for (size_t j = 0; j < jobs.size(); ++j) (j % 3 == 2 ? second : first).push_back(jobs[j]);
        // Grouped in shared parallel regions where the integer prefill runs
        // (AVX2; AVX-512 with VNNI), unless an expert has more rows than one
        // pass of the prefill takes (300); else one by one.
        const bool can_group = expert_rows[0] != 300 && (GetParam() == Isa::kAvx2 ||
                                                          (GetParam() == Isa::kAvx512 && internal::HasAvx512Vnni()));
        for (const std::vector<MatMulJob>* part : {&first, &second}) {
          const bool grouped = internal::MatMulManyFused(*part, TwoThreads());
          EXPECT_EQ(grouped, can_group) << DTypeName(dtype) << (float_x ? " float activations" : "");
          if (!grouped) MatMulMany(*part, TwoThreads());
        }
        for (size_t j = 0; j < jobs.size(); ++j) {
          want.emplace_back(got[j].size());
          MatMul(jobs[j].x, jobs[j].M, *jobs[j].w, want.back().data(), TwoThreads());
          EXPECT_EQ(got[j], want.back()) << DTypeName(dtype) << " job " << j << " rows " << jobs[j].M
                                         << (float_x ? " float activations" : "");
        }
      }
    }
  }
}

// Prefill over several cache blocks in every dimension.
TEST_P(QuantIsaTest, MatMulLargeBlockedShapes) {
  const int64_t M = 300, N = 600, K = 544;
  const FloatMatrix src = MakeFloatMatrix(DType::kBF16, N, K, Gaussian(N * K, 11));
  const std::vector<float> x = Gaussian(M * K, 12);
  for (DType dtype : kQuantTypes) {
    const QuantMatrix q = ReferenceQuantize(src.view, dtype);
    std::vector<float> y(static_cast<size_t>(M * N));
    MatMul(x.data(), M, q.view, y.data(), TwoThreads());
    ExpectQuantMatMulClose(x.data(), M, q.view, y, ExactQuantPath(GetParam()), DTypeName(dtype));
    ScopedFloatActivations exact;
    MatMul(x.data(), M, q.view, y.data(), TwoThreads());
    ExpectQuantMatMulClose(x.data(), M, q.view, y, true, std::string(DTypeName(dtype)) + " float activations");
  }
}

// The layout the model quantizes into, each row's scales after its codes
// (QuantizeWithScalesInRows): the same codes and scales as Quantize, every
// reader (At, DequantizeRow) and every product (decode, prefill, MatMulMany,
// with int8 or float activations, and the no-VNNI kernels on AVX-512) the
// same bits as with the scales in an array of their own. The buffer starts
// two bytes past an aligned address (the scales need 2-byte alignment; an
// odd address is refused) and ends where the matrix does.
TEST_P(QuantIsaTest, ScalesInRowsGiveTheSeparateLayoutsBits) {
  for (const auto& [N, K] : {std::pair<int64_t, int64_t>{37, 96}, {130, 544}, {24, 2080}}) {
    const FloatMatrix src = MakeFloatMatrix(DType::kBF16, N, K, EdgeValues(N, K, 17));
    for (DType dtype : kQuantTypes) {
      const std::string what = std::string(DTypeName(dtype)) + " [" + std::to_string(N) + ", " + std::to_string(K) + "]";
      QuantMatrix separate = EmptyQuantMatrix(dtype, N, K);
      Quantize(src.view, dtype, separate.codes.data() + 1, separate.scales.data(), TwoThreads());
      std::vector<uint8_t> buffer(2 + QuantizedBytes(dtype, N, K), 0xee);
      EXPECT_THROW(QuantizeWithScalesInRows(src.view, dtype, buffer.data() + 1, TwoThreads()), Error) << what;
      const WeightView in_rows = QuantizeWithScalesInRows(src.view, dtype, buffer.data() + 2, TwoThreads());
      ASSERT_TRUE(in_rows.scales_in_rows);
      ASSERT_EQ(in_rows.Bytes(), QuantizedBytes(dtype, N, K));
      ASSERT_EQ(in_rows.ScaleBytes(), 0u);
      const WeightView& w = separate.view;
      std::vector<float> a(static_cast<size_t>(K)), b(static_cast<size_t>(K));
      for (int64_t r = 0; r < N; ++r) {
        const size_t stride = w.RowBytes() + w.ScaleRowBytes();
        ASSERT_EQ(std::memcmp(buffer.data() + 2 + r * stride, w.Row(r), w.RowBytes()), 0) << what << " row " << r;
        ASSERT_EQ(std::memcmp(buffer.data() + 2 + r * stride + w.RowBytes(), w.F16ScaleRow(r), w.ScaleRowBytes()), 0)
            << what << " scales of row " << r;
        DequantizeRow(w, r, a.data());
        DequantizeRow(in_rows, r, b.data());
        ASSERT_EQ(a, b) << what << " row " << r;
        for (int64_t c = 0; c < K; c += 7) ASSERT_EQ(in_rows.At(r, c), w.At(r, c)) << what;
      }
      // N and K are structured bindings, which clang before 16 cannot capture
      // implicitly.
      auto expect_same_products = [&, N = N, K = K](const std::string& how) {
        for (int64_t M : {1, 3, 8, 9, 33, 130}) {
          const std::vector<float> x = Gaussian(M * K, static_cast<uint32_t>(M + 5));
          std::vector<float> want(static_cast<size_t>(M * N)), got(want.size(), std::nanf(""));
          MatMul(x.data(), M, w, want.data(), TwoThreads());
          MatMul(x.data(), M, in_rows, got.data(), TwoThreads());
          EXPECT_EQ(got, want) << what << " M " << M << how;
          // Decode-sized and prefill-sized jobs of both layouts in one call.
          std::vector<float> many0(want.size(), std::nanf("")), many1(want.size(), std::nanf(""));
          std::vector<float> x1 = Gaussian(K, 3), one_want(static_cast<size_t>(N)), one_got(one_want.size());
          const std::vector<MatMulJob> jobs = {{x.data(), M, &in_rows, many0.data()},
                                               {x1.data(), 1, &in_rows, one_got.data()},
                                               {x.data(), M, &w, many1.data()}};
          MatMulMany(jobs, TwoThreads());
          MatMul(x1.data(), 1, w, one_want.data(), TwoThreads());
          EXPECT_EQ(many0, want) << what << " M " << M << how << " (MatMulMany)";
          EXPECT_EQ(many1, want) << what << " M " << M << how << " (MatMulMany, separate)";
          EXPECT_EQ(one_got, one_want) << what << how << " (MatMulMany, one row)";
        }
      };
      expect_same_products("");
      {
        ScopedFloatActivations exact;
        expect_same_products(" float activations");
      }
      if (GetParam() == Isa::kAvx512) {
        ScopedAvx512WithoutVnni no_vnni;
        expect_same_products(" AVX-512 without VNNI");
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllSupported, QuantIsaTest, ::testing::ValuesIn(SupportedIsas()),
                         [](const ::testing::TestParamInfo<Isa>& info) { return IsaName(info.param); });

// An AVX-512 CPU without VNNI (Skylake-SP/X) has no vpdpbusd, so its
// integer decode and prefill are the AVX2 ones (vpmaddubsw): every row count
// gives the AVX2 path's bits, and the prefill rounds x to int8 as the decode
// does. Its prefill used to dequantize into the float product instead (half
// the speed, and a different rounding from the decode's). This machine has
// VNNI, so the test masks it.
TEST(QuantNoVnniTest, Avx512WithoutVnniRunsTheAvx2IntegerKernels) {
  if (!CpuHasAvx512()) GTEST_SKIP() << "this CPU has no AVX-512";
  const int64_t N = 72, K = 320;
  const FloatMatrix src = MakeFloatMatrix(DType::kBF16, N, K, Gaussian(N * K, 31));
  const std::vector<float> x = Gaussian(130 * K, 32);
  for (DType dtype : kQuantTypes) {
    const QuantMatrix q = ReferenceQuantize(src.view, dtype);
    for (int64_t M : {1, 3, 6, 9, 16, 37, 130})
      ExpectAvx512WithoutVnniEqualsAvx2(x.data(), M, q.view, TwoThreads(),
                                        std::string(DTypeName(dtype)) + " M " + std::to_string(M));
  }
}

// The 4-bit decode kernel splits nibbles with GFNI's affine transform where
// the CPU has it and with shift and mask otherwise (Cascade Lake has VNNI
// but no GFNI); both are exact, so the products must agree bit for bit. The
// random codes cover every bit of both nibbles.
TEST(QuantGfniTest, GfniNibbleSplitGivesTheShiftAndMaskBits) {
  if (!CpuHasAvx512() || !internal::HasAvx512Vnni() || !internal::HasGfni())
    GTEST_SKIP() << "this CPU lacks AVX-512, VNNI or GFNI";
  const int64_t N = 72, K = 4160;
  const FloatMatrix src = MakeFloatMatrix(DType::kBF16, N, K, Gaussian(N * K, 51));
  const std::vector<float> x = Gaussian((internal::kAvx512MaxQuantDecodeRows + 1) * K, 52);
  for (DType dtype : kQuantTypes) {
    const QuantMatrix q = ReferenceQuantize(src.view, dtype);
    ExpectGfniDecodeEqualsShiftAndMask(x.data(), q.view, TwoThreads(), DTypeName(dtype));
  }
}

// The AVX-512 integer decode gives each row of x the bits it gets alone
// whatever the row count (MXFP4's share of this is in mxfp4_test.cc): at
// every row count it has an instantiation for, and through MatMul's own
// choice up to the dtype's rule (K = 4160 is long enough for every dtype's
// passes). N = 37 leaves a tail of single weight rows; K = 4160 a partial
// block of groups.
TEST(QuantDecodeRowsTest, EachRowGetsItsOwnBitsAtEveryRowCount) {
  if (!CpuHasAvx512() || !internal::HasAvx512Vnni()) GTEST_SKIP() << "this CPU lacks AVX-512 or VNNI";
  const int64_t N = 37, K = 4160;
  const FloatMatrix src = MakeFloatMatrix(DType::kBF16, N, K, Gaussian(N * K, 61));
  const std::vector<float> x = Gaussian(internal::kAvx512MaxQuantDecodeRows * K, 62);
  for (DType dtype : kQuantTypes) {
    ASSERT_GE(K, internal::Avx512QuantDecodeMinCols(dtype));
    const QuantMatrix q = ReferenceQuantize(src.view, dtype);
    ExpectEachDecodeRowGetsItsOwnBits(x.data(), q.view, TwoThreads(), DTypeName(dtype));
    ExpectEachDecodeRowGetsItsOwnBits(x.data(), q.view, TwoThreads(), std::string(DTypeName(dtype)) + " by rule",
                                      internal::DecodePasses::kByRule, internal::Avx512QuantDecodeRows(dtype));
  }
}

// ---------------------------------------------------------------------------
// Bad arguments.

TEST(QuantizeArguments, RejectsBadShapesAndTypes) {
  const FloatMatrix src = MakeFloatMatrix(DType::kF32, 2, 48, Gaussian(96, 1));
  std::vector<uint8_t> codes(1024);
  std::vector<uint16_t> scales(64);
  EXPECT_THROW(Quantize(src.view, DType::kQ8, codes.data(), scales.data(), TwoThreads()), Error);
  const FloatMatrix ok = MakeFloatMatrix(DType::kF32, 2, 64, Gaussian(128, 1));
  EXPECT_THROW(Quantize(ok.view, DType::kBF16, codes.data(), scales.data(), TwoThreads()), Error);
  const QuantMatrix q = ReferenceQuantize(ok.view, DType::kQ4);
  EXPECT_THROW(Quantize(q.view, DType::kQ8, codes.data(), scales.data(), TwoThreads()), Error);
  EXPECT_THROW(ConvertToF32(DType::kQ8, codes.data(), 32, reinterpret_cast<float*>(scales.data())), Error);
  WeightView bad = q.view;
  bad.scales = nullptr;
  std::vector<float> x(64), y(2);
  EXPECT_THROW(MatMul(x.data(), 1, bad, y.data(), TwoThreads()), Error);
}

}  // namespace
}  // namespace epwa::kernels
