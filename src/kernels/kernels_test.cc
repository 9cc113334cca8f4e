// Every instruction-set path this CPU supports is checked against the double-
// accumulating references in kernels/reference.h, on awkward shapes chosen to
// hit every tail of the register tiles and cache blocks.
#include "kernels/kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "base/error.h"
#include "base/meminfo.h"
#include "kernels/reference.h"
#include "kernels/scoped_isa_test_util.h"

namespace epwa::kernels {
namespace {

// A weight matrix stored in `dtype` two bytes past an aligned address, as
// tensors in a memory-mapped safetensors file may be, with values drawn from
// a normal distribution and rounded to the dtype (so that the reference,
// which reads the same bytes, sees exactly the same weights).
struct TestWeights {
  std::vector<uint8_t> storage;
  WeightView view;
};

TestWeights MakeWeights(DType dtype, int64_t rows, int64_t cols, uint32_t seed) {
  TestWeights t;
  const size_t elem = DTypeSize(dtype);
  // The buffer ends exactly where the matrix does, so any read past the end
  // of the last row is visible to AddressSanitizer builds.
  t.storage.resize(2 + static_cast<size_t>(rows * cols) * elem);
  uint8_t* base = t.storage.data() + 2;
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  for (int64_t i = 0; i < rows * cols; ++i) {
    const float v = dist(rng);
    switch (dtype) {
      case DType::kF32: std::memcpy(base + 4 * i, &v, 4); break;
      case DType::kF16: { const uint16_t h = F32ToF16(v); std::memcpy(base + 2 * i, &h, 2); break; }
      case DType::kBF16: { const uint16_t h = F32ToBF16(v); std::memcpy(base + 2 * i, &h, 2); break; }
      // Quantized weights are tested in quant_test.cc, MXFP4 in mxfp4_test.cc.
      case DType::kU8:
      case DType::kF8E4M3:
      case DType::kQ8:
      case DType::kQ4:
      case DType::kNF4:
      case DType::kMXFP4: break;
    }
  }
  t.view = WeightView{dtype, base, rows, cols};
  return t;
}

std::vector<float> RandomVector(int64_t n, uint32_t seed, float lo = -2.f, float hi = 2.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = dist(rng);
  return v;
}

// Checks y against the reference with the tolerance the kernels promise:
// |y - ref| <= 1e-5 * sum_k |x[m, k]| |w[n, k]| per element, i.e. relative to
// the magnitude of the terms summed, which bounds float accumulation error
// independently of cancellation.
void ExpectMatMulClose(const float* x, int64_t M, const WeightView& w, const std::vector<float>& y,
                       const std::string& what) {
  const int64_t N = w.rows, K = w.cols;
  std::vector<float> want(static_cast<size_t>(M * N));
  reference::MatMul(x, M, w, want.data());
  int failures = 0;
  for (int64_t m = 0; m < M && failures < 5; ++m) {
    for (int64_t n = 0; n < N && failures < 5; ++n) {
      double magnitude = 0.0;
      for (int64_t k = 0; k < K; ++k) magnitude += std::fabs(x[m * K + k] * w.At(n, k));
      const float got = y[m * N + n], ref = want[m * N + n];
      if (!(std::fabs(got - ref) <= 1e-5 * magnitude + 1e-30)) {
        ADD_FAILURE() << what << " y[" << m << ", " << n << "] = " << got << ", reference " << ref
                      << ", magnitude " << magnitude;
        ++failures;
      }
    }
  }
}

ThreadPool& TwoThreads() {
  static ThreadPool pool(2);
  return pool;
}

// ---------------------------------------------------------------------------
// MatMul over ISA x dtype x K x N x M.

using MatMulParam = std::tuple<Isa, DType, int, int, int>;

class MatMulTest : public ::testing::TestWithParam<MatMulParam> {};

TEST_P(MatMulTest, MatchesReference) {
  const auto [isa, dtype, K, N, M] = GetParam();
  ScopedIsa scoped(isa);
  TestWeights w = MakeWeights(dtype, N, K, static_cast<uint32_t>(K * 7919 + N * 31 + M));
  const std::vector<float> x = RandomVector(static_cast<int64_t>(M) * K, static_cast<uint32_t>(M + K));
  std::vector<float> y(static_cast<size_t>(M) * N, std::numeric_limits<float>::quiet_NaN());
  MatMul(x.data(), M, w.view, y.data(), TwoThreads());
  ExpectMatMulClose(x.data(), M, w.view, y, "");
}

std::string MatMulName(const ::testing::TestParamInfo<MatMulParam>& info) {
  const auto [isa, dtype, K, N, M] = info.param;
  return std::string(IsaName(isa)) + "_" + DTypeName(dtype) + "_K" + std::to_string(K) + "_N" +
         std::to_string(N) + "_M" + std::to_string(M);
}

INSTANTIATE_TEST_SUITE_P(Shapes, MatMulTest,
                         ::testing::Combine(::testing::ValuesIn(SupportedIsas()),
                                            ::testing::Values(DType::kF32, DType::kF16, DType::kBF16),
                                            ::testing::Values(1, 3, 17, 63, 64, 65, 1000),
                                            ::testing::Values(1, 5, 33, 257),
                                            ::testing::Values(1, 2, 3, 4, 5, 8, 9, 16, 37)),
                         MatMulName);

// ---------------------------------------------------------------------------
// Per-ISA tests of the remaining kernels and of the cache-blocked sizes.

class IsaTest : public PerIsaTest {};

const std::vector<int64_t> kLengths = {1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 1000, 4097};

// Shapes larger than one cache block in every dimension (K > 256, N > 256
// per thread, M > 256 rows of packed x), so the accumulation across k blocks
// and the re-packing of x are exercised; and a wide one with M = 6, which the
// AVX-512 path runs through the decode kernel and the AVX2 path through the
// prefill kernel.
TEST_P(IsaTest, MatMulLargeBlockedShapes) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{300, 600, 520}, {6, 1100, 777}}) {
      TestWeights w = MakeWeights(dtype, N, K, 11);
      const std::vector<float> x = RandomVector(M * K, 12);
      std::vector<float> y(static_cast<size_t>(M * N));
      MatMul(x.data(), M, w.view, y.data(), TwoThreads());
      ExpectMatMulClose(x.data(), M, w.view, y, DTypeName(dtype));
    }
  }
}

// Each output element is computed by the same instruction sequence whichever
// thread owns it, so the result must not depend on the thread count, nor on
// how many chunks the decode regions are cut into (chunk ends then fall at
// other rows), through MatMul or MatMulMany.
TEST_P(IsaTest, MatMulIsIndependentOfThreadCount) {
  ThreadPool one(1), two(2), three(3);
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (int64_t M : {1, 3, 6, 37}) {
      const int64_t N = 301, K = 333;
      TestWeights w = MakeWeights(dtype, N, K, 5);
      const std::vector<float> x = RandomVector(M * K, 6);
      std::vector<float> y1(static_cast<size_t>(M * N));
      MatMul(x.data(), M, w.view, y1.data(), one);
      for (int chunks : {1, 3, internal::kDefaultDecodeChunksPerThread, 8}) {
        const ScopedDecodeChunks cut(chunks);
        std::vector<float> y2(y1.size()), y3(y1.size()), many(2 * y1.size());
        MatMul(x.data(), M, w.view, y2.data(), two);
        MatMul(x.data(), M, w.view, y3.data(), three);
        const std::vector<MatMulJob> jobs = {{x.data(), M, &w.view, many.data()},
                                             {x.data(), M, &w.view, many.data() + y1.size()}};
        MatMulMany(jobs, three);
        EXPECT_EQ(y1, y2) << DTypeName(dtype) << " M=" << M << " chunks=" << chunks;
        EXPECT_EQ(y1, y3) << DTypeName(dtype) << " M=" << M << " chunks=" << chunks;
        EXPECT_TRUE(std::equal(y1.begin(), y1.end(), many.begin()) && std::equal(y1.begin(), y1.end(), many.begin() + y1.size()))
            << DTypeName(dtype) << " M=" << M << " chunks=" << chunks << " (MatMulMany)";
      }
    }
  }
}

