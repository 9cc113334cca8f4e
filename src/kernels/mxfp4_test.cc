// MXFP4 weights (layout in tensor/dtype.h) on every instruction-set path this
// CPU supports: the decoding rule against a transcription of Hugging Face
// transformers' convert_moe_packed_tensors, DequantizeRow against
// WeightView::At, MatMul against a double-accumulating product of the
// dequantized weights (reference::MatMul) on random codes and scales from
// every part of the E8M0 range, the refusal of non-finite blocks, and the
// integer decode error on realistic data.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
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

// An MXFP4 matrix [rows, cols]. Blocks and scales each start one byte past
// an aligned address, since in a mapped checkpoint they may sit anywhere, and
// each buffer ends exactly where its data does, so that over-reads show up in
// sanitizer builds. Moving keeps the buffers (and so the view) valid.
struct Mxfp4Matrix {
  std::vector<uint8_t> blocks;  // 1 + [rows, cols / 32, 16]
  std::vector<uint8_t> scales;  // 1 + [rows, cols / 32]
  WeightView view;

  Mxfp4Matrix(int64_t rows, int64_t cols)
      : blocks(1 + static_cast<size_t>(rows * cols / 2), 0), scales(1 + static_cast<size_t>(rows * (cols / 32)), 127) {
    view = WeightView{DType::kMXFP4, blocks.data() + 1, rows, cols, scales.data() + 1};
  }
  Mxfp4Matrix(Mxfp4Matrix&&) = default;
  Mxfp4Matrix(const Mxfp4Matrix&) = delete;
  Mxfp4Matrix& operator=(const Mxfp4Matrix&) = delete;

  uint8_t* Block(int64_t r, int64_t g) { return blocks.data() + 1 + (r * (view.cols / 32) + g) * 16; }
  uint8_t& Scale(int64_t r, int64_t g) { return scales[1 + static_cast<size_t>(r * (view.cols / 32) + g)]; }
  // Sets the nibble of element (r, c): low nibble for even c, high for odd c.
  void SetCode(int64_t r, int64_t c, int code) {
    uint8_t& byte = blocks[1 + static_cast<size_t>(r * view.cols + c) / 2];
    byte = c % 2 == 0 ? static_cast<uint8_t>((byte & 0xf0) | code) : static_cast<uint8_t>((byte & 0x0f) | (code << 4));
  }
};

// Random codes (every byte value equally likely) and scales uniform in
// [lo, hi]; the first block of the matrix gets lo and the last one hi, so
// that both ends of the range always occur.
Mxfp4Matrix RandomMxfp4(int64_t rows, int64_t cols, uint32_t seed, int lo, int hi) {
  Mxfp4Matrix m(rows, cols);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255), exponent(lo, hi);
  for (size_t i = 1; i < m.blocks.size(); ++i) m.blocks[i] = static_cast<uint8_t>(byte(rng));
  for (size_t i = 1; i < m.scales.size(); ++i) m.scales[i] = static_cast<uint8_t>(exponent(rng));
  m.scales[1] = static_cast<uint8_t>(lo);
  m.scales.back() = static_cast<uint8_t>(hi);
  return m;
}

std::vector<float> Gaussian(int64_t n, uint32_t seed, float sigma = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, sigma);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = dist(rng);
  return v;
}

bool SameBits(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::memcmp(&a, &b, 4) == 0;
}

// ---------------------------------------------------------------------------
// The format itself.

