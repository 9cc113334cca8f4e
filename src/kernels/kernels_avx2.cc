// AVX2 kernels (with FMA and F16C), for x86-64 CPUs without AVX-512.
//
// This file is compiled with -mavx2 -mfma -mf16c; nothing in it may run before
// kernels.cc has checked the CPU, so everything lives in its own namespace and
// is reached only through kAvx2Kernels. The structure mirrors
// kernels_avx512.cc with 8-lane vectors, 16 registers and no mask registers.
// The code that does not depend on the vector width is shared with that file
// through kernels_isa_common.h and kernels_blocking_inl.h, which explain how
// each file still gets its own copy, compiled with its own flags.
#if defined(__x86_64__) || defined(__i386__)

#include <algorithm>
#include <vector>

#include "kernels/kernels_isa_common.h"

namespace epwa::kernels {
namespace avx2 {
namespace {

// A lane mask selecting the first n (0..8) of 8 lanes, for maskload/maskstore,
// which never touch the lanes they skip.
inline __m256i FirstLanes(int64_t n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(Min(n, 8))), idx);
}

inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float HorizontalMax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// ---------------------------------------------------------------------------
// Weight loads: 8 consecutive elements of a row as 8 floats (BF16 widened and
// shifted into the upper half, F16 through F16C). LoadPartial reads only the
// first n elements, so a row's tail never reads past the end of the mapping.

template <DType D>
struct Weights;

template <>
struct Weights<DType::kF32> {
  static __m256 Load(const uint8_t* row, int64_t k) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + k);
  }
  static __m256 LoadPartial(const uint8_t* row, int64_t k, int64_t n) {
    return _mm256_maskload_ps(reinterpret_cast<const float*>(row) + k, FirstLanes(n));
  }
};

template <>
struct Weights<DType::kBF16> {
  static __m256 Widen(__m128i h) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static __m256 Load(const uint8_t* row, int64_t k) {
    return Widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * k)));
  }
  static __m256 LoadPartial(const uint8_t* row, int64_t k, int64_t n) {
    uint16_t tmp[8] = {};
    __builtin_memcpy(tmp, row + 2 * k, static_cast<size_t>(Min(n, 8)) * 2);
    return Widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tmp)));
  }
};

template <>
struct Weights<DType::kF16> {
  static __m256 Load(const uint8_t* row, int64_t k) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * k)));
  }
  static __m256 LoadPartial(const uint8_t* row, int64_t k, int64_t n) {
    uint16_t tmp[8] = {};
    __builtin_memcpy(tmp, row + 2 * k, static_cast<size_t>(Min(n, 8)) * 2);
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tmp)));
  }
};

// Converts n weights to floats (ConvertToF32).
template <DType D>
void ConvertTyped(const void* src, int64_t n, float* dst) {
  const auto* p = static_cast<const uint8_t*>(src);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, Weights<D>::Load(p, i));
  if (i < n) _mm256_maskstore_ps(dst + i, FirstLanes(n - i), Weights<D>::LoadPartial(p, i, n - i));
}

// ---------------------------------------------------------------------------
// Quantized weights (layout and rounding rules in tensor/dtype.h; see
// kernels_avx512.cc for the design).

inline float HorizontalMin(__m256 v) {
  __m128 s = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_min_ps(s, _mm_movehl_ps(s, s));
  s = _mm_min_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline int HorizontalSumInt(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

// The 16-entry float table `table` looked up by the nibbles n (one per int32
// lane): two 8-entry lookups (vpermps uses the low 3 bits of the index) and a
// blend on bit 3, moved into the sign bit.
inline __m256 Lookup16(const float* table, __m256i n) {
  const __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), n);
  const __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table + 8), n);
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(n, 28)));
}

// 8 consecutive weights of row `row` from k (k % 8 == 0) as floats, each the
// level times the group's scale in one float multiplication, as WeightView::At
// computes it. For kQ4/kNF4 the 8 are nibbles of 8 bytes of one group; for
// kMXFP4 both nibbles of 4 consecutive bytes.
template <DType D>
__m256 DequantLoad(const WeightView& w, int64_t row, int64_t k) {
  const uint8_t* codes = RowAt(w, row);
  if constexpr (D == DType::kMXFP4) {
    const __m256 s = _mm256_set1_ps(E8M0ToFloat(E8M0Row(w, row)[k / 32]));
    int bytes;
    __builtin_memcpy(&bytes, codes + k / 2, 4);
    const __m128i c = _mm_cvtsi32_si128(bytes);
    const __m128i mask = _mm_set1_epi8(0x0f);
    // Low nibble of byte j, then its high nibble: elements k + 2 j, k + 2 j + 1.
    const __m128i n = _mm_unpacklo_epi8(_mm_and_si128(c, mask), _mm_and_si128(_mm_srli_epi16(c, 4), mask));
    return _mm256_mul_ps(Lookup16(kE2M1Values, _mm256_cvtepu8_epi32(n)), s);
  }
  const __m256 s = _mm256_set1_ps(HalfToFloat(ScaleRow(w, row)[k / 32]));
  if constexpr (D == DType::kQ8) {
    const __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + k));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c)), s);
  } else {
    const int64_t j = k % 32;
    __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + k / 32 * 16 + (j & 15)));
    if (j & 16) c = _mm_srli_epi16(c, 4);
    const __m256i n = _mm256_cvtepu8_epi32(_mm_and_si128(c, _mm_set1_epi8(0x0f)));
    if constexpr (D == DType::kQ4) {
      return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(n, _mm256_set1_epi32(8))), s);
    } else {
      return _mm256_mul_ps(Lookup16(kNF4Codebook, n), s);
    }
  }
}

template <DType D>
void DequantizeRowTyped(const WeightView& w, int64_t row, float* out) {
  for (int64_t k = 0; k < w.cols; k += 8) _mm256_storeu_ps(out + k, DequantLoad<D>(w, row, k));
}

// 32 int32 values (each in [-128, 255]) in four vectors, in order, as bytes
// stored at out. The packs interleave 128-bit lanes; the final permute undoes
// that.
inline void StoreBytes32(__m256i a, __m256i b, __m256i c, __m256i d, uint8_t* out) {
  const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
  const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd),
                                                    _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), bytes);
}

// 16 int32 values in [0, 255] in two vectors, in order, as bytes at out.
inline void StoreBytes16(__m256i a, __m256i b, uint8_t* out) {
  const __m256i ab = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xd8);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out),
                   _mm_packus_epi16(_mm256_castsi256_si128(ab), _mm256_extracti128_si256(ab, 1)));
}