TEST_P(IsaTest, RmsNormMatchesReference) {
  for (int64_t n : kLengths) {
    const std::vector<float> x = RandomVector(n, 1), weight = RandomVector(n, 2);
    std::vector<float> got(static_cast<size_t>(n)), want(static_cast<size_t>(n));
    RmsNorm(x.data(), weight.data(), n, 1e-6f, got.data());
    reference::RmsNorm(x.data(), weight.data(), n, 1e-6f, want.data());
    for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(got[i], want[i], 1e-5 * std::fabs(want[i]) + 1e-6) << n;
    // In place (out == x).
    std::vector<float> inplace = x;
    RmsNorm(inplace.data(), weight.data(), n, 1e-6f, inplace.data());
    EXPECT_EQ(inplace, got) << n;
  }
}

TEST_P(IsaTest, SoftmaxMatchesReference) {
  for (int64_t n : kLengths) {
    std::vector<float> got = RandomVector(n, 3, -30.f, 30.f);
    // A masked-out position (as in causal attention) must come out as zero.
    if (n > 2) got[1] = -INFINITY;
    std::vector<float> want = got;
    Softmax(got.data(), n);
    reference::Softmax(want.data(), n);
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_NEAR(got[i], want[i], 1e-5 * want[i] + 1e-7) << "n=" << n << " i=" << i;
      total += got[i];
    }
    if (n > 2) {
      EXPECT_EQ(got[1], 0.f);
    }
    EXPECT_NEAR(total, 1.0, 1e-5);
  }
}

TEST_P(IsaTest, SiluMulMatchesReference) {
  for (int64_t n : kLengths) {
    std::vector<float> gate = RandomVector(n, 4, -20.f, 20.f);
    const std::vector<float> up = RandomVector(n, 5);
    // Saturating inputs: silu tends to 0 and to the identity.
    if (n >= 4) {
      gate[0] = -100.f;
      gate[1] = 100.f;
      gate[2] = 0.f;
      gate[3] = -1e-30f;
    }
    std::vector<float> want = gate;
    SiluMul(gate.data(), up.data(), n);
    reference::SiluMul(want.data(), up.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_NEAR(gate[i], want[i], 1e-5 * std::fabs(want[i]) + 1e-30) << "n=" << n << " i=" << i;
    }
  }
}

TEST_P(IsaTest, SoftmaxAndSiluPropagateNaN) {
  std::vector<float> x(20, 1.f);
  x[17] = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> gate = x;
  Softmax(x.data(), 20);
  EXPECT_TRUE(std::isnan(x[17]));
  const std::vector<float> up(20, 1.f);
  SiluMul(gate.data(), up.data(), 20);
  EXPECT_TRUE(std::isnan(gate[17]));
  EXPECT_NEAR(gate[0], 1.0 / (1.0 + std::exp(-1.0)), 1e-6);
}

TEST_P(IsaTest, DotMatchesDoubleSum) {
  for (int64_t n : kLengths) {
    const std::vector<float> a = RandomVector(n, 6), b = RandomVector(n, 7);
    double want = 0.0, magnitude = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      want += static_cast<double>(a[i]) * b[i];
      magnitude += std::fabs(static_cast<double>(a[i]) * b[i]);
    }
    EXPECT_NEAR(Dot(a.data(), b.data(), n), want, 1e-6 * magnitude) << n;
  }
}

TEST_P(IsaTest, AxpyMatchesScalar) {
  for (int64_t n : kLengths) {
    const std::vector<float> x = RandomVector(n, 8);
    std::vector<float> y = RandomVector(n + 1, 9);
    const float sentinel = y[n];
    std::vector<float> want = y;
    Axpy(0.75f, x.data(), y.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const double exact = want[i] + 0.75 * x[i];
      ASSERT_NEAR(y[i], exact, 1e-6 * (std::fabs(want[i]) + std::fabs(x[i]))) << n;
    }
    EXPECT_EQ(y[n], sentinel) << "Axpy wrote past the end, n=" << n;
  }
}

TEST_P(IsaTest, ConvertToF32IsExactForEvery16BitValue) {
  std::vector<uint8_t> storage(2 + 65536 * 2);
  for (uint32_t h = 0; h < 65536; ++h) std::memcpy(storage.data() + 2 + 2 * h, &h, 2);
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    // Misaligned start and lengths with every tail size.
    for (int64_t n : {int64_t{65536}, int64_t{65535}, int64_t{17}, int64_t{5}}) {
      std::vector<float> got(static_cast<size_t>(n) + 1, 42.f);
      ConvertToF32(dtype, storage.data() + 2, n, got.data());
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, storage.data() + 2 + 2 * i, 2);
        const float want = dtype == DType::kF16 ? F16ToF32(h) : BF16ToF32(h);
        if (std::isnan(want)) {
          ASSERT_TRUE(std::isnan(got[i])) << DTypeName(dtype) << " " << h;
        } else {
          ASSERT_EQ(got[i], want) << DTypeName(dtype) << " " << h;
        }
      }
      EXPECT_EQ(got[n], 42.f) << "ConvertToF32 wrote past the end";
    }
  }
  for (int64_t n : kLengths) {
    const std::vector<float> src = RandomVector(n, 10);
    std::vector<uint8_t> bytes(2 + 4 * static_cast<size_t>(n));
    std::memcpy(bytes.data() + 2, src.data(), 4 * static_cast<size_t>(n));
    std::vector<float> got(static_cast<size_t>(n));
    ConvertToF32(DType::kF32, bytes.data() + 2, n, got.data());
    EXPECT_EQ(got, src);
  }
}

// Cache rows of `dtype` two bytes past an aligned address, each `stride`
// elements apart, the buffer ending where the last row's `dim` elements do
// (reads past them show under AddressSanitizer); values rounded to dtype.
struct TestCache {
  std::vector<uint8_t> storage;
  const void* rows = nullptr;
  std::vector<float> values;  // [n, dim] as stored, widened
};

TestCache MakeCache(DType dtype, int64_t n, int64_t dim, int64_t stride, uint32_t seed) {
  TestCache c;
  const size_t elem = DTypeSize(dtype);
  // One element in from the allocation: the rows are aligned to their
  // element type, as the KV cache's always are (a misaligned float pointer
  // is undefined behaviour, which UBSan reports), but not to a vector, so
  // the vector paths must load them unaligned.
  c.storage.resize(elem + static_cast<size_t>(((n - 1) * stride + dim)) * elem);
  uint8_t* base = c.storage.data() + elem;
  const std::vector<float> drawn = RandomVector(n * stride, seed);
  c.values.resize(static_cast<size_t>(n * dim));
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < dim; ++i) {
      const float v = drawn[j * stride + i];
      uint8_t* at = base + static_cast<size_t>(j * stride + i) * elem;
      float stored = v;
      if (dtype == DType::kF16) {
        const uint16_t h = F32ToF16(v);
        std::memcpy(at, &h, 2);
        stored = F16ToF32(h);
      } else if (dtype == DType::kBF16) {
        const uint16_t h = F32ToBF16(v);
        std::memcpy(at, &h, 2);
        stored = BF16ToF32(h);
      } else {
        std::memcpy(at, &v, 4);
      }
      c.values[j * dim + i] = stored;
    }
  c.rows = base;
  return c;
}

