#include "model/transformer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>

#include "base/error.h"
#include "kernels/kernels.h"

namespace epwa {
namespace {

template <typename T, typename A>
void Grow(std::vector<T, A>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

void AddBias(float* rows, const std::vector<float>& bias, int64_t T) {
  if (bias.empty()) return;
  const int64_t n = static_cast<int64_t>(bias.size());
  for (int64_t t = 0; t < T; ++t) kernels::Axpy(1.0f, bias.data(), rows + t * n, n);
}

}  // namespace

bool AllFinite(const float* values, size_t n) {
  // A float is NaN or infinite exactly when its exponent bits are all ones.
  // GCC's -O2 does not vectorize the plain loop (7 us for 4096 logits,
  // ~2% of a tiny model's decode step); the vector extension below compiles
  // to SSE2/NEON on any x86-64 or ARM64 build and takes 0.25 us.
  constexpr uint32_t kExponent = 0x7f800000u;
  typedef uint32_t U4 __attribute__((vector_size(16)));
  const U4 mask = {kExponent, kExponent, kExponent, kExponent};
  U4 bad0 = {0, 0, 0, 0}, bad1 = bad0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    U4 a, b;
    std::memcpy(&a, values + i, sizeof(a));
    std::memcpy(&b, values + i + 4, sizeof(b));
    bad0 |= (U4)((a & mask) == mask);
    bad1 |= (U4)((b & mask) == mask);
  }
  const U4 bad = bad0 | bad1;
  uint32_t any = bad[0] | bad[1] | bad[2] | bad[3];
  for (; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, values + i, sizeof(bits));
    any |= static_cast<uint32_t>((bits & kExponent) == kExponent);
  }
  return any == 0;
}

uint64_t KVCache::BytesFor(const ModelConfig& config, int64_t capacity, DType dtype) {
  return static_cast<uint64_t>(config.num_layers * capacity *
                               (config.CacheKeyDim() + config.CacheValueDim())) *
         DTypeSize(dtype);
}

DType ParseKvCacheType(const std::string& name) {
  std::string lower;
  for (char c : name) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower == "f32" || lower == "float32") return DType::kF32;
  if (lower == "f16" || lower == "float16") return DType::kF16;
  if (lower == "bf16" || lower == "bfloat16") return DType::kBF16;
  throw Error("unknown KV cache type '" + name + "': use f32 (default), f16 or bf16");
}

const char* KvCacheTypeName(DType dtype) {
  return dtype == DType::kF16 ? "f16" : dtype == DType::kBF16 ? "bf16" : "f32";
}

uint64_t Transformer::ScratchBytes(const ModelConfig& c, int64_t T, int64_t capacity, int threads,
                                   bool all_logits) {
  return BatchScratchBytes(c, T, capacity, threads, all_logits ? T : 1, 1);
}

namespace {

// Queries one attention work item takes at most in a prompt: rows of one
// sequence times the query heads of a key/value head (see Attention).
constexpr int64_t kAttentionQueries = 16;

int64_t AttentionRowsPerItem(int64_t group) { return std::max<int64_t>(1, kAttentionQueries / group); }

// Up to this many rows per forward, an MoE layer runs its routed experts
// through MatMulMany: gate and up of every chosen expert in one parallel
// region, then every down in another, instead of three regions per expert.
constexpr int64_t kFusedExpertTokens = 8;

// Whether a model's MoE layers may take that path: MXFP4's interleaved
// gate/up layout (with its biases) keeps the expert-by-expert path.
bool FusesExperts(const ModelConfig& c) { return c.expert_layout != ExpertLayout::kMxfp4Interleaved; }

// Beyond kFusedExpertTokens rows (prefill), the experts run in groups
// through MatMulMany, two parallel regions per group instead of six per
// expert: a 128-token prompt on a 64-expert top-8 model gives each expert
// about 16 rows, where the regions' start and finish cost a fifth of the
// products. A group's rows, each expert's rounded up to a register tile of
// 8, stay within this bound, so that the group's packed x fits the scratch
// MatMulScratchBytes accounts for, and within the call's rows, so that they
// fit the ffn_ buffers the expert-by-expert path uses.
constexpr int64_t kGroupedExpertRows = 256;

}  // namespace

namespace {

// The most queries a work item of Attention takes for a pass of T rows: rows
// of one sequence times the query heads sharing a key/value head.
uint64_t AttentionQueriesBound(const ModelConfig& c, int64_t T) {
  const int64_t group = c.QueryHeadsPerKvHead();
  return static_cast<uint64_t>(std::min(std::max<int64_t>(T, 1), AttentionRowsPerItem(group)) * group);
}

}  // namespace

uint64_t Transformer::BatchScratchBytes(const ModelConfig& c, int64_t T, int64_t capacity,
                                        int threads, int64_t logit_rows, int64_t segments) {
  const uint64_t D = c.hidden_size, F = c.MaxFf(), E = c.num_experts, K = c.num_experts_per_tok;
  const uint64_t t = static_cast<uint64_t>(T);
  const uint64_t s = static_cast<uint64_t>(std::max<int64_t>(segments, 1));
  // One [rows, width] float array in huge pages (HugePageVector), as its
  // allocator reserves it: whole 2 MiB pages from 2 MiB on.
  auto huge = [](uint64_t rows, uint64_t width) { return HugePageBytes(rows * width * sizeof(float)); };
  // Interleaved gate/up experts multiply into ffn_gate_ at twice the width.
  const uint64_t gate_width = c.expert_layout == ExpertLayout::kMxfp4Interleaved && c.IsMoe() ? 2 * F : F;
  uint64_t bytes = 3 * huge(t, D)                           // x_, xn_, proj_
                   + huge(t, c.QDim()) + huge(t, c.AttnOutDim())  // q_, att_
                   + 2 * huge(t, D) + huge(t, gate_width) + huge(t, F);  // ffn_in_, ffn_out_, ffn_gate_, ffn_up_
  uint64_t floats = 0;
  if (c.Latent()) {
    // k_ holds the latents and rotary keys; qa_ the low-rank queries; each
    // thread's scores_ row is followed by its rotary products, absorbed query
    // and latent context.
    bytes += huge(t, c.CacheKeyDim()) + huge(t, c.q_lora_rank);
    floats += static_cast<uint64_t>(threads) * (capacity + 2 * c.kv_lora_rank);
  } else {
    bytes += 2 * huge(t, c.KvDim());  // k_, v_
    // scores_: each thread's attention block scratch.
    floats += static_cast<uint64_t>(threads) *
              kernels::AttentionBlockScratchFloats(static_cast<int64_t>(AttentionQueriesBound(c, T)), capacity,
                                                   c.head_dim);
  }
  bytes += floats * sizeof(float);
  // attention_slots_: a query and an output pointer per query of an item;
  // attention_ranges_ and attention_sinks_: its key range and sink;
  // attention_row_blocks_: at most one block per row.
  bytes += static_cast<uint64_t>(threads) * AttentionQueriesBound(c, T) *
               (2 * sizeof(float*) + 2 * sizeof(int64_t) + sizeof(float)) +
           t * sizeof(std::pair<int64_t, int64_t>);
  bytes += static_cast<uint64_t>(logit_rows) * c.vocab_size * sizeof(float);  // logits
  // inv_freq_: one row per segment under dynamic NTK scaling, else one.
  const uint64_t freq_rows = c.rope_scaling.DependsOnLength() ? s : 1;
  bytes += freq_rows * static_cast<uint64_t>(c.head_dim / 2) * sizeof(double);
  bytes += s * sizeof(double);  // rope_amplitude_
  bytes += huge(t, static_cast<uint64_t>(c.head_dim));  // rope_cos_sin_
  // row_pos_, row_seg_, seg_first_, logit_rows_.
  bytes += t * (sizeof(int64_t) + sizeof(int32_t)) + (s + 1) * sizeof(int64_t) +
           static_cast<uint64_t>(logit_rows) * sizeof(int64_t);
  if (c.IsMoe()) {
    bytes += huge(t, E)                                                // router_logits_
             + t * K * (sizeof(int32_t) + sizeof(float))               // token_experts_/weights_
             + huge(t, D)                                              // moe_out_
             + t * (sizeof(int64_t) + sizeof(float))                   // rows_token_/weight_
             + E * sizeof(int64_t);                                     // expert_rows_
    // The routing traces: router logits, experts and weights per row and MoE layer.
    bytes += t * static_cast<uint64_t>(c.NumMoeLayers()) *
             (E * sizeof(float) + K * (sizeof(int32_t) + sizeof(float)));
    // The fused expert path's buffers, for up to kFusedExpertTokens rows.
    if (FusesExperts(c)) {
      const uint64_t routed = std::min<uint64_t>(t, kFusedExpertTokens) * K;
      bytes += 2 * huge(routed, D) + 2 * huge(routed, F)        // fused_in_, fused_out_, fused_gate_, fused_up_
               + routed * (sizeof(int64_t) + sizeof(float));  // fused_token_, fused_weight_
    }
  }
  return bytes;
}

