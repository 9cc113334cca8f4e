// AVX-512 kernels (F, BW, VL, DQ with FMA and F16C).
//
// This file is compiled with -mavx512* flags; nothing in it may run before
// kernels.cc has checked the CPU, so everything lives in its own namespace and
// is reached only through kAvx512Kernels.
#if defined(__x86_64__) || defined(__i386__)

// GCC 12 reports the deliberately undefined pass-through operands inside its
// own intrinsic headers as uninitialised (GCC bug 105593); the headers' code
// is correct, so the warning is silenced for them only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#include <cstdint>
#include <type_traits>

#include "kernels/kernels_internal.h"

namespace epwa::kernels {
namespace avx512 {
namespace {

// Local stand-ins for std::min, std::clamp, DTypeSize and WeightView::Row,
// so that this file emits no shared inline code (see kernels_internal.h).
constexpr int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }
constexpr int64_t Max(int64_t a, int64_t b) { return a > b ? a : b; }
constexpr int64_t Clamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }
inline int64_t ElemBytes(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }
inline int64_t RowBytes(const WeightView& w) { return w.cols * ElemBytes(w.dtype); }
inline const uint8_t* RowAt(const WeightView& w, int64_t r) {
  return static_cast<const uint8_t*>(w.data) + r * RowBytes(w);
}
inline float Sqrt(float v) { return _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(v))); }

// pool.ParallelFor over a lambda, without instantiating std::function here.
template <typename F>
void ParallelRange(ThreadPool& pool, int64_t n, int64_t grain, F&& fn) {
  using Fn = std::remove_reference_t<F>;
  internal::ParallelFor(
      pool, n, grain, [](void* c, int64_t b, int64_t e) { (*static_cast<Fn*>(c))(b, e); }, &fn);
}

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

// Asks for the cache line holding p to be brought into L2. An asm statement,
// because GCC deletes loops that contain nothing but __builtin_prefetch.
// Prefetches never fault, so the address may lie past the end of a row or of
// the mapping.
inline void PrefetchL2(const void* p) {
  asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p)));
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
// Prefill: a blocked matrix product. y = x * W^T is computed as C = A * B with
// A = x [M, K] and B = W^T [K, N]. A panel of W (kNb output columns by kKb
// input features) is converted to float and transposed once into a
// thread-local buffer, then reused by every row of x; the register tile is
// kMr rows of x by kNr = 32 output columns (two vectors), i.e. 16 independent
// accumulators per k step for 2 vector loads and kMr broadcasts.

constexpr int kMr = 8;      // Rows of x per register tile.
constexpr int kNr = 32;     // Output columns per register tile.
constexpr int kKb = 256;    // Input features per panel: a kMr x kKb slice of x is 8 KiB (L1).
constexpr int kNb = 256;    // Output columns per panel: kKb x kNb floats are 256 KiB (L2).
constexpr int kMc = 256;    // Rows of x packed at once; bounds the packed-x buffer.
static_assert(kNb % kNr == 0 && kMc % kMr == 0);

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
    t[j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
    t[4 + j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xdd);
    t[8 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
    t[12 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xdd);
  }
#pragma GCC unroll 16
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);
    r[4 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88);
    r[12 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xdd);
  }
}