template <DType S, DType T>
void QuantizeRowsTo(const WeightView& src, int64_t r0, int64_t r1, const QuantizedOut& dst) {
  const int64_t K = src.cols, groups = K / 32;
  float mids[16];
  NF4Midpoints(mids);
  const __m256 sign = _mm256_set1_ps(-0.f);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = RowAt(src, r);
    uint8_t* out = CodeRowOut(dst, r);
    uint16_t* out_scales = ScaleRowOut(dst, r);
    for (int64_t g = 0; g < groups; ++g) {
      __m256 a[4];
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) a[i] = Weights<S>::Load(row, 32 * g + 8 * i);
      float d;
      if constexpr (T == DType::kQ4) {
        const float hi = HorizontalMax(_mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3])));
        const float lo = HorizontalMin(_mm256_min_ps(_mm256_min_ps(a[0], a[1]), _mm256_min_ps(a[2], a[3])));
        d = (hi >= -lo ? hi : lo) / -8.0f;
      } else {
        const __m256 m01 = _mm256_max_ps(_mm256_andnot_ps(sign, a[0]), _mm256_andnot_ps(sign, a[1]));
        const __m256 m23 = _mm256_max_ps(_mm256_andnot_ps(sign, a[2]), _mm256_andnot_ps(sign, a[3]));
        const float amax = HorizontalMax(_mm256_max_ps(m01, m23));
        d = T == DType::kQ8 ? amax / 127.0f : amax;
      }
      const uint16_t h = StoredScale(d);
      out_scales[g] = h;
      const float s = HalfToFloat(h);
      const __m256 inv = _mm256_set1_ps(s != 0.f ? 1.0f / s : 0.f);
      __m256i n[4];
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        const __m256 t = _mm256_mul_ps(a[i], inv);
        // Clamping before the conversion keeps huge quotients (a saturated
        // scale) from turning into the integer indefinite value.
        if constexpr (T == DType::kQ8) {
          n[i] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-127.f)), _mm256_set1_ps(127.f)));
        } else if constexpr (T == DType::kQ4) {
          n[i] = _mm256_add_epi32(
              _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-8.f)), _mm256_set1_ps(7.f))),
              _mm256_set1_epi32(8));
        } else {
          // Counts the midpoints below t: each true comparison is -1.
          __m256i count = _mm256_setzero_si256();
          for (int m = 0; m < 15; ++m) {
            count = _mm256_sub_epi32(count, _mm256_castps_si256(_mm256_cmp_ps(t, _mm256_set1_ps(mids[m]), _CMP_GT_OQ)));
          }
          n[i] = count;
        }
      }
      if constexpr (T == DType::kQ8) {
        StoreBytes32(n[0], n[1], n[2], n[3], out + 32 * g);
      } else {
        // Element j in the low nibble of byte j, element j + 16 in its high nibble.
        StoreBytes16(_mm256_or_si256(n[0], _mm256_slli_epi32(n[2], 4)),
                     _mm256_or_si256(n[1], _mm256_slli_epi32(n[3], 4)), out + 16 * g);
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
// Decode (see kernels_avx512.cc): each weight element is loaded once and used
// for all M rows of x; R rows and U-fold unrolling give R * M * U independent
// accumulators within the 16 vector registers.

// Rows of x up to which MatMul uses the decode kernel; 16 registers do not
// hold the accumulators and x vectors of more.
constexpr int64_t kMaxDecodeRows = 4;
// Whether MatMul multiplies M rows of x by weights of dtype D with Decode.
template <DType D>
bool UsesDecode(int64_t M, int64_t /*K*/) {
  return M <= kMaxDecodeRows;
}

// BF16 weights are loaded 16 at a time (32 bytes) and split into the even
// (shifted left by 16) and odd (low half cleared) elements, as in the
// AVX-512 kernel; x is permuted to match: within every full block of 16
// columns, the 8 even columns, then the 8 odd ones. [M, K]
void DeinterleaveX(const float* x, int64_t M, int64_t K, float* out) {
  for (int64_t m = 0; m < M; ++m) {
    const float* src = x + m * K;
    float* dst = out + m * K;
    for (int64_t k = 0; k + 16 <= K; k += 16) {
      const __m256 a = _mm256_loadu_ps(src + k), b = _mm256_loadu_ps(src + k + 8);
      // shuffle_ps works per 128-bit lane: [a0 a2 b0 b2 | a4 a6 b4 b6]; the
      // 64-bit permute then restores the order [a0 a2 a4 a6 b0 b2 b4 b6].
      const __m256 even = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
      const __m256 odd = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
      _mm256_storeu_ps(dst + k, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(even), 0xd8)));
      _mm256_storeu_ps(dst + k + 8, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(odd), 0xd8)));
    }
  }
}

// How far ahead of the loads the decode kernel prefetches each weight row,
// into L1 and wrapping to the next block of rows (see kernels_avx512.cc;
// measured here too, with this file's kernels forced on Zen 4: 1.18-1.45x).
constexpr int64_t kDecodePrefetchBytes = 2048;

// x: [M, K] as given; xd: [M, K] deinterleaved by DeinterleaveX (BF16 only).
template <DType D, int M, int R, int U>
void MatVecRows(const float* x, const float* xd, int64_t K, const WeightView& w, float* y, int64_t N,
                int64_t n) {
  const uint8_t* rows[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) rows[r] = RowAt(w, n + r);
  __m256 acc[U][R][M];
#pragma GCC unroll 8
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) acc[u][r][m] = _mm256_setzero_ps();

  int64_t k = 0;
  if constexpr (D == DType::kBF16) {
    static_assert(U == 1 || U == 2, "BF16 splits each 32-byte load into at most two accumulators.");
    constexpr int kOdd = U - 1;
    const __m256i high = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
    const int64_t row_bytes = RowBytes(w);
    for (; k + 16 <= K; k += 16) {
      // One prefetch per 32-byte step: each line is asked for twice, which
      // costs next to nothing.
      const int64_t ahead = DecodePrefetchOffset(2 * k, kDecodePrefetchBytes, row_bytes, R);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        PrefetchL1(rows[r] + ahead);
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[r] + 2 * k));
        const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
        const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(v, high));
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
          const float* xm = xd + m * K + k;
          acc[0][r][m] = _mm256_fmadd_ps(we, _mm256_loadu_ps(xm), acc[0][r][m]);
          acc[kOdd][r][m] = _mm256_fmadd_ps(wo, _mm256_loadu_ps(xm + 8), acc[kOdd][r][m]);
        }
      }
    }
  } else {
    constexpr int64_t kElem = D == DType::kF32 ? 4 : 2;
    const int64_t row_bytes = RowBytes(w);
    for (; k + 8 * U <= K; k += 8 * U) {
      const int64_t ahead = DecodePrefetchOffset(k * kElem, kDecodePrefetchBytes, row_bytes, R);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) PrefetchL1(rows[r] + ahead);
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) {
        __m256 xv[M];
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) xv[m] = _mm256_loadu_ps(x + m * K + k + 8 * u);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const __m256 wv = Weights<D>::Load(rows[r], k + 8 * u);
#pragma GCC unroll 8
          for (int m = 0; m < M; ++m) acc[u][r][m] = _mm256_fmadd_ps(wv, xv[m], acc[u][r][m]);
        }
      }
    }
  }
  // Partial loads read nothing past the end of a row (which may be the end of
  // the mapped file).
  for (; k < K; k += 8) {
    const __m256i mask = FirstLanes(K - k);
    __m256 xv[M];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) xv[m] = _mm256_maskload_ps(x + m * K + k, mask);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 wv = Weights<D>::LoadPartial(rows[r], k, K - k);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) acc[0][r][m] = _mm256_fmadd_ps(wv, xv[m], acc[0][r][m]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      __m256 sum = acc[0][r][m];
#pragma GCC unroll 8
      for (int u = 1; u < U; ++u) sum = _mm256_add_ps(sum, acc[u][r][m]);
      y[m * N + n + r] = HorizontalSum(sum);
    }
  }
}

// Rows per group and unrolling per row count of x: 6 to 8 accumulators plus
// the x vectors and a weight vector within 16 registers.
template <DType D, int M>
void MatVecRange(const float* x, const float* xd, int64_t K, const WeightView& w, float* y,
                 int64_t n0, int64_t n1) {
  constexpr int kRows = M <= 2 ? 4 : 2;
  constexpr int kUnroll = M == 1 ? 2 : 1;
  int64_t n = n0;
  for (; n + kRows <= n1; n += kRows) MatVecRows<D, M, kRows, kUnroll>(x, xd, K, w, y, w.rows, n);
  for (; n < n1; ++n) MatVecRows<D, M, 1, kUnroll>(x, xd, K, w, y, w.rows, n);
}

// ---------------------------------------------------------------------------
// Decode with quantized weights: integer dot products against x quantized to
// int8 per group of 32, as in kernels_avx512.cc, one group per 256-bit
// register. vpmaddubsw multiplies unsigned by signed bytes and adds pairs
// with int16 saturation, so: kQ4 multiplies its nibbles (level + 8, at most
// 15) by the x codes and subtracts 8 * s_w * s_x * sum(q) per group, and
// kMXFP4 likewise its levels (twice the E2M1 values, in [-12, 12]) + 12, at
// most 24 (|pair sum| <= 6096); kQ8 and kNF4 use the sign trick, |w| times
// x * sign(w), which is exact for levels in [-128, 127] against codes in
// [-127, 127] (|pair sum| <= 32512). The offset costs one vector multiply-
// add per 8 groups, the sign trick two instructions per group (for each row
// of x and of w), so MXFP4 takes the offset. vpmaddwd then adds the pairs
// into 8 int32 lanes of the group, converted to float and scaled by the
// group's s_w * s_x.

// The offset of the unsigned weight operand (see above).
template <DType D>
constexpr float kAvx2Offset = D == DType::kQ4 ? 8.f : D == DType::kMXFP4 ? 12.f : 0.f;

// Quantizes the M rows of x into the calling thread's scratch buffer. The
// codes of a group are in natural order, except for kMXFP4, whose weight
// bytes hold elements 2 j and 2 j + 1 in the low and high nibble of byte j:
// its codes are stored as [the 16 even elements | the 16 odd ones], the order
// in which LoadWeightGroup unpacks the nibbles.
// Codes, scales and corrections per row of x.
inline int64_t QuantizedXRowFloats(int64_t K) { return RoundUp(K, 64) / 4 + 2 * RoundUp(K / 32, 16); }