uint64_t Transformer::ScratchBytesInUse() const {
  // What each array's allocator holds: its capacity, in whole huge pages for
  // the large HugePageVectors.
  auto b = []<typename V>(const V& v) {
    const uint64_t bytes = static_cast<uint64_t>(v.capacity() * sizeof(typename V::value_type));
    if constexpr (std::is_same_v<typename V::allocator_type, HugePageAllocator<typename V::value_type>>)
      return static_cast<uint64_t>(HugePageBytes(bytes));
    return bytes;
  };
  return b(fused_token_) + b(fused_weight_) + b(fused_in_) + b(fused_gate_) + b(fused_up_) + b(fused_out_) +
         b(x_) + b(xn_) + b(q_) + b(k_) + b(v_) + b(att_) + b(proj_) + b(router_logits_) +
         b(ffn_in_) + b(ffn_gate_) + b(ffn_up_) + b(ffn_out_) + b(scores_) + b(token_experts_) +
         b(token_weights_) + b(moe_out_) + b(rows_token_) + b(rows_weight_) + b(inv_freq_) +
         b(row_pos_) + b(row_seg_) + b(seg_first_) + b(logit_rows_) + b(rope_amplitude_) + b(rope_cos_sin_) + b(qa_) +
         b(expert_rows_) + b(attention_slots_) + b(attention_ranges_) + b(attention_sinks_) +
         b(attention_row_blocks_);
}

KVCache::KVCache(const ModelConfig& config, int64_t capacity, DType dtype)
    : capacity_(capacity),
      key_dim_(config.CacheKeyDim()),
      value_dim_(config.CacheValueDim()),
      heads_(config.Latent() ? 1 : std::max<int64_t>(config.num_kv_heads, 1)),
      key_head_dim_(std::max<int64_t>(key_dim_ / heads_, 1)),
      value_head_dim_(std::max<int64_t>(value_dim_ / heads_, 1)),
      dtype_(dtype),
      element_bytes_(DTypeSize(dtype)) {
  Require(key_dim_ % heads_ == 0 && value_dim_ % heads_ == 0, "a KV cache row splits evenly into its heads");
  Require(dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16,
          "a KV cache holds F32, F16 or BF16 elements");
  keys_ = ZeroedBytes(static_cast<size_t>(config.num_layers * capacity * key_dim_) * element_bytes_);
  values_ = ZeroedBytes(static_cast<size_t>(config.num_layers * capacity * value_dim_) * element_bytes_);
}

void KVCache::StoreKey(int64_t layer, int64_t pos, const float* key) {
  for (int64_t c = 0; c < key_dim_; c += key_head_dim_)
    kernels::ConvertFromF32(key + c, key_head_dim_, dtype_, keys_.data() + Offset(layer, pos, c, key_head_dim_));
}

void KVCache::StoreValue(int64_t layer, int64_t pos, const float* value) {
  for (int64_t c = 0; c < value_dim_; c += value_head_dim_)
    kernels::ConvertFromF32(value + c, value_head_dim_, dtype_,
                            values_.data() + Offset(layer, pos, c, value_head_dim_));
}

namespace {

// sparsemixer's inference rule for one of its two picks (transformers'
// models/phimoe sparsemixer, eval branch): among `scores` (masked entries
// -inf), the largest, weighted by its softmax over the scores whose relative
// gap (top - s_j) / max(|raw_j|, top) to it is at most 2 * eps. `raw` are the
// unmasked logits, whose magnitudes scale the gap. Ties: lowest index.
void SparseMixerPick(const float* scores, const float* raw, int64_t n, float eps, int32_t* expert,
                     float* weight) {
  int32_t best = 0;
  for (int32_t e = 1; e < n; ++e)
    if (scores[e] > scores[best]) best = e;
  const float top = scores[best];
  double sum = 0;
  for (int64_t e = 0; e < n; ++e) {
    const float gap = (top - raw[e]) / std::max(std::abs(raw[e]), top);
    if (gap > 2 * eps || scores[e] == -std::numeric_limits<float>::infinity()) continue;
    sum += std::exp(static_cast<double>(scores[e]) - top);
  }
  *expert = best;
  *weight = static_cast<float>(1.0 / sum);
}

}  // namespace

void RouteToken(RouterKind kind, const float* router_logits, int64_t num_experts, int64_t top_k,
                bool renormalize, int32_t* experts, float* weights, float jitter) {
  // Scratch reused across calls: routing runs for every token and MoE layer.
  thread_local std::vector<float> probs;
  thread_local std::vector<int32_t> order;
  probs.resize(num_experts);
  order.resize(num_experts);
  std::iota(order.begin(), order.end(), 0);
  if (kind == RouterKind::kSparseMixer) {
    // Two picks: the best expert, then the best of the rest (the first one
    // masked out); top_k is 2 (the config parser insists).
    SparseMixerPick(router_logits, router_logits, num_experts, jitter, &experts[0], &weights[0]);
    std::copy_n(router_logits, num_experts, probs.begin());
    probs[experts[0]] = -std::numeric_limits<float>::infinity();
    SparseMixerPick(probs.data(), router_logits, num_experts, jitter, &experts[1], &weights[1]);
    return;
  }
  if (kind == RouterKind::kTopKSoftmax) {
    // Granite (JetMoe's top-k gating): the k largest logits, then a softmax
    // over those k only, so the weights always sum to 1.
    std::partial_sort(order.begin(), order.begin() + top_k, order.end(), [&](int32_t a, int32_t b) {
      return router_logits[a] != router_logits[b] ? router_logits[a] > router_logits[b] : a < b;
    });
    const float max_logit = router_logits[order[0]];
    float sum = 0.f;
    for (int64_t i = 0; i < top_k; ++i) {
      weights[i] = std::exp(router_logits[order[i]] - max_logit);
      sum += weights[i];
    }
    for (int64_t i = 0; i < top_k; ++i) {
      experts[i] = order[i];
      weights[i] /= sum;
    }
    return;
  }
  // Softmax in float32 over all experts, as Mixtral does, then the top-k.
  float max_logit = router_logits[0];
  for (int64_t e = 1; e < num_experts; ++e) max_logit = std::max(max_logit, router_logits[e]);
  float sum = 0.f;
  for (int64_t e = 0; e < num_experts; ++e) {
    probs[e] = std::exp(router_logits[e] - max_logit);
    sum += probs[e];
  }
  for (auto& p : probs) p /= sum;
  // Stable ordering on (probability desc, index asc) makes ties deterministic.
  std::partial_sort(order.begin(), order.begin() + top_k, order.end(), [&](int32_t a, int32_t b) {
    return probs[a] != probs[b] ? probs[a] > probs[b] : a < b;
  });
  float chosen = 0.f;
  for (int64_t i = 0; i < top_k; ++i) chosen += probs[order[i]];
  for (int64_t i = 0; i < top_k; ++i) {
    experts[i] = order[i];
    weights[i] = renormalize ? probs[order[i]] / chosen : probs[order[i]];
  }
}

