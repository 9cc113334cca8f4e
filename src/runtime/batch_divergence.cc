#include "runtime/batch_divergence.h"

#include <algorithm>
#include <cmath>

#include "base/error.h"

namespace epwa {

std::vector<RecordedSequence> RecordGeneration(Engine& engine,
                                               const std::vector<std::vector<int32_t>>& prompts,
                                               const GenerateOptions& options, BatchOptions batch) {
  std::vector<RecordedSequence> out(prompts.size());
  BatchEngine runner(engine, batch);
  std::vector<std::exception_ptr> errors(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerateOptions o = options;
    RecordedSequence* rec = &out[i];
    o.on_token = nullptr;
    o.logits_processor = [rec](std::span<float> logits, const RoutingTrace& routing,
                               std::span<const int32_t>) {
      rec->logits.emplace_back(logits.begin(), logits.end());
      std::vector<int32_t> chosen;
      rec->top_k = routing.top_k();
      if (routing.num_tokens() > 0) {
        const int64_t last = routing.num_tokens() - 1;
        for (int64_t m = 0; m < routing.num_moe_layers(); ++m) {
          // As a set: the order within the top-k is a weight order that
          // rounding may swap without changing which experts run.
          std::vector<int32_t> e(routing.Experts(last, m).begin(), routing.Experts(last, m).end());
          std::sort(e.begin(), e.end());
          chosen.insert(chosen.end(), e.begin(), e.end());
        }
      }
      rec->experts.push_back(std::move(chosen));
    };
    runner.Submit(prompts[i], std::move(o), [rec, &errors, i](SequenceResult&& r) {
      rec->tokens = std::move(r.tokens);
      errors[i] = r.error;
    });
  }
  runner.RunUntilIdle();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

DivergenceReport CompareGenerations(const std::vector<RecordedSequence>& reference,
                                    const std::vector<RecordedSequence>& other) {
  Require(reference.size() == other.size(), "internal: comparing runs of different prompt counts");
  DivergenceReport r;
  r.sequences = static_cast<int64_t>(reference.size());
  for (size_t i = 0; i < reference.size(); ++i) {
    const RecordedSequence& a = reference[i];
    const RecordedSequence& b = other[i];
    const size_t common = std::min(a.tokens.size(), b.tokens.size());
    int64_t first_token = -1;
    for (size_t k = 0; k < common && first_token < 0; ++k)
      if (a.tokens[k] != b.tokens[k]) first_token = static_cast<int64_t>(k);
    if (first_token < 0 && a.tokens.size() != b.tokens.size()) first_token = static_cast<int64_t>(common);
    r.first_token_divergence.push_back(first_token);
    if (first_token >= 0) ++r.token_diverged;
    // Step k's logits come from the prompt plus tokens [0, k): the same
    // context in both runs up to the first differing token.
    const size_t steps = std::min({a.logits.size(), b.logits.size(),
                                   first_token >= 0 ? static_cast<size_t>(first_token) + 1 : SIZE_MAX});
    int64_t first_expert = -1;
    for (size_t k = 0; k < steps; ++k) {
      ++r.steps_compared;
      const std::vector<float>& la = a.logits[k];
      const std::vector<float>& lb = b.logits[k];
      double diff = 0, scale = 1;
      for (size_t v = 0; v < la.size() && v < lb.size(); ++v) {
        diff = std::max(diff, static_cast<double>(std::fabs(la[v] - lb[v])));
        scale = std::max(scale, static_cast<double>(std::fabs(la[v])));
      }
      r.max_abs_logit_diff = std::max(r.max_abs_logit_diff, diff);
      r.max_rel_logit_diff = std::max(r.max_rel_logit_diff, diff / scale);
      const std::vector<int32_t>& ea = a.experts[k];
      const std::vector<int32_t>& eb = b.experts[k];
      // Expert sets are stored layer after layer, top_k each.
      const size_t k_per_layer = static_cast<size_t>(std::max<int64_t>(a.top_k, 1));
      for (size_t j = 0; j + k_per_layer <= ea.size() && j + k_per_layer <= eb.size(); j += k_per_layer) {
        ++r.expert_choices_compared;
        if (!std::equal(ea.begin() + j, ea.begin() + j + k_per_layer, eb.begin() + j)) {
          ++r.expert_choices_differ;
          if (first_expert < 0) first_expert = static_cast<int64_t>(k);
        }
      }
      if (static_cast<int64_t>(k) == first_token) {
        std::vector<float> top(la.begin(), la.end());
        std::partial_sort(top.begin(), top.begin() + 2, top.end(), std::greater<float>());
        r.flip_margins.push_back(top.size() >= 2 ? top[0] - top[1] : 0.0);
      }
    }
    r.first_expert_divergence.push_back(first_expert);
  }
  return r;
}

}  // namespace epwa