// QuantizeX into `base` (32-byte aligned, M * QuantizedXRowFloats(K)
// floats).
template <DType D>
QuantizedX QuantizeXInto(const float* x, int64_t M, int64_t K, float* base) {
  QuantizedX q;
  q.kpad = RoundUp(K, 64);
  q.gpad = RoundUp(K / 32, 16);
  q.row_floats = q.kpad / 4 + 2 * q.gpad;
  q.base = base;
  const __m256 sign = _mm256_set1_ps(-0.f);
  const int64_t groups = K / 32;
  for (int64_t m = 0; m < M; ++m) {
    float* row = base + m * q.row_floats;
    auto* codes = reinterpret_cast<uint8_t*>(row);
    float* scales = row + q.kpad / 4;
    float* corrections = scales + q.gpad;
    for (int64_t i = 0; i < q.row_floats; i += 8) _mm256_store_ps(row + i, _mm256_setzero_ps());
    for (int64_t g = 0; g < groups; ++g) {
      __m256 a[4];
      __m256 amax = _mm256_setzero_ps();
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) a[i] = _mm256_loadu_ps(x + m * K + 32 * g + 8 * i);
      if constexpr (D == DType::kMXFP4) {
        // The group's scale and code sum do not depend on the order.
        __m256 evens[2], odds[2];
        for (int h = 0; h < 2; ++h) {
          // shuffle_ps works per 128-bit lane; the 64-bit permute restores
          // the order (as in DeinterleaveX).
          evens[h] = _mm256_castpd_ps(_mm256_permute4x64_pd(
              _mm256_castps_pd(_mm256_shuffle_ps(a[2 * h], a[2 * h + 1], _MM_SHUFFLE(2, 0, 2, 0))), 0xd8));
          odds[h] = _mm256_castpd_ps(_mm256_permute4x64_pd(
              _mm256_castps_pd(_mm256_shuffle_ps(a[2 * h], a[2 * h + 1], _MM_SHUFFLE(3, 1, 3, 1))), 0xd8));
        }
        a[0] = evens[0];
        a[1] = evens[1];
        a[2] = odds[0];
        a[3] = odds[1];
      }
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, a[i]));
      const float max_abs = HorizontalMax(amax);
      const __m256 inv = _mm256_set1_ps(max_abs > 0.f ? 127.0f / max_abs : 0.f);
      __m256i qv[4];
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) qv[i] = _mm256_cvtps_epi32(_mm256_mul_ps(a[i], inv));
      const int sum = HorizontalSumInt(_mm256_add_epi32(_mm256_add_epi32(qv[0], qv[1]), _mm256_add_epi32(qv[2], qv[3])));
      scales[g] = max_abs / 127.0f;
      corrections[g] = kAvx2Offset<D> * static_cast<float>(sum) * scales[g];
      StoreBytes32(qv[0], qv[1], qv[2], qv[3], codes + 32 * g);
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

// The 32 weights of the group starting at element k of a row as bytes, in
// the order of QuantizeX's codes: kQ4 nibbles and kMXFP4 levels + 12
// (unsigned), kQ8 codes and kNF4 levels (signed); level_table maps nibbles
// to the kNF4 and kMXFP4 bytes.
template <DType D>
__attribute__((always_inline)) inline __m256i LoadWeightGroup(const uint8_t* row, int64_t k, __m256i level_table) {
  if constexpr (D == DType::kQ8) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k));
  } else {
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k / 2));
    const __m128i mask = _mm_set1_epi8(0x0f);
    const __m256i nibbles = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(c, 4), mask), _mm_and_si128(c, mask));
    if constexpr (D == DType::kQ4) return nibbles;
    return _mm256_shuffle_epi8(level_table, nibbles);
  }
}

// 2^(e - 127) for the 8 E8M0 exponents e (one per int32 lane), exactly as
// E8M0ToFloat: e << 23 is the float's exponent field, except for e = 0 (the
// subnormal 2^-127) and e = 255 (NaN).
inline __m256 E8M0ToFloats(__m256i e) {
  __m256i bits = _mm256_slli_epi32(e, 23);
  bits = _mm256_blendv_epi8(bits, _mm256_set1_epi32(static_cast<int>(kE8M0ZeroBits)),
                            _mm256_cmpeq_epi32(e, _mm256_setzero_si256()));
  bits = _mm256_blendv_epi8(bits, _mm256_set1_epi32(static_cast<int>(kE8M0NaNBits)),
                            _mm256_cmpeq_epi32(e, _mm256_set1_epi32(255)));
  return _mm256_castsi256_ps(bits);
}

// The scales of groups [g0, g0 + ng) of one row (ng <= 8) as floats; lanes
// from ng on read zero bytes (0 for fp16, 2^-127 for E8M0: finite either way,
// and they meet zero x scales).
template <DType D>
inline __m256 LoadGroupScales(const void* scale_row, int64_t g0, int64_t ng) {
  if constexpr (D == DType::kMXFP4) {
    const uint8_t* p = static_cast<const uint8_t*>(scale_row) + g0;
    long long e = 0;
    __builtin_memcpy(&e, p, static_cast<size_t>(ng));
    return E8M0ToFloats(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(e)));
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(scale_row) + g0;
    __m128i halves;
    if (ng == 8) {
      halves = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    } else {
      uint16_t tmp[8] = {};
      __builtin_memcpy(tmp, p, static_cast<size_t>(ng) * 2);
      halves = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tmp));
    }
    return _mm256_cvtph_ps(halves);
  }
}

template <DType D, int M, int R>
void QuantMatVecRows(const QuantizedX& qx, const WeightView& w, float* y, int64_t n, __m256i level_table) {
  const int64_t K = w.cols, N = w.rows, groups = K / 32;
  const uint8_t* rows[R];
  const void* scale_rows[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    rows[r] = RowAt(w, n + r);
    scale_rows[r] = ScaleAddress(w, n + r, 0);
  }
  const int64_t ahead = QuantPrefetchDistance(R * RowStride(w));
  // The codes `ahead` bytes on lie `ahead / RowStride` rows further down, at
  // the same column; their scales are fetched as far ahead (the same bytes
  // on when they sit in the rows). Without this the
  // scale loads are demand misses from DRAM: measured on a Zen 4 VM shared
  // with other jobs (one core, [16384, 4096] from DRAM, AVX-512), Q4 streamed
  // 6-7 GB/s instead of 21 and MXFP4 13-15 instead of 22.
  const int64_t scales_ahead = ahead / RowStride(w) * ScaleStride(w);
  alignas(32) float products[R][M][8];  // s_w * s_x per group of the current 8.
  __m256 acc[R][M];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) acc[r][m] = _mm256_setzero_ps();
  // NF4 levels are codebook * 127 and MXFP4 levels E2M1 * 2; the 1/127 or
  // 1/2 goes into the weight scale (exactly, for MXFP4).
  const __m256 level_unit = _mm256_set1_ps(D == DType::kNF4 ? 1.0f / 127.0f : D == DType::kMXFP4 ? 0.5f : 1.0f);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t g0 = 0; g0 < groups; g0 += 8) {
    const int64_t ng = Min(8, groups - g0);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      PrefetchL2(static_cast<const uint8_t*>(scale_rows[r]) + SpanScaleBytes<D>(g0) + scales_ahead);
      const __m256 ws = _mm256_mul_ps(LoadGroupScales<D>(scale_rows[r], g0, ng), level_unit);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        _mm256_store_ps(products[r][m], _mm256_mul_ps(ws, _mm256_load_ps(qx.Scales(m) + g0)));
        if constexpr (kAvx2Offset<D> != 0.f) {
          acc[r][m] = _mm256_fnmadd_ps(ws, _mm256_load_ps(qx.Corrections(m) + g0), acc[r][m]);
        }
      }
    }
    for (int64_t j = 0; j < ng; ++j) {
      const int64_t k = (g0 + j) * 32;
      __m256i wv[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        PrefetchL2(rows[r] + SpanBytes(D, k) + ahead);
        wv[r] = LoadWeightGroup<D>(rows[r], k, level_table);
      }
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const __m256i xq = _mm256_load_si256(reinterpret_cast<const __m256i*>(qx.Codes(m) + k));
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          __m256i pairs;
          if constexpr (kAvx2Offset<D> != 0.f) {
            pairs = _mm256_maddubs_epi16(wv[r], xq);
          } else {
            pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(wv[r]), _mm256_sign_epi8(xq, wv[r]));
          }
          const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
          acc[r][m] = _mm256_fmadd_ps(dot, _mm256_broadcast_ss(products[r][m] + j), acc[r][m]);
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) y[m * N + n + r] = HorizontalSum(acc[r][m]);
}

// Four rows share each x code load for M == 1, two rows otherwise, so that
// accumulators, weights and x stay within 16 registers.
template <DType D, int M>
void QuantMatVecRange(const QuantizedX& qx, const WeightView& w, float* y, int64_t n0, int64_t n1,
                      __m256i level_table) {
  constexpr int kRows = M == 1 ? 4 : 2;
  int64_t n = n0;
  for (; n + kRows <= n1; n += kRows) QuantMatVecRows<D, M, kRows>(qx, w, y, n, level_table);
  for (; n < n1; ++n) QuantMatVecRows<D, M, 1>(qx, w, y, n, level_table);
}

// The int8 levels of kNF4 (signed) or kMXFP4 (+ 12, unsigned), indexed by
// nibble, in both 128-bit lanes for vpshufb (unused for kQ8 and kQ4).
template <DType D>
__m256i Avx2LevelTable() {
  return _mm256_broadcastsi128_si256(NibbleLevelTable<D>(static_cast<int>(kAvx2Offset<D>)));
}