namespace {

// Orders experts by score, descending, lower index first on ties (stable).
void TopByScore(const std::vector<float>& score, int64_t k, std::vector<int32_t>& order) {
  order.resize(score.size());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
    return score[a] != score[b] ? score[a] > score[b] : a < b;
  });
}

// Keeps the topk_group groups of experts with the largest group scores and
// sets every other expert's score to `dropped` (DeepSeek's group-limited routing).
void KeepBestGroups(std::vector<float>& score, const std::vector<float>& group_score, int64_t topk_group,
                    float dropped) {
  const int64_t groups = static_cast<int64_t>(group_score.size());
  const int64_t per_group = static_cast<int64_t>(score.size()) / groups;
  std::vector<int32_t> order;
  TopByScore(group_score, topk_group, order);
  std::vector<bool> keep(static_cast<size_t>(groups), false);
  for (int64_t i = 0; i < topk_group; ++i) keep[order[i]] = true;
  for (int64_t g = 0; g < groups; ++g)
    if (!keep[g])
      for (int64_t e = g * per_group; e < (g + 1) * per_group; ++e) score[e] = dropped;
}

}  // namespace

void RouteToken(const ModelConfig& c, const float* logits, const float* correction_bias, int32_t* experts,
                float* weights) {
  const int64_t E = c.num_experts, K = c.num_experts_per_tok;
  if (c.router != RouterKind::kGroupSoftmax && c.router != RouterKind::kGroupSigmoid) {
    RouteToken(c.router, logits, E, K, c.norm_topk_prob, experts, weights, c.router_jitter);
    return;
  }
  thread_local std::vector<float> score, chosen_by, group_score;
  thread_local std::vector<int32_t> order;
  score.resize(E);
  const int64_t G = c.n_group, per_group = E / G;
  group_score.assign(static_cast<size_t>(G), 0.f);
  if (c.router == RouterKind::kGroupSoftmax) {
    // DeepSeek-V2: softmax in float32; group-limited greedy keeps the groups
    // whose best expert scores highest and zeroes the rest (as transformers).
    float max_logit = logits[0];
    for (int64_t e = 1; e < E; ++e) max_logit = std::max(max_logit, logits[e]);
    float sum = 0.f;
    for (int64_t e = 0; e < E; ++e) sum += (score[e] = std::exp(logits[e] - max_logit));
    for (float& p : score) p /= sum;
    chosen_by = score;
    if (G > 1) {
      for (int64_t g = 0; g < G; ++g)
        group_score[g] = *std::max_element(score.begin() + g * per_group, score.begin() + (g + 1) * per_group);
      KeepBestGroups(chosen_by, group_score, c.topk_group, 0.0f);
    }
  } else {
    // DeepSeek-V3: sigmoid scores; the correction bias steers selection only;
    // a group scores the sum of its two best biased scores; dropped groups
    // are out of the running (-inf; transformers writes 0.0, which differs
    // only when a kept biased score is negative).
    chosen_by.resize(E);
    for (int64_t e = 0; e < E; ++e) {
      score[e] = 1.0f / (1.0f + std::exp(-logits[e]));
      chosen_by[e] = score[e] + (correction_bias ? correction_bias[e] : 0.0f);
    }
    if (G > 1) {
      for (int64_t g = 0; g < G; ++g) {
        float best = -std::numeric_limits<float>::infinity(), second = best;
        for (int64_t e = g * per_group; e < (g + 1) * per_group; ++e) {
          if (chosen_by[e] > best) {
            second = best;
            best = chosen_by[e];
          } else if (chosen_by[e] > second) {
            second = chosen_by[e];
          }
        }
        group_score[g] = per_group >= 2 ? best + second : best;
      }
      KeepBestGroups(chosen_by, group_score, c.topk_group, -std::numeric_limits<float>::infinity());
    }
  }
  TopByScore(chosen_by, K, order);
  float total = 0.f;
  for (int64_t i = 0; i < K; ++i) {
    experts[i] = order[i];
    weights[i] = score[order[i]];
    total += weights[i];
  }
  // Renormalised when norm_topk_prob (V2 only with k > 1, as DeepSeek's code),
  // else scaled; V3 renormalises and then scales.
  const bool renormalize = c.norm_topk_prob && (c.router == RouterKind::kGroupSigmoid || K > 1);
  for (int64_t i = 0; i < K; ++i) {
    if (renormalize) weights[i] /= total + 1e-20f;
    if (c.router == RouterKind::kGroupSigmoid || !renormalize) weights[i] *= c.routed_scaling_factor;
  }
}

Transformer::Transformer(ModelConfig config, ModelWeights weights, ThreadPool& pool)
    : config_(std::move(config)), weights_(std::move(weights)), pool_(pool) {
  moe_layers_ = config_.MoeLayers();
  moe_slot_.assign(static_cast<size_t>(config_.num_layers), -1);
  for (size_t m = 0; m < moe_layers_.size(); ++m) moe_slot_[moe_layers_[m]] = static_cast<int64_t>(m);
}

// Rotary embedding, Hugging Face "rotate half" convention: dimension i pairs
// with i + head_dim/2 (not with i + 1 as in the original RoPE paper's layout).
// cos and sin are multiplied by the scaling kind's attention factor (YaRN),
// as transformers does before applying them.
void Transformer::ApplyRope(float* vec, int64_t num_heads, int64_t stride, const float* cos_sin) const {
  const int64_t half = config_.head_dim / 2;
  const float* cos = cos_sin;
  const float* sin = cos_sin + half;
  // Pair i: dimensions (i, i + half) in the rotate-half layout, (2i, 2i + 1)
  // in the adjacent one (DeepSeek). Head by head, so that the rotate-half
  // loop runs over consecutive floats of both halves (it vectorizes).
  const bool adjacent = config_.rope_pairing == RopePairing::kAdjacent;
  for (int64_t h = 0; h < num_heads; ++h) {
    float* head = vec + h * stride;
    if (adjacent) {
      for (int64_t i = 0; i < half; ++i) {
        const float a = head[2 * i], b = head[2 * i + 1];
        head[2 * i] = a * cos[i] - b * sin[i];
        head[2 * i + 1] = b * cos[i] + a * sin[i];
      }
    } else {
      float* __restrict lo = head;
      float* __restrict hi = head + half;
      for (int64_t i = 0; i < half; ++i) {
        const float a = lo[i], b = hi[i];
        lo[i] = a * cos[i] - b * sin[i];
        hi[i] = b * cos[i] + a * sin[i];
      }
    }
  }
}

void Transformer::Forward(std::span<const int32_t> tokens, int64_t start_pos, KVCache& cache,
                          bool all_logits, std::vector<float>* logits, RoutingTrace* trace) {
  const BatchSegment segment{tokens, start_pos, &cache,
                             all_logits ? LogitRows::kAll : LogitRows::kLast, trace};
  ForwardBatch({&segment, 1}, logits);
}

