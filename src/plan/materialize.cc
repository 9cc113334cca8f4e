#include "plan/materialize.h"

#include "base/error.h"
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

}  // namespace

MaterializeStats MaterializeWeights(const ModelConfig& config, ModelWeights& weights,
                                    const std::vector<TensorPlan>& plan, ThreadPool& pool,
                                    const std::function<void(uint64_t, uint64_t)>& progress) {
  Stopwatch clock;
  MaterializeStats stats;
  std::vector<MatrixSlot> slots = ListMatrices(config, weights);
  Require(slots.size() == plan.size(), "internal: the plan does not match the model's matrices");
  uint64_t total = 0, done = 0;
  for (const TensorPlan& t : plan)
    if (!t.InPlace()) total += static_cast<uint64_t>(t.rows * t.cols) * DTypeSize(t.source);
  for (size_t i = 0; i < slots.size(); ++i) {
    const TensorPlan& t = plan[i];
    WeightView& view = *slots[i].view;
    if (t.InPlace() || (view.dtype == t.target && view.rows == t.rows)) continue;  // or from the cache
    Require(view.rows == t.rows && view.cols == t.cols && view.dtype == t.source,
            "internal: plan entry " + t.name + " does not match the model");
    const WeightView src = view;
    WeightView out{t.target, nullptr, t.rows, t.cols};
    // Pointers, not references, into `storage`: a later emplace_back may move
    // the buffers' handles (never their memory).
    uint8_t* codes = weights.storage.emplace_back(out.Bytes()).data();
    out.data = codes;
    if (IsQuantized(t.target)) {
      auto* scales = reinterpret_cast<uint16_t*>(weights.storage.emplace_back(out.ScaleBytes()).data());
      out.scales = scales;
      try {
        kernels::Quantize(src, t.target, codes, scales, pool);
      } catch (const Error& e) {
        throw Error("tensor '" + t.name + "': " + e.what());  // Quantize cannot know the name
      }
    } else {
      ConvertMatrix(src, t.target, codes, pool);
    }
    ReleaseMappedPages(src.data, src.Bytes());
    view = out;
    ++stats.tensors_converted;
    stats.source_bytes += src.Bytes();
    stats.stored_bytes += out.Bytes() + out.ScaleBytes();
    weights.mapped_bytes -= src.Bytes();
    weights.converted_bytes += out.Bytes() + out.ScaleBytes();
    done += src.Bytes();
    if (progress) progress(done, total);
  }
  if (config.tie_word_embeddings) weights.lm_head = weights.embed;
  stats.ms = clock.Millis();
  return stats;
}

}  // namespace epwa