// QuantMatVecRange and MatVecRange for M (1 <= M <= kMaxDecodeRows) rows of x.
static_assert(kMaxDecodeRows == 4, "The decode has one instantiation per row count.");
template <DType D>
void QuantMatVecRangeFor(int64_t M, const QuantizedX& qx, const WeightView& w, float* y, int64_t n0, int64_t n1,
                         __m256i level_table) {
  switch (M) {
    case 1: return QuantMatVecRange<D, 1>(qx, w, y, n0, n1, level_table);
    case 2: return QuantMatVecRange<D, 2>(qx, w, y, n0, n1, level_table);
    case 3: return QuantMatVecRange<D, 3>(qx, w, y, n0, n1, level_table);
    default: return QuantMatVecRange<D, 4>(qx, w, y, n0, n1, level_table);
  }
}
template <DType D>
void MatVecRangeFor(int64_t M, const float* x, const float* xd, int64_t K, const WeightView& w, float* y,
                    int64_t n0, int64_t n1) {
  switch (M) {
    case 1: return MatVecRange<D, 1>(x, xd, K, w, y, n0, n1);
    case 2: return MatVecRange<D, 2>(x, xd, K, w, y, n0, n1);
    case 3: return MatVecRange<D, 3>(x, xd, K, w, y, n0, n1);
    default: return MatVecRange<D, 4>(x, xd, K, w, y, n0, n1);
  }
}

template <DType D>
void DecodeQuantized(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool) {
  const QuantizedX qx = QuantizeX<D>(x, M, w.cols);
  const __m256i level_table = Avx2LevelTable<D>();
  ParallelDecodeRange(pool, w.rows, 4,
                      [&](int64_t n0, int64_t n1) { QuantMatVecRangeFor<D>(M, qx, w, y, n0, n1, level_table); });
}

template <DType D>
void DecodeFloat(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool) {
  const int64_t K = w.cols;
  const float* xd = nullptr;
  if constexpr (D == DType::kBF16) {
    // The calling thread's buffer, shared with the workers below.
    float* deinterleaved = internal::ThreadScratch(internal::Scratch::kDecodeX, static_cast<size_t>(M * K));  // [M, K]
    DeinterleaveX(x, M, K, deinterleaved);
    xd = deinterleaved;
  }
  ParallelDecodeRange(pool, w.rows, 4,
                      [&](int64_t n0, int64_t n1) { MatVecRangeFor<D>(M, x, xd, K, w, y, n0, n1); });
}

template <DType D>
void Decode(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool) {
  if constexpr (HasScales(D)) {
    DecodeQuantized<D>(x, M, w, y, pool);
  } else {
    DecodeFloat<D>(x, M, w, y, pool);
  }
}

// MatMulMany's fused decode for jobs of dtype D (see kernels.h), as in
// kernels_avx512.cc: each distinct x (pointer, rows and width) is prepared
// once into one scratch buffer (quantized for the types with group scales,
// deinterleaved for BF16), then one parallel region covers every job's output
// rows, each job's rows starting at a multiple of 4 of the global index.
// Each output row is computed exactly as Decode computes it. Without it an
// MoE layer's decode paid a parallel region per expert product (measured on
// the AVX-512 side: 8 OLMoE experts from DRAM, Q4 1.00 -> 0.84 ms a step).
constexpr int64_t kMaxManyJobs = 64;

template <DType D>
bool DecodeManyTyped(const MatMulJob* jobs, int64_t n, ThreadPool& pool) {
  if (n > kMaxManyJobs) return false;
  if constexpr (HasScales(D)) {
    if (::epwa::kernels::FloatActivations()) return false;
  }
  for (int64_t j = 0; j < n; ++j)
    if (!UsesDecode<D>(jobs[j].M, jobs[j].w->cols)) return false;
  const FusedDecodeLayout<kMaxManyJobs> layout(jobs, n, [](const MatMulJob& job) -> int64_t {
    const int64_t K = job.w->cols;
    return job.M * (HasScales(D) ? QuantizedXRowFloats(K) : D == DType::kBF16 ? K : 0);
  });
  const int64_t* start = layout.start;
  // The calling thread's buffer, shared with the workers below.
  float* scratch =
      internal::ThreadScratch(internal::Scratch::kDecodeX, static_cast<size_t>(Max(layout.x_offset[n], 16)));
  QuantizedX qx[kMaxManyJobs];
  const float* xd[kMaxManyJobs] = {};
  for (int64_t j = 0; j < n; ++j) {
    float* x_prepared = scratch + layout.x_offset[j];
    if (layout.owner[j] != j) {
      qx[j] = qx[layout.owner[j]];
      xd[j] = xd[layout.owner[j]];
    } else if constexpr (HasScales(D)) {
      qx[j] = QuantizeXInto<D>(jobs[j].x, jobs[j].M, jobs[j].w->cols, x_prepared);
    } else if constexpr (D == DType::kBF16) {
      DeinterleaveX(jobs[j].x, jobs[j].M, jobs[j].w->cols, x_prepared);
      xd[j] = x_prepared;
    }
  }
  __m256i level_table = _mm256_setzero_si256();
  if constexpr (HasScales(D)) level_table = Avx2LevelTable<D>();
  ParallelDecodeRange(pool, start[n], 4, [&](int64_t b, int64_t e) {
    ForJobRows(jobs, n, start, b, e, [&](int64_t j, int64_t n0, int64_t n1) {
      const MatMulJob& job = jobs[j];
      if constexpr (HasScales(D)) {
        QuantMatVecRangeFor<D>(job.M, qx[j], *job.w, job.y, n0, n1, level_table);
      } else {
        MatVecRangeFor<D>(job.M, job.x, xd[j], job.w->cols, *job.w, job.y, n0, n1);
      }
    });
  });
  return true;
}

// ---------------------------------------------------------------------------
// The integer prefill for quantized and MXFP4 weights, defined after the
// blocked driver below (it shares its panel loop).
template <DType D>
bool PrefillInt8(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool);
// AVX2 has no bf16 dot products.
template <DType D>
bool PrefillBf16(const float*, int64_t, const WeightView&, float*, ThreadPool&) {
  return false;
}

// Prefill (see kernels_blocking_inl.h): packed, transposed float panels of W
// reused for all rows of x; register tile kMr = 6 rows by kNr = 16 columns (12
// accumulators, 2 panel vectors and a broadcast: 15 of 16 registers).

constexpr int kLanes = 8;  // Floats per vector.
constexpr int kMr = 6;
constexpr int kNr = 16;
constexpr int kKb = 256;  // A kMr x kKb slice of x is 6 KiB (L1).
constexpr int kNb = 256;  // kKb x kNb floats are 256 KiB (L2).
constexpr int kMc = 240;  // Rows of x packed at once; bounds the packed-x buffer.

// In-place transpose of an 8x8 float block: afterwards r[j] holds column j.
__attribute__((always_inline)) inline void Transpose8x8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// out[j * kNr + i] = w.At(row0 + i, k0 + j) for i < 8, j < nk; rows at or
// beyond `nrows` read as zero. Quantized rows are dequantized here; their k0
// is a multiple of 8 and nk == 8 (K and the panel depth are multiples of 32).
template <DType D>
__attribute__((always_inline)) inline void PackBlock(const WeightView& w, int64_t row0, int nrows,
                                                     int64_t k0, int nk, float* out) {
  __m256 r[8];
  const uint8_t* rows = RowAt(w, row0);
  const int64_t stride = RowStride(w);
  if (nrows == 8 && nk == 8) {
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      if constexpr (HasScales(D)) {
        r[i] = DequantLoad<D>(w, row0 + i, k0);
      } else {
        r[i] = Weights<D>::Load(rows + i * stride, k0);
      }
    }
    Transpose8x8(r);
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) _mm256_store_ps(out + j * kNr, r[j]);
    return;
  }
  for (int i = 0; i < 8; ++i) {
    if (i >= nrows) {
      r[i] = _mm256_setzero_ps();
    } else if constexpr (HasScales(D)) {
      r[i] = DequantLoad<D>(w, row0 + i, k0);
    } else {
      r[i] = Weights<D>::LoadPartial(rows + i * stride, k0, nk);
    }
  }
  Transpose8x8(r);
  for (int j = 0; j < nk; ++j) _mm256_store_ps(out + j * kNr, r[j]);
}

// Stores kLanes zeros at the 32-byte aligned out.
inline void StoreZeros(float* out) { _mm256_store_ps(out, _mm256_setzero_ps()); }