void Transformer::ForwardBatch(std::span<const BatchSegment> segments, std::vector<float>* logits,
                               int64_t route_through_moe_slot) {
  const int64_t S = static_cast<int64_t>(segments.size());
  const int64_t D = config_.hidden_size;
  Require(S > 0, "cannot run the model on an empty batch");
  int64_t T = 0, R = 0;
  for (int64_t s = 0; s < S; ++s) {
    const BatchSegment& seg = segments[s];
    const int64_t n = static_cast<int64_t>(seg.tokens.size());
    Require(n > 0, "cannot run the model on an empty token sequence");
    Require(seg.cache != nullptr, "internal: a batch segment has no KV cache");
    Require(seg.start_pos >= 0 && seg.start_pos + n <= seg.cache->capacity(),
            "sequence of " + std::to_string(seg.start_pos + n) +
                " tokens exceeds the context capacity of " + std::to_string(seg.cache->capacity()));
    // Two segments writing one cache would race in Attention's parallel loop.
    for (int64_t o = 0; o < s; ++o)
      Require(segments[o].cache != seg.cache, "internal: two batch segments share a KV cache");
    T += n;
    R += LogitRowCount(seg);
  }
  Require(route_through_moe_slot < 0 ||
              (R == 0 && route_through_moe_slot < static_cast<int64_t>(moe_layers_.size())),
          "internal: a routing-only pass must ask for no logits and name an MoE layer of the model");
  Grow(x_, T * D);
  Grow(xn_, T * D);
  Grow(q_, T * config_.QDim());
  if (!config_.Latent()) {
    Grow(k_, T * config_.KvDim());
    Grow(v_, T * config_.KvDim());
  }
  Grow(att_, T * config_.AttnOutDim());
  if (config_.Latent()) {
    Grow(k_, T * config_.CacheKeyDim());
    Grow(qa_, T * config_.q_lora_rank);
  }
  Grow(proj_, T * D);
  // Where each row sits: its segment and absolute position.
  row_pos_.resize(T);
  row_seg_.resize(T);
  seg_first_.resize(S + 1);
  logit_rows_.clear();
  logit_rows_.reserve(R);
  for (int64_t s = 0, row = 0; s < S; ++s) {
    const BatchSegment& seg = segments[s];
    const int64_t n = static_cast<int64_t>(seg.tokens.size());
    seg_first_[s] = row;
    for (int64_t i = 0; i < n; ++i, ++row) {
      row_pos_[row] = seg.start_pos + i;
      row_seg_[row] = static_cast<int32_t>(s);
    }
    if (seg.logits == LogitRows::kAll)
      for (int64_t i = 0; i < n; ++i) logit_rows_.push_back(row - n + i);
    else if (seg.logits == LogitRows::kLast)
      logit_rows_.push_back(row - 1);
  }
  seg_first_[S] = T;
  // The rotary frequencies of this call. Only dynamic NTK scaling depends on
  // the sequence length (transformers recomputes them per forward call from
  // its last position; keys already cached keep the rotation they got), so
  // only then does each segment get its own row, from its own length.
  const int64_t half = config_.head_dim / 2;
  inv_freq_per_segment_ = config_.rope_scaling.DependsOnLength();
  rope_amplitude_.resize(static_cast<size_t>(S));
  for (int64_t s = 0; s < S; ++s) {
    const int64_t end = segments[s].start_pos + static_cast<int64_t>(segments[s].tokens.size());
    rope_amplitude_[s] = RopeAttentionFactor(config_, end);
  }
  if (inv_freq_per_segment_) {
    inv_freq_.resize(static_cast<size_t>(S * half));
    for (int64_t s = 0; s < S; ++s) {
      const int64_t end = segments[s].start_pos + static_cast<int64_t>(segments[s].tokens.size());
      const std::vector<double> inv = RopeInverseFrequencies(config_, end);
      std::copy_n(inv.begin(), half, inv_freq_.begin() + s * half);
    }
  } else if (inv_freq_.empty()) {
    const std::vector<double> inv = RopeInverseFrequencies(config_, 1);
    inv_freq_.assign(inv.begin(), inv.begin() + half);
  }
  // Each row's rotation, computed once per call rather than in every layer
  // for q and for k: the double-precision sines and cosines had taken 4 % of
  // a detection pass (one layer) and more of a long prompt's prefill.
  Grow(rope_cos_sin_, T * 2 * half);
  pool_.ParallelFor(T, 32, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t s = row_seg_[t];
      const double* inv = inv_freq_.data() + (inv_freq_per_segment_ ? s * half : 0);
      const double amplitude = rope_amplitude_[s];
      float* cos_sin = rope_cos_sin_.data() + t * 2 * half;
      for (int64_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(row_pos_[t]) * inv[i];
        cos_sin[i] = static_cast<float>(std::cos(angle) * amplitude);
        cos_sin[half + i] = static_cast<float>(std::sin(angle) * amplitude);
      }
    }
  });

  for (int64_t t = 0; t < T; ++t) {
    const int32_t id = segments[row_seg_[t]].tokens[t - seg_first_[row_seg_[t]]];
    Require(id >= 0 && id < config_.vocab_size,
            "token id " + std::to_string(id) + " is outside the vocabulary (vocab_size " +
                std::to_string(config_.vocab_size) + ")");
    float* row = x_.data() + t * D;
    kernels::ConvertToF32(weights_.embed.dtype, weights_.embed.Row(id), D, row);
    if (config_.embedding_multiplier != 1.0f)
      for (int64_t i = 0; i < D; ++i) row[i] *= config_.embedding_multiplier;
    if (checking_)
      CheckStage(row, D, [&] {
        return "the embedding of token " + std::to_string(id) + " (model.embed_tokens.weight)";
      });
  }
  for (const BatchSegment& seg : segments)
    if (seg.trace)
      seg.trace->Reset(static_cast<int64_t>(seg.tokens.size()), seg.start_pos, moe_layers_,
                       config_.num_experts, config_.num_experts_per_tok);

  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const LayerWeights& lw = weights_.layers[l];
    auto layer_tensor = [l](const std::string& suffix) {
      return [l, suffix] {
        return "layer " + std::to_string(l) + " (" + TensorNames::Layer(l, suffix) + ")";
      };
    };
    for (int64_t t = 0; t < T; ++t) Norm(x_.data() + t * D, lw.attn_norm, lw.attn_norm_bias, xn_.data() + t * D);
    if (checking_) CheckStage(xn_.data(), T * D, layer_tensor("input_layernorm.weight"));
    Attention(l, T, segments);
    if (checking_)
      CheckStage(x_.data(), T * D, [l] {
        return "layer " + std::to_string(l) + "'s residual sum after attention (float32 overflow)";
      });
    for (int64_t t = 0; t < T; ++t) Norm(x_.data() + t * D, lw.ffn_norm, lw.ffn_norm_bias, xn_.data() + t * D);
    if (checking_) CheckStage(xn_.data(), T * D, layer_tensor("post_attention_layernorm.weight"));
    if (route_through_moe_slot >= 0 && moe_slot_[l] == route_through_moe_slot) {
      FeedForward(l, T, segments, moe_slot_[l], /*route_only=*/true);
      if (logits) logits->clear();
      return;
    }
    FeedForward(l, T, segments, moe_slot_[l]);
    if (checking_)
      CheckStage(x_.data(), T * D, [l] {
        return "layer " + std::to_string(l) + "'s residual sum after the MLP (float32 overflow)";
      });
  }

  // Only the rows whose logits are wanted go through the final norm and the
  // (large) lm_head product.
  const int64_t rows = R;
  for (int64_t r = 0; r < rows; ++r)
    Norm(x_.data() + logit_rows_[r] * D, weights_.final_norm, weights_.final_norm_bias, xn_.data() + r * D);
  if (checking_) CheckStage(xn_.data(), rows * D, [] { return std::string("the final norm (model.norm.weight)"); });
  logits->resize(static_cast<size_t>(rows * config_.vocab_size));
  kernels::MatMul(xn_.data(), rows, weights_.lm_head, logits->data(), pool_);  // [rows, vocab]
  AddBias(logits->data(), weights_.lm_head_bias, rows);
  // Granite divides the logits by logits_scaling (a division, as transformers
  // does, so that the rounding matches).
  if (config_.logits_scaling != 1.0f)
    for (float& v : *logits) v /= config_.logits_scaling;
  if (checking_)
    CheckStage(logits->data(), rows * config_.vocab_size, [this] {
      return std::string("the output projection (") +
             (config_.tie_word_embeddings ? "model.embed_tokens.weight, tied" : "lm_head.weight") + ")";
    });
}

void Transformer::CheckStage(const float* values, int64_t n,
                             const std::function<std::string()>& stage) {
  if (first_non_finite_.empty() && !AllFinite(values, static_cast<size_t>(n)))
    first_non_finite_ = stage();
}

