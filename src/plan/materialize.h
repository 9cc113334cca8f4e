// Puts a bound model's weights into the formats of a plan: converts or
// quantizes every matrix whose planned format differs from the stored one.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "base/thread_pool.h"
#include "model/config.h"
#include "model/weights.h"
#include "plan/memory_plan.h"

namespace epwa {

struct MaterializeStats {
  double ms = 0;
  int64_t tensors_converted = 0;
  uint64_t source_bytes = 0;  // stored bytes read and converted
  uint64_t stored_bytes = 0;  // bytes of the converted copies
  int64_t tensors_copied = 0;  // with copy_mapped: matrices copied as they are
  uint64_t copied_bytes = 0;
};

// `plan` must come from PlanTensors on ListMatrices(config, weights) (same
// order). Matrices are converted one after another, each in parallel over its
// rows on `pool`; after each, the source pages are released from the mapping
// so that peak memory is the plan's, not source + copy. A tied lm_head
// follows the embedding. `progress(done_bytes, total_bytes)` is called after
// every tensor (may be empty).
//
// With `copy_mapped` (PlanContext::copy_weights, --no-mmap), every matrix
// that would stay in a file mapping (used in place, or read from the weight
// cache) and that CopiesIntoMemory() names is copied into the process's own
// memory in the same order, and its mapped pages are released. On the
// development VM, fp16 decode read weights from process memory about 1.5x as
// fast as from the page cache (README, Speed).
MaterializeStats MaterializeWeights(const ModelConfig& config, ModelWeights& weights,
                                    const std::vector<TensorPlan>& plan, ThreadPool& pool,
                                    const std::function<void(uint64_t, uint64_t)>& progress,
                                    bool copy_mapped = false);

}  // namespace epwa
