// Exact memory plans: which format every weight matrix is stored in at a
// quantization level, and the bytes a run needs, term by term.
//
//   required = runtime overhead + margin
//              + max(weights not used in place + load transient,
//                    weights + KV cache + compute scratch)
//
// Every term is computed from the checkpoint's headers and the engine's own
// sizing code, not from multipliers: weights from each tensor's shape and its
// planned format (alignment included, tied weights once), the KV cache and
// scratch from the functions that size the real buffers (KVCache,
// Transformer::ScratchBytes, kernels::MatMulScratchBytes).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/weights.h"
#include "plan/quant_level.h"
#include "tensor/dtype.h"

namespace epwa {

// The 4-bit format the int4 level uses (chosen on measured error and speed;
// see docs/quantization.md).
inline constexpr DType kInt4Format = DType::kQ4;

enum class MatrixRole { kEmbedding, kLmHead, kAttention, kExpert, kDenseMlp };
const char* MatrixRoleName(MatrixRole role);

// One weight matrix of a bound model, and where its view lives.
struct MatrixSlot {
  std::string name;
  MatrixRole role;
  int64_t layer = -1;  // -1 for the embedding and lm_head
  WeightView* view = nullptr;
};
// Every distinct matrix of `weights` (a tied lm_head is not listed: it aliases
// the embedding), in checkpoint order.
std::vector<MatrixSlot> ListMatrices(const ModelConfig& config, ModelWeights& weights);

// A matrix's planned storage.
struct TensorPlan {
  std::string name;
  MatrixRole role;
  int64_t layer = -1;
  int64_t rows = 0, cols = 0;
  DType source = DType::kF32;
  DType target = DType::kF32;
  uint64_t bytes = 0;  // resident bytes in the target format
  bool InPlace() const { return source == target; }
};

// Bytes a converted matrix occupies: codes and scales in 64-byte aligned
// buffers (AlignedBuffer rounds each up to 64 bytes).
uint64_t StoredBytes(DType dtype, int64_t rows, int64_t cols);

// The per-matrix policy of a level. The MoE router and every 1-D tensor are
// never in this list: they are always float32 (the watermark depends on
// routing). An untied embedding always stays in its stored dtype, in place
// (it is read one row per token and converted then; at most `ctx` rows
// become resident). The lm_head (and a tied embedding, which is the lm_head):
// float32 at `none`, 16-bit at every other level (it decides every token;
// quantizing it saves little and costs quality). Matrices whose input width
// is not a multiple of 32 stay 16-bit at int levels. For kMixed,
// `int8_matrices` names the matrices raised from 4 to 8 bits.
std::vector<TensorPlan> PlanTensors(const std::vector<MatrixSlot>& matrices, QuantLevel level,
                                    int64_t ctx, const std::vector<bool>& int8_matrices = {});

enum class Device { kCpu, kCuda };
const char* DeviceName(Device device);

struct PlanContext {
  Device device = Device::kCpu;
  int64_t ctx = 0;          // tokens of context (prompt + generated) per sequence
  int parallel = 1;         // sequences generated together, each with a KV cache of ctx
  int64_t batch_tokens = 0; // rows of the largest forward pass; 0 = ctx (a whole prompt)
  int threads = 1;
  uint64_t runtime_bytes = 0;  // process baseline: binary, libraries, tokenizer, config
  uint64_t vector_bytes = 0;   // float32 copies of norms, biases and routers
  // At the int levels (int8, int4, mixed), store an untied lm_head as Q8
  // instead of 16-bit (--int8-lm-head): on large vocabularies it is the
  // largest matrix a decode step reads. A tied embedding stays 16-bit: its
  // rows are also read one at a time as embeddings.
  bool int8_lm_head = false;
  // Copy the matrices a plan would use in place from the file mapping into
  // the process's own memory at load (--no-mmap; see CopiesIntoMemory).
  // They are then resident from the end of loading, and each one's source
  // pages are resident beside the copies made so far while it is copied.
  bool copy_weights = false;
  // Element type of the KV caches (--kv-cache): F32, F16 or BF16.
  DType kv_cache = DType::kF32;
};

// Whether a matrix used in place is copied into process memory under
// PlanContext::copy_weights: every one but an untied embedding, which is read
// one row per token and gains nothing from a copy of all its rows.
bool CopiesIntoMemory(const TensorPlan& t);

struct LevelPlan {
  QuantLevel level = QuantLevel::kNone;
  std::vector<TensorPlan> tensors;
  uint64_t weights_bytes = 0;    // matrices in their planned formats + float32 vectors
  uint64_t kv_bytes = 0;         // KV caches: parallel x ctx tokens
  uint64_t scratch_bytes = 0;    // activations, logits, routing trace, kernel scratch
  uint64_t transient_bytes = 0;  // extra at the load peak: a source being converted beside the copies so far
  uint64_t runtime_bytes = 0;    // process baseline (+ CUDA context on a GPU)
  uint64_t margin_bytes = 0;
  int64_t raised_to_int8 = 0;    // kMixed: matrices kept at 8 bits
  uint64_t in_place_bytes = 0;   // part of weights_bytes used in place from the mapping
  // What the process is expected to peak at, and that plus the safety margin.
  // The peak is the larger of two moments: the end of loading (converted
  // weights plus the transient; weights used in place have not been touched
  // yet) and the run (all weights, KV cache and scratch, which are allocated
  // after loading).
  uint64_t ExpectedBytes() const {
    const uint64_t at_load = weights_bytes - in_place_bytes + transient_bytes;
    const uint64_t at_run = weights_bytes + kv_bytes + scratch_bytes;
    return runtime_bytes + std::max(at_load, at_run);
  }
  uint64_t RequiredBytes() const { return ExpectedBytes() + margin_bytes; }
};

// The plan of one concrete level (not kAuto). For kMixed, `budget_bytes` is
// the memory the plan must fit: it starts from int4 and raises the most
// routing-sensitive matrices (attention, then the first and last layers'
// experts, then the rest in layer order) to int8 while RequiredBytes() fits.
LevelPlan PlanLevel(const ModelConfig& config, const std::vector<MatrixSlot>& matrices,
                    QuantLevel level, const PlanContext& context, uint64_t budget_bytes);

// Rows of the largest forward pass a context plans for: the batch budget
// (a whole prompt of ctx tokens by default), or one decode row per sequence
// when there are more sequences than that.
int64_t PlannedBatchRows(const PlanContext& context);

// The plans of every concrete level, the level `auto` picks (the least lossy
// that fits; for a 16-bit checkpoint fp16 comes before none, since both are
// exact and fp16 needs half the memory), and what would fit when nothing does
// (a shorter --ctx, or fewer --parallel sequences).
struct PlanReport {
  std::vector<LevelPlan> levels;  // in ConcreteLevels() order
  int chosen = -1;                // index into levels; -1 when nothing fits
  uint64_t budget_bytes = 0;
  std::string advice;             // when nothing fits: what would (one paragraph)
};
PlanReport PlanAllLevels(const ModelConfig& config, const std::vector<MatrixSlot>& matrices,
                         const PlanContext& context, uint64_t budget_bytes);

// The plan for a requested level: kAuto picks as PlanAllLevels does. Throws
// epwa::Error with the "what would fit" advice when the level does not fit.
LevelPlan ChooseLevel(const ModelConfig& config, const std::vector<MatrixSlot>& matrices,
                      QuantLevel requested, const PlanContext& context, uint64_t budget_bytes);

// "1.23 GiB" / "456.0 MiB" / "789 KiB".
std::string FormatBytes(uint64_t bytes);

}  // namespace epwa