// Every (nibble, exponent) pair decodes as transformers does it: FP4_VALUES
// [nibble] * 2^(exponent - 127) (torch.ldexp), here in double and converted
// to float, which is exact whenever the value is within float's range and
// infinite beyond it. The one deliberate difference is E8M0 255, which the
// OCP specification makes NaN (transformers computes 2^128 = inf).
TEST(Mxfp4Format, DecodesLikeTransformers) {
  const double kFp4Values[16] = {+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
                                 -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0};
  Mxfp4Matrix m(1, 32);
  for (int e = 0; e < 256; ++e) {
    m.Scale(0, 0) = static_cast<uint8_t>(e);
    for (int n = 0; n < 16; ++n) {
      m.Block(0, 0)[0] = static_cast<uint8_t>(n | (n << 4));  // Elements 0 and 1.
      for (int c = 0; c < 2; ++c) {
        const float got = m.view.At(0, c);
        if (e == 255) {
          EXPECT_TRUE(std::isnan(got)) << n;
          continue;
        }
        const double want = std::ldexp(kFp4Values[n], e - 127);
        if (std::fabs(want) > FLT_MAX) {
          EXPECT_TRUE(std::isinf(got) && std::signbit(got) == std::signbit(want)) << "e=" << e << " n=" << n;
        } else {
          // Exact, signed zeros included.
          EXPECT_TRUE(SameBits(got, static_cast<float>(want))) << "e=" << e << " n=" << n << " got " << got;
          EXPECT_EQ(static_cast<double>(got), want) << "e=" << e << " n=" << n;
        }
      }
    }
  }
  EXPECT_EQ(E8M0ToF32(0), std::ldexp(1.0f, -127));  // Not zero: E8M0 has no zero.
  EXPECT_EQ(E8M0ToF32(127), 1.0f);
  EXPECT_EQ(E8M0ToF32(254), std::ldexp(1.0f, 127));
  EXPECT_TRUE(std::isnan(E8M0ToF32(255)));
}

// The byte layout: byte j of a block holds element 2 j in its low nibble and
// element 2 j + 1 in its high nibble (not kQ4's j / j + 16); block g of row r
// has scale g of row r.
TEST(Mxfp4Format, LowNibbleIsTheEvenElement) {
  Mxfp4Matrix m(2, 64);
  for (int64_t r = 0; r < 2; ++r) {
    for (int64_t g = 0; g < 2; ++g) {
      for (int j = 0; j < 16; ++j) m.Block(r, g)[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
      m.Scale(r, g) = static_cast<uint8_t>(126 + r * 2 + g);  // 2^-1, 2^0, 2^1, 2^2
    }
  }
  for (int64_t r = 0; r < 2; ++r) {
    for (int64_t g = 0; g < 2; ++g) {
      const float s = std::ldexp(1.0f, static_cast<int>(r * 2 + g) - 1);
      for (int j = 0; j < 16; ++j) {
        EXPECT_EQ(m.view.At(r, 32 * g + 2 * j), kE2M1Values[j] * s);
        EXPECT_EQ(m.view.At(r, 32 * g + 2 * j + 1), kE2M1Values[15 - j] * s);
      }
    }
  }
  // Two worked values: byte 0x2b is element 0 = code 0xb (-1.5) and element 1
  // = code 0x2 (1.0); scale 130 is 2^3.
  m.Block(0, 0)[0] = 0x2b;
  m.Scale(0, 0) = 130;
  EXPECT_EQ(m.view.At(0, 0), -12.0f);
  EXPECT_EQ(m.view.At(0, 1), 8.0f);
}

TEST(Mxfp4Format, SizesAndNames) {
  // gpt-oss-120b's gate_up_proj of one expert: [5760, 2880].
  const WeightView w{DType::kMXFP4, nullptr, 5760, 2880, nullptr};
  EXPECT_EQ(w.RowBytes(), 1440u);
  EXPECT_EQ(w.Bytes(), 5760u * 90 * 16);
  EXPECT_EQ(w.ScaleBytes(), 5760u * 90);
  EXPECT_EQ(QuantizedBytes(DType::kMXFP4, 5760, 2880), 5760ull * 90 * 17);  // 4.25 bits per weight
  EXPECT_EQ(CodeRowBytes(DType::kMXFP4, 2880), 1440u);
  EXPECT_EQ(DTypeSize(DType::kMXFP4), 0u);
  EXPECT_STREQ(DTypeName(DType::kMXFP4), "MXFP4");
  DType parsed = DType::kF32;
  EXPECT_FALSE(ParseDType("MXFP4", &parsed));  // Stored as U8 blocks and scales.
  EXPECT_TRUE(HasGroupScales(DType::kMXFP4));
  EXPECT_FALSE(IsQuantized(DType::kMXFP4));  // Not a Quantize target.
  EXPECT_EQ(ScaleFormatOf(DType::kMXFP4), ScaleFormat::kE8M0);
  EXPECT_EQ(ScaleBytesPerGroup(DType::kMXFP4), 1u);
  // The other formats keep their sizes.
  EXPECT_EQ(ScaleFormatOf(DType::kQ4), ScaleFormat::kF16);
  EXPECT_EQ(ScaleFormatOf(DType::kBF16), ScaleFormat::kNone);
  EXPECT_EQ(QuantizedBytes(DType::kQ4, 10, 96), 10u * 48 + 10u * 3 * 2);
  EXPECT_EQ((WeightView{DType::kQ8, nullptr, 10, 96, nullptr}.ScaleBytes()), 10u * 3 * 2);
  EXPECT_EQ((WeightView{DType::kF16, nullptr, 10, 96}.ScaleBytes()), 0u);
}

// ---------------------------------------------------------------------------
// Per-path checks.

class Mxfp4IsaTest : public PerIsaTest {};

// DequantizeRow (and so the prefill packing, which shares its loads) equals
// At bit for bit over the whole E8M0 range: subnormal blocks, infinities from
// scales 253 and 254, NaN from 255, signed zeros.
TEST_P(Mxfp4IsaTest, DequantizeRowMatchesAt) {
  const int64_t rows = 9, cols = 608;  // 19 blocks per row: all 256 scales occur.
  Mxfp4Matrix m = RandomMxfp4(rows, cols, 3, 0, 255);
  for (int64_t i = 0; i < rows * (cols / 32); ++i) m.scales[1 + static_cast<size_t>(i)] = static_cast<uint8_t>((i * 37) % 256);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float> out(static_cast<size_t>(cols) + 1, 42.f);
    DequantizeRow(m.view, r, out.data());
    for (int64_t c = 0; c < cols; ++c) {
      ASSERT_TRUE(SameBits(out[c], m.view.At(r, c))) << r << " " << c << ": " << out[c] << " vs " << m.view.At(r, c);
    }
    EXPECT_EQ(out[cols], 42.f) << "DequantizeRow wrote past the end";
  }
}