std::string Transformer::LocateNonFinite(std::span<const int32_t> tokens) {
  if (tokens.empty()) return "";
  KVCache cache(config_, static_cast<int64_t>(tokens.size()));
  std::vector<float> logits;
  checking_ = true;
  first_non_finite_.clear();
  try {
    // Every intermediate stage is checked for all tokens; only the final norm
    // and the output projection are limited to the last token, which keeps
    // this pass from allocating [T, vocab] logits (damage in the final norm
    // or lm_head shows in every row anyway).
    Forward(tokens, 0, cache, /*all_logits=*/false, &logits, nullptr);
  } catch (...) {
    checking_ = false;
    throw;
  }
  checking_ = false;
  return first_non_finite_;
}

void Transformer::Attention(int64_t layer, int64_t T, std::span<const BatchSegment> segments) {
  if (config_.Latent()) return LatentAttention(layer, T, segments);
  const LayerWeights& lw = weights_.layers[layer];
  const int64_t D = config_.hidden_size, hd = config_.head_dim;
  const int64_t H = config_.num_heads, KVH = config_.num_kv_heads, group = H / KVH;
  const int64_t q_dim = config_.QDim(), kv_dim = config_.KvDim();

  // q [T, q_dim], k and v [T, kv_dim]: one parallel region when decoding.
  const kernels::MatMulJob qkv[] = {{xn_.data(), T, &lw.q, q_.data()},
                                    {xn_.data(), T, &lw.k, k_.data()},
                                    {xn_.data(), T, &lw.v, v_.data()}};
  kernels::MatMulMany(qkv, pool_);
  AddBias(q_.data(), lw.q_bias, T);
  AddBias(k_.data(), lw.k_bias, T);
  AddBias(v_.data(), lw.v_bias, T);
  NormalizeQk(lw, T);
  if (config_.clip_qkv > 0) {
    // OLMoE clamps after the norms, before the rotary embedding.
    const float c = config_.clip_qkv;
    for (float* p : {q_.data(), k_.data(), v_.data()}) {
      const int64_t n = T * (p == q_.data() ? q_dim : kv_dim);
      for (int64_t i = 0; i < n; ++i) p[i] = std::clamp(p[i], -c, c);
    }
  }
  if (checking_) {
    auto name = [layer](const char* proj) {
      return [layer, proj] {
        return "layer " + std::to_string(layer) + " (" +
               TensorNames::Layer(layer, std::string("self_attn.") + proj + ".weight") + ")";
      };
    };
    CheckStage(q_.data(), T * q_dim, name("q_proj"));
    CheckStage(k_.data(), T * kv_dim, name("k_proj"));
    CheckStage(v_.data(), T * kv_dim, name("v_proj"));
  }
  // Each row is rotated for its own position and appended to its own cache
  // (its own slot: rows write nothing in common, so the rows of a prompt are
  // shared out between the threads).
  pool_.ParallelFor(T, 32, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t pos = row_pos_[t];
      KVCache& cache = *segments[row_seg_[t]].cache;
      ApplyRope(q_.data() + t * q_dim, H, hd, RopeRow(t));
      ApplyRope(k_.data() + t * kv_dim, KVH, hd, RopeRow(t));
      cache.StoreKey(layer, pos, k_.data() + t * kv_dim);
      cache.StoreValue(layer, pos, v_.data() + t * kv_dim);
    }
  });

  // Scores of one (row, head) item span at most the longest sequence's end.
  int64_t end_pos = 0;
  for (const BatchSegment& seg : segments)
    end_pos = std::max(end_pos, seg.start_pos + static_cast<int64_t>(seg.tokens.size()));
  const int threads = pool_.size();
  // Work items: (block of rows, key/value head, block of the query heads that
  // share it). The queries of an item read each cached key and value once
  // between them (kernels::AttentionScores/Values). Head blocks are halved
  // only while there would be fewer items than twice the threads, so that a
  // decode step of a model with few key/value heads still spreads across the
  // cores; in a prompt, up to AttentionRowsPerItem consecutive rows of one
  // sequence go together, so that a long prompt's keys are not re-read for
  // every row.
  int64_t block_heads = group;
  while (block_heads > 1 && T * KVH * ((group + block_heads - 1) / block_heads) < 2 * threads)
    block_heads = (block_heads + 1) / 2;
  const int64_t head_blocks = (group + block_heads - 1) / block_heads;
  const int64_t max_rows = AttentionRowsPerItem(group);
  std::vector<std::pair<int64_t, int64_t>>& row_blocks = attention_row_blocks_;  // (first row, rows)
  row_blocks.clear();
  for (int64_t t = 0; t < T;) {
    int64_t rows = 1;
    while (rows < max_rows && t + rows < T && row_seg_[t + rows] == row_seg_[t] &&
           row_pos_[t + rows] == row_pos_[t] + rows)
      ++rows;
    row_blocks.emplace_back(t, rows);
    t += rows;
  }
  const int64_t queries_per_item = std::min(max_rows, T) * block_heads;
  // Per thread: the item's attention block scratch (scores, at most
  // end_pos keys), then its query and output pointers, key ranges and sinks.
  const size_t scratch_floats = kernels::AttentionBlockScratchFloats(queries_per_item, end_pos, hd);
  Grow(scores_, static_cast<size_t>(threads) * scratch_floats);
  Grow(attention_slots_, static_cast<size_t>(threads * queries_per_item * 2));
  Grow(attention_ranges_, static_cast<size_t>(threads * queries_per_item * 2));
  Grow(attention_sinks_, static_cast<size_t>(threads * queries_per_item));
  // Granite's attention_multiplier replaces the usual head_dim^-0.5.
  const float scale = config_.attention_scale > 0 ? config_.attention_scale
                                                  : 1.0f / std::sqrt(static_cast<float>(hd));
  const int64_t window = config_.WindowOf(layer);
  const float* sinks = lw.sinks.empty() ? nullptr : lw.sinks.data();
  // The flag is per thread; the blocks run on the pool's.
  const bool row_invariant = kernels::RowInvariantMatMul();
  pool_.RunOnAll([&](int thread) {
    float* scratch = scores_.data() + static_cast<size_t>(thread) * scratch_floats;
    // The item's query and output rows, key ranges and sinks, as the kernel takes them.
    const float** queries = attention_slots_.data() + thread * queries_per_item * 2;
    float** outs = const_cast<float**>(queries + queries_per_item);  // rows of att_, which this writes
    int64_t* begins = attention_ranges_.data() + thread * queries_per_item * 2;
    int64_t* ends = begins + queries_per_item;
    float* item_sinks = attention_sinks_.data() + thread * queries_per_item;
    const int64_t items = static_cast<int64_t>(row_blocks.size()) * KVH * head_blocks;
    // Items are dealt round-robin: in a prompt later rows attend to more
    // positions, so contiguous shares would leave the first threads idle
    // (with two threads, a quarter of the work against three quarters).
    for (int64_t item = thread; item < items; item += threads) {
      const auto [t0, rows] = row_blocks[item / (KVH * head_blocks)];
      const int64_t kvh = item / head_blocks % KVH, b = item % head_blocks;
      const int64_t h0 = kvh * group + b * block_heads, heads = std::min(block_heads, group - b * block_heads);
      const KVCache& cache = *segments[row_seg_[t0]].cache;
      // Row r (position pos0 + r) sees keys [first(r), pos0 + r]: the causal
      // mask, and with a sliding window only keys with pos - j < window. The
      // item reads keys [lo, hi], the union of its rows' ranges.
      const int64_t pos0 = row_pos_[t0];
      auto first_of = [&](int64_t pos) { return window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0; };
      const int64_t lo = first_of(pos0), hi = pos0 + rows - 1, n = hi - lo + 1;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t g = 0; g < heads; ++g) {
          const int64_t i = r * heads + g;
          queries[i] = q_.data() + (t0 + r) * q_dim + (h0 + g) * hd;
          outs[i] = att_.data() + (t0 + r) * q_dim + (h0 + g) * hd;
          begins[i] = first_of(pos0 + r) - lo;
          ends[i] = pos0 + r - lo + 1;
          if (sinks) item_sinks[i] = sinks[h0 + g];
        }
      kernels::AttentionBlock({.queries = queries,
                               .outs = outs,
                               .begin = begins,
                               .end = ends,
                               .sinks = sinks ? item_sinks : nullptr,
                               .count = rows * heads,
                               .dim = hd,
                               .keys = cache.KeyRow(layer, lo, kvh * hd),
                               .values = cache.ValueRow(layer, lo, kvh * hd),
                               .cache_dtype = cache.dtype(),
                               .key_stride = cache.key_stride(),
                               .value_stride = cache.value_stride(),
                               .n = n,
                               .scale = scale,
                               .row_invariant = row_invariant},
                              scratch);
    }
  });

  if (checking_)
    CheckStage(att_.data(), T * q_dim, [layer] {
      return "layer " + std::to_string(layer) +
             "'s attention scores (q.k overflows float32; see self_attn.q_proj/k_proj)";
    });
  kernels::MatMul(att_.data(), T, lw.o, proj_.data(), pool_);  // [T, d_model]
  AddBias(proj_.data(), lw.o_bias, T);
  if (checking_)
    CheckStage(proj_.data(), T * D, [layer] {
      return "layer " + std::to_string(layer) + " (" +
             TensorNames::Layer(layer, "self_attn.o_proj.weight") + ")";
    });
  AddResidual(proj_.data(), T * D);
}

