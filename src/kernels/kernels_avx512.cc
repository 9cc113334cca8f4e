// AVX-512 kernels (F, BW, VL, DQ with FMA and F16C). The quantized decode
// kernel also needs VNNI, which is checked separately at run time (without
// it that case runs the AVX2 kernel).
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

#include <algorithm>
#include <vector>

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
// Quantized weights (layout and rounding rules in tensor/dtype.h).

// 16 consecutive weights of row `row` from k (k % 16 == 0) as floats, each
// the level times the group's scale in one float multiplication, exactly as
// WeightView::At computes it. The 16 lie in one group of 32: for kQ4/kNF4
// they are the low (first half) or high (second half) nibbles of its 16
// bytes; for kMXFP4 both nibbles of 8 consecutive bytes, interleaved.
template <DType D>
__m512 DequantLoad(const WeightView& w, int64_t row, int64_t k) {
  const uint8_t* codes = RowAt(w, row);
  if constexpr (D == DType::kMXFP4) {
    const __m512 s = _mm512_set1_ps(E8M0ToFloat(E8M0Row(w, row)[k / 32]));
    const __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + k / 2));
    const __m128i mask = _mm_set1_epi8(0x0f);
    // Low nibble of byte j, then its high nibble: elements k + 2 j, k + 2 j + 1.
    const __m128i n = _mm_unpacklo_epi8(_mm_and_si128(c, mask), _mm_and_si128(_mm_srli_epi16(c, 4), mask));
    return _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(n), _mm512_loadu_ps(kE2M1Values)), s);
  }
  const __m512 s = _mm512_set1_ps(HalfToFloat(ScaleRow(w, row)[k / 32]));
  if constexpr (D == DType::kQ8) {
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + k));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(c)), s);
  } else {
    __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + k / 32 * 16));
    if (k & 16) c = _mm_srli_epi16(c, 4);
    const __m512i n = _mm512_cvtepu8_epi32(_mm_and_si128(c, _mm_set1_epi8(0x0f)));
    if constexpr (D == DType::kQ4) {
      return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(n, _mm512_set1_epi32(8))), s);
    } else {
      return _mm512_mul_ps(_mm512_permutexvar_ps(n, _mm512_loadu_ps(kNF4Codebook)), s);
    }
  }
}

template <DType D>
void DequantizeRowTyped(const WeightView& w, int64_t row, float* out) {
  for (int64_t k = 0; k < w.cols; k += 16) _mm512_storeu_ps(out + k, DequantLoad<D>(w, row, k));
}

// NF4 code of each lane of t (already divided by the scale): the number of
// codebook midpoints below t, found by a 4-step binary search with the 16
// midpoints held in one register.
inline __m512i NF4Codes(__m512 t, __m512 mids) {
  __m512i idx = _mm512_setzero_si512();
#pragma GCC unroll 4
  for (int step = 8; step >= 1; step /= 2) {
    const __m512 probe = _mm512_permutexvar_ps(_mm512_add_epi32(idx, _mm512_set1_epi32(step - 1)), mids);
    idx = _mm512_mask_add_epi32(idx, _mm512_cmp_ps_mask(t, probe, _CMP_GT_OQ), idx, _mm512_set1_epi32(step));
  }
  return idx;
}

// Quantizes rows [r0, r1) of src (float dtype S) to T, one group of 32
// (two vectors) at a time.
template <DType S, DType T>
void QuantizeRowsTo(const WeightView& src, int64_t r0, int64_t r1, const QuantizedOut& dst) {
  const int64_t K = src.cols, groups = K / 32;
  float mid_values[16];
  NF4Midpoints(mid_values);
  const __m512 mids = _mm512_loadu_ps(mid_values);
  const __m512 sign = _mm512_set1_ps(-0.f);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = RowAt(src, r);
    uint8_t* out = CodeRowOut(dst, r);
    uint16_t* out_scales = ScaleRowOut(dst, r);
    for (int64_t g = 0; g < groups; ++g) {
      const __m512 a0 = Weights<S>::Load(row, 32 * g), a1 = Weights<S>::Load(row, 32 * g + 16);
      float d;
      if constexpr (T == DType::kQ4) {
        const float hi = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
        const float lo = _mm512_reduce_min_ps(_mm512_min_ps(a0, a1));
        d = (hi >= -lo ? hi : lo) / -8.0f;
      } else {
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, a0), _mm512_andnot_ps(sign, a1)));
        d = T == DType::kQ8 ? amax / 127.0f : amax;
      }
      const uint16_t h = StoredScale(d);
      out_scales[g] = h;
      const float s = HalfToFloat(h);
      const __m512 inv = _mm512_set1_ps(s != 0.f ? 1.0f / s : 0.f);
      const __m512 t0 = _mm512_mul_ps(a0, inv), t1 = _mm512_mul_ps(a1, inv);
      if constexpr (T == DType::kQ8) {
        // Clamping before the conversion keeps huge quotients (a saturated
        // scale) from turning into the integer indefinite value.
        const __m512 lo = _mm512_set1_ps(-127.f), hi = _mm512_set1_ps(127.f);
        const __m512i n0 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(t0, lo), hi));
        const __m512i n1 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(t1, lo), hi));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 32 * g), _mm512_cvtepi32_epi8(n0));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 32 * g + 16), _mm512_cvtepi32_epi8(n1));
      } else {
        __m512i n0, n1;
        if constexpr (T == DType::kQ4) {
          const __m512 lo = _mm512_set1_ps(-8.f), hi = _mm512_set1_ps(7.f);
          const __m512i eight = _mm512_set1_epi32(8);
          n0 = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(t0, lo), hi)), eight);
          n1 = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(t1, lo), hi)), eight);
        } else {
          n0 = NF4Codes(t0, mids);
          n1 = NF4Codes(t1, mids);
        }
        // Element j in the low nibble of byte j, element j + 16 in its high nibble.
        const __m512i bytes = _mm512_or_si512(n0, _mm512_slli_epi32(n1, 4));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16 * g), _mm512_cvtepi32_epi8(bytes));
      }
    }
  }
}

template <DType S>
void QuantizeRowsFrom(const WeightView& src, DType target, int64_t r0, int64_t r1, const QuantizedOut& dst) {
  if (target == DType::kQ8) return QuantizeRowsTo<S, DType::kQ8>(src, r0, r1, dst);
  if (target == DType::kQ4) return QuantizeRowsTo<S, DType::kQ4>(src, r0, r1, dst);
  if (target == DType::kNF4) return QuantizeRowsTo<S, DType::kNF4>(src, r0, r1, dst);
}

// ---------------------------------------------------------------------------
// Decode: y[m, n] for a handful of rows of x. The kernel is bound by how fast
// weights stream from DRAM, so each weight element is loaded exactly once and
// used for all M rows of x while it is in a register. R weight rows are
// processed together, with U-fold unrolling along k, so that R * M * U
// independent accumulators keep the 4-cycle FMA latency off the critical path.

// Rows of x up to which MatMul uses the decode kernel.
constexpr int64_t kMaxDecodeRows = 8;
// Whether MatMul multiplies M rows of x with K columns by weights of dtype D
// with the decode kernel (else the prefill). Beyond 8 rows the integer
// decode takes rows of x past four in further passes over weight rows then
// in L1 (QuantMatVecRange); each pass pays a fixed cost per weight row (the
// scale products, the reductions), so it beats the int8 prefill tiles only
// for rows long enough and row counts that fill the tiles badly.
// bench/decode_rows_ab measures it on expert-sized matrices from DRAM (a
// ring of copies of 256 MiB, 2 threads, both paths alternating 30 times in
// one process); time with the tiles over time with the passes at M = 9 ..
// 13 on a Zen 5 VM: Q4 [768, 2048] 1.42 1.33 1.18 1.16 1.13, [2048, 1536]
// 1.38 1.30 1.19 1.18 1.11, [2880, 2880] 1.28 1.22 1.17 1.15 1.07, [4096,
// 4096] 1.28 1.20 1.15 1.07 1.07, but [2048, 1024] 1.13 1.03 0.88 0.96 0.83
// and [2048, 768] 1.16 0.96 0.91 0.87 0.88. NF4 and MXFP4 look their codes
// up in a table, so each pass costs more: NF4 [768, 2048] 1.19 1.10 1.07
// 0.94, [2880, 2880] 1.13 1.07 1.03 0.85, [2048, 1024] 1.06 0.97; MXFP4
// [1024, 2048] 1.23 1.09 1.02, [4096, 4096] 1.10 0.98, [2048, 1024] 1.02
// 0.93. Q8 gains at 9 rows only (two runs: [2048, 1024] 1.09 and 1.19,
// [2048, 1536] 1.22 and 1.33, [4096, 4096] 1.04 and 1.02, [2048, 768] 0.95
// and 1.01; at 10 rows 0.93-1.25). Hence internal::Avx512QuantDecodeRows and
// Avx512QuantDecodeMinCols.
constexpr int64_t kMaxQuantDecodeRows = internal::kAvx512MaxQuantDecodeRows;  // the most of any dtype
template <DType D>
bool UsesDecode(int64_t M, int64_t K) {
  if (M <= kMaxDecodeRows) return true;
  if constexpr (HasScales(D)) {
    constexpr int64_t kRows = internal::Avx512QuantDecodeRows(D), kMinCols = internal::Avx512QuantDecodeMinCols(D);
    static_assert(kRows >= kMaxDecodeRows && kRows <= kMaxQuantDecodeRows);
    switch (internal::DecodePassesMode()) {
      case internal::DecodePasses::kNever: return false;
      case internal::DecodePasses::kAlways: return M <= kMaxQuantDecodeRows;
      case internal::DecodePasses::kByRule: break;
    }
    return M <= kRows && K >= kMinCols;
  }
  return false;
}

// How far ahead of the loads the decode kernel prefetches each weight row,
// into L1 and wrapping to the next block of rows (DecodePrefetchOffset).
// Measured on Zen 4 with 2 threads from DRAM, in alternating runs of one
// process (BF16, M = 1): 1.12-1.37x the rate of prefetching into L2 2 KiB
// further along the same address, which past a row's end fetched lines of
// the next row of the block, already being read; 1, 2, 3 and 4 KiB wrapped
// are within noise of each other.
constexpr int64_t kDecodePrefetchBytes = 2048;