// Head dimensions with every tail of the 64- and 32-element blocks; GQA
// groups of 1 to 6 heads (blocks of four plus a remainder).
constexpr int64_t kHeadDims[] = {1, 15, 64, 72, 128, 130, 192};

// Pointers to `count` rows of `dim` floats, `gap` floats apart (queries of
// several prompt rows are a row's width apart, not packed).
template <typename T>
std::vector<T*> RowPointers(T* base, int64_t count, int64_t dim, int64_t gap = 0) {
  std::vector<T*> rows;
  for (int64_t i = 0; i < count; ++i) rows.push_back(base + i * (dim + gap));
  return rows;
}

TEST_P(IsaTest, AttentionScoresMatchDoubleDotProducts) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16})
    for (int64_t dim : kHeadDims)
      // A lone query's keys go in four streams over the quarters of n, the
      // rest (n % 4) alone: n from fewer than four rows to several per stream.
      for (auto [heads, n] : {std::pair<int64_t, int64_t>{1, 3}, {1, 13}, {1, 70}, {3, 13}, {4, 13}, {6, 13}}) {
        const int64_t stride = dim + 5, score_stride = n + 2;
        const TestCache cache = MakeCache(dtype, n, dim, stride, 31);
        const std::vector<float> q = RandomVector(heads * (dim + 3), 32);
        const std::vector<const float*> queries = RowPointers(q.data(), heads, dim, 3);
        std::vector<float> scores(static_cast<size_t>(heads * score_stride), -7.f);
        AttentionScores(queries.data(), heads, dim, cache.rows, dtype, stride, n, 0.25f, scores.data(), score_stride);
        for (int64_t g = 0; g < heads; ++g) {
          for (int64_t j = 0; j < n; ++j) {
            double want = 0, magnitude = 0;
            for (int64_t i = 0; i < dim; ++i) {
              want += static_cast<double>(queries[g][i]) * cache.values[j * dim + i];
              magnitude += std::fabs(static_cast<double>(queries[g][i]) * cache.values[j * dim + i]);
            }
            ASSERT_NEAR(scores[g * score_stride + j], 0.25 * want, 1e-6 * magnitude + 1e-30)
                << DTypeName(dtype) << " dim " << dim << " heads " << heads << " g " << g << " j " << j;
          }
          for (int64_t j = n; j < score_stride; ++j)
            EXPECT_EQ(scores[g * score_stride + j], -7.f) << "wrote past n";
        }
      }
}

TEST_P(IsaTest, AttentionValuesMatchDoubleWeightedSums) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16})
    for (int64_t dim : kHeadDims)
      for (int64_t heads : {1, 2, 5}) {
        const int64_t n = 11, stride = dim + 3, p_stride = n + 1;
        const TestCache cache = MakeCache(dtype, n, dim, stride, 41);
        const std::vector<float> p = RandomVector(heads * p_stride, 42);
        std::vector<float> out(static_cast<size_t>(heads * dim + 1), 99.f);
        const std::vector<float*> outs = RowPointers(out.data(), heads, dim);
        AttentionValues(p.data(), heads, p_stride, cache.rows, dtype, stride, n, dim, outs.data());
        for (int64_t g = 0; g < heads; ++g)
          for (int64_t c = 0; c < dim; ++c) {
            double want = 0, magnitude = 0;
            for (int64_t j = 0; j < n; ++j) {
              want += static_cast<double>(p[g * p_stride + j]) * cache.values[j * dim + c];
              magnitude += std::fabs(static_cast<double>(p[g * p_stride + j]) * cache.values[j * dim + c]);
            }
            ASSERT_NEAR(out[g * dim + c], want, 1e-6 * magnitude + 1e-30)
                << DTypeName(dtype) << " dim " << dim << " heads " << heads << " g " << g << " c " << c;
          }
        EXPECT_EQ(out[heads * dim], 99.f) << "wrote past the last head";
      }
}

// With a float32 cache the attention kernels must give the model's earlier
// per-position Dot and Axpy loop's results to the bit, so that --kv-cache
// f32 (the default) changes no token.
TEST_P(IsaTest, F32AttentionEqualsDotAndAxpyBitForBit) {
  for (int64_t dim : kHeadDims)
    for (int64_t heads : {1, 4, 7}) {
      const int64_t n = 9, stride = dim * 2;
      const TestCache cache = MakeCache(DType::kF32, n, dim, stride, 51);
      const auto* rows = static_cast<const float*>(cache.rows);
      const std::vector<float> q = RandomVector(heads * dim, 52);
      std::vector<float> scores(static_cast<size_t>(heads * n)), out(static_cast<size_t>(heads * dim));
      const std::vector<const float*> queries = RowPointers(q.data(), heads, dim);
      const std::vector<float*> outs = RowPointers(out.data(), heads, dim);
      AttentionScores(queries.data(), heads, dim, cache.rows, DType::kF32, stride, n, 0.125f, scores.data(), n);
      AttentionValues(scores.data(), heads, n, cache.rows, DType::kF32, stride, n, dim, outs.data());
      // The same range in tiles (accumulating onto the first tile's sums)
      // gives the same bits: the model tiles long ranges.
      std::vector<float> tiled(out.size(), 5.f);
      const std::vector<float*> tiled_outs = RowPointers(tiled.data(), heads, dim);
      for (int64_t j0 = 0; j0 < n; j0 += 4)
        AttentionValues(scores.data() + j0, heads, n, rows + j0 * stride, DType::kF32, stride, std::min<int64_t>(4, n - j0),
                        dim, tiled_outs.data(), /*accumulate=*/j0 > 0);
      EXPECT_EQ(tiled, out) << dim << " " << heads;
      for (int64_t g = 0; g < heads; ++g) {
        std::vector<float> want(static_cast<size_t>(dim), 0.f);
        for (int64_t j = 0; j < n; ++j) {
          ASSERT_EQ(scores[g * n + j], Dot(q.data() + g * dim, rows + j * stride, dim) * 0.125f) << dim << " " << g;
          Axpy(scores[g * n + j], rows + j * stride, want.data(), dim);
        }
        for (int64_t c = 0; c < dim; ++c) ASSERT_EQ(out[g * dim + c], want[c]) << dim << " " << g << " " << c;
      }
    }
}