// The tolerance for y[m, n] against reference::MatMul (double sums of x times
// the dequantized weights):
// * every path: 1e-5 * sum_k |x[m, k] w[n, k]|, float accumulation;
// * integer decode paths: plus the int8 activation rounding of kernels.h,
//   sum_g (s_x[g] / 2) * sum_{k in g} |w[n, k]| with s_x[g] = max |x| / 127
//   over the group (times 1.001 for the rounding of x * 127 / max in float).
//   MXFP4's integer levels are exact, so there is no weight term (unlike NF4).
// Returns the largest error as a fraction of its tolerance.
double ExpectMxfp4MatMulClose(const float* x, int64_t M, const WeightView& w, const std::vector<float>& y,
                              bool exact_weights, const std::string& what) {
  const int64_t N = w.rows, K = w.cols, G = K / 32;
  std::vector<float> want(static_cast<size_t>(M * N));
  reference::MatMul(x, M, w, want.data());
  std::vector<double> wf(static_cast<size_t>(N * K));  // [N, K] dequantized
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) wf[static_cast<size_t>(n * K + k)] = w.At(n, k);
  int failures = 0;
  double worst = 0.0;
  for (int64_t m = 0; m < M && failures < 5; ++m) {
    const float* xm = x + m * K;
    for (int64_t n = 0; n < N && failures < 5; ++n) {
      const double* wn = wf.data() + n * K;
      double magnitude = 0.0, activation = 0.0;
      for (int64_t g = 0; g < G; ++g) {
        double xmax = 0.0, wsum = 0.0;
        for (int64_t k = g * 32; k < g * 32 + 32; ++k) {
          magnitude += std::fabs(xm[k] * wn[k]);
          xmax = std::max(xmax, static_cast<double>(std::fabs(xm[k])));
          wsum += std::fabs(wn[k]);
        }
        activation += xmax / 127.0 / 2.0 * wsum;
      }
      double tolerance = 1e-5 * magnitude + 1e-30;
      if (!exact_weights) tolerance += 1.001 * activation;
      const float got = y[static_cast<size_t>(m * N + n)], ref = want[static_cast<size_t>(m * N + n)];
      const double err = std::fabs(static_cast<double>(got) - ref);
      if (!(err <= tolerance)) {
        ADD_FAILURE() << what << " y[" << m << ", " << n << "] = " << got << ", reference " << ref
                      << ", tolerance " << tolerance << " (magnitude " << magnitude << ")";
        ++failures;
      }
      worst = std::max(worst, err / tolerance);
    }
  }
  return worst;
}

