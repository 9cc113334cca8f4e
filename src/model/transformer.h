// The transformer forward pass shared by every supported architecture.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <span>
#include <utility>
#include <vector>

#include "base/aligned.h"
#include "base/thread_pool.h"
#include "kernels/kernels.h"
#include "model/config.h"
#include "model/routing.h"
#include "model/weights.h"

namespace epwa {

// Keys and values of every layer for positions [0, capacity), as F32 (the
// default), F16 or BF16 elements (--kv-cache): a 16-bit cache halves its
// memory and the bytes attention reads per token, at the cost of rounding
// each key and value (README, "KV cache"). For multi-head latent attention
// (DeepSeek) the "key" of a position is its normalised latent and its
// rotated shared key [kv_lora_rank + rope], and there is no value: the cache
// is that compressed form, not per-head keys and values
// (config.CacheKeyDim / CacheValueDim).
class KVCache {
 public:
  KVCache(const ModelConfig& config, int64_t capacity, DType dtype = DType::kF32);
  // Bytes a cache of `capacity` positions allocates (the memory planner's KV term).
  static uint64_t BytesFor(const ModelConfig& config, int64_t capacity, DType dtype = DType::kF32);
  int64_t capacity() const { return capacity_; }
  DType dtype() const { return dtype_; }
  size_t Bytes() const { return keys_.size() + values_.size(); }
  // Elements of one position's key / value row (all heads).
  int64_t key_dim() const { return key_dim_; }
  int64_t value_dim() const { return value_dim_; }
  // Row stride, in elements, of KeyRow / ValueRow: one head's positions are
  // consecutive, so the row of position pos + 1 lies this far past that of
  // pos for the same head (the head's dims; the whole row with one head).
  int64_t key_stride() const { return key_head_dim_; }
  int64_t value_stride() const { return value_head_dim_; }
  // Stores [CacheKeyDim] / [CacheValueDim] floats, rounded to dtype(), for
  // one layer and position.
  void StoreKey(int64_t layer, int64_t pos, const float* key);
  void StoreValue(int64_t layer, int64_t pos, const float* value);
  // The stored row of one layer and position from element `column` on, of
  // dtype() elements, up to the end of column's head.
  const void* KeyRow(int64_t layer, int64_t pos, int64_t column = 0) const {
    return keys_.data() + Offset(layer, pos, column, key_head_dim_);
  }
  const void* ValueRow(int64_t layer, int64_t pos, int64_t column = 0) const {
    return values_.data() + Offset(layer, pos, column, value_head_dim_);
  }