// One AttentionBlock case: keys and values of `dtype`, n rows at uneven
// strides, and `count` queries whose key ranges end at the last rows (a
// prompt's block of rows) and, for every third, begin 20 keys earlier (a
// sliding window).
struct AttentionBlockCase {
  TestCache keys, values;
  std::vector<float> q;  // [count, dim + 3]
  std::vector<int64_t> begin, end;
  std::vector<float> sinks;
  int64_t count, dim, n;
  AttentionBlockCase(DType dtype, int64_t count_, int64_t dim_, int64_t n_, uint32_t seed)
      : keys(MakeCache(dtype, n_, dim_, dim_ + 5, seed)),
        values(MakeCache(dtype, n_, dim_, dim_ + 3, seed + 1)),
        q(RandomVector(count_ * (dim_ + 3), seed + 2)),
        sinks(RandomVector(count_, seed + 3)),
        count(count_),
        dim(dim_),
        n(n_) {
    for (int64_t i = 0; i < count; ++i) {
      end.push_back(std::max<int64_t>(1, n - (count - 1 - i) % n));
      begin.push_back(i % 3 == 0 ? std::max<int64_t>(0, end.back() - 20) : 0);
    }
  }
  // Runs queries [first, first + k) as one block; returns their outputs [k, dim].
  std::vector<float> Run(DType dtype, int64_t first, int64_t k, bool with_sinks, bool row_invariant) const {
    std::vector<const float*> queries;
    for (int64_t i = first; i < first + k; ++i) queries.push_back(q.data() + i * (dim + 3));
    std::vector<float> out(static_cast<size_t>(k * dim + 1), 99.f);
    const std::vector<float*> outs = RowPointers(out.data(), k, dim);
    std::vector<float> scratch(AttentionBlockScratchFloats(k, n, dim), std::nanf(""));
    AttentionBlock({.queries = queries.data(),
                    .outs = outs.data(),
                    .begin = begin.data() + first,
                    .end = end.data() + first,
                    .sinks = with_sinks ? sinks.data() + first : nullptr,
                    .count = k,
                    .dim = dim,
                    .keys = keys.rows,
                    .values = values.rows,
                    .cache_dtype = dtype,
                    .key_stride = dim + 5,
                    .value_stride = dim + 3,
                    .n = n,
                    .scale = 0.125f,
                    .row_invariant = row_invariant},
                   scratch.data());
    EXPECT_EQ(out[k * dim], 99.f) << "wrote past the last query's output";
    out.pop_back();
    return out;
  }
};

// Against attention computed in double from the stored (rounded) cache
// values: scores, a softmax over each query's own keys (with its sink),
// the weighted values. Blocks of 1 to 19 queries on every path, with and
// without row_invariant (which selects the lanes kernel at every count on
// AVX-512), over 70 keys (more than one 64-key tile).
TEST_P(IsaTest, AttentionBlockMatchesDoubleAttention) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16})
    for (int64_t dim : {int64_t{1}, int64_t{15}, int64_t{64}, int64_t{72}, int64_t{128}, int64_t{130}})
      for (int64_t count : {1, 5, 8, 16, 19})
        for (bool with_sinks : {false, true})
          for (bool row_invariant : {false, true}) {
            const AttentionBlockCase c(dtype, count, dim, 70, static_cast<uint32_t>(dim + count));
            const std::vector<float> got = c.Run(dtype, 0, count, with_sinks, row_invariant);
            for (int64_t i = 0; i < count; ++i) {
              const float* query = c.q.data() + i * (dim + 3);
              std::vector<double> score;
              double max_score = with_sinks ? c.sinks[i] : -INFINITY;
              for (int64_t j = c.begin[i]; j < c.end[i]; ++j) {
                double dot = 0;
                for (int64_t d = 0; d < dim; ++d) dot += static_cast<double>(query[d]) * c.keys.values[j * dim + d];
                score.push_back(0.125 * dot);
                max_score = std::max(max_score, score.back());
              }
              double z = with_sinks ? std::exp(c.sinks[i] - max_score) : 0.0;
              for (double& v : score) z += (v = std::exp(v - max_score));
              for (int64_t d = 0; d < dim; ++d) {
                double want = 0, magnitude = 0;
                for (int64_t j = c.begin[i]; j < c.end[i]; ++j) {
                  const double term = score[j - c.begin[i]] / z * c.values.values[j * dim + d];
                  want += term;
                  magnitude += std::fabs(term);
                }
                ASSERT_NEAR(got[i * dim + d], want, 1e-4 * magnitude + 1e-6)
                    << DTypeName(dtype) << " dim " << dim << " count " << count << " query " << i << " column " << d
                    << (with_sinks ? " sinks" : "") << (row_invariant ? " row-invariant" : "");
              }
            }
          }
}

// A text scores the same alone or batched: each query's output is the same
// bits in any block that takes the same path (every block with
// row_invariant; blocks of kAttentionBlockMinQueries or more without).
TEST_P(IsaTest, AttentionBlockGivesEachQueryTheSameBitsInAnyBlock) {
  for (DType dtype : {DType::kF32, DType::kBF16})
    for (int64_t dim : {int64_t{72}, int64_t{128}}) {
      const int64_t count = 19;
      const AttentionBlockCase c(dtype, count, dim, 90, 71);
      for (bool with_sinks : {false, true}) {
        const std::vector<float> all = c.Run(dtype, 0, count, with_sinks, /*row_invariant=*/true);
        for (int64_t i = 0; i < count; ++i) {
          const std::vector<float> alone = c.Run(dtype, i, 1, with_sinks, /*row_invariant=*/true);
          ASSERT_TRUE(std::equal(alone.begin(), alone.end(), all.begin() + i * dim))
              << DTypeName(dtype) << " dim " << dim << " query " << i;
        }
        const std::vector<float> wide = c.Run(dtype, 0, count, with_sinks, /*row_invariant=*/false);
        for (int64_t first = 0; first + kAttentionBlockMinQueries <= count; first += 5) {
          const std::vector<float> part = c.Run(dtype, first, kAttentionBlockMinQueries, with_sinks, false);
          ASSERT_TRUE(std::equal(part.begin(), part.end(), wide.begin() + first * dim))
              << DTypeName(dtype) << " dim " << dim << " from query " << first;
        }
      }
    }
}

TEST(AttentionKernels, AttentionBlockRejectsEmptyOrOutOfRangeKeys) {
  const float q[4] = {1, 2, 3, 4};
  float o[4];
  const float* queries[1] = {q};
  float* outs[1] = {o};
  const float keys[8] = {};
  std::vector<float> scratch(AttentionBlockScratchFloats(1, 2, 4));
  for (auto [b, e] : {std::pair<int64_t, int64_t>{1, 1}, {0, 3}, {-1, 1}}) {
    const int64_t begin[1] = {b}, end[1] = {e};
    EXPECT_THROW(AttentionBlock({.queries = queries, .outs = outs, .begin = begin, .end = end, .count = 1, .dim = 4,
                                 .keys = keys, .values = keys, .key_stride = 4, .value_stride = 4, .n = 2},
                                scratch.data()),
                 Error)
        << b << " " << e;
  }
}

