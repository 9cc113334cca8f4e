// AVX-512 kernels (F, BW, VL, DQ with FMA and F16C).
//
// This file is compiled with -mavx512* flags; nothing in it may run before
// kernels.cc has checked the CPU, so everything lives in its own namespace and
// is reached only through kAvx512Kernels.
//
// The code that does not depend on the vector width is shared with
// kernels_avx2.cc through kernels_isa_common.h and kernels_blocking_inl.h,
// which explain how each file still gets its own copy, compiled with its own
// flags.
#if defined(__x86_64__) || defined(__i386__)

#include "kernels/kernels_isa_common.h"

namespace epwa::kernels {
namespace avx512 {
namespace {

// ---------------------------------------------------------------------------
// Weight loads: 16 consecutive elements of a row as 16 floats. BF16 is the
// upper half of an F32, so widening to 32 bits and shifting left by 16 is an
// exact conversion; F16 goes through the F16C instruction.

template <DType D>
struct Weights;

template <>
struct Weights<DType::kF32> {
  static __m512 Load(const uint8_t* row, int64_t k) {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + k);
  }
  static __m512 LoadMasked(const uint8_t* row, int64_t k, __mmask16 mask) {
    return _mm512_maskz_loadu_ps(mask, reinterpret_cast<const float*>(row) + k);
  }
};

template <>
struct Weights<DType::kBF16> {
  static __m512 Widen(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static __m512 Load(const uint8_t* row, int64_t k) {
    return Widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * k)));
  }
  static __m512 LoadMasked(const uint8_t* row, int64_t k, __mmask16 mask) {
    return Widen(_mm256_maskz_loadu_epi16(mask, row + 2 * k));
  }
};

template <>
struct Weights<DType::kF16> {
  static __m512 Load(const uint8_t* row, int64_t k) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * k)));
  }
  static __m512 LoadMasked(const uint8_t* row, int64_t k, __mmask16 mask) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, row + 2 * k));
  }
};

// The first `n` lanes (n <= 16) of a vector.
inline __mmask16 FirstLanes(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

// Converts n weights to floats (ConvertToF32).
template <DType D>
void ConvertTyped(const void* src, int64_t n, float* dst) {
  const auto* p = static_cast<const uint8_t*>(src);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, Weights<D>::Load(p, i));
  if (i < n) {
    const __mmask16 mask = FirstLanes(n - i);
    _mm512_mask_storeu_ps(dst + i, mask, Weights<D>::LoadMasked(p, i, mask));
  }
}

// ---------------------------------------------------------------------------
// Decode: y[m, n] for a handful of rows of x. The kernel is bound by how fast
// weights stream from DRAM, so each weight element is loaded exactly once and
// used for all M rows of x while it is in a register. R weight rows are
// processed together, with U-fold unrolling along k, so that R * M * U
// independent accumulators keep the 4-cycle FMA latency off the critical path.

// Rows of x up to which MatMul uses the decode kernel.
constexpr int64_t kMaxDecodeRows = 8;

// The BF16 decode kernel loads 32 weights (64 bytes) at a time and splits
// them without any shuffle: shifting each 32-bit lane left by 16 yields the
// even-indexed weights as floats, clearing its low half yields the odd ones.
// x is permuted to match once per call: within every full block of 32
// columns, the 16 even columns come first, then the 16 odd ones. [M, K]
void DeinterleaveX(const float* x, int64_t M, int64_t K, float* out) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (int64_t m = 0; m < M; ++m) {
    const float* src = x + m * K;
    float* dst = out + m * K;
    for (int64_t k = 0; k + 32 <= K; k += 32) {
      const __m512 a = _mm512_loadu_ps(src + k), b = _mm512_loadu_ps(src + k + 16);
      _mm512_storeu_ps(dst + k, _mm512_permutex2var_ps(a, even, b));
      _mm512_storeu_ps(dst + k + 16, _mm512_permutex2var_ps(a, odd, b));
    }
  }
}

// How far ahead of the loads the decode kernel prefetches each weight row.
// The hardware prefetchers alone sustain about 10% less bandwidth from one
// core (measured on Zen 4, distances of 1-4 KiB all help about equally).
constexpr int64_t kDecodePrefetchBytes = 2048;

