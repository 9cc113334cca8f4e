// How much a quantization level changes a model's predictions and routing,
// measured against the same model at float32 (`none`) on the same text.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "model/routing.h"

namespace epwa {

// Accumulates the comparison of one candidate level with the reference over
// scored windows of text.
class QuantComparison {
 public:
  // `reference` and `candidate` are [T, V] logits of the same T positions
  // (row t predicts token t + 1, `ids` are the T window tokens); the routing
  // traces cover the same positions and MoE layers. Positions t < T - 1 are
  // scored (the last has no next token).
  void AddWindow(std::span<const int32_t> ids, std::span<const float> reference,
                 std::span<const float> candidate, int64_t vocab, const RoutingTrace& ref_routing,
                 const RoutingTrace& cand_routing);

  int64_t positions() const { return positions_; }
  double ReferencePerplexity() const;  // exp(mean NLL) of the reference
  double Perplexity() const;           // exp(mean NLL) of the candidate
  double MeanKl() const;               // mean over positions of KL(reference || candidate), nats
  double MaxKl() const { return max_kl_; }
  double Top1Agreement() const;        // fraction of positions with the same argmax token
  // Per MoE layer: fraction of (position) whose top-1 expert is the same.
  std::vector<double> RouterTop1Agreement() const;

 private:
  int64_t positions_ = 0;
  double ref_nll_ = 0, nll_ = 0, kl_ = 0, max_kl_ = 0;
  int64_t top1_same_ = 0;
  std::vector<int64_t> router_same_;
  int64_t router_positions_ = 0;
};

}  // namespace epwa
