// The cache-blocked prefill driver and the dtype dispatch of MatMul and
// ConvertToF32, shared by the instruction-set files.
//
// Unlike an ordinary header, this file is included inside the anonymous
// namespace of each instruction-set file's own namespace (epwa::kernels::avx2
// in kernels_avx2.cc, epwa::kernels::avx512 in kernels_avx512.cc), after the
// code it builds on. Each of those files thus compiles a private copy of the
// code below with its own -m flags and internal linkage, so the linker never
// sees two definitions to merge (see kernels_internal.h for why that would
// break CPUs without AVX-512), and the unqualified names below bind to that
// file's vector widths, tile sizes and kernels. For the same reason this file
// includes nothing itself.
//
// The including file defines, before the include:
//   kLanes          floats per vector register;
//   kMr, kNr        the register tile: rows of x by output columns, with
//                   kNr == 2 * kLanes (two vectors per tile row);
//   kKb, kNb        input features and output columns per packed panel of W;
//   kMc             rows of x packed at once;
//   UsesDecode<D>(M, K), whether MatMul uses Decode for M rows of x with K
//                   columns and weights of dtype D;
//   PackBlock<D>(w, row0, nrows, k0, nk, out), which sets
//                   out[j * kNr + i] = w.At(row0 + i, k0 + j) for i < kLanes,
//                   j < nk, where rows at or beyond nrows read as zero (for
//                   D with group scales, k0 is a multiple of kLanes and nk ==
//                   kLanes, since K and kKb are multiples of 32);
//   StoreZeros(out), which stores kLanes zeros at the vector-aligned out;
//   RunMicroKernel(mr, xp, bp, kb, y, ldy, cols, accumulate), which sets
//                   (or, if accumulate, adds to) y[0:mr, 0:cols] the product
//                   of xp [kb][kMr] (first mr columns) and bp [kb][kNr];
//   Decode<D>(x, M, w, y, pool), the MatMul kernel where UsesDecode<D>;
//   PrefillInt8<D>(x, M, w, y, pool) for D with group scales: the prefill
//                   with x rounded to int8 as Decode rounds it, returning
//                   false where this path or CPU has none (then the exact
//                   float prefill runs);
//   PrefillBf16<D>(x, M, w, y, pool): the prefill with x rounded to bf16 for
//                   BF16 weights when Bf16Activations() is on, returning
//                   false where it does not apply;
//   ConvertTyped<D>(src, n, dst), which converts n weights to floats (float
//                   dtypes only);
//   DequantizeRowTyped<D>(w, row, out), out[c] = w.At(row, c) (D with group
//                   scales: the quantized types and kMXFP4);
//   QuantizeRowsFrom<S>(src, target, row_begin, row_end, out), the
//                   quantizer for float source dtype S.
//
// Quantized and MXFP4 weights go through the same blocked product: packing a
// panel dequantizes it to float (PackBlock), once per panel as for BF16, so
// prefill runs at nearly the float path's speed whatever the storage format.
//
// Prefill is a blocked matrix product. y = x * W^T is computed as C = A * B
// with A = x [M, K] and B = W^T [K, N]. A panel of W (kNb output columns by
// kKb input features) is converted to float and transposed once into a
// thread-local buffer, then reused by every row of x; the register tile is
// kMr rows of x by kNr output columns, i.e. 2 * kMr independent accumulators
// per k step for 2 vector loads and kMr broadcasts.
#pragma once