// y[0:MR, 0:16] (+)= xp[kb][kMr] (first MR columns) * bp[kb][16]; only the
// first `cols` columns are stored.
template <int MR>
void MicroKernel(const float* xp, const float* bp, int64_t kb, float* y, int64_t ldy, int64_t cols,
                 bool accumulate) {
  __m256 c0[MR], c1[MR];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) c0[m] = c1[m] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kb; ++k) {
    const __m256 b0 = _mm256_load_ps(bp);
    const __m256 b1 = _mm256_load_ps(bp + 8);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m256 a = _mm256_broadcast_ss(xp + m);
      c0[m] = _mm256_fmadd_ps(a, b0, c0[m]);
      c1[m] = _mm256_fmadd_ps(a, b1, c1[m]);
    }
    xp += kMr;
    bp += kNr;
  }
  if (cols >= kNr) {
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      float* row = y + m * ldy;
      if (accumulate) {
        c0[m] = _mm256_add_ps(c0[m], _mm256_loadu_ps(row));
        c1[m] = _mm256_add_ps(c1[m], _mm256_loadu_ps(row + 8));
      }
      _mm256_storeu_ps(row, c0[m]);
      _mm256_storeu_ps(row + 8, c1[m]);
    }
    return;
  }
  const __m256i mask0 = FirstLanes(cols), mask1 = FirstLanes(Max(cols - 8, 0));
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    float* row = y + m * ldy;
    if (accumulate) {
      c0[m] = _mm256_add_ps(c0[m], _mm256_maskload_ps(row, mask0));
      c1[m] = _mm256_add_ps(c1[m], _mm256_maskload_ps(row + 8, mask1));
    }
    _mm256_maskstore_ps(row, mask0, c0[m]);
    _mm256_maskstore_ps(row + 8, mask1, c1[m]);
  }
}

using MicroKernelFn = void (*)(const float*, const float*, int64_t, float*, int64_t, int64_t, bool);
constexpr MicroKernelFn kMicroKernels[kMr + 1] = {
    nullptr, MicroKernel<1>, MicroKernel<2>, MicroKernel<3>, MicroKernel<4>, MicroKernel<5>, MicroKernel<6>,
};

// Runs the micro-kernel for a tile of mr rows (1 <= mr <= kMr).
__attribute__((always_inline)) inline void RunMicroKernel(int mr, const float* xp, const float* bp, int64_t kb,
                                                          float* y, int64_t ldy, int64_t cols, bool accumulate) {
  kMicroKernels[mr](xp, bp, kb, y, ldy, cols, accumulate);
}

// The prefill driver and the dtype dispatch of MatMul and ConvertToF32, built
// on the definitions above and compiled here for AVX2.
#include "kernels/kernels_blocking_inl.h"

// ---------------------------------------------------------------------------
// Integer prefill (quantized and MXFP4 weights): x rounded to int8 per group
// of 32 exactly as QuantizeX rounds it for decode (so the error bound is the
// decode bound of kernels.h), multiplied by vpmaddubsw in a blocked product.
// The float prefill above dequantizes every weight to a float and does 8
// multiply-adds per FMA; vpmaddubsw does 32 per instruction, and packing a
// panel moves bytes instead of four times as many float bytes.
//
// vpmaddubsw multiplies unsigned by signed bytes and adds the pairs into
// int16 with saturation, so the operands are chosen as in the decode kernel
// (above QuantizeX): Q4 nibbles (level + 8) and MXFP4 levels + 12 are
// unsigned against the signed x codes, the offset removed exactly through
// the correction -offset * sum(q) of each x group; Q8 codes and NF4 levels
// are signed, so their tile multiplies |w| by x * sign(w) (vpsignb), exact
// for codes in [-128, 127] (|pair sum| <= 2 * 128 * 127 < 32768). A pair sum
// of the unsigned types is small (Q4: |15 * 127| * 2 = 3810, MXFP4: 24 * 127
// * 2 = 6096), so their tile adds the int16 pairs of several quads before one
// vpmaddwd widens them (8 quads, a whole group, for Q4: 30480; 4 for MXFP4:
// 24384), which leaves about 2 instructions per 32 multiply-adds instead of 4.
//
// Layout (as the AVX-512 integer prefill's, with 8-column strips). A packed
// strip of W holds 8 output columns of `ng` groups: for each group, 8 quads (4
// consecutive inputs) x 8 columns of level bytes as int32 words, [ng][8][8],
// then the group scales s_w (times the level unit) as floats, [ng][8]. A
// packed tile of x holds kI8Mr rows: for each group, the 8 quads of int8
// codes of each row [8][kI8Mr], then s_x [kI8Mr] and the correction [kI8Mr]
// as int32.

constexpr int kI8Mr = 4;                                       // Rows of x per register tile.
constexpr int kI8Nr = 8;                                       // Output columns per strip (one vector).
constexpr int64_t kI8Kg = 32;                                  // Groups of 32 inputs per panel (1024 inputs).
constexpr int64_t kI8Nb = 128;                                 // Output columns per panel: 16 strips, 144 KiB packed.
constexpr int64_t kI8Mc = 256;                                 // Rows of x quantized at once.
constexpr int64_t kI8XGroupWords = 10 * kI8Mr;                 // Words per group in a tile of x.
constexpr int64_t kI8WGroupBytes = 8 * kI8Nr * 4 + kI8Nr * 4;  // Codes and scales per group in a strip.

// Quads whose int16 pair sums the tile adds before widening them (see
// above); 1 means the sign form of Q8 and NF4.
template <DType D>
constexpr int kQuadsPerWiden = D == DType::kQ4 ? 8 : D == DType::kMXFP4 ? 4 : 1;
static_assert(8 % kQuadsPerWiden<DType::kMXFP4> == 0, "A group's 8 quads split evenly.");

// Rounds `rows` rows of x (row stride K) to int8 codes per group and packs
// them as one tile (layout above; PackXTile).
template <DType D>
void PackXInt8(const float* x, int64_t K, int64_t rows, int32_t* out) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  PackXTile<kI8Mr>(x, K, rows, static_cast<int32_t>(kAvx2Offset<D>), out,
                   [&](const float* xg, int32_t* quads, float* scale, int32_t* sum) {
                     // The same arithmetic as QuantizeX, so prefill and decode
                     // round x alike (QuantizeX's MXFP4 reordering moves codes,
                     // not values).
                     __m256 a[4];
                     __m256 amax = _mm256_setzero_ps();
#pragma GCC unroll 4
                     for (int i = 0; i < 4; ++i) {
                       a[i] = _mm256_loadu_ps(xg + 8 * i);
                       amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, a[i]));
                     }
                     const float max_abs = HorizontalMax(amax);
                     const __m256 inv = _mm256_set1_ps(max_abs > 0.f ? 127.0f / max_abs : 0.f);
                     __m256i q[4];
#pragma GCC unroll 4
                     for (int i = 0; i < 4; ++i) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(a[i], inv));
                     *scale = max_abs / 127.0f;
                     *sum = HorizontalSumInt(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
                     StoreBytes32(q[0], q[1], q[2], q[3], reinterpret_cast<uint8_t*>(quads));
                   });
}

// Packs output columns [n0, n0 + ncols) x groups [g0, g0 + ng) of W as
// ceil(ncols / 8) strips (layout above), 8 columns and one group at a time:
// each column's 32 level bytes are one row of an 8 x 8 block of words, whose
// transpose gives the group's 8 quads across the 8 columns. Columns beyond
// ncols get zero codes and scales; their outputs are never stored.
template <DType D>
void PackPanelInt8(const WeightView& w, int64_t n0, int64_t ncols, int64_t g0, int64_t ng, __m256i level_table,
                   uint8_t* out) {
  // NF4 levels are codebook * 127 and MXFP4 levels E2M1 * 2; the 1/127 or
  // 1/2 goes into the weight scale, as the decode kernel puts it.
  const __m256 level_unit = _mm256_set1_ps(D == DType::kNF4 ? 1.0f / 127.0f : D == DType::kMXFP4 ? 0.5f : 1.0f);
  for (int64_t s = 0; s * kI8Nr < ncols; ++s) {
    uint8_t* strip = out + s * ng * kI8WGroupBytes;
    auto* codes = reinterpret_cast<float*>(strip);                          // [ng][8][8] words
    auto* scales = reinterpret_cast<float*>(strip + ng * 8 * kI8Nr * 4);  // [ng][8]
    const int nrows = static_cast<int>(Clamp(ncols - s * kI8Nr, 0, kI8Nr));
    const uint8_t* rows[kI8Nr];
    const void* scale_rows[kI8Nr];
    for (int i = 0; i < kI8Nr; ++i) {
      rows[i] = i < nrows ? RowAt(w, n0 + s * kI8Nr + i) : nullptr;
      scale_rows[i] = i < nrows ? ScaleAddress(w, n0 + s * kI8Nr + i, 0) : nullptr;
    }
    for (int64_t g = 0; g < ng; ++g) {
      __m256 r[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        r[i] = i < nrows ? _mm256_castsi256_ps(GroupBytes<D>(rows[i], g0 + g, level_table))
                         : _mm256_setzero_ps();
      }
      Transpose8x8(r);  // Moves bits only, so it serves bytes too.
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) _mm256_store_ps(codes + (g * 8 + j) * kI8Nr, r[j]);
    }
    for (int64_t g = 0; g < ng; g += 8) {
      const int64_t count = Min(8, ng - g);
      __m256 r[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        r[i] = i < nrows ? _mm256_mul_ps(LoadGroupScales<D>(scale_rows[i], g0 + g, count), level_unit)
                         : _mm256_setzero_ps();
      }
      Transpose8x8(r);
      for (int64_t j = 0; j < count; ++j) _mm256_store_ps(scales + (g + j) * kI8Nr, r[j]);
    }
  }
}