// x: [M, K].
template <DType D, int M, int R, int U>
void MatVecRows(const float* x, int64_t K, const WeightView& w, float* y, int64_t N,
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
    // A bf16 weight is the high half of a float, so 16 of them widen from 32
    // bytes by vpmovzxwd and a shift (Weights<kBF16>). Rows whose length is
    // a whole number of cache lines and that start a whole number of 4-byte
    // words past a line (aligned copies, and a checkpoint's tensors used in
    // place: safetensors pads its header to 8 bytes only) take whole lines
    // here: each step loads the row's next aligned line, forms the step's 64
    // bytes from it and the previous line with a two-source permute (an
    // identity at 0 words), and widens the two halves. Every line is loaded
    // once and one step ahead of its use.
    //
    // Measured from DRAM with bench/decode_alignment_ab (a ring of 64 copies
    // of a [1024, 2048] matrix, 2 threads, aligned rows and rows 40 bytes
    // past a line alternating 30 times in one process, December 5), builds
    // with variants of this kernel: aligned rows through this loop at 46-50
    // GB/s, through the 16-weight loop below (two 32-byte loads per line) at
    // 42-44, and through a loop with one aligned 64-byte load per line and
    // no look-ahead at 39-45, while rows 40 bytes past a line here ran at
    // 44-58. The kernel this replaced split each 64-byte load into its even
    // and odd weights by a shift and a mask, against x deinterleaved to
    // match: the 16-weight loop beat it by 1.02-1.07x on OLMoE-shaped decode
    // steps (bench/decode_chunks_ab with a temporary switch between the two
    // kernels, 5 runs).
    // In the caches, one thread, this loop is slower than the 16-weight one
    // (about 58 against 66-73 GB/s: two shuffles more per 32 weights), but
    // decode reads its weights from DRAM.
    static_assert(U == 1 || U == 2, "BF16 steps by 32 weights at most.");
    constexpr int kSecond = U - 1;
    const int64_t row_bytes = RowBytes(w);
    // The 32 weights v (64 bytes) of step k of row r: each half widens and
    // goes to the accumulators exactly as the 16-weight loop below would
    // (acc[0] the first 16, acc[U - 1] the next), so rows at any alignment
    // and either loop give the same bits.
    auto multiply = [&](int r, const __m512 (&xv)[2][M], __m512i v) __attribute__((always_inline)) {
      const __m512 first = Weights<D>::Widen(_mm512_castsi512_si256(v));
      const __m512 second = Weights<D>::Widen(_mm512_extracti64x4_epi64(v, 1));
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        acc[0][r][m] = _mm512_fmadd_ps(first, xv[0][m], acc[0][r][m]);
        acc[kSecond][r][m] = _mm512_fmadd_ps(second, xv[1][m], acc[kSecond][r][m]);
      }
    };
    auto load_x = [&](int64_t k, __m512 (&xv)[2][M]) __attribute__((always_inline)) {
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        xv[0][m] = _mm512_loadu_ps(x + m * K + k);
        xv[1][m] = _mm512_loadu_ps(x + m * K + k + 16);
      }
    };
    const uintptr_t address = reinterpret_cast<uintptr_t>(rows[0]);
    const int shift = static_cast<int>(address % 64) / 4;  // 4-byte words past a line
    if (address % 4 == 0 && row_bytes % 64 == 0 && K >= 32) {
      const __m512i pick = _mm512_add_epi32(
          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(shift));
      // The words of a row's first line before the row, and of the line
      // after its last step past it, are never read (masked loads).
      const __mmask16 row_head = static_cast<__mmask16>(0xffffu << shift);
      const __mmask16 row_tail = static_cast<__mmask16>((1u << shift) - 1);
      const uint8_t* lines[R];
      __m512i line[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        lines[r] = rows[r] - 4 * shift;
        line[r] = _mm512_maskz_load_epi32(row_head, lines[r]);
      }
      auto step = [&](int64_t k, __mmask16 next_mask) __attribute__((always_inline)) {
        const int64_t ahead = DecodePrefetchOffset(2 * k, kDecodePrefetchBytes, row_bytes, R);
        __m512 xv[2][M];
        load_x(k, xv);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          PrefetchL1(rows[r] + ahead);
          const __m512i next = _mm512_maskz_load_epi32(next_mask, lines[r] + 2 * k + 64);
          multiply(r, xv, _mm512_permutex2var_epi32(line[r], pick, next));
          line[r] = next;
        }
      };
      for (; k + 64 <= K; k += 32) step(k, 0xffff);
      step(k, row_tail);
      k += 32;
    }
  }
  {
    // One prefetch per cache line of the step (16-bit weights with U == 1
    // step by half a line and prefetch each line twice, which costs next to
    // nothing).
    constexpr int64_t kElem = D == DType::kF32 ? 4 : 2;
    constexpr int64_t kStepBytes = 16 * U * kElem;
    const int64_t row_bytes = RowBytes(w);
    for (; k + 16 * U <= K; k += 16 * U) {
      const int64_t ahead = DecodePrefetchOffset(k * kElem, kDecodePrefetchBytes, row_bytes, R);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
        for (int64_t b = 0; b < kStepBytes; b += 64) PrefetchL1(rows[r] + ahead + b);
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
void MatVecRange(const float* x, int64_t K, const WeightView& w, float* y,
                 int64_t n0, int64_t n1) {
  constexpr int kRows = M <= 4 ? 4 : 2;
  constexpr int kUnroll = M == 1 ? 2 : 1;
  int64_t n = n0;
  for (; n + kRows <= n1; n += kRows) MatVecRows<D, M, kRows, kUnroll>(x, K, w, y, w.rows, n);
  for (; n < n1; ++n) MatVecRows<D, M, 1, kUnroll>(x, K, w, y, w.rows, n);
}

// ---------------------------------------------------------------------------
// Decode with quantized weights: integer dot products against x quantized to
// int8 (kernels.h states the contract and its error bound).
//
// Each row of x is quantized once per call, per group of 32: s_x = max|x| /
// 127, codes q = rne(x / s_x). A pair of groups (64 weights) is one 512-bit
// vpdpbusd of unsigned weight bytes (level + offset, kLevelOffset) with the
// signed x codes; its 16 int32 lanes each hold a partial sum of one group,
// which is converted to float and multiplied by that group's s_w * s_x. The
// offset contributes offset * s_w * s_x * sum(q) per group, subtracted once
// per 16 groups as s_w times a precomputed per-group constant.
//
// The 4-bit formats take four groups (128 weights, one 64-byte load) per
// step instead: the low nibbles of the load are one vpdpbusd operand and the
// high nibbles the other, against two vectors of x codes arranged so that
// both land the same group in the same four int32 lanes. The two products
// accumulate into one integer vector whose lanes then hold four groups
// (lanes 4 i .. 4 i + 3: group i), converted and scaled once. Per 128
// weights and row that is about 10 vector instructions where pairs of groups
// took 16: the 4-bit kernel reads half the bytes of Q8 for the same work, so
// at two cores it was bound by instructions, not memory (measured: int4
// decoded no faster than int8 on the OLMoE shape).

// Quantizes the M rows of x into the calling thread's scratch buffer. The
// order of the codes matches the weight bytes the kernel loads: kQ8 codes
// are in natural order (a 64-byte load of weights is two groups in order).
// A 64-byte load of 4-bit weights is four groups of 16 bytes; Q4 and NF4
// keep elements j and j + 16 of a group in the low and high nibbles of its
// byte j, so the codes of four groups are stored as [elements 0..15 of group
// 0 | of 1 | of 2 | of 3] (against the low nibbles) then [elements 16..31 of
// group 0 | ... | of 3] (against the high nibbles). MXFP4 keeps elements 2 j
// and 2 j + 1 in byte j, so its codes are stored as the even elements of the
// four groups, then the odd ones: the weights need no shuffle at all.
// Codes per row: K rounded up to four groups (128), zero beyond K.
inline int64_t QuantizedXRowFloats(int64_t K) { return RoundUp(K, 128) / 4 + 2 * RoundUp(K / 32, 16); }

// QuantizeX into `base` (64-byte aligned, M * QuantizedXRowFloats(K)
// floats).
template <DType D>
QuantizedX QuantizeXInto(const float* x, int64_t M, int64_t K, float* base) {
  QuantizedX q;
  q.kpad = RoundUp(K, 128);
  q.gpad = RoundUp(K / 32, 16);
  q.row_floats = q.kpad / 4 + 2 * q.gpad;
  q.base = base;
  const __m512 sign = _mm512_set1_ps(-0.f);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const int64_t groups = K / 32;
  for (int64_t m = 0; m < M; ++m) {
    float* row = base + m * q.row_floats;
    auto* codes = reinterpret_cast<int8_t*>(row);
    float* scales = row + q.kpad / 4;
    float* corrections = scales + q.gpad;
    for (int64_t i = 0; i < q.row_floats; i += 16) _mm512_store_ps(row + i, _mm512_setzero_ps());
    for (int64_t g = 0; g < groups; ++g) {
      __m512 a0 = _mm512_loadu_ps(x + m * K + 32 * g), a1 = _mm512_loadu_ps(x + m * K + 32 * g + 16);
      if constexpr (D == DType::kMXFP4) {
        // The group's scale and code sum do not depend on the order.
        const __m512 evens = _mm512_permutex2var_ps(a0, even, a1);
        a1 = _mm512_permutex2var_ps(a0, odd, a1);
        a0 = evens;
      }
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, a0), _mm512_andnot_ps(sign, a1)));
      const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.0f / amax : 0.f);
      const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(a0, inv));
      const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(a1, inv));
      const int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
      scales[g] = amax / 127.0f;
      corrections[g] = kLevelOffset<D> * static_cast<float>(sum) * scales[g];
      int8_t* first = codes + 32 * g;
      int8_t* second = first + 16;
      if constexpr (D != DType::kQ8) {
        first = codes + 128 * (g / 4) + 16 * (g % 4);
        second = first + 64;
      }
      _mm_storeu_si128(reinterpret_cast<__m128i*>(first), _mm512_cvtepi32_epi8(q0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(second), _mm512_cvtepi32_epi8(q1));
    }
  }
  return q;
}

template <DType D>
QuantizedX QuantizeX(const float* x, int64_t M, int64_t K) {
  float* base = internal::ThreadScratch(internal::Scratch::kDecodeX,
                                        static_cast<size_t>(M * QuantizedXRowFloats(K)));  // [M, row_floats]
  return QuantizeXInto<D>(x, M, K, base);
}

// ---------------------------------------------------------------------------
// Prefill with quantized weights (Q8, Q4, NF4, MXFP4): integer dot products
// in a blocked matrix product, with x rounded to int8 per group of 32 exactly
// as the decode kernels round it (kernels.h states the contract; the error
// bound is the decode bound). The float prefill dequantizes every weight and
// does 16 multiply-adds per FMA; vpdpbusd does 64 per instruction, and the
// per-group scaling adds three instructions per 8 of them.
//
// Layout. A packed strip of W holds 32 output columns of `ng` groups: for
// each group, 8 quads (4 consecutive inputs) x 32 columns of unsigned bytes
// (level + kLevelOffset<D>) as int32 words, [ng][8][32], then the group
// scales s_w (times the level unit) as floats, [ng][32]. A packed tile of x
// holds kI8Mr rows: for each group, the 8 quads of int8 codes of each row
// [8][kI8Mr], then s_x [kI8Mr] and the correction -offset * sum(q) [kI8Mr]
// as int32, so the tile's inner loop broadcasts words in sequence. The
// correction seeds the group's integer accumulator, which removes the weight
// offset exactly before the sum is converted to float and scaled by s_w *
// s_x.

// Stores (or, if accumulate, adds to) y[0:mr, 0:cols] the first mr rows of
// a register tile of two vectors per row, the epilogue of the integer and
// bf16 prefill tiles.
__attribute__((always_inline)) inline void StoreTileRows(__m512 (*acc)[2], int mr, float* y, int64_t ldy,
                                                         int64_t cols, bool accumulate) {
  const __mmask16 mask0 = FirstLanes(cols), mask1 = FirstLanes(Max(cols - 16, 0));
  for (int m = 0; m < mr; ++m) {
    float* row = y + m * ldy;
    if (accumulate) {
      acc[m][0] = _mm512_add_ps(acc[m][0], _mm512_maskz_loadu_ps(mask0, row));
      acc[m][1] = _mm512_add_ps(acc[m][1], _mm512_maskz_loadu_ps(mask1, row + 16));
    }
    _mm512_mask_storeu_ps(row, mask0, acc[m][0]);
    _mm512_mask_storeu_ps(row + 16, mask1, acc[m][1]);
  }
}

constexpr int kI8Mr = 4;        // Rows of x per register tile.
constexpr int kI8Nr = 32;       // Output columns per tile (two vectors).
constexpr int64_t kI8Kg = 32;   // Groups of 32 inputs per panel (1024 inputs).
constexpr int64_t kI8Nb = 128;  // Output columns per panel: 4 strips, 144 KiB packed.
constexpr int64_t kI8Mc = 256;  // Rows of x quantized at once.
constexpr int64_t kI8XGroupWords = 10 * kI8Mr;       // Words per group in a tile of x.
constexpr int64_t kI8WGroupBytes = 8 * kI8Nr * 4 + kI8Nr * 4;  // Codes and scales per group in a strip.

// Rounds `rows` rows of x (row stride K) to int8 codes per group and packs
// them as one tile (layout above; PackXTile).
template <DType D>
void PackXInt8(const float* x, int64_t K, int64_t rows, int32_t* out) {
  const __m512 sign = _mm512_set1_ps(-0.f);
  PackXTile<kI8Mr>(x, K, rows, static_cast<int32_t>(kLevelOffset<D>), out,
                   [&](const float* xg, int32_t* quads, float* scale, int32_t* sum) {
                     const __m512 a0 = _mm512_loadu_ps(xg), a1 = _mm512_loadu_ps(xg + 16);
                     // The same arithmetic as QuantizeX, so prefill and decode round x alike.
                     const float amax =
                         _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, a0), _mm512_andnot_ps(sign, a1)));
                     const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.0f / amax : 0.f);
                     const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(a0, inv));
                     const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(a1, inv));
                     *scale = amax / 127.0f;
                     *sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
                     _mm_store_si128(reinterpret_cast<__m128i*>(quads), _mm512_cvtepi32_epi8(q0));
                     _mm_store_si128(reinterpret_cast<__m128i*>(quads + 4), _mm512_cvtepi32_epi8(q1));
                   });
}

// The 32 weights of group g of a row as unsigned bytes level + offset, in
// input order (GroupBytes): Q8's signed codes are moved up by 128;
// level_table maps an NF4 or MXFP4 nibble to its level + offset; a Q4 nibble
// is its level + 8 already.
template <DType D>
__attribute__((always_inline)) inline __m256i GroupLevels(const uint8_t* row, int64_t g, __m256i level_table) {
  const __m256i bytes = GroupBytes<D>(row, g, level_table);
  if constexpr (D == DType::kQ8) return _mm256_xor_si256(bytes, _mm256_set1_epi8(static_cast<char>(0x80)));
  return bytes;
}

// The level table of GroupLevels for D, in both 128-bit lanes.
template <DType D>
__m256i Int8LevelTable() {
  return _mm256_broadcastsi128_si256(NibbleLevelTable<D>(static_cast<int>(kLevelOffset<D>)));
}

// 2^(e - 127) for the 16 E8M0 exponents e (one per int32 lane), exactly as
// E8M0ToFloat: e << 23 is the float's exponent field, except for e = 0 (the
// subnormal 2^-127) and e = 255 (NaN). Plain AVX-512F, so outside the VNNI
// section below: the integer prefill's weight packer uses it too.
__attribute__((always_inline)) inline __m512 E8M0ToFloats(__m512i e) {
  __m512i bits = _mm512_slli_epi32(e, 23);
  bits = _mm512_mask_mov_epi32(bits, _mm512_cmpeq_epi32_mask(e, _mm512_setzero_si512()),
                               _mm512_set1_epi32(static_cast<int>(kE8M0ZeroBits)));
  bits = _mm512_mask_mov_epi32(bits, _mm512_cmpeq_epi32_mask(e, _mm512_set1_epi32(255)),
                               _mm512_set1_epi32(static_cast<int>(kE8M0NaNBits)));
  return _mm512_castsi512_ps(bits);
}

// vpdpbusd is AVX-512 VNNI, which kernels.cc checks for separately
// (internal::HasAvx512Vnni) before any of the functions up to pop_options
// run; only they are compiled with it.
#pragma GCC push_options
#pragma GCC target("avx512vnni")
// clang (the fuzz and sanitizer builds) ignores GCC's target pragma; its own
// form applies the same attribute to every function up to the pop below.
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512vnni"))), apply_to = function)
#endif

// The unsigned Q8 weight bytes (level + 128) of the pair of groups starting
// at element k of a row. With `half` only the first group exists (the last
// pair of a row with an odd number of groups): the masked load reads nothing
// beyond it, and the missing group's bytes meet zero x codes.
__attribute__((always_inline)) inline __m512i LoadWeightPair(const uint8_t* row, int64_t k, bool half) {
  const __m512i v = half ? _mm512_maskz_loadu_epi8(0xffffffffull, row + k) : _mm512_loadu_si512(row + k);
  return _mm512_xor_si512(v, _mm512_set1_epi8(static_cast<char>(0x80)));
}