// x: [M, K] as given; xd: [M, K] deinterleaved by DeinterleaveX (BF16 only).
template <DType D, int M, int R, int U>
void MatVecRows(const float* x, const float* xd, int64_t K, const WeightView& w, float* y, int64_t N,
                int64_t n) {
  const uint8_t* rows[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) rows[r] = RowAt(w, n + r);
  __m512 acc[U][R][M];
#pragma GCC unroll 8
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) acc[u][r][m] = _mm512_setzero_ps();

  int64_t k = 0;
  if constexpr (D == DType::kBF16) {
    // One 64-byte load per row per step; with U == 2 the even and odd halves
    // go to separate accumulators, with U == 1 both to the same one (there
    // are then enough rows of accumulators to hide the latency anyway).
    static_assert(U == 1 || U == 2, "BF16 splits each 64-byte load into at most two accumulators.");
    constexpr int kOdd = U - 1;
    const __m512i high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
    for (; k + 32 <= K; k += 32) {
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        PrefetchL2(rows[r] + 2 * k + kDecodePrefetchBytes);
        const __m512i v = _mm512_loadu_si512(rows[r] + 2 * k);
        const __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        const __m512 wo = _mm512_castsi512_ps(_mm512_and_si512(v, high));
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
          const float* xm = xd + m * K + k;
          acc[0][r][m] = _mm512_fmadd_ps(we, _mm512_loadu_ps(xm), acc[0][r][m]);
          acc[kOdd][r][m] = _mm512_fmadd_ps(wo, _mm512_loadu_ps(xm + 16), acc[kOdd][r][m]);
        }
      }
    }
  } else {
    // One prefetch per cache line of the step (F16 with U == 1 steps by half
    // a line and prefetches each line twice, which costs next to nothing).
    constexpr int64_t kElem = D == DType::kF32 ? 4 : 2;
    constexpr int64_t kStepBytes = 16 * U * kElem;
    for (; k + 16 * U <= K; k += 16 * U) {
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const uint8_t* ahead = rows[r] + k * kElem + kDecodePrefetchBytes;
#pragma GCC unroll 8
        for (int64_t b = 0; b < kStepBytes; b += 64) PrefetchL2(ahead + b);
      }
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) {
        __m512 xv[M];
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) xv[m] = _mm512_loadu_ps(x + m * K + k + 16 * u);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const __m512 wv = Weights<D>::Load(rows[r], k + 16 * u);
#pragma GCC unroll 8
          for (int m = 0; m < M; ++m) acc[u][r][m] = _mm512_fmadd_ps(wv, xv[m], acc[u][r][m]);
        }
      }
    }
  }
  // Masked loads never touch the lanes they skip, so the tail reads nothing
  // past the end of a row (which may be the end of the mapped file).
  for (; k < K; k += 16) {
    const __mmask16 mask = FirstLanes(K - k);
    __m512 xv[M];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) xv[m] = _mm512_maskz_loadu_ps(mask, x + m * K + k);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 wv = Weights<D>::LoadMasked(rows[r], k, mask);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) acc[0][r][m] = _mm512_fmadd_ps(wv, xv[m], acc[0][r][m]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      __m512 sum = acc[0][r][m];
#pragma GCC unroll 8
      for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[u][r][m]);
      y[m * N + n + r] = _mm512_reduce_add_ps(sum);
    }
  }
}

// Rows per group and unrolling per row count of x: at least 8 accumulators,
// and at most 16 plus the x and weight vectors within the 32 registers. Four
// rows share each x vector load up to M = 4; beyond that two rows keep the
// accumulators within bounds (measured: M = 5..8 streams at 2x the rate of
// the prefill path, whose packing does not pay off for so few rows).
template <DType D, int M>
void MatVecRange(const float* x, const float* xd, int64_t K, const WeightView& w, float* y,
                 int64_t n0, int64_t n1) {
  constexpr int kRows = M <= 4 ? 4 : 2;
  constexpr int kUnroll = M == 1 ? 2 : 1;
  int64_t n = n0;
  for (; n + kRows <= n1; n += kRows) MatVecRows<D, M, kRows, kUnroll>(x, xd, K, w, y, w.rows, n);
  for (; n < n1; ++n) MatVecRows<D, M, 1, kUnroll>(x, xd, K, w, y, w.rows, n);
}

