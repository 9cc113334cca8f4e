// Test helper: forces an instruction-set path and restores the previous one.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "base/thread_pool.h"
#include "kernels/kernels.h"
#include "kernels/kernels_internal.h"

namespace epwa::kernels {

class ScopedIsa {
 public:
  explicit ScopedIsa(Isa isa) : saved_(ActiveIsa()) { SetActiveIsa(isa); }
  ~ScopedIsa() { SetActiveIsa(saved_); }
  ScopedIsa(const ScopedIsa&) = delete;
  ScopedIsa& operator=(const ScopedIsa&) = delete;

 private:
  Isa saved_;
};

// Makes MatMul use float32 activations with quantized and MXFP4 weights
// (SetFloatActivations) for a scope.
class ScopedFloatActivations {
 public:
  ScopedFloatActivations() : saved_(FloatActivations()) { SetFloatActivations(true); }
  ~ScopedFloatActivations() { SetFloatActivations(saved_); }
  ScopedFloatActivations(const ScopedFloatActivations&) = delete;
  ScopedFloatActivations& operator=(const ScopedFloatActivations&) = delete;

 private:
  bool saved_;
};

// Runs the AVX-512 path for a scope as on a CPU without VNNI (Skylake-SP/X).
class ScopedAvx512WithoutVnni {
 public:
  ScopedAvx512WithoutVnni() : isa_(Isa::kAvx512) { internal::MaskAvx512VnniForTesting(true); }
  ~ScopedAvx512WithoutVnni() { internal::MaskAvx512VnniForTesting(false); }
  ScopedAvx512WithoutVnni(const ScopedAvx512WithoutVnni&) = delete;
  ScopedAvx512WithoutVnni& operator=(const ScopedAvx512WithoutVnni&) = delete;

