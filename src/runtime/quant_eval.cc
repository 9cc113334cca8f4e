#include "runtime/quant_eval.h"

#include <algorithm>
#include <cmath>

#include "base/error.h"

namespace epwa {
namespace {

// log-softmax of one row in double precision: out[v] = x[v] - logsumexp(x).
void LogSoftmax(const float* x, int64_t n, std::vector<double>* out) {
  out->resize(static_cast<size_t>(n));
  const double mx = *std::max_element(x, x + n);
  double sum = 0;
  for (int64_t v = 0; v < n; ++v) sum += std::exp(static_cast<double>(x[v]) - mx);
  const double lse = mx + std::log(sum);
  for (int64_t v = 0; v < n; ++v) (*out)[v] = static_cast<double>(x[v]) - lse;
}

}  // namespace

void QuantComparison::AddWindow(std::span<const int32_t> ids, std::span<const float> reference,
                                std::span<const float> candidate, int64_t vocab,
                                const RoutingTrace& ref_routing, const RoutingTrace& cand_routing) {
  const int64_t T = static_cast<int64_t>(ids.size());
  Require(static_cast<int64_t>(reference.size()) == T * vocab &&
              static_cast<int64_t>(candidate.size()) == T * vocab,
          "internal: logits do not match the window");
  std::vector<double> p, q;
  for (int64_t t = 0; t + 1 < T; ++t) {
    const float* a = reference.data() + t * vocab;
    const float* b = candidate.data() + t * vocab;
    LogSoftmax(a, vocab, &p);
    LogSoftmax(b, vocab, &q);
    double kl = 0;
    for (int64_t v = 0; v < vocab; ++v) kl += std::exp(p[v]) * (p[v] - q[v]);
    kl = std::max(kl, 0.0);  // rounding can give -1e-17
    kl_ += kl;
    max_kl_ = std::max(max_kl_, kl);
    const int32_t next = ids[t + 1];
    ref_nll_ -= p[next];
    nll_ -= q[next];
    top1_same_ += (std::max_element(a, a + vocab) - a) == (std::max_element(b, b + vocab) - b);
    ++positions_;
  }
  const int64_t layers = ref_routing.num_moe_layers();
  Require(cand_routing.num_moe_layers() == layers, "internal: routing traces differ in layers");
  if (router_same_.empty()) router_same_.assign(static_cast<size_t>(layers), 0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t m = 0; m < layers; ++m)
      router_same_[m] += ref_routing.Experts(t, m)[0] == cand_routing.Experts(t, m)[0];
  if (layers > 0) router_positions_ += T;
}

double QuantComparison::ReferencePerplexity() const {
  return positions_ ? std::exp(ref_nll_ / positions_) : 0.0;
}
double QuantComparison::Perplexity() const { return positions_ ? std::exp(nll_ / positions_) : 0.0; }
double QuantComparison::MeanKl() const { return positions_ ? kl_ / positions_ : 0.0; }
double QuantComparison::Top1Agreement() const {
  return positions_ ? static_cast<double>(top1_same_) / positions_ : 0.0;
}
std::vector<double> QuantComparison::RouterTop1Agreement() const {
  std::vector<double> out;
  for (int64_t s : router_same_)
    out.push_back(router_positions_ ? static_cast<double>(s) / router_positions_ : 0.0);
  return out;
}

}  // namespace epwa