static_assert(kNr == 2 * kLanes, "A register tile row is two vectors.");
static_assert(kNb % kNr == 0 && kMc % kMr == 0, "Panels hold whole tiles.");

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
  // Everything Issue needs per line is computed here, once per panel: Issue
  // runs between register tiles, and at the few dozen rows an MoE expert sees
  // in a prompt, a per-line dtype switch and row lookup in it had cost a
  // fifth of the integer prefill's time (perf, kernels_bench BM_Prefill Q4 at
  // 16 rows).
  PanelPrefetcher(const WeightView& w, const Panel& panel)
      : panel_(panel),
        bytes_(SpanBytes(w.dtype, panel.kb)),
        row_stride_(RowStride(w)),
        codes_(static_cast<const char*>(w.data) + SpanBytes(w.dtype, panel.k0)),
        code_lines_((bytes_ + 63) / 64 + 1) {
    // Rows with group scales have one more line to fetch: the row's scales.
    if (HasScales(w.dtype)) {
      scales_ = static_cast<const char*>(ScaleAddress(w, 0, panel.k0 / 32));
      scale_stride_ = ScaleStride(w);
    }
    lines_per_row_ = code_lines_ + (scales_ != nullptr ? 1 : 0);
  }
  int64_t TotalLines() const { return panel_.ncols * lines_per_row_; }
  // Issues the next `count` prefetches of the panel, row by row: the row
  // segment's code lines, then its final byte (which may sit on one more
  // cache line when the segment is not line aligned), then for weights with
  // group scales the segment's scales.
  void Issue(int64_t count) {
    while (count > 0 && row_ < panel_.ncols) {
      const int64_t n = panel_.n0 + row_;
      const char* p = codes_ + n * row_stride_;
      for (; count > 0 && line_ < code_lines_; --count, ++line_) {
        PrefetchL2(line_ + 1 < code_lines_ ? p + line_ * 64 : p + bytes_ - 1);
      }
      if (count > 0 && line_ == code_lines_ && scales_ != nullptr) {
        PrefetchL2(scales_ + n * scale_stride_);
        ++line_;
        --count;
      }
      if (line_ == lines_per_row_) {
        line_ = 0;
        ++row_;
      }
    }
  }

 private:
  Panel panel_;
  int64_t bytes_;        // Code bytes of one row's segment.
  int64_t row_stride_;   // Bytes from one row's codes to the next's.
  const char* codes_;    // Row 0's segment.
  int64_t code_lines_;   // Code lines per row, the final byte's included.
  const char* scales_ = nullptr;  // Row 0's first scale of the segment.
  int64_t scale_stride_ = 0;
  int64_t lines_per_row_ = 0;
  int64_t row_ = 0, line_ = 0;
};

// The columns [n0, n1) of *w that a thread multiplies next, after its
// current range (none where w is null). A range's own panels are fetched one
// ahead by PanelPrefetcher, but its first panel would otherwise come from
// DRAM on demand: in an MoE prefill each expert's product is only a few
// panels per thread, so the ranges pass on the first panel of what follows.
struct FollowingWork {
  const WeightView* w = nullptr;
  int64_t n0 = 0, n1 = 0;
};

// The first panel (nb columns by kb inputs) of `after`, empty if there is none.
inline Panel FirstPanel(const FollowingWork& after, int64_t nb, int64_t kb) {
  Panel p;
  if (after.w == nullptr || after.n1 <= after.n0) return p;
  p.n0 = after.n0;
  p.ncols = Min(nb, after.n1 - after.n0);
  p.kb = Min(kb, after.w->cols);
  return p;
}

// The prefetcher to run while the panel at (nb, k0) of a range of columns
// ending at n_end is multiplied (panels of kNb_ columns by kKb_ inputs, all k
// blocks of a column block in turn): for the range's next panel, or after its
// last one for the first panel of `after`.
template <int64_t kNb_, int64_t kKb_>
PanelPrefetcher NextPanelPrefetcher(const WeightView& w, int64_t nb, int64_t k0, int64_t n_end,
                                    const FollowingWork& after) {
  const int64_t K = w.cols;
  if (k0 + kKb_ >= K && nb + kNb_ >= n_end) {
    return PanelPrefetcher(after.w != nullptr ? *after.w : w, FirstPanel(after, kNb_, kKb_));
  }
  Panel next;
  next.n0 = k0 + kKb_ < K ? nb : nb + kNb_;
  next.k0 = k0 + kKb_ < K ? k0 + kKb_ : 0;
  next.ncols = Min(kNb_, n_end - next.n0);
  next.kb = Min(kKb_, K - next.k0);
  return PanelPrefetcher(w, next);
}