template <DType D>
void Decode(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool) {
  const int64_t K = w.cols;
  const float* xd = nullptr;
  if constexpr (D == DType::kBF16) {
    // The calling thread's buffer, shared with the workers below.
    float* deinterleaved = internal::ThreadScratch(internal::Scratch::kDecodeX, static_cast<size_t>(M * K));  // [M, K]
    DeinterleaveX(x, M, K, deinterleaved);
    xd = deinterleaved;
  }
  ParallelRange(pool, w.rows, 4, [&](int64_t n0, int64_t n1) {
    switch (M) {
      case 1: MatVecRange<D, 1>(x, xd, K, w, y, n0, n1); break;
      case 2: MatVecRange<D, 2>(x, xd, K, w, y, n0, n1); break;
      case 3: MatVecRange<D, 3>(x, xd, K, w, y, n0, n1); break;
      case 4: MatVecRange<D, 4>(x, xd, K, w, y, n0, n1); break;
      case 5: MatVecRange<D, 5>(x, xd, K, w, y, n0, n1); break;
      case 6: MatVecRange<D, 6>(x, xd, K, w, y, n0, n1); break;
      case 7: MatVecRange<D, 7>(x, xd, K, w, y, n0, n1); break;
      default: MatVecRange<D, 8>(x, xd, K, w, y, n0, n1); break;
    }
  });
}
static_assert(kMaxDecodeRows == 8, "Decode has one instantiation per row count.");

// ---------------------------------------------------------------------------
// Prefill (see kernels_blocking_inl.h): the register tile is kMr = 8 rows of
// x by kNr = 32 output columns (two vectors), i.e. 16 independent accumulators
// per k step for 2 vector loads and 8 broadcasts.

constexpr int kLanes = 16;  // Floats per vector.
constexpr int kMr = 8;      // Rows of x per register tile.
constexpr int kNr = 32;     // Output columns per register tile.
constexpr int kKb = 256;    // Input features per panel: a kMr x kKb slice of x is 8 KiB (L1).
constexpr int kNb = 256;    // Output columns per panel: kKb x kNb floats are 256 KiB (L2).
constexpr int kMc = 256;    // Rows of x packed at once; bounds the packed-x buffer.

// Splits the 128-bit lanes of a and b into their even lanes (a0 a2 b0 b2) and
// their odd lanes (a1 a3 b1 b3): one round of Transpose16x16's lane moves.
__attribute__((always_inline)) inline void ShuffleLanePairs(__m512 a, __m512 b, __m512& even, __m512& odd) {
  even = _mm512_shuffle_f32x4(a, b, 0x88);
  odd = _mm512_shuffle_f32x4(a, b, 0xdd);
}

// In-place transpose of a 16x16 float block held in 16 registers: after it,
// r[j] holds what was column j.
__attribute__((always_inline)) inline void Transpose16x16(__m512 r[16]) {
  __m512 t[16];
#pragma GCC unroll 16
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // Within each 128-bit lane, r[4i + j] now gathers element j of rows 4i..4i+3.
#pragma GCC unroll 16
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  // Then move whole 128-bit lanes: lane L of r[4i + j] is column 4L + j of
  // rows 4i..4i+3, and two rounds of lane shuffles put the four row groups
  // of one column side by side.
#pragma GCC unroll 16
  for (int j = 0; j < 4; ++j) {
    ShuffleLanePairs(r[j], r[4 + j], t[j], t[4 + j]);
    ShuffleLanePairs(r[8 + j], r[12 + j], t[8 + j], t[12 + j]);
  }
#pragma GCC unroll 16
  for (int j = 0; j < 4; ++j) {
    ShuffleLanePairs(t[j], t[8 + j], r[j], r[8 + j]);
    ShuffleLanePairs(t[4 + j], t[12 + j], r[4 + j], r[12 + j]);
  }
}