// Every path rounds as dtype.h's scalar conversions do, F16 saturating at
// 65504; checked on specials, the half range's edges and random values,
// with every tail length.
TEST_P(IsaTest, ConvertFromF32RoundsAsTheScalarConversions) {
  std::vector<float> src = {0.f, -0.f, 1.f, -1.f, 65504.f, 65519.f, 65520.f, 1e6f, -1e6f,
                            std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(), 6.1e-5f, 5.96e-8f, 2.98e-8f, 1e-10f,
                            1.00048828125f, 1.0029296875f, 3.0e38f, -3.0e38f,
                            // BF16 ties: to the even 0x3f80, and up to the even 0x3f82.
                            1.00390625f, 1.01171875f, -1.00390625f, -1.01171875f};
  const std::vector<float> random = RandomVector(200, 61);
  for (float v : random) {
    src.push_back(v);
    src.push_back(v * 1e-5f);
    src.push_back(v * 3e4f);
  }
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    for (int64_t n : {static_cast<int64_t>(src.size()), int64_t{17}, int64_t{9}, int64_t{3}}) {
      std::vector<uint16_t> got(static_cast<size_t>(n) + 1, 0xabcd);
      ConvertFromF32(src.data(), n, dtype, got.data());
      for (int64_t i = 0; i < n; ++i) {
        const float v = src[i];
        if (std::isnan(v)) {
          const float back = dtype == DType::kF16 ? F16ToF32(got[i]) : BF16ToF32(got[i]);
          EXPECT_TRUE(std::isnan(back)) << DTypeName(dtype);
          continue;
        }
        const uint16_t want = dtype == DType::kBF16 ? F32ToBF16(v) : F32ToF16(std::clamp(v, -65504.f, 65504.f));
        ASSERT_EQ(got[i], want) << DTypeName(dtype) << " " << v;
      }
      EXPECT_EQ(got[n], 0xabcd) << "ConvertFromF32 wrote past the end";
    }
  }
  std::vector<float> copy(src.size());
  ConvertFromF32(src.data(), static_cast<int64_t>(src.size()), DType::kF32, copy.data());
  for (size_t i = 0; i < src.size(); ++i) {
    if (!std::isnan(src[i])) {
      EXPECT_EQ(copy[i], src[i]);
    }
  }
}

TEST(AttentionKernels, RejectNonCacheTypes) {
  const float q[4] = {};
  float out[4];
  const float* queries[1] = {q};
  float* outs[1] = {out};
  EXPECT_THROW(AttentionScores(queries, 1, 4, q, DType::kQ8, 4, 1, 1.f, out, 1), Error);
  EXPECT_THROW(AttentionValues(q, 1, 1, q, DType::kQ4, 4, 1, 4, outs), Error);
  EXPECT_THROW(ConvertFromF32(q, 4, DType::kQ8, out), Error);
  EXPECT_THROW(AttentionScores(queries, 1, 4, q, DType::kF32, 2, 1, 1.f, out, 1), Error);  // stride < dim
}

// The bandwidth probe's default size: 1 GiB at least, and four times the
// last-level cache wherever a quarter of the free memory allows it.
TEST(DramProbe, ReadsFourTimesTheLastLevelCache) {
  const uint64_t llc = ProbeLastLevelCacheBytes(), free_quarter = ProbeHostMemory().free_bytes / 4;
  const uint64_t bytes = DramProbeBytes();
  EXPECT_GE(bytes, uint64_t{1} << 30);
  if (free_quarter >= 4 * llc) EXPECT_GE(bytes, 4 * llc);
  if (bytes > uint64_t{1} << 30) {
    EXPECT_EQ(bytes, std::min(4 * llc, free_quarter == 0 ? 4 * llc : free_quarter));
  }
}

TEST_P(IsaTest, ProbesReportPositiveRates) {
  ThreadPool pool(2);
  EXPECT_GT(MeasureReadBandwidthGBs(pool, 32 << 20), 0.0);
  EXPECT_GT(MeasureFmaPeakGflops(pool), 0.0);
  // The dot-product probes report 0 exactly where the path has no such
  // instruction; the int8 one measures whatever the quantized kernels use.
  const double int8 = MeasureInt8DotPeakGops(pool);
  if (GetParam() == Isa::kScalar) {
    EXPECT_EQ(int8, 0.0);
  } else {
    EXPECT_GT(int8, 0.0);
  }
  const double bf16 = MeasureBf16DotPeakGflops(pool);
  if (GetParam() == Isa::kAvx512 && __builtin_cpu_supports("avx512bf16")) {
    EXPECT_GT(bf16, 0.0);
  } else {
    EXPECT_EQ(bf16, 0.0);
  }
}

// The bandwidth probe's read patterns must each read every float once: small
// integers sum exactly in any order, so each pattern's sum equals the
// closed form at lengths that leave every kind of tail (parts of whole
// 256-byte steps, then a partial vector).
TEST_P(IsaTest, ProbeReadPatternsReadEveryFloatOnce) {
  for (int64_t n : {0, 1, 15, 16, 63, 64, 65, 255, 256, 257, 1000, 4096 + 37}) {
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<float>(i % 7);
    double expected = 0.0;
    for (float f : v) expected += f;
    for (int streams : {1, 2, 4})
      for (bool prefetch : {false, true})
        EXPECT_EQ(internal::SumFloatsForTesting(v.data(), n, streams, prefetch), expected)
            << "n " << n << ", " << streams << " streams, prefetch " << prefetch;
  }
}

// Under ScopedRowInvariantMatMul each output row is the same bits whatever
// the number of rows in the call: one row alone equals that row of 13 (the
// decode path would otherwise take the single row).
TEST_P(IsaTest, RowInvariantMatMulGivesEachRowTheSameBits) {
  const int64_t M = 13, N = 70, K = 96;
  const std::vector<float> x = RandomVector(M * K, 31);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const TestWeights t = MakeWeights(dtype, N, K, 32);
    const WeightView& w = t.view;
    ThreadPool pool(2);
    const ScopedRowInvariantMatMul invariant;
    std::vector<float> all(static_cast<size_t>(M * N)), one(static_cast<size_t>(N));
    MatMul(x.data(), M, w, all.data(), pool);
    for (int64_t m = 0; m < M; m += 4) {
      MatMul(x.data() + m * K, 1, w, one.data(), pool);
      EXPECT_TRUE(std::equal(one.begin(), one.end(), all.begin() + m * N)) << DTypeName(dtype) << " row " << m;
      // MatMulMany too (scoring's grouped experts; q, k and v): all rows in
      // one job beside row m alone in another.
      std::vector<float> many(static_cast<size_t>((M + 1) * N), std::numeric_limits<float>::quiet_NaN());
      const std::vector<MatMulJob> jobs = {{x.data(), M, &w, many.data()},
                                           {x.data() + m * K, 1, &w, many.data() + M * N}};
      MatMulMany(jobs, pool);
      EXPECT_TRUE(std::equal(all.begin(), all.end(), many.begin())) << DTypeName(dtype) << " row " << m;
      EXPECT_TRUE(std::equal(one.begin(), one.end(), many.begin() + M * N)) << DTypeName(dtype) << " row " << m;
    }
  }
}