void Transformer::LatentAttention(int64_t layer, int64_t T, std::span<const BatchSegment> segments) {
  const LayerWeights& lw = weights_.layers[layer];
  const int64_t D = config_.hidden_size, H = config_.num_heads;
  const int64_t dn = config_.qk_nope_head_dim, dr = config_.head_dim, dv = config_.v_head_dim;
  const int64_t r = config_.kv_lora_rank, rq = config_.q_lora_rank;
  const int64_t qd = dn + dr, q_dim = config_.QDim(), ckv_dim = r + dr, out_dim = config_.AttnOutDim();
  // The latent norms use transformers' DeepseekV2RMSNorm default epsilon.
  constexpr float kLatentEps = 1e-6f;
  if (rq > 0) {
    kernels::MatMul(xn_.data(), T, lw.q_a, qa_.data(), pool_);  // [T, rq]
    for (int64_t t = 0; t < T; ++t)
      kernels::RmsNorm(qa_.data() + t * rq, lw.q_a_norm.data(), rq, kLatentEps, qa_.data() + t * rq);
    kernels::MatMul(qa_.data(), T, lw.q_b, q_.data(), pool_);  // [T, H * (dn + dr)]
  } else {
    kernels::MatMul(xn_.data(), T, lw.q, q_.data(), pool_);  // [T, H * (dn + dr)]
  }
  kernels::MatMul(xn_.data(), T, lw.kv_a, k_.data(), pool_);  // [T, r + dr]
  if (checking_) {
    CheckStage(q_.data(), T * q_dim, [layer] { return "layer " + std::to_string(layer) + "'s MLA query"; });
    CheckStage(k_.data(), T * ckv_dim, [layer] {
      return "layer " + std::to_string(layer) + " (" + TensorNames::Layer(layer, "self_attn.kv_a_proj_with_mqa.weight") + ")";
    });
  }
  // Each row: the latent normalised, the shared key and every head's rotary
  // part rotated for the row's position, then latent and key cached.
  for (int64_t t = 0; t < T; ++t) {
    const int64_t pos = row_pos_[t], s = row_seg_[t];
    float* ckv = k_.data() + t * ckv_dim;
    kernels::RmsNorm(ckv, lw.kv_a_norm.data(), r, kLatentEps, ckv);
    ApplyRope(ckv + r, 1, dr, RopeRow(t));
    ApplyRope(q_.data() + t * q_dim + dn, H, qd, RopeRow(t));
    segments[s].cache->StoreKey(layer, pos, ckv);
  }

  int64_t end_pos = 0;
  for (const BatchSegment& seg : segments)
    end_pos = std::max(end_pos, seg.start_pos + static_cast<int64_t>(seg.tokens.size()));
  const int threads = pool_.size();
  const int64_t per_thread = 2 * end_pos + 2 * r;
  Grow(scores_, static_cast<size_t>(threads) * per_thread);
  const float scale = config_.attention_scale;
  const int64_t window = config_.WindowOf(layer);
  const float* kv_b = lw.kv_b.data();  // [H * (dn + dv), r]
  pool_.RunOnAll([&](int thread) {
    float* scores = scores_.data() + static_cast<size_t>(thread) * per_thread;
    float* rope_scores = scores + end_pos;  // [end_pos]: the rotary parts' products
    float* q_lat = rope_scores + end_pos;   // [r]: the query's nope part through head h's key rows
    float* ctx = q_lat + r;           // [r]: the attention-weighted latent
    const int64_t items = T * H;
    // Items are dealt round-robin: in a prompt later rows attend to more
    // positions, so contiguous shares would leave the first threads idle
    // (with two threads, a quarter of the work against three quarters).
    for (int64_t item = thread; item < items; item += threads) {
      const int64_t t = item / H, h = item % H;
      const int64_t pos = row_pos_[t];
      const KVCache& cache = *segments[row_seg_[t]].cache;
      const float* q = q_.data() + t * q_dim + h * qd;  // [dn nope | dr rotary]
      const float* key_rows = kv_b + h * (dn + dv) * r;  // [dn, r]
      const float* value_rows = key_rows + dn * r;       // [dv, r]
      // k_nope_j = W_k c_j, so q_nope . k_nope_j = (W_k^T q_nope) . c_j.
      std::fill_n(q_lat, r, 0.f);
      for (int64_t i = 0; i < dn; ++i) kernels::Axpy(q[i], key_rows + i * r, q_lat, r);
      const int64_t first = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
      const int64_t n = pos - first + 1;
      // Each score is (q_lat . c_j + q_rope . k_rope_j) * scale, the two
      // products summed apart as Dot sums them.
      const float* latent_query[1] = {q_lat};
      const float* rope_query[1] = {q + dn};
      kernels::AttentionScores(latent_query, 1, r, cache.KeyRow(layer, first), cache.dtype(), cache.key_stride(), n,
                               1.0f, scores, n);
      kernels::AttentionScores(rope_query, 1, dr, cache.KeyRow(layer, first, r), cache.dtype(), cache.key_stride(), n,
                               1.0f, rope_scores, n);
      for (int64_t j = 0; j < n; ++j) scores[j] = (scores[j] + rope_scores[j]) * scale;
      kernels::Softmax(scores, n);
      // out = W_v (sum_j p_j c_j): the values are never formed per position.
      float* context[1] = {ctx};
      kernels::AttentionValues(scores, 1, n, cache.KeyRow(layer, first), cache.dtype(), cache.key_stride(), n, r,
                               context);
      float* out = att_.data() + t * out_dim + h * dv;
      for (int64_t v = 0; v < dv; ++v) out[v] = kernels::Dot(value_rows + v * r, ctx, r);
    }
  });
  if (checking_)
    CheckStage(att_.data(), T * out_dim, [layer] {
      return "layer " + std::to_string(layer) + "'s latent attention (see self_attn.kv_b_proj)";
    });
  kernels::MatMul(att_.data(), T, lw.o, proj_.data(), pool_);  // [T, d_model]
  AddBias(proj_.data(), lw.o_bias, T);
  if (checking_)
    CheckStage(proj_.data(), T * D, [layer] {
      return "layer " + std::to_string(layer) + " (" + TensorNames::Layer(layer, "self_attn.o_proj.weight") + ")";
    });
  AddResidual(proj_.data(), T * D);
}