 private:
  // Head-major within a layer, [layers, heads, capacity, head_dim]: a decode
  // step's attention reads each head's positions as one sequential stream.
  // Position-major rows put one head's consecutive positions a whole row
  // (8 KiB for OLMoE in f32) apart, each in another 4 KiB page where the
  // hardware prefetchers stop: kernels_bench AttentionDecode (f32 cache,
  // 2048 positions, 2 threads) read about 25 GB/s that way and 30-38
  // head-major with the kernels' prefetch.
  size_t Offset(int64_t layer, int64_t pos, int64_t column, int64_t head_dim) const {
    const int64_t head = column / head_dim, within = column % head_dim;
    return static_cast<size_t>(((layer * heads_ + head) * capacity_ + pos) * head_dim + within) * element_bytes_;
  }
  int64_t capacity_;
  int64_t key_dim_, value_dim_;
  int64_t heads_;  // key/value heads; 1 for latent attention, whose row is one compressed vector
  int64_t key_head_dim_, value_head_dim_;
  DType dtype_;
  size_t element_bytes_;
  // Zero until stored, but resident only where stored (ZeroedBytes).
  ZeroedBytes keys_;    // [layers, heads, capacity, key_dim / heads] elements of dtype_
  ZeroedBytes values_;  // [layers, heads, capacity, value_dim / heads]
};

// The KV cache element type a --kv-cache / EPW_KV_CACHE value names: "f32",
// "f16" or "bf16" (case-insensitive). Throws epwa::Error naming the choices.
DType ParseKvCacheType(const std::string& name);
// "f32", "f16" or "bf16".
const char* KvCacheTypeName(DType dtype);

// Top-k routing of one token by the router kind (ties: lower index first).
// kSoftmaxTopK: softmax over all router logits, the k most probable experts,
// weights renormalised to sum 1 when `renormalize`. kTopKSoftmax: the k
// largest logits, weights a softmax over those k. kSparseMixer (top_k 2):
// the largest logit's expert, weighted by its softmax over the logits within
// 2 * `jitter` (relative) of it, then the same for the runner-up with the
// first excluded; the two weights are not renormalised. Exposed for tests
// and tools.
void RouteToken(RouterKind kind, const float* router_logits, int64_t num_experts, int64_t top_k,
                bool renormalize, int32_t* experts, float* weights, float jitter = 0.01f);
// Routing by every field of the config's router kind, for the forward pass.
// The group kinds (DeepSeek) need the config's groups and scaling factor, and
// kGroupSigmoid the layer's correction bias [num_experts]. Experts come in
// selection order: descending weight, except kGroupSigmoid, whose order is
// that of the biased scores it selects by.
void RouteToken(const ModelConfig& config, const float* router_logits, const float* correction_bias,
                int32_t* experts, float* weights);

// True when none of the n values is NaN or infinite. Tests the exponent bits
// rather than calling std::isfinite so that the loop vectorizes: it runs on
// every step's logits.
bool AllFinite(const float* values, size_t n);

// Which rows of a batch segment get logits: none (a prompt chunk that is not
// the prompt's last), the last row (decode, or the end of a prompt), or every
// row (scoring).
enum class LogitRows { kNone, kLast, kAll };

// One sequence's share of a batched forward pass: `tokens` at positions
// [start_pos, start_pos + tokens.size()) of the sequence whose keys and values
// live in `cache`. Each segment of one call must have its own cache.
struct BatchSegment {
  std::span<const int32_t> tokens;
  int64_t start_pos = 0;
  KVCache* cache = nullptr;
  LogitRows logits = LogitRows::kLast;
  // When non-null, reset to cover this segment's tokens and filled with
  // their routing (its first_position() is start_pos).
  RoutingTrace* trace = nullptr;
};

// How many logit rows `s` asks for.
inline int64_t LogitRowCount(const BatchSegment& s) {
  const int64_t n = static_cast<int64_t>(s.tokens.size());
  return s.logits == LogitRows::kAll ? n : s.logits == LogitRows::kLast ? 1 : 0;
}

class Transformer {
 public:
  Transformer(ModelConfig config, ModelWeights weights, ThreadPool& pool);

  // Bytes of scratch (activations, attention scores, routing buffers, the
  // logits and the routing trace) one Forward call of `tokens` tokens with a
  // cache of `capacity` allocates on `threads` threads; the memory planner's
  // scratch term. Mirrors the Grow calls in Forward/Attention/FeedForward;
  // transformer_test keeps the two in step through ScratchBytesInUse().
  static uint64_t ScratchBytes(const ModelConfig& config, int64_t tokens, int64_t capacity,
                               int threads, bool all_logits);
  // The same for one ForwardBatch call of `rows` rows in all, split into
  // `segments` segments whose caches hold at most `capacity` positions, with
  // `logit_rows` rows of logits. ScratchBytes is the one-segment case.
  static uint64_t BatchScratchBytes(const ModelConfig& config, int64_t rows, int64_t capacity,
                                    int threads, int64_t logit_rows, int64_t segments);
  // Bytes the scratch vectors hold now (for that test).
  uint64_t ScratchBytesInUse() const;

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }

  // Runs `tokens` at positions [start_pos, start_pos + T), reading earlier
  // positions from `cache` and appending these. Prefill passes the whole
  // prompt at once (matrix-matrix products); decode passes one token.
  //   logits: [T, vocab] when all_logits, else [1, vocab] for the last token.
  //   trace: when non-null, receives the routing of every token and MoE layer.
  // Throws epwa::Error for token ids outside the vocabulary or positions past
  // the cache capacity.
  // The one-segment case of ForwardBatch.
  void Forward(std::span<const int32_t> tokens, int64_t start_pos, KVCache& cache,
               bool all_logits, std::vector<float>* logits, RoutingTrace* trace);