// The panel loop of the float, integer and bf16 prefills (one thread's output
// columns [n_begin, n_end)): panels of kNb columns by kKb inputs, in column
// blocks, each packed once by pack(panel) and multiplied strip by strip
// against every tile of x by tile(m0, mr, s, panel), while the next panel is
// fetched from DRAM (PanelPrefetcher).
template <int64_t kNb_, int64_t kKb_, int kMr_, int kNr_, typename Pack, typename Tile>
void PanelLoop(const WeightView& w, int64_t mc, int64_t n_begin, int64_t n_end, const FollowingWork& after,
               Pack&& pack, Tile&& tile) {
  const int64_t K = w.cols;
  auto panel_at = [&](int64_t nb, int64_t k0) {
    Panel p;
    if (nb >= n_end) return p;
    p.n0 = nb;
    p.ncols = Min(kNb_, n_end - nb);
    p.k0 = k0;
    p.kb = Min(kKb_, K - k0);
    return p;
  };
  for (int64_t nb = n_begin; nb < n_end; nb += kNb_) {
    for (int64_t k0 = 0; k0 < K; k0 += kKb_) {
      const Panel panel = panel_at(nb, k0);
      pack(panel);
      PanelPrefetcher prefetcher = NextPanelPrefetcher<kNb_, kKb_>(w, nb, k0, n_end, after);
      const int64_t strips = (panel.ncols + kNr_ - 1) / kNr_;
      const int64_t calls = (mc + kMr_ - 1) / kMr_ * strips;
      const int64_t per_call = (prefetcher.TotalLines() + calls - 1) / calls;
      for (int64_t m0 = 0; m0 < mc; m0 += kMr_) {
        const int mr = static_cast<int>(Min(kMr_, mc - m0));
        for (int64_t s = 0; s * kNr_ < panel.ncols; ++s) {
          tile(m0, mr, s, panel);
          prefetcher.Issue(per_call);
        }
      }
    }
  }
}

// The driver of the integer and bf16 prefills: for each block of up to
// kMc_ rows of x, pack(rows, count, t) packs each tile t of kMr_ rows in one
// parallel region, then range(mc, y_block, n0, n1) multiplies each thread's
// share of the output columns (in steps of kNr_) in a second.
template <int64_t kMc_, int64_t kMr_, int64_t kNr_, typename Pack, typename Range>
void TiledPrefill(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool, Pack&& pack,
                  Range&& range) {
  const int64_t N = w.rows, K = w.cols;
  for (int64_t m0 = 0; m0 < M; m0 += kMc_) {
    const int64_t mc = Min(kMc_, M - m0);
    const int64_t tiles = (mc + kMr_ - 1) / kMr_;
    ParallelRange(pool, tiles, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) pack(x + (m0 + t * kMr_) * K, Min(kMr_, mc - t * kMr_), t);
    });
    ParallelRange(pool, N, kNr_, [&](int64_t n0, int64_t n1) { range(mc, y + m0 * N, n0, n1); });
  }
}

// Packs the panel as ceil(ncols / kNr) strips, each [kb][kNr] floats,
// zero-padding the columns beyond ncols. Each half of a strip holds kLanes
// weight rows, packed one kLanes x kLanes block at a time.
template <DType D>
void PackWeights(const WeightView& w, const Panel& panel, float* out) {
  const int64_t kb = panel.kb;
  for (int64_t s = 0; s * kNr < panel.ncols; ++s) {
    float* strip = out + s * kb * kNr;  // [kb, kNr]
    for (int h = 0; h < 2; ++h) {
      const int64_t first = s * kNr + h * kLanes;
      const int nrows = static_cast<int>(Clamp(panel.ncols - first, 0, kLanes));
      if (nrows == 0) {
        for (int64_t k = 0; k < kb; ++k) StoreZeros(strip + k * kNr + h * kLanes);
        continue;
      }
      for (int64_t k = 0; k < kb; k += kLanes) {
        PackBlock<D>(w, panel.n0 + first, nrows, panel.k0 + k, static_cast<int>(Min(kLanes, kb - k)),
                     strip + k * kNr + h * kLanes);
      }
    }
  }
}

// Packs `rows` rows of x (row stride K) as [K][kMr], zero-padding the rows
// beyond `rows`, so that the micro-kernel broadcasts from one sequential
// stream.
void PackX(const float* x, int64_t K, int64_t rows, float* out) {
  for (int64_t k = 0; k < K; ++k) {
    for (int i = 0; i < kMr; ++i) out[k * kMr + i] = i < rows ? x[i * K + k] : 0.f;
  }
}

