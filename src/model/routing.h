// RoutingTrace: the MoE router's decisions for every position and MoE layer
// of one forward call, published as data.
//
// This is the library's API for routing: the `score` command prints it and
// the watermark reads it, so nothing outside the model reaches into the
// model's internals to learn which experts were chosen.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace epwa {

class RoutingTrace {
 public:
  void Reset(int64_t num_tokens, int64_t first_position, std::vector<int32_t> moe_layers,
             int64_t num_experts, int64_t top_k) {
    num_tokens_ = num_tokens;
    first_position_ = first_position;
    moe_layers_ = std::move(moe_layers);
    num_experts_ = num_experts;
    top_k_ = top_k;
    const size_t slots = static_cast<size_t>(num_tokens) * moe_layers_.size();
    logits_.assign(slots * num_experts, 0.f);
    experts_.assign(slots * top_k, -1);
    weights_.assign(slots * top_k, 0.f);
  }

  int64_t num_tokens() const { return num_tokens_; }
  // Absolute position (index in the sequence) of token 0 of this trace.
  int64_t first_position() const { return first_position_; }
  // Model layer index of each MoE layer, in order (every layer for Mixtral).
  const std::vector<int32_t>& moe_layers() const { return moe_layers_; }
  int64_t num_moe_layers() const { return static_cast<int64_t>(moe_layers_.size()); }
  int64_t num_experts() const { return num_experts_; }
  int64_t top_k() const { return top_k_; }

  // Token t (0-based within this call), MoE layer slot m (index into moe_layers()).
  // Router logits before softmax: [num_experts].
  std::span<const float> Logits(int64_t t, int64_t m) const {
    return {logits_.data() + Slot(t, m) * num_experts_, static_cast<size_t>(num_experts_)};
  }
  // Chosen experts in descending weight order (ties: lower index first): [top_k].
  std::span<const int32_t> Experts(int64_t t, int64_t m) const {
    return {experts_.data() + Slot(t, m) * top_k_, static_cast<size_t>(top_k_)};
  }
  // Their mixing weights (renormalised to sum 1 when the model does so): [top_k].
  std::span<const float> Weights(int64_t t, int64_t m) const {
    return {weights_.data() + Slot(t, m) * top_k_, static_cast<size_t>(top_k_)};
  }

  // Writable views used by the model while it runs.
  float* MutableLogits(int64_t t, int64_t m) { return logits_.data() + Slot(t, m) * num_experts_; }
  int32_t* MutableExperts(int64_t t, int64_t m) { return experts_.data() + Slot(t, m) * top_k_; }
  float* MutableWeights(int64_t t, int64_t m) { return weights_.data() + Slot(t, m) * top_k_; }

 private:
  size_t Slot(int64_t t, int64_t m) const {
    return static_cast<size_t>(t * num_moe_layers() + m);
  }
  int64_t num_tokens_ = 0;
  int64_t first_position_ = 0;
  std::vector<int32_t> moe_layers_;
  int64_t num_experts_ = 0;
  int64_t top_k_ = 0;
  std::vector<float> logits_;    // [T, L, E]
  std::vector<int32_t> experts_; // [T, L, k]
  std::vector<float> weights_;   // [T, L, k]
};

}  // namespace epwa