  // Runs the rows of several sequences in one pass: embeddings, norms, the
  // q/k/v/o projections, the routers and every expert run once over all rows
  // (rows routed to one expert are gathered across sequences, so each expert's
  // weights stream once per call), while attention reads each row's own
  // cache with its own causal mask and rotary frequencies (dynamic NTK
  // scaling uses each sequence's own length, as a separate call would).
  //   logits: [sum of LogitRowCount(segment), vocab], segments in order.
  // A row's result does not depend on the other segments except through
  // the float rounding of matrix products whose row count changes (see
  // kernels::MatMul: the decode path below 9 rows, blocked GEMM above).
  // Throws epwa::Error for an empty segment, a missing or shared cache, token
  // ids outside the vocabulary or positions past a cache's capacity.
  //
  // With route_through_moe_slot >= 0 (an index into ModelConfig::MoeLayers),
  // the pass stops as soon as that MoE layer's router has chosen: its
  // experts and every later layer are skipped, the traces' later MoE layers
  // keep Reset's zeros, and the caches hold that layer and the ones before
  // it only, so they must not be used again. Detection of the router-keyed
  // watermarks needs one layer's choices and nothing after it; on a
  // 16-layer model keyed by its first MoE layer that is a sixteenth of the
  // work. Every segment must ask for no logits.
  void ForwardBatch(std::span<const BatchSegment> segments, std::vector<float>* logits,
                    int64_t route_through_moe_slot = -1);

  // The failure path of a non-finite (NaN or infinite) output: runs `tokens`
  // again from position 0 with every intermediate result checked, and
  // returns where the first non-finite value appears, e.g. "layer 2, expert
  // 5's w1 (model.layers.2.block_sparse_moe.experts.5.w1.weight)"; empty if
  // this pass finds none.
  std::string LocateNonFinite(std::span<const int32_t> tokens);

 private:
  // While LocateNonFinite runs: records `stage` as the culprit when the first
  // n values at `values` are not all finite and no earlier stage was.
  void CheckStage(const float* values, int64_t n, const std::function<std::string()>& stage);

  void Attention(int64_t layer, int64_t T, std::span<const BatchSegment> segments);
  // route_only: choose and record the experts, and stop there.
  void FeedForward(int64_t layer, int64_t T, std::span<const BatchSegment> segments,
                   int64_t moe_slot, bool route_only = false);
  // `name(which)` names the expert's tensor `which` (w1, w3, w2) for
  // LocateNonFinite's messages.
  void ExpertForward(const ExpertWeights& e, int64_t rows,
                     const std::function<std::string(const char*)>& name);
  // The activation of config_ (SwiGLU or clamped SwiGLU): gate[i] becomes
  // act(gate[i]) * up[i] for n values.
  void Activate(float* gate, const float* up, int64_t n) const;
  // Rotates `num_heads` head vectors at `vec` by one row's rotation
  // `cos_sin` ([2, head_dim / 2]: the cosines, then the sines, of a row of
  // rope_cos_sin_). Heads are `stride` floats apart; the first head_dim of
  // each rotate.
  void ApplyRope(float* vec, int64_t num_heads, int64_t stride, const float* cos_sin) const;
  // The rotation of row t of the current call in rope_cos_sin_.
  const float* RopeRow(int64_t t) const { return rope_cos_sin_.data() + t * config_.head_dim; }
  // Multi-head latent attention (AttentionKind::kLatent), absorbed form: the
  // key rows of kv_b_proj are folded into each query and its value rows into
  // each output, so attention runs on the cached latents directly.
  void LatentAttention(int64_t layer, int64_t T, std::span<const BatchSegment> segments);
  // The config's norm kind over one row of d_model values; out may alias x.
  void Norm(const float* x, const std::vector<float>& weight, const std::vector<float>& bias,
            float* out) const;
  // q_/k_ normalised in place by the config's q/k norm kind.
  void NormalizeQk(const LayerWeights& lw, int64_t T);
  // x_ += branch * residual_multiplier over n values.
  void AddResidual(const float* branch, int64_t n);

  ModelConfig config_;
  ModelWeights weights_;
  ThreadPool& pool_;
  // Rotary inverse frequencies of the current call: [segments, head_dim / 2]
  // under dynamic NTK scaling (they depend on each sequence's length), else
  // one row [head_dim / 2] computed once and shared.
  std::vector<double> inv_freq_;
  bool inv_freq_per_segment_ = false;
  // cos/sin amplitude of each segment's call (longrope's depends on the length).
  std::vector<double> rope_amplitude_;  // [segments]
  // Each row's rotary cosines and sines (times its amplitude), the same in
  // every layer: [T, 2, head_dim / 2].
  HugePageVector<float> rope_cos_sin_;
  std::vector<int32_t> moe_layers_;  // model layer index of each MoE layer
  std::vector<int64_t> moe_slot_;    // [num_layers]: index into moe_layers_, -1 for dense
  // Set only during LocateNonFinite.
  bool checking_ = false;
  std::string first_non_finite_;

