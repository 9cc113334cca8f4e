// The AVX-512 integer decode kernel for quantized and MXFP4 weights: x's
// int8 codes (QuantizeX) against each weight row with vpdpbusd. Included
// twice by kernels_avx512.cc, inside namespaces that define
// kNibblesByGfni: once compiled for AVX-512 VNNI, once for VNNI and GFNI.
// A template has the target of the place it is defined, so the GFNI form
// needs its own copy of the definitions rather than a template parameter;
// and it must not share one target with the other, or the compiler may use
// GFNI in code that runs where the CPU has none (clang turns byte shifts
// into vgf2p8affineqb when GFNI is enabled).
// No include guard: meant to be included more than once.

// The high nibble of each byte of v, as a byte. With GFNI one affine
// transform over GF(2) does the shift and the mask: output bit i (i < 4) is
// input bit i + 4, the matrix row for bit i being byte 7 - i of the constant.
// In the 4-bit decode kernel below the split is a tenth of the instructions
// per weight load, and with its weights in cache that kernel is bound by
// instructions (kernels_bench DecodeInCache/4/2, Zen 5 VM, six alternating
// rounds: median 77 GB/s with shift and mask, 80 with the affine transform).
// From DRAM on two cores of that VM it made no measurable difference
// (full-depth OLMoE int4 decode); it leaves more room where a core has more
// bandwidth to itself.
__attribute__((always_inline)) inline __m512i HighNibbles(__m512i v) {
  if constexpr (kNibblesByGfni) {
    return _mm512_gf2p8affine_epi64_epi8(v, _mm512_set1_epi64(0x1020408000000000ll), 0);
  } else {
    return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(0x0f));
  }
}

// y[m, n + r] for r < R, m < M.
template <DType D, int M, int R>
void QuantMatVecRows(const QuantizedX& qx, const WeightView& w, float* y, int64_t n, __m512i level_table) {
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
  // s_w * s_x per group of the current 16 (lane g: group g0 + g; zero past
  // the row's last group). Each step picks its groups' lanes out of these
  // registers with one permute; they used to go through memory, and the
  // step's load at an offset of p floats then straddled the vector just
  // stored, which store-to-load forwarding cannot serve.
  __m512 products[R][M];
  __m512 acc[R][M];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
  // Which of the step's products each int32 lane of vpdpbusd needs: Q8 steps
  // by pairs of groups in order, the 4-bit formats by four groups.
  const __m512i lane_group = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const __m512i quad_group = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  // NF4 levels are codebook * 127 and MXFP4 levels E2M1 * 2; the 1/127 or
  // 1/2 goes into the weight scale (exactly, for MXFP4).
  const __m512 level_unit =
      _mm512_set1_ps(D == DType::kNF4 ? 1.0f / 127.0f : D == DType::kMXFP4 ? 0.5f : 1.0f);
  for (int64_t g0 = 0; g0 < groups; g0 += 16) {
    const int64_t ng = Min(16, groups - g0);
    const __mmask16 group_mask = FirstLanes(ng);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      PrefetchL2(static_cast<const uint8_t*>(scale_rows[r]) + SpanScaleBytes<D>(g0) + scales_ahead);
      const __m512 ws = _mm512_mul_ps(LoadGroupScales<D>(scale_rows[r], g0, group_mask), level_unit);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        products[r][m] = _mm512_mul_ps(ws, _mm512_load_ps(qx.Scales(m) + g0));
        acc[r][m] = _mm512_fnmadd_ps(ws, _mm512_load_ps(qx.Corrections(m) + g0), acc[r][m]);
      }
    }
    if constexpr (D != DType::kQ8) {
      // Four groups per step (see above); a last step of fewer reads only
      // their bytes, and the missing groups meet zero codes and scales.
      for (int64_t p = 0; p < ng; p += 4) {
        const int64_t k = (g0 + p) * 32;
        const __mmask64 bytes = ng - p >= 4 ? ~0ull : (1ull << (16 * (ng - p))) - 1;
        const __m512i step_groups = _mm512_add_epi32(quad_group, _mm512_set1_epi32(static_cast<int>(p)));
        __m512i lo[R], hi[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          PrefetchL1(rows[r] + SpanBytes(D, k) + ahead);
          const __m512i v = _mm512_maskz_loadu_epi8(bytes, rows[r] + k / 2);
          lo[r] = _mm512_and_si512(v, _mm512_set1_epi8(0x0f));
          hi[r] = HighNibbles(v);
          if constexpr (D != DType::kQ4) {
            lo[r] = _mm512_shuffle_epi8(level_table, lo[r]);
            hi[r] = _mm512_shuffle_epi8(level_table, hi[r]);
          }
        }
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
          const __m512i xlo = _mm512_load_si512(qx.Codes(m) + k);
          const __m512i xhi = _mm512_load_si512(qx.Codes(m) + k + 64);
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[r], xlo), hi[r], xhi);
            const __m512 scale = _mm512_permutexvar_ps(step_groups, products[r][m]);
            acc[r][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[r][m]);
          }
        }
      }
    } else {
      for (int64_t p = 0; p < ng; p += 2) {
        const int64_t k = (g0 + p) * 32;
        const bool half = p + 1 == ng;
        const __m512i step_groups = _mm512_add_epi32(lane_group, _mm512_set1_epi32(static_cast<int>(p)));
        __m512i wu[R];
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          PrefetchL1(rows[r] + SpanBytes(D, k) + ahead);
          wu[r] = LoadWeightPair(rows[r], k, half);
        }
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
          const __m512i xq = _mm512_load_si512(qx.Codes(m) + k);
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wu[r], xq);
            const __m512 scale = _mm512_permutexvar_ps(step_groups, products[r][m]);
            acc[r][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[r][m]);
          }
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) y[m * N + n + r] = _mm512_reduce_add_ps(acc[r][m]);
}