// With bf16 activations the BF16 prefill rounds each activation to bf16
// (relative change at most 2^-9) and multiplies with vdpbf16ps: held to
// 2^-8 * sum_k |w x| against the float reference, over shapes that cross
// every block edge (odd K falls back to the float product, exactly). Where
// the path or CPU lacks AVX512-BF16 the float prefill runs and stays exact.
TEST_P(IsaTest, Bf16ActivationsPrefillStaysWithinItsBound) {
  struct Restore {
    ~Restore() {
      SetBf16Activations(false);
      internal::MaskAmxForTesting(false);
    }
  } restore;
  SetBf16Activations(true);
  const bool bf16_path = GetParam() == Isa::kAvx512 && __builtin_cpu_supports("avx512bf16");
  EXPECT_EQ(PrefillDotFor(DType::kBF16) == PrefillDot::kBf16, bf16_path);
  EXPECT_EQ(PrefillDotFor(DType::kF16), PrefillDot::kFp32Fma);
  // On a CPU with AMX, both the tile unit's kernels (K a multiple of 32)
  // and vdpbf16ps's (the unit masked).
  for (bool mask_amx : {false, true}) {
    if (mask_amx && !internal::HasAmxBf16()) break;
    internal::MaskAmxForTesting(mask_amx);
    // Rows of x past a multiple of the 8-row bf16 tile: 1 to 7 (9, 10, 11,
    // 12, 37, 14, 23) and none (300, 64).
    for (const auto& [M, N, K] : {std::tuple{9, 33, 64},
                                  {37, 300, 98},
                                  {300, 70, 544},
                                  {17, 40, 63},
                                  {64, 257, 1000},
                                  {10, 40, 96},
                                  {11, 33, 64},
                                  {12, 35, 128},
                                  {14, 50, 128},
                                  {23, 40, 64}}) {
      const TestWeights w = MakeWeights(DType::kBF16, N, K, static_cast<uint32_t>(M + N + K));
      const std::vector<float> x =
          RandomVector(static_cast<int64_t>(M) * K, static_cast<uint32_t>(M * K));
      std::vector<float> y(static_cast<size_t>(M) * N, std::numeric_limits<float>::quiet_NaN());
      std::vector<float> want(y.size());
      MatMul(x.data(), M, w.view, y.data(), TwoThreads());
      reference::MatMul(x.data(), M, w.view, want.data());
      int failures = 0;
      for (int m = 0; m < M && failures < 5; ++m)
        for (int n = 0; n < N && failures < 5; ++n) {
          double magnitude = 0;
          for (int k = 0; k < K; ++k)
            magnitude += std::fabs(double(x[m * K + k]) * w.view.At(n, k));
          const double bound =
              (bf16_path && K % 2 == 0 ? std::ldexp(1.0, -8) : 1e-5) * magnitude + 1e-6;
          const double err = std::fabs(double(y[m * N + n]) - want[m * N + n]);
          if (!(err <= bound)) {
            ADD_FAILURE() << "M " << M << " N " << N << " K " << K << " y[" << m << ", " << n
                          << "] = " << y[m * N + n] << ", reference " << want[m * N + n]
                          << ", bound " << bound << (mask_amx ? " (AMX masked)" : "");
            ++failures;
          }
        }
    }
  }
}

// On a CPU with AMX the bf16 prefill (K a multiple of 32) runs on the tile
// unit, which accumulates in float as vdpbf16ps does but in its own order
// and over the whole of K, so its bits differ from the AVX-512 kernels'. It
// is held to the bf16 bound against the float reference; each row of x must
// get the same bits whatever the row count and wherever the row sits among
// the tiles of x (a text scores the same alone or batched); and the AVX-512
// path (tile unit masked) must stay within the same bound. Row counts below,
// at and past one 16-row tile, up to 19 tiles (every count of tiles
// multiplied together, 1 to 5); K of 25 tile products; N ending in a block
// of 8 weight rows (copied into padding).
TEST(AmxBf16Test, AmxPrefillStaysWithinTheBf16BoundAndRowInvariant) {
  if (!CpuHasAvx512() || !__builtin_cpu_supports("avx512bf16") || !internal::HasAmxBf16())
    GTEST_SKIP() << "this CPU lacks AVX512-BF16 or AMX-BF16 (or EPWA_AMX=0)";
  const ScopedIsa isa(Isa::kAvx512);
  struct Restore {
    ~Restore() { SetBf16Activations(false); }
  } restore;
  SetBf16Activations(true);
  const int64_t N = 72, K = 800, kMax = 300;
  const TestWeights w = MakeWeights(DType::kBF16, N, K, 93);
  const std::vector<float> x = RandomVector(kMax * K, 94);
  std::vector<float> want(static_cast<size_t>(kMax * N)), all(want.size());
  reference::MatMul(x.data(), kMax, w.view, want.data());
  MatMul(x.data(), kMax, w.view, all.data(), TwoThreads());
  std::vector<double> bound(want.size());
  for (int64_t m = 0; m < kMax; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double magnitude = 0;
      for (int64_t k = 0; k < K; ++k) magnitude += std::fabs(double(x[m * K + k]) * w.view.At(n, k));
      bound[m * N + n] = std::ldexp(1.0, -8) * magnitude + 1e-6;
    }
  for (int64_t M : std::initializer_list<int64_t>{9, 15, 16, 17, 40, kMax}) {
    // Rows [first, first + M) of x: each tile position meets other rows.
    const int64_t first = kMax - M;
    std::vector<float> amx(static_cast<size_t>(M * N)), avx512(amx.size());
    MatMul(x.data() + first * K, M, w.view, amx.data(), TwoThreads());
    internal::MaskAmxForTesting(true);
    MatMul(x.data() + first * K, M, w.view, avx512.data(), TwoThreads());
    internal::MaskAmxForTesting(false);
    int failures = 0;
    for (int64_t i = 0; i < M * N && failures < 5; ++i) {
      const size_t g = static_cast<size_t>(first * N + i);
      if (amx[i] != all[g] || !(std::fabs(double(amx[i]) - want[g]) <= bound[g]) ||
          !(std::fabs(double(avx512[i]) - want[g]) <= bound[g])) {
        ADD_FAILURE() << "M " << M << " output " << i << ": AMX " << amx[i] << " (in the " << kMax << "-row product "
                      << all[g] << "), AVX-512 " << avx512[i] << ", reference " << want[g] << ", bound " << bound[g];
        ++failures;
      }
    }
  }
}