 private:
  ScopedIsa isa_;
};

// Runs the AVX-512 4-bit decode kernel for a scope as on a CPU without GFNI
// (shift and mask instead of the affine transform).
class ScopedWithoutGfni {
 public:
  ScopedWithoutGfni() { internal::MaskGfniForTesting(true); }
  ~ScopedWithoutGfni() { internal::MaskGfniForTesting(false); }
  ScopedWithoutGfni(const ScopedWithoutGfni&) = delete;
  ScopedWithoutGfni& operator=(const ScopedWithoutGfni&) = delete;
};

inline bool CpuHasAvx512() {
  const std::vector<Isa> isas = SupportedIsas();
  return std::find(isas.begin(), isas.end(), Isa::kAvx512) != isas.end();
}

// Expects the AVX-512 path without VNNI to give exactly the AVX2 path's bits
// for x [M, w.cols] times w, through MatMul and through MatMulMany (two jobs
// sharing x, as an expert's gate and up do), and to report the int8 dot as
// its prefill instruction: such a CPU runs the AVX2 integer kernels.
inline void ExpectAvx512WithoutVnniEqualsAvx2(const float* x, int64_t M, const WeightView& w, ThreadPool& pool,
                                              const std::string& what) {
  const size_t n = static_cast<size_t>(M * w.rows);
  std::vector<float> want(n), got(n, std::numeric_limits<float>::quiet_NaN());
  std::vector<float> many(2 * n, std::numeric_limits<float>::quiet_NaN());
  {
    ScopedIsa avx2(Isa::kAvx2);
    MatMul(x, M, w, want.data(), pool);
  }
  ScopedAvx512WithoutVnni no_vnni;
  MatMul(x, M, w, got.data(), pool);
  const std::vector<MatMulJob> jobs = {{x, M, &w, many.data()}, {x, M, &w, many.data() + n}};
  MatMulMany(jobs, pool);
  EXPECT_EQ(got, want) << what;
  EXPECT_EQ(std::vector<float>(many.begin(), many.begin() + static_cast<std::ptrdiff_t>(n)), want) << what << " (MatMulMany)";
  EXPECT_EQ(std::vector<float>(many.begin() + static_cast<std::ptrdiff_t>(n), many.end()), want) << what << " (MatMulMany)";
  EXPECT_EQ(PrefillDotFor(w.dtype), PrefillDot::kInt8) << what;
}

// Runs the AVX-512 integer decode at every row count up to
// kAvx512MaxQuantDecodeRows (or never past 8 rows) within a scope.
// Cuts the decode regions into `chunks_per_thread` claimed chunks per
// thread, and restores the default.
class ScopedDecodeChunks {
 public:
  explicit ScopedDecodeChunks(int chunks_per_thread) {
    internal::SetDecodeChunksPerThreadForTesting(chunks_per_thread);
  }
  ~ScopedDecodeChunks() { internal::SetDecodeChunksPerThreadForTesting(internal::kDefaultDecodeChunksPerThread); }
  ScopedDecodeChunks(const ScopedDecodeChunks&) = delete;
  ScopedDecodeChunks& operator=(const ScopedDecodeChunks&) = delete;
};

class ScopedDecodePasses {
 public:
  explicit ScopedDecodePasses(internal::DecodePasses mode) { internal::SetDecodePassesForTesting(mode); }
  ~ScopedDecodePasses() { internal::SetDecodePassesForTesting(internal::DecodePasses::kByRule); }
  ScopedDecodePasses(const ScopedDecodePasses&) = delete;
  ScopedDecodePasses& operator=(const ScopedDecodePasses&) = delete;
};

// Expects the AVX-512 decode (M = 1 to kAvx512MaxQuantDecodeRows rows of x
// [M, w.cols], through MatMul and through MatMulMany with two jobs, as an
// expert's gate and up; x holds one row more) to give the same bits with
// GFNI's nibble split as with shift and mask. The caller skips unless the
// CPU has AVX-512, VNNI and GFNI.
inline void ExpectGfniDecodeEqualsShiftAndMask(const float* x, const WeightView& w, ThreadPool& pool,
                                               const std::string& what) {
  ScopedIsa avx512(Isa::kAvx512);
  ScopedDecodePasses every_row_count(internal::DecodePasses::kAlways);
  for (int64_t M = 1; M <= internal::kAvx512MaxQuantDecodeRows; ++M) {
    const size_t n = static_cast<size_t>(M * w.rows);
    std::vector<float> want(n), want_many(2 * n);
    const std::vector<MatMulJob> want_jobs = {{x, M, &w, want_many.data()}, {x + w.cols, M, &w, want_many.data() + n}};
    {
      ScopedWithoutGfni shift_and_mask;
      MatMul(x, M, w, want.data(), pool);
      MatMulMany(want_jobs, pool);
    }
    std::vector<float> got(n, std::numeric_limits<float>::quiet_NaN());
    std::vector<float> got_many(2 * n, std::numeric_limits<float>::quiet_NaN());
    const std::vector<MatMulJob> got_jobs = {{x, M, &w, got_many.data()}, {x + w.cols, M, &w, got_many.data() + n}};
    MatMul(x, M, w, got.data(), pool);
    MatMulMany(got_jobs, pool);
    EXPECT_EQ(got, want) << what << " M " << M;
    EXPECT_EQ(got_many, want_many) << what << " M " << M << " (MatMulMany)";
  }
}

// Expects the AVX-512 integer decode to give each row of x [rows, w.cols]
// the bits it gets alone, at every row count from 2 to rows: from 7 rows on,
// rows 4 and up take further passes of up to four rows over the weights
// (QuantMatVecRange), and 5 or 6 rows pair weight rows differently from 1 to
// 4. By default every row count up to kAvx512MaxQuantDecodeRows runs the
// decode whatever the dtype's rule; with DecodePasses::kByRule, `rows` must
// be within the rule for w. The caller skips unless the CPU has AVX-512 and
// VNNI.
inline void ExpectEachDecodeRowGetsItsOwnBits(const float* x, const WeightView& w, ThreadPool& pool,
                                              const std::string& what,
                                              internal::DecodePasses mode = internal::DecodePasses::kAlways,
                                              int64_t rows = internal::kAvx512MaxQuantDecodeRows) {
  ScopedIsa avx512(Isa::kAvx512);
  ScopedDecodePasses passes(mode);
  const int64_t N = w.rows, K = w.cols;
  std::vector<std::vector<float>> alone(static_cast<size_t>(rows), std::vector<float>(static_cast<size_t>(N)));
  for (int64_t m = 0; m < rows; ++m) MatMul(x + m * K, 1, w, alone[m].data(), pool);
  for (int64_t M = 2; M <= rows; ++M) {
    std::vector<float> all(static_cast<size_t>(M * N), std::numeric_limits<float>::quiet_NaN());
    MatMul(x, M, w, all.data(), pool);
    for (int64_t m = 0; m < M; ++m)
      EXPECT_TRUE(std::equal(alone[m].begin(), alone[m].end(), all.begin() + m * N))
          << what << " M " << M << " row " << m;
  }
}

// Whether MatMul on `isa` multiplies quantized or MXFP4 weights with float32
// activations, and so equals the dequantized product: the scalar path
// always; AVX2 and AVX-512 never, since their decode and prefill both round x
// to int8 (AVX-512 without VNNI runs the AVX2 integer kernels); every path
// with float activations requested.
inline bool ExactQuantPath(Isa isa) { return FloatActivations() || isa == Isa::kScalar; }

// A test run once per instruction-set path: the path of GetParam() is active
// for the test's body and the previous one restored after it.
class PerIsaTest : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override { scoped_ = std::make_unique<ScopedIsa>(GetParam()); }
  void TearDown() override { scoped_.reset(); }

 private:
  std::unique_ptr<ScopedIsa> scoped_;
};

}  // namespace epwa::kernels