// The first four rows of x (or fewer) against weight rows n .. n + R - 1,
// then the rest of x in further passes of up to four rows over the same
// weight rows, now in L1.
template <DType D, int M, int R>
__attribute__((always_inline)) inline void QuantMatVecPasses(const QuantizedX& qx, const WeightView& w, float* y,
                                                             int64_t n, __m512i level_table) {
  constexpr int kPassRows = M < 4 ? M : 4;
  QuantMatVecRows<D, kPassRows, R>(qx, w, y, n, level_table);
  if constexpr (M > 4) {
    QuantizedX rest = qx;  // rows 4 .. M - 1 of this x
    rest.base = qx.base + 4 * qx.row_floats;
    QuantMatVecPasses<D, M - 4, R>(rest, w, y + 4 * w.rows, n, level_table);
  }
}

// Four rows share each x code load up to M = 6 (at most 16 accumulators up
// to M = 4, beyond that two rows). From M = 7, rows 4 .. M - 1 of x take
// further passes of up to four rows over the same four weight rows, which
// are then in L1: two weight rows at a time with all M rows of x were the
// slowest per row of x (kernels_bench MatMulSmallM, [16384, 4096], 2
// threads, three alternating runs, GFLOP/s without -> with the second pass:
// Q4 M = 7 545-567 -> 709-755, M = 8 553-578 -> 738-756; MXFP4 M = 7
// 551-556 -> 581-608, M = 8 452-469 -> 611-631; Q8, more bound by its bytes,
// M = 8 377-381 -> 406-418 and M = 7 463-476 -> 432-443, where the unchanged
// M = 6 read 5 % lower in the second build in the same runs). At M = 5 and
// 6 the second pass cost more than it saved (MXFP4 M = 5: 575 -> 481-497;
// so did halving the rows of x, 3 + 2 and 3 + 3: Q8 M = 5 527-555 ->
// 425-443). Past 8 rows the passes go on up to kMaxQuantDecodeRows;
// kernels_avx512.cc's UsesDecode says where they beat the prefill tiles.
// Each output is computed by the same instructions at every M, so its bits
// do not depend on M.
template <DType D, int M>
void QuantMatVecRange(const QuantizedX& qx, const WeightView& w, float* y, int64_t n0, int64_t n1,
                      __m512i level_table) {
  int64_t n = n0;
  if constexpr (M >= 7) {
    for (; n + 4 <= n1; n += 4) QuantMatVecPasses<D, M, 4>(qx, w, y, n, level_table);
    for (; n < n1; ++n) QuantMatVecPasses<D, M, 1>(qx, w, y, n, level_table);
  } else {
    constexpr int kRows = M <= 4 ? 4 : 2;
    for (; n + kRows <= n1; n += kRows) QuantMatVecRows<D, M, kRows>(qx, w, y, n, level_table);
    for (; n < n1; ++n) QuantMatVecRows<D, M, 1>(qx, w, y, n, level_table);
  }
}