  // Scratch, grown on demand and reused across calls so decode allocates nothing.
  HugePageVector<float> x_;      // [T, d_model] residual stream
  HugePageVector<float> xn_;     // [T, d_model] normalised input of a block
  HugePageVector<float> q_;      // [T, q_dim]
  HugePageVector<float> k_;      // [T, kv_dim]
  HugePageVector<float> v_;      // [T, kv_dim]
  HugePageVector<float> att_;    // [T, q_dim]
  HugePageVector<float> proj_;   // [T, d_model]
  HugePageVector<float> qa_;     // [T, q_lora_rank] (MLA with a low-rank query)
  HugePageVector<float> router_logits_;  // [T, n_experts]
  HugePageVector<float> ffn_in_;    // [rows, d_model] tokens routed to one expert
  HugePageVector<float> ffn_gate_;  // [rows, d_ff]
  HugePageVector<float> ffn_up_;    // [rows, d_ff]
  HugePageVector<float> ffn_out_;   // [rows, d_model]
  std::vector<float> scores_;    // per thread: an attention item's scratch (kernels::AttentionBlockScratchFloats)
  // [threads, 2 * queries per item]: an attention item's query rows, then
  // its output rows (Attention).
  std::vector<const float*> attention_slots_;
  std::vector<int64_t> attention_ranges_;  // [threads, 2 * queries per item]: each query's keys [begin, end)
  std::vector<float> attention_sinks_;     // [threads, queries per item]
  std::vector<std::pair<int64_t, int64_t>> attention_row_blocks_;  // (first row, rows) per item row block
  std::vector<int32_t> token_experts_;  // [T, top_k] chosen experts per token
  std::vector<float> token_weights_;    // [T, top_k] their mixing weights
  HugePageVector<float> moe_out_;          // [T, d_model] weighted sum of expert outputs
  std::vector<int64_t> rows_token_;     // tokens routed to the expert in progress
  std::vector<float> rows_weight_;      // and their weights
  // The fused expert path (few tokens: decode): every routed row at once,
  // experts in order. [T * top_k] rows of each.
  std::vector<int64_t> fused_token_;
  std::vector<float> fused_weight_;
  HugePageVector<float> fused_in_;    // [T * top_k, d_model]
  HugePageVector<float> fused_gate_;  // [T * top_k, d_ff]
  HugePageVector<float> fused_up_;    // [T * top_k, d_ff]
  HugePageVector<float> fused_out_;   // [T * top_k, d_model]
  // The experts a fused pass uses (their first row and row count in the
  // buffers above) and its products; kept, like the buffers, so that a
  // decode step allocates nothing. At most n_experts entries each.
  struct FusedUse {
    int64_t expert, first, rows;
  };
  std::vector<FusedUse> fused_uses_;
  std::vector<kernels::MatMulJob> fused_jobs_;
  // Where RunExpertUses gathers, multiplies and activates: [rows, d_model]
  // in and out, [rows, d_ff] gate and up.
  struct ExpertBuffers {
    float *in, *gate, *up, *out;
  };
  // The rows of every use (rows [first, first + rows) of the buffers go to
  // expert `expert`; token[r] and weight[r] say whose row r is and its
  // mixing weight): gathers the tokens' rows of xn_, runs gate and up of
  // every expert in one MatMulMany, the activation, every down in another,
  // and adds each row's weighted output to its token's row of moe_out.
  // Each product is MatMul's and the sums come in row order, so the result
  // is the expert-by-expert loop's to the bit.
  // Appends the rows routed to experts [e_begin, e_end) (experts and mix:
  // [T, K] per token), experts in order and each expert's rows in token
  // order: the token and mixing weight of each row, and one use per expert
  // that has rows, its first row counted from the start of `token`.
  static void CollectRoutedRows(std::span<const int32_t> experts, std::span<const float> mix, int64_t K,
                                int64_t e_begin, int64_t e_end, std::vector<int64_t>& token,
                                std::vector<float>& weight, std::vector<FusedUse>& uses);
  void RunExpertUses(const LayerWeights& lw, std::span<const FusedUse> uses, std::span<const int64_t> token,
                     std::span<const float> weight, const ExpertBuffers& buffers, float* moe_out);
  std::vector<int64_t> expert_rows_;  // [n_experts] rows routed to each expert (the grouped prefill)
  // Per row of the current call: its absolute position and its segment.
  std::vector<int64_t> row_pos_;  // [T]
  std::vector<int32_t> row_seg_;  // [T]
  std::vector<int64_t> seg_first_;   // [segments + 1]: first row of each segment
  std::vector<int64_t> logit_rows_;  // [logit rows]: rows that get logits
};

}  // namespace epwa