// The scales of groups [g0, g0 + 16) of one row as floats, with the lanes
// outside group_mask zero (fp16 scales) or finite (E8M0, whose zero byte is
// 2^-127): those lanes always meet zero x scales and corrections.
template <DType D>
__attribute__((always_inline)) inline __m512 LoadGroupScales(const void* scale_row, int64_t g0,
                                                              __mmask16 group_mask) {
  if constexpr (D == DType::kMXFP4) {
    const __m128i e = _mm_maskz_loadu_epi8(group_mask, static_cast<const uint8_t*>(scale_row) + g0);
    return E8M0ToFloats(_mm512_cvtepu8_epi32(e));
  } else {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(group_mask, static_cast<const uint16_t*>(scale_row) + g0));
  }
}

namespace shift_and_mask {
constexpr bool kNibblesByGfni = false;
#include "kernels/kernels_avx512_decode_inl.h"
}  // namespace shift_and_mask

#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options

// The same kernel with GFNI (internal::HasGfni), which Cascade and Cooper
// Lake lack although they have VNNI; only the 4-bit formats use it.
#pragma GCC push_options
#pragma GCC target("avx512vnni,gfni")
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512vnni,gfni"))), apply_to = function)
#endif
namespace gfni {
constexpr bool kNibblesByGfni = true;
#include "kernels/kernels_avx512_decode_inl.h"
}  // namespace gfni
#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512vnni")
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512vnni"))), apply_to = function)
#endif

template <DType D, int M>
void QuantMatVecRangeOf(const QuantizedX& qx, const WeightView& w, float* y, int64_t n0, int64_t n1,
                        __m512i level_table) {
  if (D != DType::kQ8 && internal::HasGfni()) return gfni::QuantMatVecRange<D, M>(qx, w, y, n0, n1, level_table);
  shift_and_mask::QuantMatVecRange<D, M>(qx, w, y, n0, n1, level_table);
}

static_assert(kMaxQuantDecodeRows == 13, "QuantMatVecRangeFor has one instantiation per row count.");
template <DType D>
void QuantMatVecRangeFor(int64_t M, const QuantizedX& qx, const WeightView& w, float* y, int64_t n0,
                         int64_t n1, __m512i level_table) {
  switch (M) {
    case 1: return QuantMatVecRangeOf<D, 1>(qx, w, y, n0, n1, level_table);
    case 2: return QuantMatVecRangeOf<D, 2>(qx, w, y, n0, n1, level_table);
    case 3: return QuantMatVecRangeOf<D, 3>(qx, w, y, n0, n1, level_table);
    case 4: return QuantMatVecRangeOf<D, 4>(qx, w, y, n0, n1, level_table);
    case 5: return QuantMatVecRangeOf<D, 5>(qx, w, y, n0, n1, level_table);
    case 6: return QuantMatVecRangeOf<D, 6>(qx, w, y, n0, n1, level_table);
    case 7: return QuantMatVecRangeOf<D, 7>(qx, w, y, n0, n1, level_table);
    case 8: return QuantMatVecRangeOf<D, 8>(qx, w, y, n0, n1, level_table);
    case 9: return QuantMatVecRangeOf<D, 9>(qx, w, y, n0, n1, level_table);
    case 10: return QuantMatVecRangeOf<D, 10>(qx, w, y, n0, n1, level_table);
    case 11: return QuantMatVecRangeOf<D, 11>(qx, w, y, n0, n1, level_table);
    case 12: return QuantMatVecRangeOf<D, 12>(qx, w, y, n0, n1, level_table);
    default: return QuantMatVecRangeOf<D, 13>(qx, w, y, n0, n1, level_table);
  }
}


// y[0:MR, 0:cols] (+)= the product of the first MR rows of one packed tile
// of x (from the panel's first group) and one packed strip of W, over `ng`
// groups. A tile's last rows past the end of x are zero, so a partial tile
// instantiates only the rows it has: an MoE expert's share of a prompt is
// rarely a multiple of kI8Mr, and the padded rows cost as much as real ones.
template <int MR>
void Int8TileRows(const int32_t* xt, const uint8_t* strip, int64_t ng, float* y, int64_t ldy, int64_t cols,
                  bool accumulate) {
  const int32_t* wc = reinterpret_cast<const int32_t*>(strip);
  const float* ws = reinterpret_cast<const float*>(strip + ng * 8 * kI8Nr * 4);
  __m512 acc[kI8Mr][2];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
  for (int64_t g = 0; g < ng; ++g) {
    const int32_t* xg = xt + g * kI8XGroupWords;
    const float* sx = reinterpret_cast<const float*>(xg + 8 * kI8Mr);
    __m512i dot[kI8Mr][2];
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) dot[m][0] = dot[m][1] = _mm512_set1_epi32(xg[9 * kI8Mr + m]);
    const int32_t* wg = wc + g * 8 * kI8Nr;
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      const __m512i w0 = _mm512_load_si512(wg + j * kI8Nr), w1 = _mm512_load_si512(wg + j * kI8Nr + 16);
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        const __m512i xb = _mm512_set1_epi32(xg[j * kI8Mr + m]);
        dot[m][0] = _mm512_dpbusd_epi32(dot[m][0], w0, xb);
        dot[m][1] = _mm512_dpbusd_epi32(dot[m][1], w1, xb);
      }
    }
    const __m512 s0 = _mm512_load_ps(ws + g * kI8Nr), s1 = _mm512_load_ps(ws + g * kI8Nr + 16);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m512 sxm = _mm512_set1_ps(sx[m]);
      acc[m][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[m][0]), _mm512_mul_ps(s0, sxm), acc[m][0]);
      acc[m][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[m][1]), _mm512_mul_ps(s1, sxm), acc[m][1]);
    }
  }
  StoreTileRows(acc, MR, y, ldy, cols, accumulate);
}

// Int8TileRows for the first mr (1 <= mr <= kI8Mr) rows of the tile.
static_assert(kI8Mr == 4, "Int8Tile has one instantiation per row count.");
void Int8Tile(const int32_t* xt, const uint8_t* strip, int64_t ng, float* y, int64_t ldy, int64_t cols, int mr,
              bool accumulate) {
  switch (mr) {
    case 1: return Int8TileRows<1>(xt, strip, ng, y, ldy, cols, accumulate);
    case 2: return Int8TileRows<2>(xt, strip, ng, y, ldy, cols, accumulate);
    case 3: return Int8TileRows<3>(xt, strip, ng, y, ldy, cols, accumulate);
    default: return Int8TileRows<4>(xt, strip, ng, y, ldy, cols, accumulate);
  }
}

#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options


// The levels + kLevelOffset<D> as unsigned bytes (NF4: + 128, MXFP4: + 12),
// indexed by nibble and repeated in each 128-bit lane for vpshufb.
template <DType D>
__m512i DecodeLevelTable() {
  return _mm512_broadcast_i32x4(NibbleLevelTable<D>(static_cast<int>(kLevelOffset<D>)));
}

template <DType D>
void DecodeQuantized(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool) {
  // Without VNNI the AVX2 kernels (vpmaddubsw) are the faster integer path.
  if (!internal::HasAvx512Vnni()) return internal::kAvx2Kernels.mat_mul(x, M, w, y, pool);
  const QuantizedX qx = QuantizeX<D>(x, M, w.cols);
  const __m512i level_table = DecodeLevelTable<D>();
  ParallelDecodeRange(pool, w.rows, 4, [&](int64_t n0, int64_t n1) {
    QuantMatVecRangeFor<D>(M, qx, w, y, n0, n1, level_table);
  });
}

// MatVecRange for M (1 <= M <= kMaxDecodeRows) rows of x.
static_assert(kMaxDecodeRows == 8, "MatVecRangeFor has one instantiation per row count.");
template <DType D>
void MatVecRangeFor(int64_t M, const float* x, int64_t K, const WeightView& w, float* y, int64_t n0, int64_t n1) {
  switch (M) {
    case 1: return MatVecRange<D, 1>(x, K, w, y, n0, n1);
    case 2: return MatVecRange<D, 2>(x, K, w, y, n0, n1);
    case 3: return MatVecRange<D, 3>(x, K, w, y, n0, n1);
    case 4: return MatVecRange<D, 4>(x, K, w, y, n0, n1);
    case 5: return MatVecRange<D, 5>(x, K, w, y, n0, n1);
    case 6: return MatVecRange<D, 6>(x, K, w, y, n0, n1);
    case 7: return MatVecRange<D, 7>(x, K, w, y, n0, n1);
    default: return MatVecRange<D, 8>(x, K, w, y, n0, n1);
  }
}

template <DType D>
void DecodeFloat(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool) {
  ParallelDecodeRange(pool, w.rows, 4,
                      [&](int64_t n0, int64_t n1) { MatVecRangeFor<D>(M, x, w.cols, w, y, n0, n1); });
}

// MatMulMany's fused decode for jobs of dtype D (see kernels.h): for the
// types with group scales every job's x is quantized once into one scratch
// buffer (float types read x as given), then one parallel region covers all
// output rows, each job's rows starting at a multiple of 4 of the global
// index so that each thread's share of a job splits where Decode's would.
// Each output row is computed exactly as Decode computes it.
constexpr int64_t kMaxManyJobs = 64;

template <DType D>
bool DecodeManyTyped(const MatMulJob* jobs, int64_t n, ThreadPool& pool) {
  if (n > kMaxManyJobs) return false;
  if constexpr (HasScales(D)) {
    if (::epwa::kernels::FloatActivations()) return false;
    // Without VNNI the AVX2 kernels are the integer path (DecodeQuantized).
    if (!internal::HasAvx512Vnni()) return internal::kAvx2Kernels.mat_mul_many(jobs, n, pool);
  }
  for (int64_t j = 0; j < n; ++j)
    if (!UsesDecode<D>(jobs[j].M, jobs[j].w->cols)) return false;
  const FusedDecodeLayout<kMaxManyJobs> layout(jobs, n, [](const MatMulJob& job) -> int64_t {
    return HasScales(D) ? job.M * QuantizedXRowFloats(job.w->cols) : 0;
  });
  const int64_t* start = layout.start;
  // The calling thread's buffer, shared with the workers below.
  float* scratch =
      internal::ThreadScratch(internal::Scratch::kDecodeX, static_cast<size_t>(Max(layout.x_offset[n], 16)));
  QuantizedX qx[kMaxManyJobs];
  if constexpr (HasScales(D)) {
    for (int64_t j = 0; j < n; ++j)
      qx[j] = layout.owner[j] == j
                  ? QuantizeXInto<D>(jobs[j].x, jobs[j].M, jobs[j].w->cols, scratch + layout.x_offset[j])
                  : qx[layout.owner[j]];
  }
  __m512i level_table = _mm512_setzero_si512();
  if constexpr (HasScales(D)) level_table = DecodeLevelTable<D>();
  ParallelDecodeRange(pool, start[n], 4, [&](int64_t b, int64_t e) {
    ForJobRows(jobs, n, start, b, e, [&](int64_t j, int64_t n0, int64_t n1) {
      const MatMulJob& job = jobs[j];
      if constexpr (HasScales(D)) {
        QuantMatVecRangeFor<D>(job.M, qx[j], *job.w, job.y, n0, n1, level_table);
      } else {
        MatVecRangeFor<D>(job.M, job.x, job.w->cols, *job.w, job.y, n0, n1);
      }
    });
  });
  return true;
}

template <DType D>
void Decode(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool) {
  if constexpr (HasScales(D)) {
    DecodeQuantized<D>(x, M, w, y, pool);
  } else {
    DecodeFloat<D>(x, M, w, y, pool);
  }
}

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