// A range of E8M0 exponents and the power of two x is scaled by, so that the
// products stay in float's normal range (see kernels.h on extreme scales).
struct ScaleWindow {
  const char* name;
  int lo, hi;
  int x_exponent;
};
constexpr ScaleWindow kWindows[] = {
    {"typical", 112, 130, 0},   // Around 1, as in trained checkpoints.
    {"lowest", 0, 12, 100},     // Down to 2^-127 (scale byte 0), subnormal weights.
    {"highest", 238, 252, -110},  // Up to 2^125: weights to 6 * 2^125, the largest finite.
    {"wide", 0, 250, -100},     // Every scale in one row: tiny blocks underflow beside huge ones.
};

constexpr std::pair<int64_t, int64_t> kShapes[] = {
    {33, 32},    // N, K: a single block per row.
    {129, 96},   // Three blocks: an odd last pair; rows in groups of 4 plus a tail.
    {17, 544},   // 17 blocks: more than one run of 16 scales.
    {7, 2880},   // gpt-oss's hidden size: 90 blocks.
};

using MatMulParam = std::tuple<Isa, int, int, int>;  // ISA, scale window, shape, M.

class Mxfp4MatMulTest : public ::testing::TestWithParam<MatMulParam> {};

TEST_P(Mxfp4MatMulTest, MatchesDequantizedReference) {
  const auto [isa, window, shape, M] = GetParam();
  const auto [N, K] = kShapes[shape];
  const ScaleWindow& sw = kWindows[window];
  ScopedIsa scoped(isa);
  const Mxfp4Matrix w = RandomMxfp4(N, K, static_cast<uint32_t>(N * K + M + window), sw.lo, sw.hi);
  std::vector<float> x = Gaussian(M * K, static_cast<uint32_t>(M + 17 + window));
  x[0] = 9.f;  // One large activation, which coarsens its group's int8 grid.
  for (float& v : x) v = std::ldexp(v, sw.x_exponent);
  std::vector<float> y(static_cast<size_t>(M * N), std::numeric_limits<float>::quiet_NaN());
  MatMul(x.data(), M, w.view, y.data(), TwoThreads());
  ExpectMxfp4MatMulClose(x.data(), M, w.view, y, ExactQuantPath(isa), sw.name);
  ScopedFloatActivations exact;
  std::fill(y.begin(), y.end(), std::numeric_limits<float>::quiet_NaN());
  MatMul(x.data(), M, w.view, y.data(), TwoThreads());
  ExpectMxfp4MatMulClose(x.data(), M, w.view, y, true, std::string(sw.name) + " float activations");
}

std::string MatMulName(const ::testing::TestParamInfo<MatMulParam>& info) {
  const auto [isa, window, shape, M] = info.param;
  const auto [N, K] = kShapes[shape];
  return std::string(IsaName(isa)) + "_" + kWindows[window].name + "_N" + std::to_string(N) + "_K" +
         std::to_string(K) + "_M" + std::to_string(M);
}

INSTANTIATE_TEST_SUITE_P(Shapes, Mxfp4MatMulTest,
                         ::testing::Combine(::testing::ValuesIn(SupportedIsas()), ::testing::Values(0, 1, 2, 3),
                                            ::testing::Values(0, 1, 2, 3), ::testing::Values(1, 2, 4, 8, 9, 64)),
                         MatMulName);

// Each output element is computed by the same instruction sequence whichever
// thread owns it, so the result must not depend on the thread count.
TEST_P(Mxfp4IsaTest, MatMulIsIndependentOfThreadCount) {
  ThreadPool one(1), three(3);
  const int64_t N = 301, K = 352;
  const Mxfp4Matrix w = RandomMxfp4(N, K, 5, 110, 135);
  for (int64_t M : {1, 2, 3, 4, 6, 8, 9, 37, 64}) {
    const std::vector<float> x = Gaussian(M * K, 6);
    std::vector<float> y1(static_cast<size_t>(M * N)), y2(y1.size()), y3(y1.size());
    MatMul(x.data(), M, w.view, y1.data(), one);
    MatMul(x.data(), M, w.view, y2.data(), TwoThreads());
    MatMul(x.data(), M, w.view, y3.data(), three);
    EXPECT_EQ(y1, y2) << "M=" << M;
    EXPECT_EQ(y1, y3) << "M=" << M;
    ExpectMxfp4MatMulClose(x.data(), M, w.view, y1, ExactQuantPath(GetParam()), "M=" + std::to_string(M));
  }
}

