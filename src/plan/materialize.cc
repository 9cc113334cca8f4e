#include "plan/materialize.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "base/aligned.h"
#include "base/error.h"
#include "base/mapped_regions.h"
#include "base/timer.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"

namespace epwa {
namespace {

// Float-to-float conversion of a whole matrix, parallel over rows.
void ConvertMatrix(const WeightView& src, DType target, uint8_t* dst, ThreadPool& pool) {
  const int64_t cols = src.cols;
  pool.ParallelFor(src.rows, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = begin; r < end; ++r) {
      float* out_f32 = target == DType::kF32
                           ? reinterpret_cast<float*>(dst) + r * cols
                           : row.data();
      kernels::ConvertToF32(src.dtype, src.Row(r), cols, out_f32);
      if (target == DType::kF32) continue;
      uint16_t* out16 = reinterpret_cast<uint16_t*>(dst) + r * cols;
      for (int64_t c = 0; c < cols; ++c)
        out16[c] = target == DType::kBF16 ? F32ToBF16(row[c]) : F32ToF16(row[c]);
    }
  });
}

// Maps the whole pages of [p, p + bytes) in one call (MADV_POPULATE_WRITE for
// new process memory, MADV_POPULATE_READ for a file mapping) instead of one
// page fault per 4 KiB page (or fault-around window) as a copy touches them.
// Kernels before 5.14 refuse it; the copy then faults the pages in itself.
void PopulatePages(const void* p, uint64_t bytes, bool write) {
#if defined(MADV_POPULATE_READ) && defined(MADV_POPULATE_WRITE)
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p) / page * page;
  const uintptr_t end = reinterpret_cast<uintptr_t>(p) + bytes;
  if (end > begin)
    (void)::madvise(reinterpret_cast<void*>(begin), end - begin, write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
#else
  (void)p, (void)bytes, (void)write;
#endif
}

// A copy of `bytes` mapped bytes at `src` in a new buffer of `storage`, made
// in parallel (a single thread copies from the page cache at well under the
// memory bandwidth); the source pages are then released from the mapping.
// Returns the copy; `src` itself when it is not inside a file mapping, which
// must never be released (MADV_DONTNEED would zero process memory).
const void* CopyOutOfMapping(const void* src, uint64_t bytes, ModelWeights& weights, ThreadPool& pool,
                             MaterializeStats& stats) {
  if (src == nullptr || bytes == 0 || !InRegisteredMapping(src, bytes)) return src;
  uint8_t* dst = weights.storage.emplace_back(bytes, Uninitialized{}).data();
  constexpr int64_t kChunk = int64_t{1} << 20;
  const int64_t chunks = static_cast<int64_t>((bytes + kChunk - 1) / kChunk);
  const auto* from = static_cast<const uint8_t*>(src);
  pool.ParallelFor(chunks, 1, [&](int64_t begin, int64_t end) {
    const uint64_t lo = static_cast<uint64_t>(begin * kChunk);
    const uint64_t hi = std::min<uint64_t>(bytes, static_cast<uint64_t>(end * kChunk));
    PopulatePages(dst + lo, hi - lo, /*write=*/true);
    PopulatePages(from + lo, hi - lo, /*write=*/false);
    std::memcpy(dst + lo, from + lo, hi - lo);
  });
  ReleaseMappedPages(src, bytes);
  weights.mapped_bytes -= std::min(weights.mapped_bytes, bytes);
  weights.converted_bytes += bytes;
  stats.copied_bytes += bytes;
  return dst;
}

}  // namespace

MaterializeStats MaterializeWeights(const ModelConfig& config, ModelWeights& weights,
                                    const std::vector<TensorPlan>& plan, ThreadPool& pool,
                                    const std::function<void(uint64_t, uint64_t)>& progress,
                                    bool copy_mapped) {
  Stopwatch clock;
  MaterializeStats stats;
  std::vector<MatrixSlot> slots = ListMatrices(config, weights);
  Require(slots.size() == plan.size(), "internal: the plan does not match the model's matrices");
  uint64_t total = 0, done = 0;
  const auto copies = [&](const TensorPlan& t) { return copy_mapped && (!t.InPlace() || CopiesIntoMemory(t)); };
  for (const TensorPlan& t : plan) {
    if (!t.InPlace()) total += static_cast<uint64_t>(t.rows * t.cols) * DTypeSize(t.source);
    else if (copies(t)) total += t.bytes;
  }
  for (size_t i = 0; i < slots.size(); ++i) {
    const TensorPlan& t = plan[i];
    WeightView& view = *slots[i].view;
    // Used in place, or already in its planned format from the weight
    // cache's mapping: copied (codes and scales) when asked, else left.
    if (t.InPlace() || (view.dtype == t.target && view.rows == t.rows)) {
      if (!copies(t)) continue;
      const uint64_t copied_before = stats.copied_bytes;
      view.data = CopyOutOfMapping(view.data, view.Bytes(), weights, pool, stats);
      if (view.scales_in_rows)
        view.scales = static_cast<const uint8_t*>(view.data) + view.RowBytes();  // copied with the codes
      else if (view.scales != nullptr)
        view.scales = CopyOutOfMapping(view.scales, view.ScaleBytes(), weights, pool, stats);
      if (stats.copied_bytes != copied_before) ++stats.tensors_copied;
      if (t.InPlace()) {
        done += t.bytes;
        if (progress) progress(done, total);
      }
      continue;
    }
    Require(view.rows == t.rows && view.cols == t.cols && view.dtype == t.source,
            "internal: plan entry " + t.name + " does not match the model");
    const WeightView src = view;
    // Quantized matrices keep each row's scales after its codes, so that a
    // decode kernel reads one stream per row (tensor/dtype.h).
    WeightView out = IsQuantized(t.target) ? WeightView::WithScalesInRows(t.target, nullptr, t.rows, t.cols)
                                           : WeightView{t.target, nullptr, t.rows, t.cols};
    // Pointers, not references, into `storage`: a later emplace_back may move
    // the buffers' handles (never their memory).
    uint8_t* codes = weights.storage.emplace_back(out.Bytes()).data();
    out.data = codes;
    if (IsQuantized(t.target)) {
      try {
        out = kernels::QuantizeWithScalesInRows(src, t.target, codes, pool);
      } catch (const Error& e) {
        throw Error("tensor '" + t.name + "': " + e.what());  // Quantize cannot know the name
      }
    } else {
      ConvertMatrix(src, t.target, codes, pool);
    }
    // The source's pages are dropped either way: from the file mapping, or
    // (an FP8 checkpoint's float32 copy made by BindWeights) from process
    // memory that nothing reads again. Each is counted where it was.
    uint64_t& source_count = InRegisteredMapping(src.data, src.Bytes()) ? weights.mapped_bytes : weights.converted_bytes;
    source_count -= std::min<uint64_t>(source_count, src.Bytes());
    ReleaseMappedPages(src.data, src.Bytes());
    view = out;
    ++stats.tensors_converted;
    stats.source_bytes += src.Bytes();
    stats.stored_bytes += out.Bytes() + out.ScaleBytes();
    weights.converted_bytes += out.Bytes() + out.ScaleBytes();
    done += src.Bytes();
    if (progress) progress(done, total);
  }
  if (config.tie_word_embeddings) weights.lm_head = weights.embed;
  stats.ms = clock.Millis();
  return stats;
}

}  // namespace epwa