// out[j * 32 + i] = w.At(row0 + i, k0 + j) for i < 16, j < nk; rows at or
// beyond `nrows` (the end of the matrix) read as zero.
//
// Quantized rows are dequantized here (DequantLoad); their k0 is a multiple
// of 16 and nk == 16, because K and the panel depth are multiples of 32.
template <DType D>
__attribute__((always_inline)) inline void PackBlock(const WeightView& w, int64_t row0, int nrows,
                                                     int64_t k0, int nk, float* out) {
  __m512 r[16];
  const uint8_t* rows = RowAt(w, row0);
  const int64_t stride = RowStride(w);
  if (nrows == 16 && nk == 16) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) {
      if constexpr (HasScales(D)) {
        r[i] = DequantLoad<D>(w, row0 + i, k0);
      } else {
        r[i] = Weights<D>::Load(rows + i * stride, k0);
      }
    }
    Transpose16x16(r);
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) _mm512_store_ps(out + j * kNr, r[j]);
    return;
  }
  const __mmask16 mask = FirstLanes(nk);
  for (int i = 0; i < 16; ++i) {
    if (i >= nrows) {
      r[i] = _mm512_setzero_ps();
    } else if constexpr (HasScales(D)) {
      r[i] = DequantLoad<D>(w, row0 + i, k0);
    } else {
      r[i] = Weights<D>::LoadMasked(rows + i * stride, k0, mask);
    }
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

// The codes of groups [g0, g0 + ng) of 16 full rows of a 4-bit matrix (kQ4,
// kNF4, kMXFP4), stored as PackPanelInt8 stores them: for group g and quad j,
// the 16 rows' four level bytes of inputs [4 j, 4 j + 4) at
// out + (8 g + j) * kI8Nr. In Q4 and NF4 the 32-bit word j' (j' < 4) of a
// row's 16 group bytes holds quad j' in its low nibbles and quad j' + 4 in
// its high nibbles (in MXFP4, quads 2 j' and 2 j' + 1 alternating), so a
// 16 x 4 transpose of words (half the bytes the general path transposes,
// which widens the nibbles first) followed by the nibble split yields two
// quads at once. Building four vectors of four rows each (rows i, i + 4,
// i + 8, i + 12 in lanes 0-3 of vector i) makes the in-lane 4 x 4 transpose
// below leave each quad's rows in natural order. Packing runs once per
// expert call in a MoE prefill, where it had cost nearly as much as the
// products themselves (perf, OLMoE-shaped int4 prefill of 128 tokens).
template <DType D>
__attribute__((always_inline)) inline void PackNibbleGroups(const uint8_t* const rows[16], int64_t g0, int64_t ng,
                                                            __m256i level_table, int32_t* out) {
  const __m512i table = _mm512_broadcast_i32x4(_mm256_castsi256_si128(level_table));
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  for (int64_t g = 0; g < ng; ++g) {
    const int64_t offset = (g0 + g) * 16;
    __m512i v[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      __m512i a = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[i] + offset)));
      a = _mm512_inserti32x4(a, _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[i + 4] + offset)), 1);
      a = _mm512_inserti32x4(a, _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[i + 8] + offset)), 2);
      v[i] = _mm512_inserti32x4(a, _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[i + 12] + offset)), 3);
    }
    // Lane l of v[i] is row 4 l + i after the loads above; the transpose
    // gives word j' of rows 4 l .. 4 l + 3 in lane l of t[j'].
    const __m512i a0 = _mm512_unpacklo_epi32(v[0], v[1]), a1 = _mm512_unpackhi_epi32(v[0], v[1]);
    const __m512i b0 = _mm512_unpacklo_epi32(v[2], v[3]), b1 = _mm512_unpackhi_epi32(v[2], v[3]);
    const __m512i t[4] = {_mm512_unpacklo_epi64(a0, b0), _mm512_unpackhi_epi64(a0, b0),
                          _mm512_unpacklo_epi64(a1, b1), _mm512_unpackhi_epi64(a1, b1)};
    int32_t* group = out + g * 8 * kI8Nr;
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      __m512i lo = _mm512_and_si512(t[j], nibble), hi = _mm512_and_si512(_mm512_srli_epi16(t[j], 4), nibble);
      if constexpr (D != DType::kQ4) {
        lo = _mm512_shuffle_epi8(table, lo);
        hi = _mm512_shuffle_epi8(table, hi);
      }
      if constexpr (D == DType::kMXFP4) {
        // Word j of an MXFP4 row holds inputs 8 j .. 8 j + 7, two to a byte
        // (low nibble first): quads 2 j and 2 j + 1. Interleaving the low and
        // high levels byte by byte gives, in each 128-bit lane, rows 4 l and
        // 4 l + 1 (a) and rows 4 l + 2 and 4 l + 3 (b) as [row: quad 2 j,
        // quad 2 j + 1] pairs of words; taking the even and then the odd
        // words of a and b puts each quad's four rows in order.
        const __m512 a = _mm512_castsi512_ps(_mm512_unpacklo_epi8(lo, hi));
        const __m512 b = _mm512_castsi512_ps(_mm512_unpackhi_epi8(lo, hi));
        _mm512_store_ps(reinterpret_cast<float*>(group + 2 * j * kI8Nr), _mm512_shuffle_ps(a, b, 0x88));
        _mm512_store_ps(reinterpret_cast<float*>(group + (2 * j + 1) * kI8Nr), _mm512_shuffle_ps(a, b, 0xdd));
      } else {
        _mm512_store_si512(group + j * kI8Nr, lo);
        _mm512_store_si512(group + (j + 4) * kI8Nr, hi);
      }
    }
  }
}

// Packs output columns [n0, n0 + ncols) x groups [g0, g0 + ng) of W as
// ceil(ncols / 32) strips (layout above). Columns beyond ncols get zero
// codes and scales; their outputs are never stored. Sixteen columns and two
// groups at a time: each column's 64 level bytes are one row of a 16 x 16
// block of words, whose transpose gives the 8 quads of each group across the
// 16 columns (Transpose16x16 only moves bits, so it serves integers too).
// Packing runs once per panel and is shared by every row of x, but an
// expert's share of a prompt is often only a few dozen rows, so it must cost
// little against the products.
template <DType D>
void PackPanelInt8(const WeightView& w, int64_t n0, int64_t ncols, int64_t g0, int64_t ng, __m256i level_table,
                   uint8_t* out) {
  for (int64_t s = 0; s * kI8Nr < ncols; ++s) {
    uint8_t* strip = out + s * ng * kI8WGroupBytes;
    int32_t* codes = reinterpret_cast<int32_t*>(strip);                    // [ng][8][32]
    float* scales = reinterpret_cast<float*>(strip + ng * 8 * kI8Nr * 4);  // [ng][32]
    for (int h = 0; h < 2; ++h) {
      const int64_t first = s * kI8Nr + h * 16;
      const int nrows = static_cast<int>(Clamp(ncols - first, 0, 16));
      bool codes_packed = false;
      const uint8_t* rows[16];
      for (int i = 0; i < 16; ++i) rows[i] = i < nrows ? RowAt(w, n0 + first + i) : nullptr;
      if constexpr (D == DType::kQ4 || D == DType::kNF4 || D == DType::kMXFP4) {
        if (nrows == 16) {
          PackNibbleGroups<D>(rows, g0, ng, level_table, codes + h * 16);
          codes_packed = true;
        }
      }
      for (int64_t g = 0; g < ng && !codes_packed; g += 2) {
        const bool pair = g + 1 < ng;
        __m512 r[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) {
          if (i >= nrows) {
            r[i] = _mm512_setzero_ps();
            continue;
          }
          const __m256i lo = GroupLevels<D>(rows[i], g0 + g, level_table);
          const __m256i hi = pair ? GroupLevels<D>(rows[i], g0 + g + 1, level_table) : _mm256_setzero_si256();
          r[i] = _mm512_castsi512_ps(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
        }
        Transpose16x16(r);
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) _mm512_store_ps(reinterpret_cast<float*>(codes + (g * 8 + j) * kI8Nr + h * 16), r[j]);
        if (pair) {
#pragma GCC unroll 8
          for (int j = 0; j < 8; ++j)
            _mm512_store_ps(reinterpret_cast<float*>(codes + ((g + 1) * 8 + j) * kI8Nr + h * 16), r[8 + j]);
        }
      }
      // The scales, 16 groups at a time: each row's 16 scales in one vector,
      // then the transpose gives each group its 16 rows. Converting and
      // storing them one by one took 40% of this function's time at the 16
      // or so rows an MoE expert sees in a 128-token prefill, where packing
      // costs nearly as much as the products. Each is s_w times the level
      // unit (NF4 levels are codebook * 127, MXFP4 levels twice E2M1), as the
      // decode kernel computes it.
      const __m512 unit = _mm512_set1_ps(1.0f / 127.0f);  // NF4's level unit
      for (int64_t g = 0; g < ng; g += 16) {
        const int64_t count = Min(16, ng - g);
        const __mmask16 mask = FirstLanes(count);
        __m512 r[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) {
          if (i >= nrows) {
            r[i] = _mm512_setzero_ps();
          } else if constexpr (D == DType::kMXFP4) {
            // E8M0 bytes, times MXFP4's level unit 1/2.
            const __m128i e = _mm_maskz_loadu_epi8(mask, E8M0Row(w, n0 + first + i) + g0 + g);
            r[i] = _mm512_mul_ps(E8M0ToFloats(_mm512_cvtepu8_epi32(e)), _mm512_set1_ps(0.5f));
          } else {
            r[i] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, ScaleRow(w, n0 + first + i) + g0 + g));
            if constexpr (D == DType::kNF4) r[i] = _mm512_mul_ps(r[i], unit);
          }
        }
        Transpose16x16(r);
        for (int64_t j = 0; j < count; ++j) _mm512_store_ps(scales + (g + j) * kI8Nr + h * 16, r[j]);
      }
    }
  }
}


// ---------------------------------------------------------------------------
// Prefill with BF16 weights and bf16 activations (SetBf16Activations, off by
// default): vdpbf16ps does 32 multiply-adds per instruction, twice an fp32
// FMA's 16, with products of bf16 values accumulated in float. The weights
// are used as stored; each activation is rounded to bf16 (nearest even), a
// relative change of at most 2^-9, so an output moves by at most about
// 2^-9 * sum_k |w[n, k] x[k]| beyond float rounding (kernels.h).
//
// Layout: a packed strip of W holds 32 output columns as [kb / 2][32] words,
// each the bf16 pair (w[n, 2p], w[n, 2p + 1]); a packed tile of x holds
// kBfMr rows as [K / 2][kBfMr] words of bf16 pairs, so the micro-kernel
// broadcasts one word per row and k pair.

constexpr int kBfMr = 8;         // Rows of x per register tile (16 accumulators).
constexpr int kBfNr = 32;        // Output columns per tile (two vectors).
constexpr int64_t kBfKb = 256;   // Inputs per panel (128 pairs).
constexpr int64_t kBfNb = 256;   // Output columns per panel: 128 KiB packed.
constexpr int64_t kBfMc = 256;   // Rows of x packed at once.

#pragma GCC push_options
#pragma GCC target("avx512bf16")
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512bf16"))), apply_to = function)
#endif

// Packs `rows` rows of x (row stride K, K even) as one tile of [K / 2][MR]
// words, rows beyond `rows` zero.
template <int MR>
void PackXBf16Rows(const float* x, int64_t K, int64_t rows, uint32_t* out) {
  const int64_t pairs = K / 2;
  for (int m = 0; m < MR; ++m) {
    if (m >= rows) {
      for (int64_t p = 0; p < pairs; ++p) out[p * MR + m] = 0;
      continue;
    }
    const float* xr = x + m * K;
    for (int64_t k = 0; k < K; k += 32) {
      const int64_t n = Min(32, K - k);
      const __m512 lo = _mm512_maskz_loadu_ps(FirstLanes(n), xr + k);
      const __m512 hi = _mm512_maskz_loadu_ps(FirstLanes(Max(n - 16, 0)), xr + k + 16);
      alignas(64) uint32_t words[16];
      // bf16 values 0..15 from lo, 16..31 from hi: word j is the pair (2j, 2j + 1).
      _mm512_store_si512(words, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
      for (int64_t j = 0; j < n / 2; ++j) out[(k / 2 + j) * MR + m] = words[j];
    }
  }
}

void PackXBf16(const float* x, int64_t K, int64_t rows, uint32_t* out) { PackXBf16Rows<kBfMr>(x, K, rows, out); }

// Packs `rows` rows of x (at most 16; K a multiple of 32, as the
// tile unit needs) as `parts` consecutive tiles of [K / 2][16] words
// (PackXBf16Rows<16>'s layout), part p the bf16 rounding (to nearest) of
// what parts 0 .. p - 1 left of x. Each residual is exact in float (x minus
// its rounding to fewer bits of the same binade), and each part carries 8
// more significant bits, so three parts sum to x exactly, except where a
// part falls below bf16's normal range (|x| under about 2^-110, which the
// tile unit flushes to zero anyway). Sixteen rows by 32 inputs at a time go
// through registers: each part's 16 rows of 16 words are one 16 x 16 block,
// transposed into the tile's 16 words per input pair and stored whole (a
// word at a time, the packing was 6 % of a split prefill's time at 2,048
// tokens, perf; now about 1 %).
void PackXBf16AmxParts(const float* x, int64_t K, int64_t rows, int parts, uint32_t* out) {
  constexpr int kRows = 16;
  const int64_t tile_words = K / 2 * kRows;
  alignas(64) float left[kRows][32];  // what the parts so far have left of each row's 32 inputs
  for (int64_t k = 0; k < K; k += 32) {
    for (int m = 0; m < kRows; ++m) {
      const __mmask16 live = m < rows ? 0xffff : 0;
      _mm512_store_ps(left[m], _mm512_maskz_loadu_ps(live, x + m * K + k));
      _mm512_store_ps(left[m] + 16, _mm512_maskz_loadu_ps(live, x + m * K + k + 16));
    }
    for (int p = 0; p < parts; ++p) {
      __m512 r[kRows];
#pragma GCC unroll 16
      for (int m = 0; m < kRows; ++m) {
        const __m512 lo = _mm512_load_ps(left[m]), hi = _mm512_load_ps(left[m] + 16);
        const __m512i packed = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
        r[m] = _mm512_castsi512_ps(packed);
        if (p + 1 < parts) {
          // The residual, exact in float (a bf16 is the top half of a float).
          const __m512 lo_b = _mm512_castsi512_ps(
              _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(packed)), 16));
          const __m512 hi_b = _mm512_castsi512_ps(
              _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(packed, 1)), 16));
          _mm512_store_ps(left[m], _mm512_sub_ps(lo, lo_b));
          _mm512_store_ps(left[m] + 16, _mm512_sub_ps(hi, hi_b));
        }
      }
      Transpose16x16(r);  // r[j]: the pair k / 2 + j of each of the 16 rows
      uint32_t* tile = out + p * tile_words + k / 2 * kRows;
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j) _mm512_store_si512(tile + j * kRows, _mm512_castps_si512(r[j]));
    }
  }
}

// y[0:mr, 0:cols] (+)= one tile of x (from the panel's first pair) times one
// strip of W, over `pairs` k pairs.
void Bf16Tile(const uint32_t* xt, const uint32_t* strip, int64_t pairs, float* y, int64_t ldy, int64_t cols,
              int mr, bool accumulate) {
  __m512 acc[kBfMr][2];
#pragma GCC unroll 8
  for (int m = 0; m < kBfMr; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    const __m512bh w0 = (__m512bh)_mm512_load_si512(strip + p * kBfNr);
    const __m512bh w1 = (__m512bh)_mm512_load_si512(strip + p * kBfNr + 16);
#pragma GCC unroll 8
    for (int m = 0; m < kBfMr; ++m) {
      const __m512bh xb = (__m512bh)_mm512_set1_epi32(static_cast<int>(xt[p * kBfMr + m]));
      acc[m][0] = _mm512_dpbf16_ps(acc[m][0], w0, xb);
      acc[m][1] = _mm512_dpbf16_ps(acc[m][1], w1, xb);
    }
  }
  StoreTileRows(acc, mr, y, ldy, cols, accumulate);
}