// y[0:MR, 0:cols] (+)= the product of the first MR rows of one packed tile
// of x (from the panel's first group) and one packed strip of W, over `ng`
// groups. Rows of a partial tile past the end of x are not computed.
template <DType D, int MR>
void Int8TileRows(const int32_t* xt, const uint8_t* strip, int64_t ng, float* y, int64_t ldy, int64_t cols,
                  bool accumulate) {
  constexpr int kWiden = kQuadsPerWiden<D>;
  const int32_t* wc = reinterpret_cast<const int32_t*>(strip);
  const float* ws = reinterpret_cast<const float*>(strip + ng * 8 * kI8Nr * 4);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[MR];
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m) acc[m] = _mm256_setzero_ps();
  for (int64_t g = 0; g < ng; ++g) {
    const int32_t* xg = xt + g * kI8XGroupWords;
    const float* sx = reinterpret_cast<const float*>(xg + 8 * kI8Mr);
    const int32_t* wg = wc + g * 8 * kI8Nr;
    __m256i dot[MR];
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) dot[m] = _mm256_set1_epi32(xg[9 * kI8Mr + m]);
    if constexpr (kWiden == 1) {
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {
        const __m256i wv = _mm256_load_si256(reinterpret_cast<const __m256i*>(wg + j * kI8Nr));
        const __m256i magnitude = _mm256_abs_epi8(wv);
#pragma GCC unroll 4
        for (int m = 0; m < MR; ++m) {
          const __m256i signed_x = _mm256_sign_epi8(_mm256_set1_epi32(xg[j * kI8Mr + m]), wv);
          dot[m] = _mm256_add_epi32(dot[m], _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed_x), ones));
        }
      }
    } else {
#pragma GCC unroll 8
      for (int j0 = 0; j0 < 8; j0 += kWiden) {
        __m256i pairs[MR];
#pragma GCC unroll 8
        for (int j = j0; j < j0 + kWiden; ++j) {
          const __m256i wv = _mm256_load_si256(reinterpret_cast<const __m256i*>(wg + j * kI8Nr));
#pragma GCC unroll 4
          for (int m = 0; m < MR; ++m) {
            const __m256i p = _mm256_maddubs_epi16(wv, _mm256_set1_epi32(xg[j * kI8Mr + m]));
            pairs[m] = j == j0 ? p : _mm256_add_epi16(pairs[m], p);
          }
        }
#pragma GCC unroll 4
        for (int m = 0; m < MR; ++m) dot[m] = _mm256_add_epi32(dot[m], _mm256_madd_epi16(pairs[m], ones));
      }
    }
    const __m256 s = _mm256_load_ps(ws + g * kI8Nr);
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[m]), _mm256_mul_ps(s, _mm256_set1_ps(sx[m])), acc[m]);
    }
  }
  const __m256i mask = FirstLanes(cols);
#pragma GCC unroll 4
  for (int m = 0; m < MR; ++m) {
    float* row = y + m * ldy;
    if (accumulate) acc[m] = _mm256_add_ps(acc[m], _mm256_maskload_ps(row, mask));
    _mm256_maskstore_ps(row, mask, acc[m]);
  }
}

// Int8TileRows for the first mr (1 <= mr <= kI8Mr) rows of the tile.
static_assert(kI8Mr == 4, "Int8Tile has one instantiation per row count.");
template <DType D>
void Int8Tile(const int32_t* xt, const uint8_t* strip, int64_t ng, float* y, int64_t ldy, int64_t cols, int mr,
              bool accumulate) {
  switch (mr) {
    case 1: return Int8TileRows<D, 1>(xt, strip, ng, y, ldy, cols, accumulate);
    case 2: return Int8TileRows<D, 2>(xt, strip, ng, y, ldy, cols, accumulate);
    case 3: return Int8TileRows<D, 3>(xt, strip, ng, y, ldy, cols, accumulate);
    default: return Int8TileRows<D, 4>(xt, strip, ng, y, ldy, cols, accumulate);
  }
}

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
        Int8Tile<D>(xp + m0 / kI8Mr * tile_words + p.k0 / 32 * kI8XGroupWords, packed + s * ng * kI8WGroupBytes,
                    ng, y + m0 * N + p.n0 + s * kI8Nr, N, Min(kI8Nr, p.ncols - s * kI8Nr), mr, p.k0 > 0);
      });
}

template <DType D>
bool PrefillInt8(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool) {
  const int64_t K = w.cols;
  const int64_t tile_words = K / 32 * kI8XGroupWords;
  // The calling thread's buffer, shared with the workers below.
  auto* xp = reinterpret_cast<int32_t*>(internal::ThreadScratch(
      internal::Scratch::kPackedX, static_cast<size_t>(kI8Mc / kI8Mr * tile_words)));  // [kI8Mc / kI8Mr][groups][10 kI8Mr]
  const __m256i level_table = Avx2LevelTable<D>();
  TiledPrefill<kI8Mc, kI8Mr, kI8Nr>(
      x, M, w, y, pool, [&](const float* rows, int64_t count, int64_t t) { PackXInt8<D>(rows, K, count, xp + t * tile_words); },
      [&](int64_t mc, float* yb, int64_t n0, int64_t n1) { PrefillInt8Range<D>(xp, mc, w, yb, n0, n1, level_table); });
  return true;
}

// ---------------------------------------------------------------------------
// MatMulMany (kernels_many_inl.h): the paths an expert job can take here, as
// MatMulTyped chooses them. AVX2 has no bf16 products, so the bf16 paths are
// never chosen and prepare and run nothing.
template <DType D>
ManyPath ManyPathFor(int64_t M, int64_t K) {
  // MatMulTyped's choice: under ScopedRowInvariantMatMul (read on the
  // calling thread, whose flag it is) a prefill at every row count. The
  // integer prefill always runs here (PrefillInt8).
  const bool int8_x = HasGroupScales(D) && !::epwa::kernels::FloatActivations();
  if (UsesDecode<D>(M, K) && (int8_x || !HasGroupScales(D)) && !::epwa::kernels::RowInvariantMatMul())
    return HasScales(D) ? ManyPath::kDecodeQuantized : ManyPath::kDecodeFloat;
  return int8_x ? ManyPath::kPrefillInt8 : ManyPath::kPrefillFloat;
}

// One pass over at most kMc rows per job, as the prefills take them.
template <DType D>
bool ManyGroupedFits(int64_t M) {
  return M <= kMc && M <= kI8Mc;
}

inline int64_t ManyXFloats(ManyPath path, DType dtype, int64_t M, int64_t K, int /*amx_parts*/) {
  switch (path) {
    case ManyPath::kDecodeQuantized: return M * QuantizedXRowFloats(K);
    case ManyPath::kDecodeFloat: return dtype == DType::kBF16 ? M * K : 0;  // deinterleaved (DecodeFloat)
    case ManyPath::kPrefillInt8: return (M + kI8Mr - 1) / kI8Mr * (K / 32 * kI8XGroupWords);
    case ManyPath::kPrefillFloat: return (M + kMr - 1) / kMr * K * kMr;
    case ManyPath::kPrefillBf16:
    case ManyPath::kPrefillBf16Amx: break;
  }
  return 0;
}
inline int64_t ManyTileRows(ManyPath path, int64_t M) {
  switch (path) {
    case ManyPath::kPrefillInt8: return kI8Mr;
    case ManyPath::kPrefillFloat: return kMr;
    case ManyPath::kDecodeQuantized:
    case ManyPath::kDecodeFloat:
    case ManyPath::kPrefillBf16:
    case ManyPath::kPrefillBf16Amx: break;
  }
  return Max(M, 1);
}
inline int64_t ManyChunkCols(ManyPath path) {
  switch (path) {
    case ManyPath::kPrefillInt8: return kI8Nb;
    case ManyPath::kPrefillFloat: return kNb;
    case ManyPath::kDecodeQuantized:
    case ManyPath::kDecodeFloat:
    case ManyPath::kPrefillBf16:
    case ManyPath::kPrefillBf16Amx: break;
  }
  return 64;
}
// The scratch MatMulScratchBytes accounts for: kMc rows of packed x.
inline int64_t ManyScratchLimit(int64_t max_k) { return kMc * max_k; }
inline int ManyAmxParts() { return 1; }