// SetSplitBf16Activations: on a CPU with AMX the float prefill with BF16
// weights splits x into three bf16 parts for the tile unit. Three checks
// that fail for anything short of exact parts: (1) one-hot weights give each
// input back bit for bit (x = a + b + c exactly, at scales from 2^-100 to
// 2^100), where bf16 activations (one part) lose its low bits; (2) random
// weights stay within the float kernels' 1e-5 * sum_k |w x| bound, which
// bf16 activations (2^-9 per term) break; (3) each row gets the same bits
// alone or among others and in MatMulMany, under ScopedRowInvariantMatMul
// (scoring's mode, where one row also takes the tile unit).
TEST(AmxBf16Test, SplitActivationsGiveFloatProductsOnTheTileUnit) {
  if (!CpuHasAvx512() || !__builtin_cpu_supports("avx512bf16") || !internal::HasAmxBf16())
    GTEST_SKIP() << "this CPU lacks AVX512-BF16 or AMX-BF16 (or EPWA_AMX=0)";
  const ScopedIsa isa(Isa::kAvx512);
  struct Restore {
    ~Restore() {
      SetSplitBf16Activations(false);
      SetBf16Activations(false);
    }
  } restore;
  EXPECT_EQ(PrefillDotFor(DType::kBF16), PrefillDot::kFp32Fma);
  SetSplitBf16Activations(true);
  EXPECT_EQ(PrefillDotFor(DType::kBF16), PrefillDot::kBf16Split);
  EXPECT_EQ(PrefillDotFor(DType::kF16), PrefillDot::kFp32Fma);

  {  // (1) One-hot rows: y[m, n] = x[m, n].
    const int64_t M = 37, N = 40, K = 96;
    TestWeights w = MakeWeights(DType::kBF16, N, K, 1);
    uint8_t* base = const_cast<uint8_t*>(static_cast<const uint8_t*>(w.view.data));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        const uint16_t h = F32ToBF16(k == n ? 1.f : 0.f);
        std::memcpy(base + 2 * (n * K + k), &h, 2);
      }
    std::vector<float> x = RandomVector(M * K, 7);
    for (int64_t i = 0; i < M * K; ++i) x[i] = std::ldexp(x[i], static_cast<int>(i % 201) - 100);
    for (bool bf16 : {false, true}) {
      SetBf16Activations(bf16);
      std::vector<float> y(static_cast<size_t>(M * N), std::numeric_limits<float>::quiet_NaN());
      MatMul(x.data(), M, w.view, y.data(), TwoThreads());
      int64_t exact = 0;
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) exact += y[m * N + n] == x[m * K + n];
      if (bf16) {
        EXPECT_LT(exact, M * N / 2) << "bf16 activations kept most inputs whole: the check is too weak";
      } else {
        EXPECT_EQ(exact, M * N) << "the three parts did not sum to x";
      }
    }
    SetBf16Activations(false);
  }

  // (2) and (3): random weights; N ends in a block of 8 weight rows.
  const int64_t N = 72, K = 800, kMax = 300;
  const TestWeights w = MakeWeights(DType::kBF16, N, K, 95);
  const std::vector<float> x = RandomVector(kMax * K, 96);
  std::vector<float> all(static_cast<size_t>(kMax * N));
  const ScopedRowInvariantMatMul row_invariant;
  MatMul(x.data(), kMax, w.view, all.data(), TwoThreads());
  ExpectMatMulClose(x.data(), kMax, w.view, all, "split activations");
  SetBf16Activations(true);
  {
    std::vector<float> bf16(all.size());
    MatMul(x.data(), kMax, w.view, bf16.data(), TwoThreads());
    std::vector<float> want(all.size());
    reference::MatMul(x.data(), kMax, w.view, want.data());
    int64_t outside = 0;
    for (int64_t m = 0; m < kMax; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double magnitude = 0;
        for (int64_t k = 0; k < K; ++k) magnitude += std::fabs(double(x[m * K + k]) * w.view.At(n, k));
        outside += !(std::fabs(double(bf16[m * N + n]) - want[m * N + n]) <= 1e-5 * magnitude);
      }
    EXPECT_GT(outside, 0) << "bf16 activations met the float bound: the bound is too loose to tell";
  }
  SetBf16Activations(false);
  for (int64_t M : std::initializer_list<int64_t>{1, 9, 16, 17, 40, kMax}) {
    const int64_t first = kMax - M;
    std::vector<float> alone(static_cast<size_t>(M * N));
    MatMul(x.data() + first * K, M, w.view, alone.data(), TwoThreads());
    std::vector<float> many(static_cast<size_t>(M * N + 3 * N));
    const std::vector<MatMulJob> jobs = {{x.data(), 3, &w.view, many.data() + M * N},
                                         {x.data() + first * K, M, &w.view, many.data()}};
    MatMulMany(jobs, TwoThreads());
    EXPECT_TRUE(std::equal(alone.begin(), alone.end(), all.begin() + first * N)) << "M " << M << " alone";
    EXPECT_TRUE(std::equal(alone.begin(), alone.end(), many.begin())) << "M " << M << " in MatMulMany";
    EXPECT_TRUE(std::equal(all.begin(), all.begin() + 3 * N, many.begin() + M * N)) << "M " << M << " other job";
  }
}

// The float prefill's exact arithmetic, written out: each output adds its
// products x[m, k] * w[n, k] with fused multiply-adds in the order k = 0, 1,
// 2, ... within panels of 256 inputs, starting each panel from zero, and adds
// each panel's sum to the running total. Every SIMD path keeps this order,
// so results do not depend on the CPU (AVX-512 or AVX2) or on whether an
// expert's product ran alone or in MatMulMany, and a kernel that packs
// weights differently must keep it too: a tile that summed two inputs in the
// other order, or a panel of another depth, fails here bit for bit where the
// tolerance of the reference tests would pass it.
std::vector<float> PanelOrderedProduct(const float* x, int64_t M, const WeightView& w) {
  const int64_t N = w.rows, K = w.cols;
  std::vector<float> y(static_cast<size_t>(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      float total = 0.f;
      for (int64_t k0 = 0; k0 < K; k0 += 256) {
        float panel = 0.f;
        for (int64_t k = k0; k < std::min(K, k0 + 256); ++k)
          panel = std::fma(x[m * K + k], static_cast<float>(w.At(n, k)), panel);
        total = k0 == 0 ? panel : panel + total;
      }
      y[static_cast<size_t>(m * N + n)] = total;
    }
  return y;
}

TEST_P(IsaTest, FloatPrefillSumsInPanelOrderOnEveryPath) {
  if (GetParam() == Isa::kScalar) GTEST_SKIP() << "the scalar path accumulates in double";
  for (DType dtype : {DType::kBF16, DType::kF16, DType::kF32}) {
    // K: one panel, a last panel of 46 inputs (302 = 256 + 46, not a
    // multiple of the 16- or 32-input blocks the packers work in), several
    // panels, and odd (63).
    for (const auto& [M, N, K] : {std::tuple{9, 33, 64}, {37, 300, 302}, {130, 70, 544}, {17, 40, 63}, {12, 257, 1000}}) {
      const TestWeights w = MakeWeights(dtype, N, K, static_cast<uint32_t>(3 * M + N + K));
      const std::vector<float> x = RandomVector(static_cast<int64_t>(M) * K, static_cast<uint32_t>(M + 7 * K));
      const std::vector<float> want = PanelOrderedProduct(x.data(), M, w.view);
      std::vector<float> alone(want.size(), std::numeric_limits<float>::quiet_NaN());
      MatMul(x.data(), M, w.view, alone.data(), TwoThreads());
      EXPECT_EQ(alone, want) << DTypeName(dtype) << " MatMul M " << M << " N " << N << " K " << K;
      // The same product as one of an MoE layer's expert jobs.
      const std::vector<float> x2 = RandomVector(3 * K, 5);
      std::vector<float> many(want.size(), std::numeric_limits<float>::quiet_NaN()), other(static_cast<size_t>(3 * N));
      const std::vector<MatMulJob> jobs = {{x2.data(), 3, &w.view, other.data()}, {x.data(), M, &w.view, many.data()}};
      MatMulMany(jobs, TwoThreads());
      EXPECT_EQ(many, want) << DTypeName(dtype) << " MatMulMany M " << M << " N " << N << " K " << K;
    }
  }
}

// A checkpoint's tensors start wherever its file puts them (safetensors
// aligns them to 8 bytes at best), and MatMul uses them there. Where the rows
// lie a whole number of 4-byte words past a cache line, the AVX-512 decode
// loads whole lines and realigns them in registers; every start must give the
// bits of an aligned copy. Each matrix ends where its allocation does, so a
// read past its last row shows under AddressSanitizer.
TEST_P(IsaTest, MatMulGivesTheSameBitsAtEveryAlignment) {
  for (DType dtype : {DType::kBF16, DType::kF16, DType::kF32}) {
    // Float weights at an address that is not a multiple of 4 would be
    // misaligned floats for the scalar path (undefined behaviour).
    const size_t step = dtype == DType::kF32 ? 4 : 2;
    for (int64_t K : {32, 96, 1024}) {
      const int64_t N = 13;  // three blocks of 4 rows and a single row
      const TestWeights source = MakeWeights(dtype, N, K, 71);
      const size_t bytes = source.view.Bytes();
      for (int64_t M : {1, 2, 5, 8, 9}) {
        const std::vector<float> x = RandomVector(M * K, 72);
        std::vector<float> aligned;
        for (size_t offset = 0; offset < 64; offset += step) {
          void* memory = nullptr;
          ASSERT_EQ(posix_memalign(&memory, 64, offset + bytes), 0);
          std::unique_ptr<uint8_t, decltype(&std::free)> buffer(static_cast<uint8_t*>(memory), &std::free);
          std::memcpy(buffer.get() + offset, source.view.data, bytes);
          WeightView view = source.view;
          view.data = buffer.get() + offset;
          std::vector<float> y(static_cast<size_t>(M * N));
          MatMul(x.data(), M, view, y.data(), TwoThreads());
          if (offset == 0) {
            aligned = y;
            ExpectMatMulClose(x.data(), M, view, y, DTypeName(dtype));
          } else {
            EXPECT_EQ(y, aligned) << DTypeName(dtype) << " K=" << K << " M=" << M << " offset " << offset;
          }
        }
      }
    }
  }
}

// MatMulMany gives every job exactly MatMul's result, fused (decode-sized
// jobs of one dtype) or not (a prefill-sized job, mixed dtypes).
TEST_P(IsaTest, MatMulManyEqualsEachMatMul) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const TestWeights a = MakeWeights(dtype, 70, 96, 51), b = MakeWeights(dtype, 33, 96, 52),
                      c = MakeWeights(dtype, 129, 70, 53), mixed = MakeWeights(DType::kF32, 17, 96, 54);
    for (const std::vector<int64_t>& rows : {std::vector<int64_t>{1, 1, 1}, {3, 8, 2}, {1, 12, 1}}) {
      for (bool mix : {false, true}) {
        // Job 3 reads job 0's x, as k reads q's: a fused decode prepares it once.
        const WeightView* ws[] = {&a.view, mix ? &mixed.view : &b.view, &c.view, &b.view};
        const int64_t job_rows[] = {rows[0], rows[1], rows[2], rows[0]};
        std::vector<std::vector<float>> xs, got, want;
        std::vector<MatMulJob> jobs;
        for (int j = 0; j < 4; ++j) {
          if (j < 3) xs.push_back(RandomVector(rows[j] * ws[j]->cols, static_cast<uint32_t>(60 + j)));
          got.emplace_back(static_cast<size_t>(job_rows[j] * ws[j]->rows), std::numeric_limits<float>::quiet_NaN());
          want.emplace_back(got.back().size());
        }
        for (int j = 0; j < 4; ++j) jobs.push_back({xs[j % 3].data(), job_rows[j], ws[j], got[j].data()});
        MatMulMany(jobs, TwoThreads());
        for (int j = 0; j < 4; ++j) {
          MatMul(xs[j % 3].data(), job_rows[j], *ws[j], want[j].data(), TwoThreads());
          EXPECT_EQ(got[j], want[j]) << DTypeName(dtype) << " job " << j << " rows " << job_rows[j]
                                     << (mix ? " mixed" : "");
        }
      }
    }
  }
}