// AVX-512 without VNNI runs the AVX2 integer kernels, as in quant_test's
// QuantNoVnniTest: every row count gives the AVX2 path's bits.
TEST(Mxfp4NoVnniTest, Avx512WithoutVnniRunsTheAvx2IntegerKernels) {
  if (!CpuHasAvx512()) GTEST_SKIP() << "this CPU has no AVX-512";
  const int64_t N = 72, K = 320;
  const Mxfp4Matrix w = RandomMxfp4(N, K, 41, 118, 130);
  const std::vector<float> x = Gaussian(130 * K, 42);
  for (int64_t M : {1, 3, 6, 9, 16, 37, 130})
    ExpectAvx512WithoutVnniEqualsAvx2(x.data(), M, w.view, TwoThreads(), "M " + std::to_string(M));
}

// GFNI's nibble split in the decode gives the shift-and-mask bits (as in
// quant_test's QuantGfniTest).
TEST(Mxfp4GfniTest, GfniNibbleSplitGivesTheShiftAndMaskBits) {
  if (!CpuHasAvx512() || !internal::HasAvx512Vnni() || !internal::HasGfni())
    GTEST_SKIP() << "this CPU lacks AVX-512, VNNI or GFNI";
  const int64_t N = 72, K = 4160;
  const Mxfp4Matrix w = RandomMxfp4(N, K, 53, 118, 130);
  const std::vector<float> x = Gaussian((internal::kAvx512MaxQuantDecodeRows + 1) * K, 54);
  ExpectGfniDecodeEqualsShiftAndMask(x.data(), w.view, TwoThreads(), "MXFP4");
}

// The AVX-512 integer decode gives each row of x the bits it gets alone
// whatever the row count, at every row count it has and through MatMul's
// own choice (as in quant_test's QuantDecodeRowsTest). N = 37
// leaves a tail of single weight rows; K = 4160 a partial block of groups.
TEST(Mxfp4DecodeRowsTest, EachRowGetsItsOwnBitsAtEveryRowCount) {
  if (!CpuHasAvx512() || !internal::HasAvx512Vnni()) GTEST_SKIP() << "this CPU lacks AVX-512 or VNNI";
  const int64_t N = 37, K = 4160;
  const Mxfp4Matrix w = RandomMxfp4(N, K, 63, 118, 130);
  const std::vector<float> x = Gaussian(internal::kAvx512MaxQuantDecodeRows * K, 64);
  ExpectEachDecodeRowGetsItsOwnBits(x.data(), w.view, TwoThreads(), "MXFP4");
  ASSERT_GE(K, internal::Avx512QuantDecodeMinCols(DType::kMXFP4));
  ExpectEachDecodeRowGetsItsOwnBits(x.data(), w.view, TwoThreads(), "MXFP4 by rule", internal::DecodePasses::kByRule,
                                    internal::Avx512QuantDecodeRows(DType::kMXFP4));
}

// Prefill over several cache blocks in every dimension.
TEST_P(Mxfp4IsaTest, MatMulLargeBlockedShapes) {
  const int64_t M = 300, N = 600, K = 544;
  const Mxfp4Matrix w = RandomMxfp4(N, K, 11, 100, 140);
  const std::vector<float> x = Gaussian(M * K, 12);
  std::vector<float> y(static_cast<size_t>(M * N));
  MatMul(x.data(), M, w.view, y.data(), TwoThreads());
  ExpectMxfp4MatMulClose(x.data(), M, w.view, y, ExactQuantPath(GetParam()), "");
  ScopedFloatActivations exact;
  MatMul(x.data(), M, w.view, y.data(), TwoThreads());
  ExpectMxfp4MatMulClose(x.data(), M, w.view, y, true, "float activations");
}