template <DType D>
struct ManyTables {
  __m256i levels = _mm256_setzero_si256();  // the integer decode's and prefill's (Avx2LevelTable)
};
template <DType D>
ManyTables<D> MakeManyTables() {
  ManyTables<D> t;
  if constexpr (HasScales(D)) t.levels = Avx2LevelTable<D>();
  return t;
}

template <DType D>
void PrepareManyUnit(ManyPath path, const MatMulJob& job, int64_t t, float* base, int /*amx_parts*/,
                     QuantizedX& qx) {
  const int64_t K = job.w->cols;
  switch (path) {
    case ManyPath::kDecodeQuantized:
      if constexpr (HasScales(D)) qx = QuantizeXInto<D>(job.x, job.M, K, base);
      break;
    case ManyPath::kDecodeFloat:
      if constexpr (D == DType::kBF16) DeinterleaveX(job.x, job.M, K, base);
      break;
    case ManyPath::kPrefillInt8:
      if constexpr (HasScales(D))
        PackXInt8<D>(job.x + t * kI8Mr * K, K, Min(kI8Mr, job.M - t * kI8Mr),
                     reinterpret_cast<int32_t*>(base) + t * (K / 32 * kI8XGroupWords));
      break;
    case ManyPath::kPrefillFloat:
      PackX(job.x + t * kMr * K, K, Min(kMr, job.M - t * kMr), base + t * K * kMr);
      break;
    case ManyPath::kPrefillBf16:
    case ManyPath::kPrefillBf16Amx: break;
  }
}

template <DType D>
void RunManyRange(ManyPath path, const MatMulJob& job, const float* base, const QuantizedX& qx, int64_t n0,
                  int64_t n1, const FollowingWork& after, const ManyTables<D>& tables, int /*amx_parts*/) {
  const int64_t K = job.w->cols;
  switch (path) {
    case ManyPath::kDecodeQuantized:
      if constexpr (HasScales(D)) QuantMatVecRangeFor<D>(job.M, qx, *job.w, job.y, n0, n1, tables.levels);
      break;
    case ManyPath::kDecodeFloat:
      // BF16's x is deinterleaved (PrepareManyUnit), as DecodeFloat does.
      if constexpr (!HasScales(D))
        MatVecRangeFor<D>(job.M, job.x, D == DType::kBF16 ? base : nullptr, K, *job.w, job.y, n0, n1);
      break;
    case ManyPath::kPrefillInt8:
      if constexpr (HasScales(D))
        PrefillInt8Range<D>(reinterpret_cast<const int32_t*>(base), job.M, *job.w, job.y, n0, n1, tables.levels,
                            after);
      break;
    case ManyPath::kPrefillFloat:
      PrefillRange<D>(base, job.M, *job.w, job.y, n0, n1, after);
      break;
    case ManyPath::kPrefillBf16:
    case ManyPath::kPrefillBf16Amx: break;
  }
}

#include "kernels/kernels_many_inl.h"

// ---------------------------------------------------------------------------
// Element-wise kernels.

// exp(x) for 8 lanes; the same Cephes scheme and edge behaviour as the
// AVX-512 Exp: flush to zero below the smallest normal float, saturate above
// 88.37, propagate NaN.
inline __m256 Exp(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654f);
  const __m256 tiny = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), _mm256_max_ps(lo, x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i bits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)));
}

float Dot(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  for (; i < n; i += 8) {
    const __m256i mask = FirstLanes(n - i);
    s0 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, mask), _mm256_maskload_ps(b + i, mask), s0);
  }
  return HorizontalSum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

void RmsNorm(const float* x, const float* weight, int64_t n, float eps, float* out) {
  const float mean_sq = Dot(x, x, n) / static_cast<float>(n);
  const __m256 inv = _mm256_set1_ps(1.0f / Sqrt(mean_sq + eps));
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), inv);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(v, _mm256_loadu_ps(weight + i)));
  }
  if (i < n) {
    const __m256i mask = FirstLanes(n - i);
    const __m256 v = _mm256_mul_ps(_mm256_maskload_ps(x + i, mask), inv);
    _mm256_maskstore_ps(out + i, mask, _mm256_mul_ps(v, _mm256_maskload_ps(weight + i, mask)));
  }
}

void Softmax(float* x, int64_t n) {
  const __m256 neg_inf = _mm256_set1_ps(-__builtin_inff());
  __m256 max_v = neg_inf;
  for (int64_t i = 0; i < n; i += 8) {
    const __m256i mask = FirstLanes(n - i);
    const __m256 v = _mm256_blendv_ps(neg_inf, _mm256_maskload_ps(x + i, mask), _mm256_castsi256_ps(mask));
    max_v = _mm256_max_ps(max_v, v);
  }
  const __m256 max_b = _mm256_set1_ps(HorizontalMax(max_v));
  __m256 sum = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 8) {
    const __m256i mask = FirstLanes(n - i);
    const __m256 e = _mm256_and_ps(Exp(_mm256_sub_ps(_mm256_maskload_ps(x + i, mask), max_b)),
                                   _mm256_castsi256_ps(mask));
    sum = _mm256_add_ps(sum, e);
    _mm256_maskstore_ps(x + i, mask, e);
  }
  const __m256 inv = _mm256_set1_ps(1.0f / HorizontalSum(sum));
  for (int64_t i = 0; i < n; i += 8) {
    const __m256i mask = FirstLanes(n - i);
    _mm256_maskstore_ps(x + i, mask, _mm256_mul_ps(_mm256_maskload_ps(x + i, mask), inv));
  }
}

void SiluMul(float* gate, const float* up, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 8) {
    const __m256i mask = FirstLanes(n - i);
    const __m256 g = _mm256_maskload_ps(gate + i, mask);
    const __m256 e = Exp(_mm256_sub_ps(_mm256_setzero_ps(), g));
    const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_maskstore_ps(gate + i, mask, _mm256_mul_ps(silu, _mm256_maskload_ps(up + i, mask)));
  }
}

void Axpy(float alpha, const float* x, float* y, int64_t n) {
  const __m256 a = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  }
  if (i < n) {
    const __m256i mask = FirstLanes(n - i);
    const __m256 v = _mm256_fmadd_ps(a, _mm256_maskload_ps(x + i, mask), _mm256_maskload_ps(y + i, mask));
    _mm256_maskstore_ps(y + i, mask, v);
  }
}

// ---------------------------------------------------------------------------
// Attention over the KV cache (kernels.h; see kernels_avx512.cc): blocks of
// up to four queries per cached row, each sum run exactly as Dot's and Axpy's.

template <DType D, int G>
void ScoresBlock(const float* const* q, int64_t dim, const uint8_t* keys, int64_t row_bytes, int64_t n, float scale,
                 float* scores, int64_t score_stride) {
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* row = keys + j * row_bytes;
    __m256 s[G][4];
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) s[g][0] = s[g][1] = s[g][2] = s[g][3] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= dim; i += 32) {
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const __m256 k = Weights<D>::Load(row, i + 8 * c);
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g) s[g][c] = _mm256_fmadd_ps(_mm256_loadu_ps(q[g] + i + 8 * c), k, s[g][c]);
      }
    }
    for (; i < dim; i += 8) {
      const __m256i mask = FirstLanes(dim - i);
      const __m256 k = Weights<D>::LoadPartial(row, i, dim - i);
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g) s[g][0] = _mm256_fmadd_ps(_mm256_maskload_ps(q[g] + i, mask), k, s[g][0]);
    }
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g)
      scores[g * score_stride + j] =
          HorizontalSum(_mm256_add_ps(_mm256_add_ps(s[g][0], s[g][1]), _mm256_add_ps(s[g][2], s[g][3]))) * scale;
  }
}

// Columns in blocks of 32 (four vectors): a block of four heads keeps its 16
// sums in registers across all n rows.
template <DType D, int G>
void ValuesBlock(const float* p, int64_t p_stride, const uint8_t* values, int64_t row_bytes, int64_t n, int64_t dim,
                 float* const* out, bool accumulate) {
  for (int64_t c0 = 0; c0 < dim; c0 += 32) {
    const int64_t width = Min(32, dim - c0);
    const int vectors = static_cast<int>((width + 7) / 8);
    __m256 acc[G][4];
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g)
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c)
        acc[g][c] = accumulate && 8 * c < width ? _mm256_maskload_ps(out[g] + c0 + 8 * c, FirstLanes(width - 8 * c))
                                                : _mm256_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
      const uint8_t* row = values + j * row_bytes;
      __m256 a[G];
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g) a[g] = _mm256_set1_ps(p[g * p_stride + j]);
      if (width == 32) {
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) {
          const __m256 v = Weights<D>::Load(row, c0 + 8 * c);
#pragma GCC unroll 4
          for (int g = 0; g < G; ++g) acc[g][c] = _mm256_fmadd_ps(a[g], v, acc[g][c]);
        }
      } else {
        for (int c = 0; c < vectors; ++c) {
          const __m256 v = Weights<D>::LoadPartial(row, c0 + 8 * c, width - 8 * c);
#pragma GCC unroll 4
          for (int g = 0; g < G; ++g) acc[g][c] = _mm256_fmadd_ps(a[g], v, acc[g][c]);
        }
      }
    }
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g)
      for (int c = 0; c < vectors; ++c)
        _mm256_maskstore_ps(out[g] + c0 + 8 * c, FirstLanes(width - 8 * c), acc[g][c]);
  }
}