// The many-job prefill of an MoE layer (experts with decode-sized and
// prefill-sized row counts, gate and up sharing x) gives every job exactly
// MatMul's result, with float activations and with bf16 activations.
TEST_P(IsaTest, MatMulManyPrefillEqualsEachMatMul) {
  struct Restore {
    ~Restore() {
      SetBf16Activations(false);
      internal::MaskAmxForTesting(false);
    }
  } restore;
  const std::vector<int64_t> expert_rows = {9, 1, 16, 3, 33, 8, 12, 40, 2};
  // bf16 activations twice on a CPU with AMX: on the tile unit and (masked)
  // through vdpbf16ps.
  for (int mode : {0, 1, 2}) {
    const bool bf16_x = mode > 0;
    if (mode == 2 && !internal::HasAmxBf16()) break;
    SetBf16Activations(bf16_x);
    internal::MaskAmxForTesting(mode == 2);
    for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
      const TestWeights gate = MakeWeights(dtype, 70, 96, 91), up = MakeWeights(dtype, 300, 96, 92);
      std::vector<std::vector<float>> xs, got;
      std::vector<MatMulJob> jobs;
      for (size_t e = 0; e < expert_rows.size(); ++e) {
        const int64_t M = expert_rows[e];
        xs.push_back(RandomVector(M * 96, static_cast<uint32_t>(100 + e)));
        for (const WeightView* w : {&gate.view, &up.view})
          got.emplace_back(static_cast<size_t>(M * w->rows), std::numeric_limits<float>::quiet_NaN());
      }
      for (size_t e = 0; e < expert_rows.size(); ++e) {
        jobs.push_back({xs[e].data(), expert_rows[e], &gate.view, got[2 * e].data()});
        jobs.push_back({xs[e].data(), expert_rows[e], &up.view, got[2 * e + 1].data()});
      }
      // Grouped in shared parallel regions on AVX-512 and AVX2 (the scalar
      // path runs the jobs one by one).
      const bool grouped = internal::MatMulManyFused(jobs, TwoThreads());
      EXPECT_EQ(grouped, GetParam() != Isa::kScalar) << DTypeName(dtype);
      if (!grouped) MatMulMany(jobs, TwoThreads());
      for (size_t j = 0; j < jobs.size(); ++j) {
        std::vector<float> want(got[j].size());
        MatMul(jobs[j].x, jobs[j].M, *jobs[j].w, want.data(), TwoThreads());
        EXPECT_EQ(got[j], want) << DTypeName(dtype) << " job " << j << " rows " << jobs[j].M
                                << (bf16_x ? " bf16 activations" : "") << (mode == 2 ? " (AMX masked)" : "");
      }
    }
  }
}

// Prefill names the instruction whose peak bounds it.
TEST_P(IsaTest, PrefillDotNamesTheInstructionInUse) {
  EXPECT_EQ(PrefillDotFor(DType::kBF16), PrefillDot::kFp32Fma);
  // AVX-512 multiplies integers with VNNI (else the float prefill runs),
  // AVX2 with vpmaddubsw.
  const bool integer = (GetParam() == Isa::kAvx512 && __builtin_cpu_supports("avx512vnni")) || GetParam() == Isa::kAvx2;
  for (DType d : {DType::kQ8, DType::kQ4, DType::kNF4, DType::kMXFP4})
    EXPECT_EQ(PrefillDotFor(d), integer ? PrefillDot::kInt8 : PrefillDot::kFp32Fma) << DTypeName(d);
  SetFloatActivations(true);
  EXPECT_EQ(PrefillDotFor(DType::kQ4), PrefillDot::kFp32Fma);
  SetFloatActivations(false);
}

INSTANTIATE_TEST_SUITE_P(AllSupported, IsaTest, ::testing::ValuesIn(SupportedIsas()),
                         [](const ::testing::TestParamInfo<Isa>& info) { return IsaName(info.param); });

// ---------------------------------------------------------------------------
// Dispatch.

TEST(Dispatch, DefaultsToTheBestSupportedPath) {
  const std::vector<Isa> isas = SupportedIsas();
  ASSERT_FALSE(isas.empty());
  EXPECT_EQ(isas.back(), Isa::kScalar);
  EXPECT_EQ(ActiveIsa(), isas.front());
}

TEST(Dispatch, EveryPathHasAName) {
  EXPECT_STREQ(IsaName(Isa::kAvx512), "avx512");
  EXPECT_STREQ(IsaName(Isa::kAvx2), "avx2");
  EXPECT_STREQ(IsaName(Isa::kScalar), "scalar");
}

TEST(Dispatch, MatMulWithEmptyInnerDimensionIsZero) {
  const WeightView w{DType::kBF16, nullptr, 3, 0};
  std::vector<float> y(6, 1.f);
  MatMul(nullptr, 2, w, y.data(), TwoThreads());
  EXPECT_EQ(y, std::vector<float>(6, 0.f));
}

}  // namespace
}  // namespace epwa::kernels