#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("amx-tile,amx-bf16")
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("amx-tile,amx-bf16"))), apply_to = function)
#endif

// The bf16 prefill on AMX's tile unit (internal::HasAmxBf16: Sapphire Rapids
// and later), for K a multiple of 32. One tdpbf16ps multiplies a block of 16
// weight rows by 32 inputs (the A operand, 64 bytes per row) with the same
// 32 inputs of 16 rows of x (the B operand: 16 pairs of inputs, each row of
// it the 16 rows' pairs), 8,192 multiply-adds where vdpbf16ps does 32,
// accumulating in float as vdpbf16ps does (in its own order: the bits
// differ from the AVX-512 kernels'). Taking W as the A operand reads its
// rows as stored, 64 bytes of each of 16 rows at a time, so nothing packs
// the weights (in an MoE prefill, where each expert's weights meet a few
// dozen rows of x, packing them had cost more than the products); x, small,
// is packed in the B layout (PackXBf16AmxParts). The
// sums stay in the tile unit for the whole of K and leave it once per block
// of 16 x 16 outputs, transposed on the way to y. With
// SetSplitBf16Activations the float prefill runs here too, x split into
// three bf16 parts: three products per tile of x, each exact. 4-layer OLMoE
// fp16 on the Intel VM (docs/speed-log.md, stop 50): 1.7-2.2x the fp32 FMA
// kernels' prefill at 128 tokens, 1.1-1.6x at 512, as those pack every
// expert's weights for a few dozen rows of x and these read them as stored.
constexpr int kAmxBfMr = 16;    // Rows of x per tile.
constexpr int kAmxBfTiles = 5;  // Tiles of x multiplied with each block of W.
// How far ahead (in 64-byte steps of each weight row) AmxBf16Block
// prefetches the weights. An MoE prefill's expert weights come from DRAM,
// 16 rows at a time, and the tile load of each step waited for them: with
// 16 or 24 rows of x per expert, its products had read the weights at about
// 80 % of the speed of the same loads prefetched 8 to 16 steps ahead
// (in-process A/B, 64 OLMoE-sized experts). Where the matrix sits in the L3
// cache (a small model, or a benchmark repeating one product) the prefetches
// cost about a tenth at 16 rows; a model's forward pass reads its weights
// from memory.
constexpr int kAmxBfPrefetchLines = 12;

// The tile registers, each 16 rows of 64 bytes: tmm0-tmm4 the sums of up to
// kAmxBfTiles tiles of x, tmm5 the block of W, tmm6 and tmm7 blocks of x in
// turn. The peak probe uses the same shapes.
struct alignas(64) AmxBf16TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

// Loads the configuration into this thread's tile state for the duration of
// one thread's share of a product and returns the state to its initial
// (unused) form afterwards, so that threads which are not multiplying do not
// carry 8 KiB of tile registers through every context switch.
class ScopedAmxBf16Tiles {
 public:
  ScopedAmxBf16Tiles() {
    static const AmxBf16TileConfig config;
    _tile_loadconfig(&config);
  }
  ~ScopedAmxBf16Tiles() { _tile_release(); }
  ScopedAmxBf16Tiles(const ScopedAmxBf16Tiles&) = delete;
  ScopedAmxBf16Tiles& operator=(const ScopedAmxBf16Tiles&) = delete;
};

// Stores a 16 x 16 block of sums [weight row n][row of x m] as y[m, n] for
// m < mr, n < cols (y's row stride ldy).
__attribute__((always_inline)) inline void StoreTransposed(const float* sums, int mr, int cols, float* y,
                                                           int64_t ldy) {
  __m512 r[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = _mm512_load_ps(sums + i * 16);
  Transpose16x16(r);
  const __mmask16 mask = FirstLanes(cols);
  for (int m = 0; m < mr; ++m) _mm512_mask_storeu_ps(y + m * ldy, mask, r[m]);
}

// tdpbf16ps into sum tile t (0 .. 4) with the weights in tmm5 and x in
// tmm6 (odd false) or tmm7; the intrinsics take tile numbers as literals.
__attribute__((always_inline)) inline void AmxBf16Product(int t, bool odd) {
  if (!odd) {
    switch (t) {
      case 0: _tile_dpbf16ps(0, 5, 6); break;
      case 1: _tile_dpbf16ps(1, 5, 6); break;
      case 2: _tile_dpbf16ps(2, 5, 6); break;
      case 3: _tile_dpbf16ps(3, 5, 6); break;
      default: _tile_dpbf16ps(4, 5, 6); break;
    }
  } else {
    switch (t) {
      case 0: _tile_dpbf16ps(0, 5, 7); break;
      case 1: _tile_dpbf16ps(1, 5, 7); break;
      case 2: _tile_dpbf16ps(2, 5, 7); break;
      case 3: _tile_dpbf16ps(3, 5, 7); break;
      default: _tile_dpbf16ps(4, 5, 7); break;
    }
  }
}

// The sums of T tiles of x times one block of 16 weight rows (w_rows,
// `stride` bytes apart) over K inputs, into sums[t] ([16 weight rows][16
// rows of x] floats each). Each tile of x comes in P parts (P tiles at
// xt + (t * P + p) * tile_words) whose products go into the same sums: one
// part with bf16 activations, three where x is split (AmxParts).
template <int T, int P>
void AmxBf16Block(const uint32_t* xt, int64_t tile_words, const uint8_t* w_rows, int64_t stride, int64_t K,
                  float (*sums)[256]) {
  static_assert(T >= 1 && T <= kAmxBfTiles, "tmm0-tmm4 hold the sums");
  _tile_zero(0);
  if constexpr (T > 1) _tile_zero(1);
  if constexpr (T > 2) _tile_zero(2);
  if constexpr (T > 3) _tile_zero(3);
  if constexpr (T > 4) _tile_zero(4);
  for (int64_t k = 0; k < K; k += 32) {
    const uint32_t* xk = xt + k / 2 * kAmxBfMr;  // 16 pairs x 16 rows
    // The line kAmxBfPrefetchLines ahead in each of the 16 weight rows,
    // continuing into the next block's rows near the end of K (the next
    // block of a thread's share is usually the next 16 rows). Prefetching
    // never faults, so a line past the matrix costs only its read.
    const int64_t ahead = k * 2 + kAmxBfPrefetchLines * 64;
    const uint8_t* lines = ahead < K * 2 ? w_rows + ahead : w_rows + 16 * stride + (ahead - K * 2);
#pragma GCC unroll 16
    for (int r = 0; r < 16; ++r) _mm_prefetch(reinterpret_cast<const char*>(lines + r * stride), _MM_HINT_T0);
    _tile_loadd(5, w_rows + k * 2, stride);
    // Tiles of x alternate between tmm6 and tmm7, so that one loads while
    // the other multiplies. Part by part, each over every tile, so that
    // consecutive products go to different sums rather than a tile's three
    // parts waiting on one another's results (each sum gets its parts in
    // the same order either way: the same bits).
#pragma GCC unroll 16
    for (int q = 0; q < T * P; ++q) {
      const int part = q / T, t = q % T;
      if (q % 2 == 0) {
        _tile_loadd(6, xk + (t * P + part) * tile_words, 64);
      } else {
        _tile_loadd(7, xk + (t * P + part) * tile_words, 64);
      }
      AmxBf16Product(t, q % 2 != 0);
    }
  }
  _tile_stored(0, sums[0], 64);
  if constexpr (T > 1) _tile_stored(1, sums[1], 64);
  if constexpr (T > 2) _tile_stored(2, sums[2], 64);
  if constexpr (T > 3) _tile_stored(3, sums[3], 64);
  if constexpr (T > 4) _tile_stored(4, sums[4], 64);
}

// y[0:M, n_begin:n_end] = x W^T for the rows of x packed in xp
// (ceil(M / kAmxBfMr) tiles of PackXBf16AmxParts, P parts each)
// and BF16 weights w (K = w.cols a multiple of 32). A final block of fewer
// than 16 weight rows is copied into zero-padded scratch first, so that no
// tile load reads past the matrix.
template <int P>
void AmxBf16ColumnsP(const uint32_t* xp, int64_t M, const WeightView& w, float* y, int64_t n_begin, int64_t n_end) {
  const int64_t N = w.rows, K = w.cols;
  const int64_t tile_words = K / 2 * kAmxBfMr;
  const int64_t tiles = (M + kAmxBfMr - 1) / kAmxBfMr;
  const ScopedAmxBf16Tiles config;
  alignas(64) float sums[kAmxBfTiles][256];
  // A final block of fewer than 16 weight rows, zero-padded.
  const int64_t last_cols = (n_end - n_begin) % 16;
  const uint8_t* padded = nullptr;
  if (last_cols != 0) {
    auto* buffer = reinterpret_cast<uint8_t*>(
        internal::ThreadScratch(internal::Scratch::kPanel, static_cast<size_t>(16 * K / 2)));  // [16][K] bf16
    std::fill(buffer, buffer + 16 * K * 2, uint8_t{0});
    for (int64_t i = 0; i < last_cols; ++i) std::copy_n(RowAt(w, n_end - last_cols + i), K * 2, buffer + i * K * 2);
    padded = buffer;
  }
  // Weight rows in chunks of about 1 MiB (at least one block): each group
  // of up to kAmxBfTiles tiles of x meets every block of a chunk before the
  // next group starts, so the chunk, read from memory once, stays in L2
  // while the groups pass, and x is read once per chunk instead of once per
  // block of 16 weight rows. Where x has one group (an expert's few dozen
  // rows) the order is the same as block by block.
  const int64_t chunk_rows = Max(int64_t{16}, (int64_t{1} << 20) / (K * 2) / 16 * 16);
  for (int64_t c0 = n_begin; c0 < n_end; c0 += chunk_rows) {
    const int64_t c1 = Min(c0 + chunk_rows, n_end);
    for (int64_t t0 = 0; t0 < tiles; t0 += kAmxBfTiles) {
      const int count = static_cast<int>(Min(int64_t{kAmxBfTiles}, tiles - t0));
      const uint32_t* xt = xp + t0 * P * tile_words;
      for (int64_t n0 = c0; n0 < c1; n0 += 16) {
        const int cols = static_cast<int>(Min(int64_t{16}, c1 - n0));
        const uint8_t* w_rows = cols < 16 ? padded : RowAt(w, n0);
        const int64_t stride = cols < 16 ? K * 2 : RowStride(w);
        switch (count) {
          case 1: AmxBf16Block<1, P>(xt, tile_words, w_rows, stride, K, sums); break;
          case 2: AmxBf16Block<2, P>(xt, tile_words, w_rows, stride, K, sums); break;
          case 3: AmxBf16Block<3, P>(xt, tile_words, w_rows, stride, K, sums); break;
          case 4: AmxBf16Block<4, P>(xt, tile_words, w_rows, stride, K, sums); break;
          default: AmxBf16Block<5, P>(xt, tile_words, w_rows, stride, K, sums); break;
        }
        for (int t = 0; t < count; ++t) {
          const int64_t m0 = (t0 + t) * kAmxBfMr;
          StoreTransposed(sums[t], static_cast<int>(Min(int64_t{kAmxBfMr}, M - m0)), cols, y + m0 * N + n0, N);
        }
      }
    }
  }
}

// How many bf16 parts the AMX prefill splits each activation into: one with
// bf16 activations, three for the float prefill with
// SetSplitBf16Activations, 0 where the float prefill keeps the fp32 FMA
// kernels. (Two parts leave x - a - b, up to 2^-18 of x: measured on the
// 4-layer OLMoE, 1.15-1.3x as fast as three at 512 tokens, the same at 128,
// and logits 5x as far from the float kernels'; three are exact.)
int AmxParts() {
  if (::epwa::kernels::Bf16Activations()) return 1;
  return ::epwa::kernels::SplitBf16Activations() ? 3 : 0;
}

// AmxBf16ColumnsP for x packed in `parts` parts (1 or 3).
void AmxBf16Columns(const uint32_t* xp, int64_t M, const WeightView& w, float* y, int64_t n_begin, int64_t n_end,
                    int parts) {
  switch (parts) {
    case 3: AmxBf16ColumnsP<3>(xp, M, w, y, n_begin, n_end); break;
    default: AmxBf16ColumnsP<1>(xp, M, w, y, n_begin, n_end); break;
  }
}

#ifdef __clang__
#pragma clang attribute pop
#endif
#pragma GCC pop_options

// Packs output columns [n0, n0 + ncols) x inputs [k0, k0 + kb) of BF16 W as
// ceil(ncols / 32) strips of [kb / 2][32] words (kb even); columns beyond
// ncols are zero. Sixteen rows by 32 inputs (16 words)
// at a time are one 16 x 16 block of words, transposed (bits only).
void PackPanelBf16(const WeightView& w, int64_t n0, int64_t ncols, int64_t k0, int64_t kb, uint32_t* out) {
  const int64_t pairs = kb / 2;
  for (int64_t s = 0; s * kBfNr < ncols; ++s) {
    uint32_t* strip = out + s * pairs * kBfNr;
    for (int h = 0; h < 2; ++h) {
      const int64_t first = s * kBfNr + h * 16;
      const int nrows = static_cast<int>(Clamp(ncols - first, 0, 16));
      for (int64_t k = 0; k < kb; k += 32) {
        const int64_t nk = Min(32, kb - k);
        const __mmask32 mask = static_cast<__mmask32>(nk >= 32 ? 0xffffffffu : (1u << nk) - 1u);
        __m512 r[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) {
          r[i] = i < nrows ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(
                                 mask, reinterpret_cast<const uint16_t*>(RowAt(w, n0 + first + i)) + k0 + k))
                           : _mm512_setzero_ps();
        }
        Transpose16x16(r);
        const int64_t np = nk / 2;
        for (int64_t j = 0; j < np; ++j) _mm512_store_ps(reinterpret_cast<float*>(strip + (k / 2 + j) * kBfNr + h * 16), r[j]);
      }
    }
  }
}