// As kernels_avx512.cc's: F16C rounding after a NaN-keeping clamp; BF16 in
// integer arithmetic. The tail goes through a zero-padded copy.
void ConvertFromF32(const float* src, int64_t n, DType dtype, void* dst) {
  if (dtype == DType::kF32) {
    __builtin_memcpy(dst, src, static_cast<size_t>(n) * 4);
    return;
  }
  auto* out = static_cast<uint16_t*>(dst);
  const __m256 hi = _mm256_set1_ps(65504.0f), lo = _mm256_set1_ps(-65504.0f);
  for (int64_t i = 0; i < n; i += 8) {
    const int64_t count = Min(8, n - i);
    const __m256 v = _mm256_maskload_ps(src + i, FirstLanes(count));
    __m128i h;
    if (dtype == DType::kF16) {
      h = _mm256_cvtps_ph(_mm256_max_ps(lo, _mm256_min_ps(hi, v)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else {
      const __m256i bits = _mm256_castps_si256(v);
      const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
      const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
      const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
      const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
      const __m256i pick = _mm256_blendv_epi8(rounded, quiet, _mm256_castps_si256(nan));
      // Values fit 16 bits, so the unsigned saturating pack keeps them; it
      // works per 128-bit lane, hence the permute.
      h = _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(pick, pick), 0x08));
    }
    if (count == 8) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), h);
    } else {
      uint16_t tmp[8];
      _mm_storeu_si128(reinterpret_cast<__m128i*>(tmp), h);
      __builtin_memcpy(out + i, tmp, static_cast<size_t>(count) * 2);
    }
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
      ValuesBlock<D, decltype(block)::value>(p + first * p_stride, p_stride, static_cast<const uint8_t*>(values),
                                             CacheRowBytes(D, stride), n, dim, out + first, accumulate);
    });
  });
}

// ---------------------------------------------------------------------------
// Machine probes.

// Each part is read 256 bytes (four lines, four accumulators taking two
// loads each) per step, so the adds' latency never limits a single stream.
template <int S, bool kPrefetch>
float SumStreams(const float* p, int64_t n) {
  const int64_t part = n / S / 64 * 64;
  __m256 acc[S][4];
#pragma GCC unroll 4
  for (int r = 0; r < S; ++r)
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) acc[r][u] = _mm256_setzero_ps();
  for (int64_t i = 0; i < part; i += 64) {
#pragma GCC unroll 4
    for (int r = 0; r < S; ++r) {
      const float* q = p + r * part + i;
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        // A prefetch never faults, so running past the buffer's end is harmless.
        if constexpr (kPrefetch)
          _mm_prefetch(reinterpret_cast<const char*>(q + 16 * u) + internal::kProbePrefetchBytes, _MM_HINT_NTA);
        acc[r][u] = _mm256_add_ps(acc[r][u], _mm256_add_ps(_mm256_loadu_ps(q + 16 * u), _mm256_loadu_ps(q + 16 * u + 8)));
      }
    }
  }
  for (int64_t i = S * part; i < n; i += 8)
    acc[0][0] = _mm256_add_ps(acc[0][0], _mm256_maskload_ps(p + i, FirstLanes(n - i)));
  __m256 sum = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int r = 0; r < S; ++r)
    sum = _mm256_add_ps(sum, _mm256_add_ps(_mm256_add_ps(acc[r][0], acc[r][1]), _mm256_add_ps(acc[r][2], acc[r][3])));
  return HorizontalSum(sum);
}

float SumFloats(const float* p, int64_t n, int streams, bool prefetch) {
  if (streams >= 4) return prefetch ? SumStreams<4, true>(p, n) : SumStreams<4, false>(p, n);
  if (streams == 2) return prefetch ? SumStreams<2, true>(p, n) : SumStreams<2, false>(p, n);
  return prefetch ? SumStreams<1, true>(p, n) : SumStreams<1, false>(p, n);
}

// Ten independent chains: the FMA latency (4 cycles) times two FMA pipes,
// with a margin, in 16 registers.
double FmaChains(int64_t iterations) {
  constexpr int kChains = 10;
  __m256 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i));
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iterations; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 sum = acc[0];
  for (int i = 1; i < kChains; ++i) sum = _mm256_add_ps(sum, acc[i]);
  volatile float sink = HorizontalSum(sum);
  (void)sink;
  return static_cast<double>(iterations) * kChains * 8 * 2;
}

// Six independent chains of vpmaddubsw (32 byte products summed in pairs to
// 16 int16) and vpaddw: the cheapest integer step an AVX2 kernel can take,
// and the one the Q4 and MXFP4 prefill tiles take for most of their quads
// (the decode kernel and the Q8 and NF4 tiles also widen every product with
// vpmaddwd, so they reach a smaller share of this peak). The operands stay
// small, so nothing saturates.
double Int8DotChains(int64_t iterations) {
  constexpr int kChains = 6;
  // The step is written out in asm: with the operands in C++, GCC either
  // hoisted the loop-invariant products out of the loop or, once they were
  // made opaque, kept the chains in memory, and the probe timed something
  // else. Two scratch registers serve the six chains (renaming removes the
  // false dependences).
  const __m256i a0 = _mm256_set1_epi8(3), a1 = _mm256_set1_epi8(4), a2 = _mm256_set1_epi8(5);
  const __m256i a3 = _mm256_set1_epi8(6), a4 = _mm256_set1_epi8(7), a5 = _mm256_set1_epi8(8);
  const __m256i b = _mm256_set1_epi8(-2);
  __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, t0, t1;
  for (int64_t it = 0; it < iterations; ++it) {
    asm volatile(
        "vpmaddubsw %[b], %[a0], %[t0]\n\t"
        "vpmaddubsw %[b], %[a1], %[t1]\n\t"
        "vpaddw %[t0], %[c0], %[c0]\n\t"
        "vpaddw %[t1], %[c1], %[c1]\n\t"
        "vpmaddubsw %[b], %[a2], %[t0]\n\t"
        "vpmaddubsw %[b], %[a3], %[t1]\n\t"
        "vpaddw %[t0], %[c2], %[c2]\n\t"
        "vpaddw %[t1], %[c3], %[c3]\n\t"
        "vpmaddubsw %[b], %[a4], %[t0]\n\t"
        "vpmaddubsw %[b], %[a5], %[t1]\n\t"
        "vpaddw %[t0], %[c4], %[c4]\n\t"
        "vpaddw %[t1], %[c5], %[c5]"
        : [c0] "+x"(c0), [c1] "+x"(c1), [c2] "+x"(c2), [c3] "+x"(c3), [c4] "+x"(c4), [c5] "+x"(c5),
          [t0] "=&x"(t0), [t1] "=&x"(t1)
        : [a0] "x"(a0), [a1] "x"(a1), [a2] "x"(a2), [a3] "x"(a3), [a4] "x"(a4), [a5] "x"(a5), [b] "x"(b));
  }
  const __m256i sum = _mm256_add_epi16(_mm256_add_epi16(_mm256_add_epi16(c0, c1), _mm256_add_epi16(c2, c3)),
                                       _mm256_add_epi16(c4, c5));
  volatile int sink = _mm256_extract_epi16(sum, 0);
  (void)sink;
  return static_cast<double>(iterations) * kChains * 32 * 2;
}

// AVX2 has no bf16 dot product.
double NoDotChains(int64_t) { return 0.0; }

}  // namespace
}  // namespace avx2

namespace internal {

const IsaKernels kAvx2Kernels = {
    avx2::MatMul,        avx2::RmsNorm,   avx2::Softmax,      avx2::SiluMul,
    avx2::Dot,           avx2::Axpy,      avx2::ConvertToF32, avx2::ConvertFromF32, avx2::AttentionScores,
    avx2::AttentionValues, nullptr, avx2::QuantizeRows,
    avx2::DequantizeRow, avx2::SumFloats, avx2::FmaChains, avx2::Int8DotChains, avx2::NoDotChains,
    avx2::MatMulMany,
};

}  // namespace internal
}  // namespace epwa::kernels

#endif  // x86