void Transformer::Norm(const float* x, const std::vector<float>& weight,
                       const std::vector<float>& bias, float* out) const {
  const int64_t D = config_.hidden_size;
  switch (config_.norm) {
    case NormKind::kRms:
      kernels::RmsNorm(x, weight.data(), D, config_.rms_norm_eps, out);
      break;
    case NormKind::kLayerNorm:
      kernels::LayerNorm(x, weight.data(), bias.data(), D, config_.rms_norm_eps, out);
      break;
  }
}

void Transformer::AddResidual(const float* branch, int64_t n) {
  const float m = config_.residual_multiplier;
  if (m == 1.0f) {
    for (int64_t i = 0; i < n; ++i) x_[i] += branch[i];
  } else {
    for (int64_t i = 0; i < n; ++i) x_[i] += branch[i] * m;
  }
}

// q/k normalisation before the rotary embedding: each head vector over
// head_dim with one shared weight (Qwen3), or the whole projection row
// (OLMoE). The same RMSNorm kernel serves both; only the span differs.
void Transformer::NormalizeQk(const LayerWeights& lw, int64_t T) {
  if (config_.qk_norm == QkNormKind::kNone) return;
  const int64_t q_dim = config_.QDim(), kv_dim = config_.KvDim();
  const int64_t q_span = static_cast<int64_t>(lw.q_norm.size());
  const int64_t k_span = static_cast<int64_t>(lw.k_norm.size());
  for (int64_t i = 0; i < T * q_dim; i += q_span)
    kernels::RmsNorm(q_.data() + i, lw.q_norm.data(), q_span, config_.rms_norm_eps, q_.data() + i);
  for (int64_t i = 0; i < T * kv_dim; i += k_span)
    kernels::RmsNorm(k_.data() + i, lw.k_norm.data(), k_span, config_.rms_norm_eps, k_.data() + i);
}

void Transformer::Activate(float* gate, const float* up, int64_t n) const {
  switch (config_.activation) {
    case ActivationKind::kSwiGLU:
      kernels::SiluMul(gate, up, n);
      break;
    case ActivationKind::kClampedSwiGLU:
      kernels::ClampedSwiGlu(gate, up, n, config_.swiglu_alpha, config_.swiglu_limit);
      break;
  }
}

// SwiGLU on the first `rows` rows of ffn_in_, result in ffn_out_. The width
// comes from the weights: dense layers, experts and shared experts differ.
void Transformer::ExpertForward(const ExpertWeights& e, int64_t rows,
                                const std::function<std::string(const char*)>& name) {
  const int64_t F = e.Ff(), D = config_.hidden_size;
  if (e.Interleaved()) {
    // One product gives gate and up with their rows alternating: [rows, 2 d_ff].
    kernels::MatMul(ffn_in_.data(), rows, e.gate_up, ffn_gate_.data(), pool_);
    if (e.gate_up_bias)
      for (int64_t r = 0; r < rows; ++r) kernels::Axpy(1.0f, e.gate_up_bias, ffn_gate_.data() + r * 2 * F, 2 * F);
    if (checking_) CheckStage(ffn_gate_.data(), rows * 2 * F, [&] { return name("gate"); });
    // Split the pairs: up to ffn_up_, gate compacted in place (each write
    // lands at or before the element it replaces has been read).
    for (int64_t i = 0; i < rows * F; ++i) {
      const float g = ffn_gate_[2 * i], u = ffn_gate_[2 * i + 1];
      ffn_gate_[i] = g;
      ffn_up_[i] = u;
    }
  } else {
    kernels::MatMul(ffn_in_.data(), rows, e.gate, ffn_gate_.data(), pool_);  // [rows, d_ff]
    kernels::MatMul(ffn_in_.data(), rows, e.up, ffn_up_.data(), pool_);      // [rows, d_ff]
    if (checking_) {
      CheckStage(ffn_gate_.data(), rows * F, [&] { return name("gate"); });
      CheckStage(ffn_up_.data(), rows * F, [&] { return name("up"); });
    }
  }
  Activate(ffn_gate_.data(), ffn_up_.data(), rows * F);
  if (checking_)
    CheckStage(ffn_gate_.data(), rows * F, [&] { return name("silu(gate) x up"); });
  kernels::MatMul(ffn_gate_.data(), rows, e.down, ffn_out_.data(), pool_);  // [rows, d_model]
  if (e.down_bias)
    for (int64_t r = 0; r < rows; ++r) kernels::Axpy(1.0f, e.down_bias, ffn_out_.data() + r * D, D);
  if (checking_)
    CheckStage(ffn_out_.data(), rows * config_.hidden_size, [&] { return name("down"); });
}

void Transformer::CollectRoutedRows(std::span<const int32_t> experts, std::span<const float> mix, int64_t K,
                                    int64_t e_begin, int64_t e_end, std::vector<int64_t>& token,
                                    std::vector<float>& weight, std::vector<FusedUse>& uses) {
  const int64_t T = static_cast<int64_t>(experts.size()) / K;
  for (int64_t e = e_begin; e < e_end; ++e) {
    const int64_t first = static_cast<int64_t>(token.size());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < K; ++k)
        if (experts[t * K + k] == e) {
          token.push_back(t);
          weight.push_back(mix[t * K + k]);
        }
    const int64_t rows = static_cast<int64_t>(token.size()) - first;
    if (rows > 0) uses.push_back({e, first, rows});
  }
}

void Transformer::RunExpertUses(const LayerWeights& lw, std::span<const FusedUse> uses,
                                std::span<const int64_t> token, std::span<const float> weight,
                                const ExpertBuffers& b, float* moe_out) {
  const int64_t D = config_.hidden_size, Fe = lw.experts[0].Ff(), R = static_cast<int64_t>(token.size());
  for (int64_t r = 0; r < R; ++r) std::copy_n(xn_.data() + token[r] * D, D, b.in + r * D);
  std::vector<kernels::MatMulJob>& jobs = fused_jobs_;
  jobs.clear();
  for (const FusedUse& u : uses) {
    const ExpertWeights& ew = lw.experts[u.expert];
    jobs.push_back({b.in + u.first * D, u.rows, &ew.gate, b.gate + u.first * Fe});
    jobs.push_back({b.in + u.first * D, u.rows, &ew.up, b.up + u.first * Fe});
  }
  kernels::MatMulMany(jobs, pool_);
  Activate(b.gate, b.up, R * Fe);
  jobs.clear();
  for (const FusedUse& u : uses)
    jobs.push_back({b.gate + u.first * Fe, u.rows, &lw.experts[u.expert].down, b.out + u.first * D});
  kernels::MatMulMany(jobs, pool_);
  for (int64_t r = 0; r < R; ++r) kernels::Axpy(weight[r], b.out + r * D, moe_out + token[r] * D, D);
}

namespace {

// Names a feed-forward's tensor for LocateNonFinite: `which` is "gate",
// "up", "down" or an intermediate stage such as "silu(gate) x up".
std::string FfnStageName(const std::string& owner, const char* which,
                         const std::function<std::string(FfnPart)>& tensor) {
  const std::string w = which;
  if (w == "gate") return owner + " (" + tensor(FfnPart::kGate) + ")";
  if (w == "up") return owner + " (" + tensor(FfnPart::kUp) + ")";
  if (w == "down") return owner + " (" + tensor(FfnPart::kDown) + ")";
  return owner + " " + w;
}

}  // namespace