// out[j * 32 + i] = row_i[k0 + j] for i < 16, j < nk, where row_i starts at
// rows + i * stride; rows at or beyond `nrows` (the end of the matrix) read as
// zero.
template <DType D>
__attribute__((always_inline)) inline void PackBlock(const uint8_t* rows, int64_t stride, int nrows,
                                                     int64_t k0, int nk, float* out) {
  __m512 r[16];
  if (nrows == 16 && nk == 16) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) r[i] = Weights<D>::Load(rows + i * stride, k0);
    Transpose16x16(r);
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) _mm512_store_ps(out + j * kNr, r[j]);
    return;
  }
  const __mmask16 mask = FirstLanes(nk);
  for (int i = 0; i < 16; ++i) {
    r[i] = i < nrows ? Weights<D>::LoadMasked(rows + i * stride, k0, mask) : _mm512_setzero_ps();
  }
  Transpose16x16(r);
  for (int j = 0; j < nk; ++j) _mm512_store_ps(out + j * kNr, r[j]);
}

// Stores kLanes zeros at the 64-byte aligned out.
inline void StoreZeros(float* out) { _mm512_store_ps(out, _mm512_setzero_ps()); }

// y[0:MR, 0:32] (+)= xp[kb][kMr] (first MR columns) * bp[kb][32], storing the
// columns selected by the two masks.
template <int MR>
void MicroKernel(const float* xp, const float* bp, int64_t kb, float* y, int64_t ldy,
                 __mmask16 mask0, __mmask16 mask1, bool accumulate) {
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) c0[m] = c1[m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kb; ++k) {
    const __m512 b0 = _mm512_load_ps(bp);
    const __m512 b1 = _mm512_load_ps(bp + 16);
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      const __m512 a = _mm512_set1_ps(xp[m]);
      c0[m] = _mm512_fmadd_ps(a, b0, c0[m]);
      c1[m] = _mm512_fmadd_ps(a, b1, c1[m]);
    }
    xp += kMr;
    bp += kNr;
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
    float* row = y + m * ldy;
    if (accumulate) {
      c0[m] = _mm512_add_ps(c0[m], _mm512_maskz_loadu_ps(mask0, row));
      c1[m] = _mm512_add_ps(c1[m], _mm512_maskz_loadu_ps(mask1, row + 16));
    }
    _mm512_mask_storeu_ps(row, mask0, c0[m]);
    _mm512_mask_storeu_ps(row + 16, mask1, c1[m]);
  }
}

using MicroKernelFn = void (*)(const float*, const float*, int64_t, float*, int64_t, __mmask16,
                               __mmask16, bool);

// kMicroKernels[mr] handles a tile of mr rows (1 <= mr <= kMr).
constexpr MicroKernelFn kMicroKernels[kMr + 1] = {
    nullptr,        MicroKernel<1>, MicroKernel<2>, MicroKernel<3>, MicroKernel<4>,
    MicroKernel<5>, MicroKernel<6>, MicroKernel<7>, MicroKernel<8>,
};
static_assert(kMr == 8, "kMicroKernels lists one kernel per tile height.");

// Runs the micro-kernel for a tile of mr rows (1 <= mr <= kMr), storing the
// first `cols` columns.
__attribute__((always_inline)) inline void RunMicroKernel(int mr, const float* xp, const float* bp, int64_t kb,
                                                          float* y, int64_t ldy, int64_t cols, bool accumulate) {
  kMicroKernels[mr](xp, bp, kb, y, ldy, FirstLanes(cols), FirstLanes(Max(cols - 16, 0)), accumulate);
}

// The prefill driver and the dtype dispatch of MatMul and ConvertToF32, built
// on the definitions above and compiled here for AVX-512.
#include "kernels/kernels_blocking_inl.h"

// ---------------------------------------------------------------------------
// Element-wise kernels.