// A block with scale 255 (NaN) makes each output that uses it NaN on every
// path, the others being unaffected; FirstNonFinite and ValidateMxfp4 find it.
TEST_P(Mxfp4IsaTest, ScaleNaNPropagatesToItsRowOnly) {
  const int64_t N = 37, K = 96;
  Mxfp4Matrix w = RandomMxfp4(N, K, 21, 120, 130);
  w.Scale(3, 2) = 255;
  for (int64_t M : {1, 3, 8, 9, 64}) {
    const std::vector<float> x = Gaussian(M * K, 22);
    std::vector<float> y(static_cast<size_t>(M * N));
    MatMul(x.data(), M, w.view, y.data(), TwoThreads());
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < N; ++n) {
        EXPECT_EQ(std::isnan(y[static_cast<size_t>(m * N + n)]), n == 3) << "M=" << M << " m=" << m << " n=" << n;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllSupported, Mxfp4IsaTest, ::testing::ValuesIn(SupportedIsas()),
                         [](const ::testing::TestParamInfo<Isa>& info) { return IsaName(info.param); });

// ---------------------------------------------------------------------------
// Validation.

TEST(Mxfp4Validation, FirstNonFiniteFindsNaNAndOverflowingBlocks) {
  const int64_t rows = 8, cols = 128;
  Mxfp4Matrix m = RandomMxfp4(rows, cols, 31, 0, 252);
  EXPECT_EQ(FirstNonFinite(m.view, 0, rows), -1);  // 6 * 2^125 is still finite.
  EXPECT_NO_THROW(ValidateMxfp4(m.view));
  // Scale 254 with codes of magnitude at most 1.5 stays finite (1.5 * 2^127);
  // code 4 (2.0) in the high nibble of byte 9 is element 32 + 19 = 51: 2^128.
  for (int j = 0; j < 16; ++j) m.Block(2, 1)[j] = 0x3b;  // Codes 0xb (-1.5) and 0x3 (1.5).
  m.Scale(2, 1) = 254;
  EXPECT_EQ(FirstNonFinite(m.view, 0, rows), -1);
  EXPECT_EQ(m.view.At(2, 32), -1.5f * std::ldexp(1.0f, 127));
  m.Block(2, 1)[9] = 0x4b;
  EXPECT_EQ(FirstNonFinite(m.view, 0, rows), 2 * cols + 51);
  // Scale 253 overflows from code 6 (4.0) up: 4 * 2^126 = 2^128.
  m.Block(2, 1)[9] = 0x3b;
  m.Scale(2, 1) = 253;
  m.Block(2, 1)[0] = 0x3d;  // Element 32: code 0xd (-3.0) is finite, 3 * 2^126.
  EXPECT_EQ(FirstNonFinite(m.view, 0, rows), -1);
  m.Block(2, 1)[0] = 0x3e;  // Code 0xe (-4.0): -2^128.
  EXPECT_EQ(FirstNonFinite(m.view, 0, rows), 2 * cols + 32);
  // Scale 255 is NaN whatever the codes, even all zero.
  std::fill(m.Block(5, 3), m.Block(5, 3) + 16, 0);
  m.Scale(5, 3) = 255;
  EXPECT_EQ(FirstNonFinite(m.view, 0, rows), 2 * cols + 32);
  EXPECT_EQ(FirstNonFinite(m.view, 3, rows), 5 * cols + 96);
  EXPECT_EQ(FirstNonFinite(m.view, 6, rows), -1);
  try {
    ValidateMxfp4(m.view);
    ADD_FAILURE() << "an overflowing block was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("row 2, column 32: its block scale is E8M0 253"), std::string::npos)
        << e.what();
  }
  m.Scale(2, 1) = 120;
  try {
    ValidateMxfp4(m.view);
    ADD_FAILURE() << "a NaN scale was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("row 5, column 96: its block scale is E8M0 255, which is NaN"),
              std::string::npos)
        << e.what();
  }
}