void Transformer::FeedForward(int64_t layer, int64_t T, std::span<const BatchSegment> segments,
                              int64_t moe_slot, bool route_only) {
  const LayerWeights& lw = weights_.layers[layer];
  const int64_t D = config_.hidden_size, F = config_.MaxFf();
  Grow(ffn_in_, T * D);
  // Interleaved gate/up experts multiply into ffn_gate_ at twice the width.
  Grow(ffn_gate_, T * F * (config_.expert_layout == ExpertLayout::kMxfp4Interleaved && lw.moe ? 2 : 1));
  Grow(ffn_up_, T * F);
  Grow(ffn_out_, T * D);
  const std::string where = "layer " + std::to_string(layer);

  if (!lw.moe) {
    std::copy_n(xn_.data(), T * D, ffn_in_.data());
    ExpertForward(lw.experts[0], T, [&](const char* which) {
      return FfnStageName(where + "'s MLP", which,
                          [&](FfnPart part) { return TensorNames::DenseMlp(layer, part); });
    });
    AddResidual(ffn_out_.data(), T * D);
    return;
  }

  // Router in float32: logits [T, E] = xn [T, D] x router^T.
  const int64_t E = config_.num_experts, K = config_.num_experts_per_tok;
  Grow(router_logits_, T * E);
  const WeightView router{DType::kF32, lw.router.data(), E, D};
  kernels::MatMul(xn_.data(), T, router, router_logits_.data(), pool_);
  // A router bias (gpt-oss) is part of the logits experts are selected by.
  AddBias(router_logits_.data(), lw.router_bias, T);
  if (checking_)
    CheckStage(router_logits_.data(), T * E, [&] {
      return where + "'s router (" + TensorNames::Router(config_, layer) + ")";
    });

  std::vector<int32_t>& experts = token_experts_;
  std::vector<float>& mix = token_weights_;
  experts.resize(T * K);
  mix.resize(T * K);
  for (int64_t t = 0; t < T; ++t) {
    RouteToken(config_, router_logits_.data() + t * E,
               lw.correction_bias.empty() ? nullptr : lw.correction_bias.data(), experts.data() + t * K,
               mix.data() + t * K);
    const int32_t s = row_seg_[t];
    if (RoutingTrace* trace = segments[s].trace) {
      const int64_t local = t - seg_first_[s];  // the row's index within its segment
      std::copy_n(router_logits_.data() + t * E, E, trace->MutableLogits(local, moe_slot));
      std::copy_n(experts.data() + t * K, K, trace->MutableExperts(local, moe_slot));
      std::copy_n(mix.data() + t * K, K, trace->MutableWeights(local, moe_slot));
    }
  }
  if (route_only) return;

  // Group tokens by expert so that each expert's weights are streamed once
  // per forward call and multiplied against all of its tokens together; in a
  // batch the rows of every sequence that picked the expert go in together.
  HugePageVector<float>& moe_out = moe_out_;
  moe_out.assign(T * D, 0.f);
  const ExpertWeights& e0 = lw.experts[0];
  if (T <= kFusedExpertTokens && FusesExperts(config_) && !checking_ && !e0.Interleaved() && !e0.down_bias &&
      !e0.gate_up_bias) {
    // Every routed row at once, experts in order and each expert's rows in
    // token order, as the loop below takes them: each product and the sum
    // into moe_out are exactly the loop's, in two parallel regions.
    std::vector<FusedUse>& uses = fused_uses_;
    uses.clear();
    fused_token_.reserve(static_cast<size_t>(kFusedExpertTokens * K));
    fused_weight_.reserve(static_cast<size_t>(kFusedExpertTokens * K));
    fused_token_.clear();
    fused_weight_.clear();
    CollectRoutedRows(experts, mix, K, 0, E, fused_token_, fused_weight_, uses);
    const int64_t R = static_cast<int64_t>(fused_token_.size()), Fe = e0.Ff();
    Grow(fused_in_, R * D);
    Grow(fused_gate_, R * Fe);
    Grow(fused_up_, R * Fe);
    Grow(fused_out_, R * D);
    RunExpertUses(lw, uses, fused_token_, fused_weight_, {fused_in_.data(), fused_gate_.data(), fused_up_.data(), fused_out_.data()},
                  moe_out.data());
  } else if (FusesExperts(config_) && !checking_ && !e0.Interleaved() && !e0.down_bias && !e0.gate_up_bias) {
    // Prefill: the experts in groups (kGroupedExpertRows), each group's
    // rows gathered into ffn_in_ in expert order and each expert's rows in
    // token order, exactly as the loop below takes them; MatMulMany gives
    // each product MatMul's result, and the sums into moe_out come in the
    // same order, so the output is the loop's to the bit.
    std::vector<int64_t>& counts = expert_rows_;
    counts.assign(E, 0);
    for (int64_t i = 0; i < T * K; ++i) ++counts[experts[i]];
    const int64_t cap = std::min(T, kGroupedExpertRows);
    std::vector<int64_t>& rows_token = rows_token_;
    std::vector<float>& rows_weight = rows_weight_;
    rows_token.reserve(T);  // a group holds at most T rows; sized once
    rows_weight.reserve(T);
    std::vector<FusedUse>& uses = fused_uses_;
    for (int64_t begin = 0; begin < E;) {
      // The group: experts [begin, end), at least one.
      int64_t end = begin, padded = 0;
      while (end < E && (end == begin || padded + (counts[end] + 7) / 8 * 8 <= cap)) padded += (counts[end++] + 7) / 8 * 8;
      uses.clear();
      rows_token.clear();
      rows_weight.clear();
      CollectRoutedRows(experts, mix, K, begin, end, rows_token, rows_weight, uses);
      begin = end;
      if (uses.empty()) continue;
      RunExpertUses(lw, uses, rows_token, rows_weight, {ffn_in_.data(), ffn_gate_.data(), ffn_up_.data(), ffn_out_.data()},
                    moe_out.data());
    }
  } else {
  std::vector<int64_t>& rows_token = rows_token_;
  rows_token_.reserve(T);  // at most T tokens pick one expert; sized once, not by doubling
  rows_weight_.reserve(T);
  std::vector<float>& rows_weight = rows_weight_;
  for (int64_t e = 0; e < E; ++e) {
    rows_token.clear();
    rows_weight.clear();
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < K; ++k)
        if (experts[t * K + k] == e) {
          rows_token.push_back(t);
          rows_weight.push_back(mix[t * K + k]);
        }
    if (rows_token.empty()) continue;
    const int64_t rows = static_cast<int64_t>(rows_token.size());
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(xn_.data() + rows_token[r] * D, D, ffn_in_.data() + r * D);
    ExpertForward(lw.experts[e], rows, [&](const char* which) {
      return FfnStageName(where + ", expert " + std::to_string(e), which,
                          [&](FfnPart part) { return TensorNames::Expert(config_, layer, e, part); });
    });
    for (int64_t r = 0; r < rows; ++r)
      kernels::Axpy(rows_weight[r], ffn_out_.data() + r * D, moe_out.data() + rows_token[r] * D, D);
  }
  }

  // A sigmoid-gated shared expert (Qwen2-MoE) sees every token and is added
  // beside the routed experts; it is not part of the routing.
  if (config_.shared_expert == SharedExpertKind::kSigmoidGated) {
    std::copy_n(xn_.data(), T * D, ffn_in_.data());
    ExpertForward(lw.shared, T, [&](const char* which) {
      return FfnStageName(where + "'s shared expert", which,
                          [&](FfnPart part) { return TensorNames::SharedExpert(config_, layer, part); });
    });
    for (int64_t t = 0; t < T; ++t) {
      const float g = kernels::Dot(xn_.data() + t * D, lw.shared_gate.data(), D);
      const float gate = 1.0f / (1.0f + std::exp(-g));
      kernels::Axpy(gate, ffn_out_.data() + t * D, moe_out.data() + t * D, D);
    }
  } else if (config_.shared_expert == SharedExpertKind::kUngated) {
    // DeepSeek's shared experts: one MLP on every token, added as it is.
    std::copy_n(xn_.data(), T * D, ffn_in_.data());
    ExpertForward(lw.shared, T, [&](const char* which) {
      return FfnStageName(where + "'s shared experts", which,
                          [&](FfnPart part) { return TensorNames::SharedExpert(config_, layer, part); });
    });
    kernels::Axpy(1.0f, ffn_out_.data(), moe_out.data(), T * D);
  }
  AddResidual(moe_out.data(), T * D);
}

}  // namespace epwa