// The integer and bf16 prefills, defined after the include below because
// they use its PanelPrefetcher; MatMul (in the include) dispatches to them.
template <DType D>
bool PrefillInt8(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool);
template <DType D>
bool PrefillBf16(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool);

// The prefill driver and the dtype dispatch of MatMul and ConvertToF32, built
// on the definitions above and compiled here for AVX-512.
#include "kernels/kernels_blocking_inl.h"

// One thread's share of the integer prefill: output columns [n_begin, n_end)
// for `mc` rows of x packed in xp (ceil(mc / kI8Mr) tiles).
template <DType D>
void PrefillInt8Range(const int32_t* xp, int64_t mc, const WeightView& w, float* y, int64_t n_begin, int64_t n_end,
                      __m256i level_table, const FollowingWork& after = {}) {
  const int64_t N = w.rows;
  const int64_t tile_words = w.cols / 32 * kI8XGroupWords;
  auto* packed = reinterpret_cast<uint8_t*>(internal::ThreadScratch(
      internal::Scratch::kPanel, static_cast<size_t>(kI8Nb / kI8Nr * kI8Kg * kI8WGroupBytes / 4)));
  // Panels span whole groups: kI8Kg groups of 32 inputs.
  PanelLoop<kI8Nb, kI8Kg * 32, kI8Mr, kI8Nr>(
      w, mc, n_begin, n_end, after,
      [&](const Panel& p) { PackPanelInt8<D>(w, p.n0, p.ncols, p.k0 / 32, p.kb / 32, level_table, packed); },
      [&](int64_t m0, int mr, int64_t s, const Panel& p) {
        const int64_t ng = p.kb / 32;
        Int8Tile(xp + m0 / kI8Mr * tile_words + p.k0 / 32 * kI8XGroupWords, packed + s * ng * kI8WGroupBytes, ng,
                 y + m0 * N + p.n0 + s * kI8Nr, N, Min(kI8Nr, p.ncols - s * kI8Nr), mr, p.k0 > 0);
      });
}

// The integer prefill (see above). A CPU without VNNI (Skylake-SP/X) runs
// the AVX2 integer prefill (vpmaddubsw) instead, as its decode runs the AVX2
// decode: the float prefill it took before rounded neither x nor anything
// else as the decode does, and was about half as fast (AVX2 path: int4
// prefill 2.4x, int8 1.6x from the integer kernels).
template <DType D>
bool PrefillInt8(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool) {
  if (!internal::HasAvx512Vnni()) {
    internal::kAvx2Kernels.mat_mul(x, M, w, y, pool);
    return true;
  }
  const int64_t K = w.cols;
  const int64_t tile_words = K / 32 * kI8XGroupWords;
  // The calling thread's buffer, shared with the workers below.
  auto* xp = reinterpret_cast<int32_t*>(internal::ThreadScratch(
      internal::Scratch::kPackedX, static_cast<size_t>(kI8Mc / kI8Mr * tile_words)));  // [kI8Mc / kI8Mr][groups][10 kI8Mr]
  const __m256i level_table = Int8LevelTable<D>();
  TiledPrefill<kI8Mc, kI8Mr, kI8Nr>(
      x, M, w, y, pool, [&](const float* rows, int64_t count, int64_t t) { PackXInt8<D>(rows, K, count, xp + t * tile_words); },
      [&](int64_t mc, float* yb, int64_t n0, int64_t n1) { PrefillInt8Range<D>(xp, mc, w, yb, n0, n1, level_table); });
  return true;
}

// One thread's share: output columns [n_begin, n_end) for `mc` rows of x
// packed in xp (ceil(mc / kBfMr) tiles of [K / 2][kBfMr] words).
void PrefillBf16Range(const uint32_t* xp, int64_t mc, const WeightView& w, float* y, int64_t n_begin,
                      int64_t n_end, const FollowingWork& after = {}) {
  const int64_t N = w.rows;
  const int64_t tile_words = w.cols / 2 * kBfMr;
  auto* packed = reinterpret_cast<uint32_t*>(
      internal::ThreadScratch(internal::Scratch::kPanel, static_cast<size_t>(kBfNb * kBfKb / 2)));
  PanelLoop<kBfNb, kBfKb, kBfMr, kBfNr>(
      w, mc, n_begin, n_end, after, [&](const Panel& p) { PackPanelBf16(w, p.n0, p.ncols, p.k0, p.kb, packed); },
      [&](int64_t m0, int mr, int64_t s, const Panel& p) {
        const int64_t pairs = p.kb / 2;
        Bf16Tile(xp + m0 / kBfMr * tile_words + p.k0 / 2 * kBfMr, packed + s * pairs * kBfNr, pairs,
                 y + m0 * N + p.n0 + s * kBfNr, N, Min(kBfNr, p.ncols - s * kBfNr), mr, p.k0 > 0);
      });
}

// Whether the bf16 prefill of K inputs runs on AMX (whole blocks of 32).
inline bool UsesAmxBf16(int64_t K) { return K % 32 == 0 && internal::HasAmxBf16(); }

// The bf16 prefill for BF16 weights where it is requested, the CPU has
// AVX512-BF16 and K is even (every model's is); returns false otherwise (the
// float prefill runs).
template <DType D>
bool PrefillBf16(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool) {
  if constexpr (D != DType::kBF16) {
    return false;
  } else {
    const int64_t K = w.cols;
    const int parts = AmxParts();  // 0: neither bf16 activations nor the split
    if (parts == 0 || !internal::HasAvx512Bf16() || K % 2 != 0) return false;
    if (parts > 1 && !UsesAmxBf16(K)) return false;  // the split runs on the tile unit only
    if (UsesAmxBf16(K)) {
      const int64_t tile_words = K / 2 * kAmxBfMr;
      auto* xp = reinterpret_cast<uint32_t*>(internal::ThreadScratch(
          internal::Scratch::kPackedX,
          static_cast<size_t>(kBfMc / kAmxBfMr * parts * tile_words)));  // [kBfMc / kAmxBfMr][parts][K / 2][kAmxBfMr]
      TiledPrefill<kBfMc, kAmxBfMr, 16>(
          x, M, w, y, pool,
          [&](const float* rows, int64_t count, int64_t t) {
            PackXBf16AmxParts(rows, K, count, parts, xp + t * parts * tile_words);
          },
          [&](int64_t mc, float* yb, int64_t n0, int64_t n1) { AmxBf16Columns(xp, mc, w, yb, n0, n1, parts); });
      return true;
    }
    const int64_t tile_words = K / 2 * kBfMr;
    // The calling thread's buffer, shared with the workers below.
    auto* xp = reinterpret_cast<uint32_t*>(internal::ThreadScratch(
        internal::Scratch::kPackedX, static_cast<size_t>(kBfMc / kBfMr * tile_words)));  // [kBfMc / kBfMr][K / 2][kBfMr]
    TiledPrefill<kBfMc, kBfMr, kBfNr>(
        x, M, w, y, pool, [&](const float* rows, int64_t count, int64_t t) { PackXBf16(rows, K, count, xp + t * tile_words); },
        [&](int64_t mc, float* yb, int64_t n0, int64_t n1) { PrefillBf16Range(xp, mc, w, yb, n0, n1); });
    return true;
  }
}

// MatMulMany (kernels_many_inl.h): the paths an expert job can take here,
// as MatMulTyped chooses them.
template <DType D>
ManyPath ManyPathFor(int64_t M, int64_t K) {
  // MatMulTyped's choice: under ScopedRowInvariantMatMul (read on the
  // calling thread, whose flag it is) a prefill at every row count.
  const bool int8_x = HasGroupScales(D) && !::epwa::kernels::FloatActivations();
  if (UsesDecode<D>(M, K) && (int8_x || !HasGroupScales(D)) && !::epwa::kernels::RowInvariantMatMul())
    return HasScales(D) ? ManyPath::kDecodeQuantized : ManyPath::kDecodeFloat;
  if (int8_x && internal::HasAvx512Vnni()) return ManyPath::kPrefillInt8;
  if (D == DType::kBF16 && ::epwa::kernels::Bf16Activations() && internal::HasAvx512Bf16() && K % 2 == 0)
    return UsesAmxBf16(K) ? ManyPath::kPrefillBf16Amx : ManyPath::kPrefillBf16;
  if (D == DType::kBF16 && AmxParts() > 1 && internal::HasAvx512Bf16() && UsesAmxBf16(K))
    return ManyPath::kPrefillBf16Amx;
  return ManyPath::kPrefillFloat;
}

template <DType D>
bool ManyGroupedFits(int64_t M) {
  // One pass over at most kMc rows per job, as the prefills take them.
  if (M > kMc || M > kI8Mc || M > kBfMc) return false;
  // Without VNNI the quantized decode is AVX2's; MatMul runs it.
  if constexpr (HasScales(D)) return internal::HasAvx512Vnni();
  return true;
}

inline int64_t ManyXFloats(ManyPath path, DType /*dtype*/, int64_t M, int64_t K, int amx_parts) {
  switch (path) {
    case ManyPath::kDecodeQuantized: return M * QuantizedXRowFloats(K);
    case ManyPath::kDecodeFloat: return 0;
    case ManyPath::kPrefillInt8: return (M + kI8Mr - 1) / kI8Mr * (K / 32 * kI8XGroupWords);
    case ManyPath::kPrefillBf16: return (M + kBfMr - 1) / kBfMr * (K / 2 * kBfMr);
    case ManyPath::kPrefillBf16Amx: return (M + kAmxBfMr - 1) / kAmxBfMr * amx_parts * (K / 2 * kAmxBfMr);
    case ManyPath::kPrefillFloat: return (M + kMr - 1) / kMr * K * kMr;
  }
  return 0;
}
inline int64_t ManyTileRows(ManyPath path, int64_t M) {
  switch (path) {
    case ManyPath::kPrefillInt8: return kI8Mr;
    case ManyPath::kPrefillBf16: return kBfMr;
    case ManyPath::kPrefillBf16Amx: return kAmxBfMr;
    case ManyPath::kPrefillFloat: return kMr;
    case ManyPath::kDecodeQuantized:
    case ManyPath::kDecodeFloat: break;
  }
  return Max(M, 1);
}
inline int64_t ManyChunkCols(ManyPath path) {
  switch (path) {
    case ManyPath::kPrefillInt8: return kI8Nb;
    case ManyPath::kPrefillBf16:
    case ManyPath::kPrefillBf16Amx: return kBfNb;
    case ManyPath::kPrefillFloat: return kNb;
    case ManyPath::kDecodeQuantized:
    case ManyPath::kDecodeFloat: break;
  }
  return 64;
}
// The scratch MatMulScratchBytes accounts for: kMc rows of packed x, or of x
// in three bf16 parts (1.5 floats per input).
inline int64_t ManyScratchLimit(int64_t max_k) { return kMc * max_k * 3 / 2; }
inline int ManyAmxParts() { return Max(AmxParts(), 1); }

template <DType D>
struct ManyTables {
  __m512i decode = _mm512_setzero_si512();
  __m256i prefill = _mm256_setzero_si256();
};
template <DType D>
ManyTables<D> MakeManyTables() {
  ManyTables<D> t;
  if constexpr (HasScales(D)) {
    t.decode = DecodeLevelTable<D>();
    t.prefill = Int8LevelTable<D>();
  }
  return t;
}

template <DType D>
void PrepareManyUnit(ManyPath path, const MatMulJob& job, int64_t t, float* base, int amx_parts, QuantizedX& qx) {
  const int64_t K = job.w->cols;
  switch (path) {
    case ManyPath::kDecodeQuantized:
      if constexpr (HasScales(D)) qx = QuantizeXInto<D>(job.x, job.M, K, base);
      break;
    case ManyPath::kDecodeFloat:
      break;
    case ManyPath::kPrefillInt8:
      if constexpr (HasScales(D))
        PackXInt8<D>(job.x + t * kI8Mr * K, K, Min(kI8Mr, job.M - t * kI8Mr),
                     reinterpret_cast<int32_t*>(base) + t * (K / 32 * kI8XGroupWords));
      break;
    case ManyPath::kPrefillBf16:
      PackXBf16(job.x + t * kBfMr * K, K, Min(kBfMr, job.M - t * kBfMr),
                reinterpret_cast<uint32_t*>(base) + t * (K / 2 * kBfMr));
      break;
    case ManyPath::kPrefillBf16Amx:
      PackXBf16AmxParts(job.x + t * kAmxBfMr * K, K, Min(int64_t{kAmxBfMr}, job.M - t * kAmxBfMr), amx_parts,
                        reinterpret_cast<uint32_t*>(base) + t * amx_parts * (K / 2 * kAmxBfMr));
      break;
    case ManyPath::kPrefillFloat:
      PackX(job.x + t * kMr * K, K, Min(kMr, job.M - t * kMr), base + t * K * kMr);
      break;
  }
}