TEST(Mxfp4Validation, RejectsBadShapesAndMissingScales) {
  // 48 columns: not a whole number of blocks.
  const std::vector<uint8_t> blocks(64), scales(4);
  const WeightView odd{DType::kMXFP4, blocks.data(), 2, 48, scales.data()};
  std::vector<float> x(96), y(4), row(48);
  EXPECT_THROW(MatMul(x.data(), 1, odd, y.data(), TwoThreads()), Error);
  EXPECT_THROW(MatMul(x.data(), 9, odd, y.data(), TwoThreads()), Error);
  EXPECT_THROW(DequantizeRow(odd, 0, row.data()), Error);
  EXPECT_THROW(ValidateMxfp4(odd), Error);
  // No scales.
  const WeightView bare{DType::kMXFP4, blocks.data(), 2, 64, nullptr};
  EXPECT_THROW(MatMul(x.data(), 1, bare, y.data(), TwoThreads()), Error);
  EXPECT_THROW(ValidateMxfp4(bare), Error);
  // Codes alone have no float values; MXFP4 is not a Quantize target.
  EXPECT_THROW(ConvertToF32(DType::kMXFP4, blocks.data(), 32, row.data()), Error);
  const std::vector<float> src(64, 1.f);
  std::vector<uint16_t> out_scales(2);
  std::vector<uint8_t> out_codes(64);
  EXPECT_THROW(Quantize(WeightView{DType::kF32, src.data(), 1, 64}, DType::kMXFP4, out_codes.data(),
                        out_scales.data(), TwoThreads()),
               Error);
  EXPECT_THROW(ValidateMxfp4(WeightView{DType::kF32, src.data(), 1, 64}), Error);
}

// ---------------------------------------------------------------------------
// The integer decode error on realistic data.

// Quantizes w [rows, cols] to MXFP4 by the OCP MX v1.0 rule: the block's
// scale is 2^(floor(log2(amax)) - 2) (2 being E2M1's largest exponent), each
// element the nearest E2M1 value of w / scale, saturating at 6.
Mxfp4Matrix QuantizeOcp(const std::vector<float>& w, int64_t rows, int64_t cols) {
  Mxfp4Matrix m(rows, cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < cols / 32; ++g) {
      const float* v = w.data() + r * cols + g * 32;
      float amax = 0.f;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(v[j]));
      const int e = amax > 0.f ? std::ilogb(amax) - 2 : -127;
      m.Scale(r, g) = static_cast<uint8_t>(std::clamp(e + 127, 0, 254));
      const float s = E8M0ToF32(m.Scale(r, g));
      for (int j = 0; j < 32; ++j) {
        int best = 0;
        for (int n = 0; n < 8; ++n) {
          if (std::fabs(std::fabs(v[j]) / s - kE2M1Values[n]) < std::fabs(std::fabs(v[j]) / s - kE2M1Values[best])) best = n;
        }
        m.SetCode(r, g * 32 + j, best | (v[j] < 0.f ? 8 : 0));
      }
    }
  }
  return m;
}

double RelativeRms(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0.0, norm = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    err += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    norm += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(err / norm);
}

// kernels.h quotes these figures: the decode output against the exact
// product of the same MXFP4 weights, beside the error of MXFP4 itself.
TEST_P(Mxfp4IsaTest, DecodeErrorIsSmallOnTypicalData) {
  const int64_t N = 1024, K = 2048;
  const std::vector<float> source = Gaussian(N * K, 9, 0.02f);
  const Mxfp4Matrix w = QuantizeOcp(source, N, K);
  const WeightView f32{DType::kF32, source.data(), N, K};
  std::vector<float> x = Gaussian(K, 10);
  std::vector<float> y(N), exact(N), unquantized(N);
  MatMul(x.data(), 1, w.view, y.data(), TwoThreads());
  reference::MatMul(x.data(), 1, w.view, exact.data());
  reference::MatMul(x.data(), 1, f32, unquantized.data());
  const double decode = RelativeRms(y, exact), weights = RelativeRms(exact, unquantized);
  for (size_t k = 0; k < x.size(); k += 97) x[k] *= 20.f;  // Every 97th activation a 20x outlier.
  MatMul(x.data(), 1, w.view, y.data(), TwoThreads());
  reference::MatMul(x.data(), 1, w.view, exact.data());
  const double outliers = RelativeRms(y, exact);
  std::printf("[ %s ] MXFP4 [1024, 2048] M=1: decode error %.3f%% (with outliers %.3f%%), MXFP4 weight error "
              "in the output %.2f%%\n",
              IsaName(GetParam()), 100 * decode, 100 * outliers, 100 * weights);
  EXPECT_LT(decode, 0.01);
  EXPECT_LT(outliers, 0.02);
  if (GetParam() == Isa::kScalar) {
    EXPECT_LT(decode, 1e-6);  // The scalar path dequantizes exactly.
  }
}

}  // namespace
}  // namespace epwa::kernels