// exp(x) for 16 lanes: x = n ln2 + r with |r| <= ln2 / 2, e^r from the Cephes
// degree-7 polynomial (about 1 ulp), and 2^n built in the exponent bits.
// Results below the smallest normal float are flushed to zero (so exp(-inf)
// is 0), inputs above 88.37 saturate at 2.4e38, and NaN propagates.
inline __m512 Exp(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.33654f);
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  // min/max return their second operand when either is NaN.
  x = _mm512_min_ps(_mm512_set1_ps(88.3762626647949f), _mm512_max_ps(lo, x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i bits = _mm512_slli_epi32(
      _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mul_ps(static_cast<__mmask16>(~tiny), p, _mm512_castsi512_ps(bits));
}

float Dot(const float* a, const float* b, int64_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
    s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
  }
  for (; i < n; i += 16) {
    const __mmask16 mask = FirstLanes(n - i);
    s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + i), _mm512_maskz_loadu_ps(mask, b + i), s0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

void RmsNorm(const float* x, const float* weight, int64_t n, float eps, float* out) {
  const float mean_sq = Dot(x, x, n) / static_cast<float>(n);
  const __m512 inv = _mm512_set1_ps(1.0f / Sqrt(mean_sq + eps));
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = FirstLanes(n - i);
    const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, x + i), inv);
    _mm512_mask_storeu_ps(out + i, mask, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(mask, weight + i)));
  }
}

void Softmax(float* x, int64_t n) {
  __m512 max_v = _mm512_set1_ps(-__builtin_inff());
  for (int64_t i = 0; i < n; i += 16) {
    max_v = _mm512_max_ps(max_v, _mm512_mask_loadu_ps(max_v, FirstLanes(n - i), x + i));
  }
  const __m512 max_b = _mm512_set1_ps(_mm512_reduce_max_ps(max_v));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = FirstLanes(n - i);
    const __m512 e = Exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, x + i), max_b));
    sum = _mm512_mask_add_ps(sum, mask, sum, e);
    _mm512_mask_storeu_ps(x + i, mask, e);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = FirstLanes(n - i);
    _mm512_mask_storeu_ps(x + i, mask, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, x + i), inv));
  }
}

void SiluMul(float* gate, const float* up, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = FirstLanes(n - i);
    const __m512 g = _mm512_maskz_loadu_ps(mask, gate + i);
    const __m512 e = Exp(_mm512_sub_ps(_mm512_setzero_ps(), g));
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, e));
    _mm512_mask_storeu_ps(gate + i, mask, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(mask, up + i)));
  }
}

void Axpy(float alpha, const float* x, float* y, int64_t n) {
  const __m512 a = _mm512_set1_ps(alpha);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = FirstLanes(n - i);
    const __m512 v = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(mask, x + i), _mm512_maskz_loadu_ps(mask, y + i));
    _mm512_mask_storeu_ps(y + i, mask, v);
  }
}

// ---------------------------------------------------------------------------
// Machine probes.

float SumFloats(const float* p, int64_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    s0 = _mm512_add_ps(s0, _mm512_loadu_ps(p + i));
    s1 = _mm512_add_ps(s1, _mm512_loadu_ps(p + i + 16));
    s2 = _mm512_add_ps(s2, _mm512_loadu_ps(p + i + 32));
    s3 = _mm512_add_ps(s3, _mm512_loadu_ps(p + i + 48));
  }
  for (; i < n; i += 16) s0 = _mm512_add_ps(s0, _mm512_maskz_loadu_ps(FirstLanes(n - i), p + i));
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

// Twelve independent chains: three times the FMA latency (4 cycles) times the
// throughput (one 512-bit FMA per cycle on Zen 4, two on Intel server parts).
double FmaChains(int64_t iterations) {
  constexpr int kChains = 12;
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 sum = acc[0];
  for (int i = 1; i < kChains; ++i) sum = _mm512_add_ps(sum, acc[i]);
  volatile float sink = _mm512_reduce_add_ps(sum);
  (void)sink;
  return static_cast<double>(iterations) * kChains * 16 * 2;
}

}  // namespace
}  // namespace avx512

namespace internal {

const IsaKernels kAvx512Kernels = {
    avx512::MatMul, avx512::RmsNorm, avx512::Softmax,      avx512::SiluMul,   avx512::Dot,
    avx512::Axpy,   avx512::ConvertToF32, avx512::SumFloats, avx512::FmaChains,
};

}  // namespace internal
}  // namespace epwa::kernels

#endif  // x86