template <DType D>
void RunManyRange(ManyPath path, const MatMulJob& job, const float* base, const QuantizedX& qx, int64_t n0,
                  int64_t n1, const FollowingWork& after, const ManyTables<D>& tables, int amx_parts) {
  switch (path) {
    case ManyPath::kDecodeQuantized:
      if constexpr (HasScales(D)) QuantMatVecRangeFor<D>(job.M, qx, *job.w, job.y, n0, n1, tables.decode);
      break;
    case ManyPath::kDecodeFloat:
      if constexpr (!HasScales(D)) {
        MatVecRangeFor<D>(job.M, job.x, job.w->cols, *job.w, job.y, n0, n1);
      }
      break;
    case ManyPath::kPrefillInt8:
      if constexpr (HasScales(D))
        PrefillInt8Range<D>(reinterpret_cast<const int32_t*>(base), job.M, *job.w, job.y, n0, n1, tables.prefill,
                            after);
      break;
    case ManyPath::kPrefillBf16:
      PrefillBf16Range(reinterpret_cast<const uint32_t*>(base), job.M, *job.w, job.y, n0, n1, after);
      break;
    case ManyPath::kPrefillBf16Amx:
      AmxBf16Columns(reinterpret_cast<const uint32_t*>(base), job.M, *job.w, job.y, n0, n1, amx_parts);
      break;
    case ManyPath::kPrefillFloat:
      PrefillRange<D>(base, job.M, *job.w, job.y, n0, n1, after);
      break;
  }
}

#include "kernels/kernels_many_inl.h"

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
// Attention over the KV cache (kernels.h). The queries of one key/value head
// go in blocks of up to four (ForQueryBlocks), so that each cached row is
// loaded and widened once per block; per query, the sums run exactly as
// Dot's and Axpy's do.

// How far ahead of the cached row being read the attention kernels
// prefetch: whole rows making at least 8 KiB. KVCache keeps each head's
// positions consecutive, one short row (512 bytes in f32 at 128 dims, 256 in
// bf16) each, and a decode step reads them once. kernels_bench
// AttentionDecode/{f32,bf16}/2048/2 (2 threads, three alternating rounds,
// GB/s): 8 rows ahead f32 31.9-33.0, bf16 25.2-32.2; 16 rows f32 34.9-37.7,
// bf16 31.0-34.1; 32 rows f32 34.4-37.0, bf16 31.5-40.0. Eight rows was 4
// KiB in f32 and 2 KiB in bf16, as the quantized decode found 4 KiB too
// short (QuantPrefetchDistance).
inline int64_t AttentionPrefetchOffset(int64_t row_bytes) {
  constexpr int64_t kBytes = 8192;
  return (kBytes + row_bytes - 1) / row_bytes * row_bytes;
}

// One query's scores for rows j + t * part, t < S, j < part: S streams of
// consecutive rows read side by side. A decode step's query reads its head's
// keys once, and the memory system serves several sequential streams per
// core faster than one (the bandwidth probe's patterns, 2 threads: one stream
// 42 GB/s, four with prefetching 51-62); each dot product is still summed
// exactly as Dot sums it, so the scores are the same bits in any grouping.
template <DType D, int S>
void ScoreStreams(const float* q, int64_t dim, const uint8_t* keys, int64_t row_bytes, int64_t part, int64_t ahead,
                  float scale, float* scores) {
  const int64_t used_bytes = dim * (D == DType::kF32 ? 4 : 2);
  for (int64_t j = 0; j < part; ++j) {
    const uint8_t* rows[S];
    __m512 s[S][4];
#pragma GCC unroll 4
    for (int t = 0; t < S; ++t) {
      rows[t] = keys + (t * part + j) * row_bytes;
      for (int64_t b = 0; b < used_bytes; b += 64) PrefetchL1(rows[t] + ahead + b);
      s[t][0] = s[t][1] = s[t][2] = s[t][3] = _mm512_setzero_ps();
    }
    int64_t i = 0;
    for (; i + 64 <= dim; i += 64) {
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const __m512 qv = _mm512_loadu_ps(q + i + 16 * c);
#pragma GCC unroll 4
        for (int t = 0; t < S; ++t) s[t][c] = _mm512_fmadd_ps(qv, Weights<D>::Load(rows[t], i + 16 * c), s[t][c]);
      }
    }
    for (; i < dim; i += 16) {
      const __mmask16 mask = FirstLanes(dim - i);
      const __m512 qv = _mm512_maskz_loadu_ps(mask, q + i);
#pragma GCC unroll 4
      for (int t = 0; t < S; ++t) s[t][0] = _mm512_fmadd_ps(qv, Weights<D>::LoadMasked(rows[t], i, mask), s[t][0]);
    }
#pragma GCC unroll 4
    for (int t = 0; t < S; ++t)
      scores[t * part + j] =
          _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s[t][0], s[t][1]), _mm512_add_ps(s[t][2], s[t][3]))) * scale;
  }
}

template <DType D, int G>
void ScoresBlock(const float* const* q, int64_t dim, const uint8_t* keys, int64_t row_bytes, int64_t n, float scale,
                 float* scores, int64_t score_stride) {
  const int64_t ahead = AttentionPrefetchOffset(row_bytes);
  if constexpr (G == 1) {
    // A lone query (a decode step without grouped heads): four streams over
    // the quarters of its rows, the few left over (n % 4) as one.
    // AttentionBlock at AttentionDecode's shape (f32, 2,048 positions, 2
    // threads), a temporary switch alternated in one process: 42.8 -> 45.2
    // and 43.2 -> 46.1 GB/s.
    constexpr int kStreams = 4;
    const int64_t part = n / kStreams;
    ScoreStreams<D, kStreams>(q[0], dim, keys, row_bytes, part, ahead, scale, scores);
    ScoreStreams<D, 1>(q[0], dim, keys + kStreams * part * row_bytes, row_bytes, n - kStreams * part, ahead, scale,
                       scores + kStreams * part);
    return;
  }
  const int64_t used_bytes = dim * (D == DType::kF32 ? 4 : 2);
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* row = keys + j * row_bytes;
    // Past the last position this fetches lines nobody reads (a prefetch
    // never faults); the next tile of the same head begins there.
    for (int64_t b = 0; b < used_bytes; b += 64) PrefetchL1(row + ahead + b);
    __m512 s[G][4];
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) s[g][0] = s[g][1] = s[g][2] = s[g][3] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= dim; i += 64) {
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const __m512 k = Weights<D>::Load(row, i + 16 * c);
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g) s[g][c] = _mm512_fmadd_ps(_mm512_loadu_ps(q[g] + i + 16 * c), k, s[g][c]);
      }
    }
    for (; i < dim; i += 16) {
      const __mmask16 mask = FirstLanes(dim - i);
      const __m512 k = Weights<D>::LoadMasked(row, i, mask);
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g) s[g][0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, q[g] + i), k, s[g][0]);
    }
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g)
      scores[g * score_stride + j] =
          _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s[g][0], s[g][1]), _mm512_add_ps(s[g][2], s[g][3]))) * scale;
  }
}

// Columns in blocks of 64 (four vectors), so that a block of four heads
// keeps its 16 sums in registers across all n rows. A full block and a
// partial one are separate functions: with the partial block's run-time
// vector count in the same function, GCC kept the sums of both in memory and
// stored all 16 to the stack on every row (AttentionPrefill: 23 % of the
// fp32 FMA peak, the stores the hottest instructions).
template <DType D, int G, int C>
void ValuesFullBlock(const float* p, int64_t p_stride, int64_t p_step, const uint8_t* values, int64_t row_bytes,
                     int64_t n, int64_t c0, float* const* out, bool accumulate) {
  constexpr int64_t kElement = D == DType::kF32 ? 4 : 2;
  const int64_t ahead = AttentionPrefetchOffset(row_bytes);
  __m512 acc[G][C];
#pragma GCC unroll 4
  for (int g = 0; g < G; ++g)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c)
      acc[g][c] = accumulate ? _mm512_loadu_ps(out[g] + c0 + 16 * c) : _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* row = values + j * row_bytes;
#pragma GCC unroll 8
    for (int64_t b = 0; b < 16 * C * kElement; b += 64)
      PrefetchL1(row + ahead + c0 * kElement + b);
    __m512 a[G];
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) a[g] = _mm512_set1_ps(p[g * p_stride + j * p_step]);
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const __m512 v = Weights<D>::Load(row, c0 + 16 * c);
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g) acc[g][c] = _mm512_fmadd_ps(a[g], v, acc[g][c]);
    }
  }
#pragma GCC unroll 4
  for (int g = 0; g < G; ++g)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(out[g] + c0 + 16 * c, acc[g][c]);
}

template <DType D, int G>
void ValuesPartialBlock(const float* p, int64_t p_stride, int64_t p_step, const uint8_t* values, int64_t row_bytes,
                        int64_t n, int64_t c0, int64_t width, float* const* out, bool accumulate) {
  const int vectors = static_cast<int>((width + 15) / 16);
  __m512 acc[G][4];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < vectors; ++c)
      acc[g][c] = accumulate ? _mm512_maskz_loadu_ps(FirstLanes(width - 16 * c), out[g] + c0 + 16 * c)
                             : _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* row = values + j * row_bytes;
    for (int c = 0; c < vectors; ++c) {
      const __m512 v = Weights<D>::LoadMasked(row, c0 + 16 * c, FirstLanes(width - 16 * c));
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g)
        acc[g][c] = _mm512_fmadd_ps(_mm512_set1_ps(p[g * p_stride + j * p_step]), v, acc[g][c]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < vectors; ++c)
      _mm512_mask_storeu_ps(out[g] + c0 + 16 * c, FirstLanes(width - 16 * c), acc[g][c]);
}

// Query g's weight of row j is p[g * p_stride + j * p_step].
template <DType D, int G>
void ValuesBlock(const float* p, int64_t p_stride, int64_t p_step, const uint8_t* values, int64_t row_bytes,
                 int64_t n, int64_t dim, float* const* out, bool accumulate) {
  int64_t c0 = 0;
  // One or two queries keep 128 columns (8 or 16 sums) in registers, so that
  // a decode step reads each row of a 128-wide head once, in order, instead
  // of its two halves in two passes (AttentionBlock at AttentionDecode's
  // shape, 2,048 positions, 2 threads, a temporary switch alternated in one
  // process: f32 36.4 -> 40.3 GB/s, bf16 31.4 -> 36.0). Each sum still adds
  // its terms in order of j.
  if constexpr (G <= 2)
    for (; dim - c0 >= 128; c0 += 128)
      ValuesFullBlock<D, G, 8>(p, p_stride, p_step, values, row_bytes, n, c0, out, accumulate);
  for (; c0 < dim; c0 += 64) {
    if (dim - c0 >= 64)
      ValuesFullBlock<D, G, 4>(p, p_stride, p_step, values, row_bytes, n, c0, out, accumulate);
    else
      ValuesPartialBlock<D, G>(p, p_stride, p_step, values, row_bytes, n, c0, dim - c0, out, accumulate);
  }
}

// Half: clamped with the NaN-keeping operand order (min/max return their
// second operand when either is NaN), then vcvtps2ph to nearest even. BF16:
// round to nearest even in integer arithmetic, NaN made quiet, as F32ToBF16.
void ConvertFromF32(const float* src, int64_t n, DType dtype, void* dst) {
  if (dtype == DType::kF32) {
    __builtin_memcpy(dst, src, static_cast<size_t>(n) * 4);
    return;
  }
  auto* out = static_cast<uint16_t*>(dst);
  const __m512 hi = _mm512_set1_ps(65504.0f), lo = _mm512_set1_ps(-65504.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = FirstLanes(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(mask, src + i);
    __m256i h;
    if (dtype == DType::kF16) {
      h = _mm512_cvtps_ph(_mm512_max_ps(lo, _mm512_min_ps(hi, v)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else {
      const __m512i bits = _mm512_castps_si512(v);
      const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
      const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
      const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
      h = _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet));
    }
    _mm256_mask_storeu_epi16(out + i, mask, h);
  }
}

void AttentionScores(const float* const* q, int64_t count, int64_t dim, const void* keys, DType cache_dtype,
                     int64_t stride, int64_t n, float scale, float* scores, int64_t score_stride) {
  ForCacheType(cache_dtype, [&](auto type) {
    constexpr DType D = decltype(type)::value;
    ForQueryBlocks(count, [&](auto block, int64_t first) {
      ScoresBlock<D, decltype(block)::value>(q + first, dim, static_cast<const uint8_t*>(keys),
                                             CacheRowBytes(D, stride), n, scale, scores + first * score_stride,
                                             score_stride);
    });
  });
}

void AttentionValues(const float* p, int64_t count, int64_t p_stride, const void* values, DType cache_dtype,
                     int64_t stride, int64_t n, int64_t dim, float* const* out, bool accumulate) {
  ForCacheType(cache_dtype, [&](auto type) {
    constexpr DType D = decltype(type)::value;
    ForQueryBlocks(count, [&](auto block, int64_t first) {
      ValuesBlock<D, decltype(block)::value>(p + first * p_stride, p_stride, 1, static_cast<const uint8_t*>(values),
                                             CacheRowBytes(D, stride), n, dim, out + first, accumulate);
    });
  });
}

// AttentionBlock (kernels.h) with the block's queries in the lanes of a
// vector. Scores: for 8 keys at a time, each of the dim steps loads the 16
// queries' element d once (queries transposed, [dim, 16]) and multiplies it
// with each key's element d broadcast, one FMA per key into that key's
// accumulator for even or odd d: 16 independent chains, no horizontal sums, and each key read
// once per 16 queries where AttentionScores reads it once per four and sums
// every dot product across lanes. The softmax then runs down the columns of
// [n, 16] (each lane a query, masked to its own keys) and the values go
// through ValuesBlock reading those columns. Every lane computes alone, in
// an order fixed by its own query and keys: its sums run over d, and over j
// from the block's first key (the keys before a query's own are weighted
// exactly 0).
constexpr int64_t kLaneTile = 64;  // keys widened (16-bit caches) and values read per tile
constexpr int kLaneKeys = 8;       // keys multiplied at once: one accumulator each

// qt[d * 16 + i] = queries[i][d] for d < dim, i < 16 (0 for i >= count):
// 16 x 16 blocks transposed in registers (interleaving pairs of 32-bit and
// then of 64-bit elements within 128-bit lanes, then moving 128-bit lanes
// twice), where element-wise copies cost a load and a store per element.
void TransposeQueries(const float* const* queries, int64_t count, int64_t dim, float* qt) {
  for (int64_t d0 = 0; d0 < dim; d0 += 16) {
    const __mmask16 cols = FirstLanes(dim - d0);
    __m512 r[16], t[16], u[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) r[i] = i < count ? _mm512_maskz_loadu_ps(cols, queries[i] + d0) : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    auto pd = [](__m512 v) { return _mm512_castps_pd(v); };
#pragma GCC unroll 4
    for (int q = 0; q < 16; q += 4) {
      u[q] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[q]), pd(t[q + 2])));
      u[q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[q]), pd(t[q + 2])));
      u[q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[q + 1]), pd(t[q + 3])));
      u[q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[q + 1]), pd(t[q + 3])));
    }
    // u[4 q + s], 128-bit lane L: column 4 L + s of rows 4 q .. 4 q + 3.
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88), v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);
      const __m512 w0 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88),
                   w1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
      const __m512 column[4] = {_mm512_shuffle_f32x4(v0, w0, 0x88), _mm512_shuffle_f32x4(v1, w1, 0x88),
                                _mm512_shuffle_f32x4(v0, w0, 0xdd), _mm512_shuffle_f32x4(v1, w1, 0xdd)};