// One thread's share: output columns [n_begin, n_end) for `mc` rows of x
// packed in xp ([ceil(mc / kMr)][K][kMr]).
template <DType D>
void PrefillRange(const float* xp, int64_t mc, const WeightView& w, float* y, int64_t n_begin,
                  int64_t n_end, const FollowingWork& after = {}) {
  const int64_t N = w.rows;
  const int64_t K = w.cols;
  float* packed = internal::ThreadScratch(internal::Scratch::kPanel, static_cast<size_t>(kKb) * kNb);  // [kNb / kNr][kKb][kNr]
  PanelLoop<kNb, kKb, kMr, kNr>(
      w, mc, n_begin, n_end, after, [&](const Panel& p) { PackWeights<D>(w, p, packed); },
      [&](int64_t m0, int mr, int64_t s, const Panel& p) {
        const float* xtile = xp + m0 * K + p.k0 * kMr;  // [kb][kMr]
        RunMicroKernel(mr, xtile, packed + s * p.kb * kNr, p.kb, y + m0 * N + p.n0 + s * kNr, N, p.ncols - s * kNr,
                       p.k0 > 0);
      });
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
        PackX(x + (m0 + t * kMr) * K, K, Min(kMr, mc - t * kMr), xp + t * K * kMr);
      }
    });
    ParallelRange(pool, N, kNr, [&](int64_t n0, int64_t n1) {
      PrefillRange<D>(xp, mc, w, y + m0 * N, n0, n1);
    });
  }
}

template <DType D>
void MatMulTyped(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool) {
  // The decode paths of types with group scales round x to int8; with float
  // activations requested they take the exact (prefill) path at any M.
  const bool int8_x = HasGroupScales(D) && !::epwa::kernels::FloatActivations();
  if (UsesDecode<D>(M, w.cols) && (int8_x || !HasGroupScales(D)) && !::epwa::kernels::RowInvariantMatMul()) {
    Decode<D>(x, M, w, y, pool);
  } else if (!(int8_x && PrefillInt8<D>(x, M, w, y, pool)) && !PrefillBf16<D>(x, M, w, y, pool)) {
    Prefill<D>(x, M, w, y, pool);
  }
}

void MatMul(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool) {
  switch (w.dtype) {
    case DType::kF32: return MatMulTyped<DType::kF32>(x, M, w, y, pool);
    case DType::kF16: return MatMulTyped<DType::kF16>(x, M, w, y, pool);
    case DType::kBF16: return MatMulTyped<DType::kBF16>(x, M, w, y, pool);
    case DType::kQ8: return MatMulTyped<DType::kQ8>(x, M, w, y, pool);
    case DType::kQ4: return MatMulTyped<DType::kQ4>(x, M, w, y, pool);
    case DType::kNF4: return MatMulTyped<DType::kNF4>(x, M, w, y, pool);
    case DType::kMXFP4: return MatMulTyped<DType::kMXFP4>(x, M, w, y, pool);
    // Raw checkpoint bytes: kernels.cc refuses them before dispatch.
    case DType::kU8:
    case DType::kF8E4M3: return;
  }
}

void ConvertToF32(DType dtype, const void* src, int64_t n, float* dst) {
  switch (dtype) {
    case DType::kF32: return ConvertTyped<DType::kF32>(src, n, dst);
    case DType::kF16: return ConvertTyped<DType::kF16>(src, n, dst);
    case DType::kBF16: return ConvertTyped<DType::kBF16>(src, n, dst);
    // kernels.cc rejects data with group scales before it gets here: without
    // its scales it has no float values.
    case DType::kQ8:
    case DType::kQ4:
    case DType::kNF4:
    case DType::kMXFP4:
    case DType::kU8:
    case DType::kF8E4M3: return;
  }
}

void DequantizeRow(const WeightView& w, int64_t row, float* out) {
  switch (w.dtype) {
    case DType::kQ8: return DequantizeRowTyped<DType::kQ8>(w, row, out);
    case DType::kQ4: return DequantizeRowTyped<DType::kQ4>(w, row, out);
    case DType::kNF4: return DequantizeRowTyped<DType::kNF4>(w, row, out);
    case DType::kMXFP4: return DequantizeRowTyped<DType::kMXFP4>(w, row, out);
    // kernels.cc converts float rows with ConvertToF32.
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kU8:
    case DType::kF8E4M3: return;
  }
}

void QuantizeRows(const WeightView& src, DType target, int64_t row_begin, int64_t row_end, const QuantizedOut& out) {
  switch (src.dtype) {
    case DType::kF32: return QuantizeRowsFrom<DType::kF32>(src, target, row_begin, row_end, out);
    case DType::kF16: return QuantizeRowsFrom<DType::kF16>(src, target, row_begin, row_end, out);
    case DType::kBF16: return QuantizeRowsFrom<DType::kBF16>(src, target, row_begin, row_end, out);
    // kernels.cc only passes float sources.
    case DType::kQ8:
    case DType::kQ4:
    case DType::kNF4:
    case DType::kMXFP4:
    case DType::kU8:
    case DType::kF8E4M3: return;
  }
}