// out[j * 32 + i] = row_i[k0 + j] for i < 16, j < nk, where row_i starts at
// rows + i * stride; rows at or beyond `nrows` (the end of the matrix) read as
// zero.
template <DType D>
__attribute__((always_inline)) inline void PackBlock16(const uint8_t* rows, int64_t stride, int nrows,
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

// A block of weights [n0, n0 + ncols) x [k0, k0 + kb), the unit of packing.
struct Panel {
  int64_t n0 = 0, ncols = 0, k0 = 0, kb = 0;
};

// Brings a panel of weights into L2 a few cache lines at a time. The weights
// usually come from DRAM, and packing reads each row for only a few cache
// lines, too short a run for the hardware prefetchers to pick up; fetching
// the next panel piecemeal while the current one is multiplied hides the DRAM
// latency behind the arithmetic without flooding the miss queues.
class PanelPrefetcher {
 public:
  PanelPrefetcher(const WeightView& w, const Panel& panel)
      : w_(w), panel_(panel), bytes_(panel.kb * ElemBytes(w.dtype)) {
    lines_per_row_ = (bytes_ + 63) / 64 + 1;
  }
  int64_t TotalLines() const { return panel_.ncols * lines_per_row_; }
  // Issues the next `count` prefetches of the panel, row by row.
  void Issue(int64_t count) {
    for (; count > 0 && row_ < panel_.ncols; --count) {
      const char* p = reinterpret_cast<const char*>(RowAt(w_, panel_.n0 + row_)) +
                      panel_.k0 * ElemBytes(w_.dtype);
      // The last "line" is the row's final byte, which may sit on one more
      // cache line when the row segment is not line aligned.
      PrefetchL2(line_ + 1 < lines_per_row_ ? p + Min(line_ * 64, bytes_ - 1) : p + bytes_ - 1);
      if (++line_ == lines_per_row_) {
        line_ = 0;
        ++row_;
      }
    }
  }

 private:
  const WeightView& w_;
  Panel panel_;
  int64_t bytes_;
  int64_t lines_per_row_;
  int64_t row_ = 0, line_ = 0;
};

// Packs the panel as ceil(ncols / 32) strips, each [kb][32] floats,
// zero-padding the columns beyond ncols.
template <DType D>
void PackWeights(const WeightView& w, const Panel& panel, float* out) {
  const int64_t kb = panel.kb;
  for (int64_t s = 0; s * kNr < panel.ncols; ++s) {
    float* strip = out + s * kb * kNr;  // [kb, kNr]
    for (int h = 0; h < 2; ++h) {
      const int64_t first = s * kNr + h * 16;
      const int nrows = static_cast<int>(Clamp(panel.ncols - first, 0, 16));
      if (nrows == 0) {
        for (int64_t k = 0; k < kb; ++k) _mm512_store_ps(strip + k * kNr + h * 16, _mm512_setzero_ps());
        continue;
      }
      for (int64_t k = 0; k < kb; k += 16) {
        PackBlock16<D>(RowAt(w, panel.n0 + first), RowBytes(w), nrows, panel.k0 + k,
                       static_cast<int>(Min(16, kb - k)), strip + k * kNr + h * 16);
      }
    }
  }
}

// Packs rows [m0, m0 + rows) of x (row stride K) as [K][kMr], zero-padding
// the rows beyond `rows`, so that the micro-kernel broadcasts from one
// sequential stream.
void PackX(const float* x, int64_t K, int64_t rows, float* out) {
  for (int64_t k = 0; k < K; ++k) {
    for (int i = 0; i < kMr; ++i) out[k * kMr + i] = i < rows ? x[i * K + k] : 0.f;
  }
}

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

// One thread's share: output columns [n_begin, n_end) for `mc` rows of x
// packed in xp ([ceil(mc / kMr)][K][kMr]).
template <DType D>
void PrefillRange(const float* xp, int64_t mc, const WeightView& w, float* y, int64_t n_begin,
                  int64_t n_end) {
  const int64_t N = w.rows;
  const int64_t K = w.cols;
  float* packed = internal::ThreadScratch(internal::Scratch::kPanel, static_cast<size_t>(kKb) * kNb);  // [kNb / kNr][kKb][kNr]
  // Panels in the order they are multiplied: all k blocks of one column block,
  // then the next column block.
  auto panel_at = [&](int64_t nb, int64_t k0) {
    Panel p;
    if (nb >= n_end) return p;
    p.n0 = nb;
    p.ncols = Min(kNb, n_end - nb);
    p.k0 = k0;
    p.kb = Min(kKb, K - k0);
    return p;
  };
  for (int64_t nb = n_begin; nb < n_end; nb += kNb) {
    for (int64_t k0 = 0; k0 < K; k0 += kKb) {
      const Panel panel = panel_at(nb, k0);
      const Panel next = k0 + kKb < K ? panel_at(nb, k0 + kKb) : panel_at(nb + kNb, 0);
      PackWeights<D>(w, panel, packed);
      PanelPrefetcher prefetcher(w, next);
      const int64_t strips = (panel.ncols + kNr - 1) / kNr;
      const int64_t calls = (mc + kMr - 1) / kMr * strips;
      const int64_t per_call = (prefetcher.TotalLines() + calls - 1) / calls;
      for (int64_t m0 = 0; m0 < mc; m0 += kMr) {
        const int mr = static_cast<int>(Min(kMr, mc - m0));
        const float* xtile = xp + m0 * K + k0 * kMr;  // [kb][kMr]
        for (int64_t s = 0; s * kNr < panel.ncols; ++s) {
          const int64_t cols = panel.ncols - s * kNr;
          kMicroKernels[mr](xtile, packed + s * panel.kb * kNr, panel.kb,
                            y + m0 * N + nb + s * kNr, N, FirstLanes(cols),
                            FirstLanes(Max(cols - 16, 0)), k0 > 0);
          prefetcher.Issue(per_call);
        }
      }
    }
  }
}

template <DType D>
void Prefill(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool) {
  const int64_t N = w.rows;
  const int64_t K = w.cols;
  // The calling thread's buffer, shared with the workers below.
  float* xp = internal::ThreadScratch(internal::Scratch::kPackedX, static_cast<size_t>(kMc) * K);  // [kMc / kMr][K][kMr]
  for (int64_t m0 = 0; m0 < M; m0 += kMc) {
    const int64_t mc = Min(kMc, M - m0);
    const int64_t tiles = (mc + kMr - 1) / kMr;
    ParallelRange(pool, tiles, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        PackX(x + (m0 + t * kMr) * K, K, Min(kMr, mc - t * kMr),
              xp + t * K * kMr);
      }
    });
    ParallelRange(pool, N, kNr, [&](int64_t n0, int64_t n1) {
      PrefillRange<D>(xp, mc, w, y + m0 * N, n0, n1);
    });
  }
}

template <DType D>
void MatMulTyped(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool) {
  if (M <= kMaxDecodeRows) {
    Decode<D>(x, M, w, y, pool);
  } else {
    Prefill<D>(x, M, w, y, pool);
  }
}

void MatMul(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool) {
  switch (w.dtype) {
    case DType::kF32: return MatMulTyped<DType::kF32>(x, M, w, y, pool);
    case DType::kF16: return MatMulTyped<DType::kF16>(x, M, w, y, pool);
    case DType::kBF16: return MatMulTyped<DType::kBF16>(x, M, w, y, pool);
  }
}

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

void ConvertToF32(DType dtype, const void* src, int64_t n, float* dst) {
  switch (dtype) {
    case DType::kF32: return ConvertTyped<DType::kF32>(src, n, dst);
    case DType::kF16: return ConvertTyped<DType::kF16>(src, n, dst);
    case DType::kBF16: return ConvertTyped<DType::kBF16>(src, n, dst);
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