#pragma GCC unroll 4
      for (int lane = 0; lane < 4; ++lane)
        if (4 * lane + c < dim - d0) _mm512_storeu_ps(qt + (d0 + 4 * lane + c) * 16, column[lane]);
    }
  }
}

template <DType D>
void LaneScores(const AttentionBlockArgs& a, const float* qt, int64_t j_begin, int64_t j_end, float* pt,
                float* widened) {
  const int64_t dim = a.dim;
  const __m512 scale = _mm512_set1_ps(a.scale);
  const auto* keys = static_cast<const uint8_t*>(a.keys);
  const int64_t key_bytes = CacheRowBytes(D, a.key_stride);
  for (int64_t j0 = j_begin; j0 < j_end; j0 += kLaneTile) {
    const int64_t tile = Min(kLaneTile, j_end - j0);
    const float* k = reinterpret_cast<const float*>(keys + j0 * key_bytes);
    int64_t k_stride = a.key_stride;
    if constexpr (D != DType::kF32) {
      for (int64_t r = 0; r < tile; ++r) ConvertTyped<D>(keys + (j0 + r) * key_bytes, dim, widened + r * dim);
      k = widened;
      k_stride = dim;
    }
    for (int64_t r0 = 0; r0 < tile; r0 += kLaneKeys) {
      const int64_t rows = Min(kLaneKeys, tile - r0);
      // Past the tile's end the last key is repeated and its sums dropped.
      const float* row[kLaneKeys];
#pragma GCC unroll 8
      for (int r = 0; r < kLaneKeys; ++r) row[r] = k + Min(r0 + r, tile - 1) * k_stride;
      // Even and odd d in separate sums: 16 chains, so that the FMAs'
      // latency never holds up their throughput.
      __m512 even[kLaneKeys], odd[kLaneKeys];
#pragma GCC unroll 8
      for (int r = 0; r < kLaneKeys; ++r) even[r] = odd[r] = _mm512_setzero_ps();
      int64_t d = 0;
      for (; d + 2 <= dim; d += 2) {
        const __m512 q0 = _mm512_loadu_ps(qt + d * 16), q1 = _mm512_loadu_ps(qt + d * 16 + 16);
#pragma GCC unroll 8
        for (int r = 0; r < kLaneKeys; ++r) {
          even[r] = _mm512_fmadd_ps(_mm512_set1_ps(row[r][d]), q0, even[r]);
          odd[r] = _mm512_fmadd_ps(_mm512_set1_ps(row[r][d + 1]), q1, odd[r]);
        }
      }
      if (d < dim) {
        const __m512 q0 = _mm512_loadu_ps(qt + d * 16);
#pragma GCC unroll 8
        for (int r = 0; r < kLaneKeys; ++r) even[r] = _mm512_fmadd_ps(_mm512_set1_ps(row[r][d]), q0, even[r]);
      }
#pragma GCC unroll 8
      for (int r = 0; r < kLaneKeys; ++r)
        if (r < rows)
          _mm512_storeu_ps(pt + (j0 + r0 + r) * 16, _mm512_mul_ps(_mm512_add_ps(even[r], odd[r]), scale));
    }
  }
}

void AttentionBlock(const AttentionBlockArgs& a, float* scratch) {
  const int64_t count = a.count, dim = a.dim;  // count <= 16
  const __mmask16 used = FirstLanes(count);
  int64_t j_begin = a.n, j_end = 0;
  alignas(64) int32_t begin[16] = {}, end[16] = {};
  alignas(64) float sink[16] = {};
  for (int64_t i = 0; i < count; ++i) {
    j_begin = Min(j_begin, a.begin[i]);
    j_end = Max(j_end, a.end[i]);
    begin[i] = static_cast<int32_t>(a.begin[i]);
    end[i] = static_cast<int32_t>(a.end[i]);
    if (a.sinks) sink[i] = a.sinks[i];
  }
  // Scratch: probabilities [n, 16] (rows from j_begin), queries [dim, 16],
  // one tile of widened keys [kLaneTile, dim]; 64-byte aligned pieces.
  float* pt = scratch;
  float* qt = pt + a.n * 16;
  float* widened = qt + dim * 16;
  TransposeQueries(a.queries, count, dim, qt);
  ForCacheType(a.cache_dtype, [&](auto type) { LaneScores<decltype(type)::value>(a, qt, j_begin, j_end, pt, widened); });

  // Softmax down each lane over its own keys; lanes and keys outside get 0.
  const __m512i begin_v = _mm512_load_si512(begin), end_v = _mm512_load_si512(end);
  auto sees = [&](int64_t j) {
    const __m512i jv = _mm512_set1_epi32(static_cast<int32_t>(j));
    return static_cast<__mmask16>(_mm512_cmple_epi32_mask(begin_v, jv) & _mm512_cmplt_epi32_mask(jv, end_v));
  };
  __m512 max_v = _mm512_set1_ps(-__builtin_inff());
  for (int64_t j = j_begin; j < j_end; ++j) max_v = _mm512_mask_max_ps(max_v, sees(j), max_v, _mm512_loadu_ps(pt + j * 16));
  const __m512 sink_v = _mm512_load_ps(sink);
  if (a.sinks) max_v = _mm512_max_ps(max_v, sink_v);
  max_v = _mm512_maskz_mov_ps(used, max_v);
  __m512 sum = a.sinks ? _mm512_maskz_mov_ps(used, Exp(_mm512_sub_ps(sink_v, max_v))) : _mm512_setzero_ps();
  for (int64_t j = j_begin; j < j_end; ++j) {
    const __m512 e = _mm512_maskz_mov_ps(sees(j), Exp(_mm512_sub_ps(_mm512_loadu_ps(pt + j * 16), max_v)));
    sum = _mm512_add_ps(sum, e);
    _mm512_storeu_ps(pt + j * 16, e);
  }
  const __m512 inv = _mm512_maskz_div_ps(used, _mm512_set1_ps(1.0f), sum);
  for (int64_t j = j_begin; j < j_end; ++j) _mm512_storeu_ps(pt + j * 16, _mm512_mul_ps(_mm512_loadu_ps(pt + j * 16), inv));

  ForCacheType(a.cache_dtype, [&](auto type) {
    constexpr DType D = decltype(type)::value;
    const auto* values = static_cast<const uint8_t*>(a.values);
    const int64_t row_bytes = CacheRowBytes(D, a.value_stride);
    for (int64_t j0 = j_begin; j0 < j_end; j0 += kLaneTile)
      ForQueryBlocks(count, [&](auto block, int64_t first) {
        ValuesBlock<D, decltype(block)::value>(pt + j0 * 16 + first, 1, 16, values + j0 * row_bytes, row_bytes,
                                               Min(kLaneTile, j_end - j0), dim, a.outs + first,
                                               /*accumulate=*/j0 > j_begin);
      });
  });
}

// ---------------------------------------------------------------------------
// Machine probes.

// Each part is read 256 bytes (four lines, four accumulators) per step so
// that the adds' latency never limits a single stream.
template <int S, bool kPrefetch>
float SumStreams(const float* p, int64_t n) {
  const int64_t part = n / S / 64 * 64;
  __m512 acc[S][4];
#pragma GCC unroll 4
  for (int r = 0; r < S; ++r)
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) acc[r][u] = _mm512_setzero_ps();
  for (int64_t i = 0; i < part; i += 64) {
#pragma GCC unroll 4
    for (int r = 0; r < S; ++r) {
      const float* q = p + r * part + i;
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        // A prefetch never faults, so running past the buffer's end is harmless.
        if constexpr (kPrefetch)
          _mm_prefetch(reinterpret_cast<const char*>(q + 16 * u) + internal::kProbePrefetchBytes, _MM_HINT_NTA);
        acc[r][u] = _mm512_add_ps(acc[r][u], _mm512_loadu_ps(q + 16 * u));
      }
    }
  }
  for (int64_t i = S * part; i < n; i += 16)
    acc[0][0] = _mm512_add_ps(acc[0][0], _mm512_maskz_loadu_ps(FirstLanes(n - i), p + i));
  __m512 sum = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int r = 0; r < S; ++r)
    sum = _mm512_add_ps(sum, _mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]), _mm512_add_ps(acc[r][2], acc[r][3])));
  return _mm512_reduce_add_ps(sum);
}

float SumFloats(const float* p, int64_t n, int streams, bool prefetch) {
  if (streams >= 4) return prefetch ? SumStreams<4, true>(p, n) : SumStreams<4, false>(p, n);
  if (streams == 2) return prefetch ? SumStreams<2, true>(p, n) : SumStreams<2, false>(p, n);
  return prefetch ? SumStreams<1, true>(p, n) : SumStreams<1, false>(p, n);
}

// Twelve independent vpdpbusd chains (64 int8 multiply-adds each), like
// FmaChains below. It needs VNNI, hence the target attribute; the table
// entry checks for it first.
__attribute__((target("avx512vnni"))) double VnniChains(int64_t iterations) {
  constexpr int kChains = 12;
  __m512i acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_epi32(i);
  const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
  for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
  }
  // The accumulators wrap around by design (vector adds wrap); the sink
  // combines them with OR, since a scalar reduction by addition would
  // overflow int.
  __m512i sum = acc[0];
  for (int i = 1; i < kChains; ++i) sum = _mm512_or_si512(sum, acc[i]);
  volatile int sink = _mm512_reduce_or_epi32(sum);
  (void)sink;
  return static_cast<double>(iterations) * kChains * 64 * 2;
}

// The quantized kernels of this path use vpdpbusd where the CPU has VNNI and
// the AVX2 kernels otherwise; the probe measures whichever runs.
double Int8DotChains(int64_t iterations) {
  if (!internal::HasAvx512Vnni()) return internal::kAvx2Kernels.int8_dot_chains(iterations);
  return VnniChains(iterations);
}

// Twelve independent vdpbf16ps chains (32 bf16 multiply-adds each).
__attribute__((target("avx512bf16"))) double Bf16Chains(int64_t iterations) {
  constexpr int kChains = 12;
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.999f), _mm512_set1_ps(0.999f));
  const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-7f), _mm512_set1_ps(1e-7f));
  for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
  }
  __m512 sum = acc[0];
  for (int i = 1; i < kChains; ++i) sum = _mm512_add_ps(sum, acc[i]);
  volatile float sink = _mm512_reduce_add_ps(sum);
  (void)sink;
  return static_cast<double>(iterations) * kChains * 32 * 2;
}

// Four independent tdpbf16ps chains (16 x 16 x 32 bf16 multiply-adds each)
// on the tile unit, one product per iteration, with the tile shapes the AMX
// bf16 prefill uses.
__attribute__((target("amx-tile,amx-bf16"))) double AmxBf16Chains(int64_t iterations) {
  alignas(64) uint16_t operand[16 * 32];
  std::fill(operand, operand + 16 * 32, uint16_t{0x3a83});  // bf16 0.001
  const ScopedAmxBf16Tiles tiles;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, operand, 64);
  _tile_loadd(5, operand, 64);
  const int64_t rounds = Max(iterations / 4, int64_t{1});
  for (int64_t r = 0; r < rounds; ++r) {
    _tile_dpbf16ps(0, 4, 5);
    _tile_dpbf16ps(1, 4, 5);
    _tile_dpbf16ps(2, 4, 5);
    _tile_dpbf16ps(3, 4, 5);
  }
  alignas(64) float sums[16 * 16];
  _tile_stored(0, sums, 64);
  volatile float sink = sums[0];
  (void)sink;
  return static_cast<double>(rounds) * 4 * 16 * 16 * 32 * 2;
}

// The bf16 prefill uses the tile unit where the CPU has AMX and vdpbf16ps
// otherwise; the probe measures whichever runs.
double Bf16DotChains(int64_t iterations) {
  if (!internal::HasAvx512Bf16()) return 0.0;
  return internal::HasAmxBf16() ? AmxBf16Chains(iterations) : Bf16Chains(iterations);
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
    avx512::MatMul,       avx512::RmsNorm,        avx512::Softmax,       avx512::SiluMul,
    avx512::Dot,          avx512::Axpy,           avx512::ConvertToF32,  avx512::ConvertFromF32, avx512::AttentionScores,
    avx512::AttentionValues, avx512::AttentionBlock, avx512::QuantizeRows,
    avx512::DequantizeRow, avx512::SumFloats,     avx512::FmaChains,     avx512::Int8DotChains,
    avx512::Bf16DotChains, avx512::MatMulMany,
};

}  // namespace internal
}  // namespace epwa::kernels

#endif  // x86
