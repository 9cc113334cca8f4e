// How much batching changes what the model computes: the same prompts
// generated alone and together, step by step.
//
// A row's numbers in a batched forward pass differ from the same row alone
// only through float rounding: matrix products whose row count changes take
// another kernel path (kernels::MatMul: the register-blocked decode path up
// to 8 rows, the packed GEMM above) and sum in another order. Near-ties can
// then flip a token or an expert choice (which keys the watermark), so these
// figures are measured rather than assumed.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "runtime/batch_engine.h"

namespace epwa {

// Everything one sequence saw, per generated token (step).
struct RecordedSequence {
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;   // [steps][vocab]: raw logits before sampling
  // [steps][moe_layers * top_k]: the predicting row's chosen experts, each
  // layer's top-k sorted by index (a set: which experts run, not their order).
  std::vector<std::vector<int32_t>> experts;
  int64_t top_k = 0;
};

// Generates every prompt with `options` (its logits_processor and on_token
// are replaced) on a BatchEngine with `batch`, all submitted at once, and
// records each step. parallel 1 runs them one after another, each alone.
std::vector<RecordedSequence> RecordGeneration(Engine& engine,
                                               const std::vector<std::vector<int32_t>>& prompts,
                                               const GenerateOptions& options, BatchOptions batch);

struct DivergenceReport {
  int64_t sequences = 0;
  int64_t token_diverged = 0;           // sequences whose tokens differ somewhere
  std::vector<int64_t> first_token_divergence;  // per sequence: first differing step, -1 if none
  // Steps where both runs had the same context (up to and including the
  // first differing token), and among them the (step, MoE layer) pairs
  // whose chosen top-k expert sets differ.
  int64_t steps_compared = 0;
  int64_t expert_choices_compared = 0;
  int64_t expert_choices_differ = 0;
  std::vector<int64_t> first_expert_divergence;  // per sequence: first step with one, -1 if none
  double max_abs_logit_diff = 0;        // over compared steps and the vocabulary
  double max_rel_logit_diff = 0;        // max |a - b| / max(1, max |a|) per step
  // At each step whose token differs: the reference run's gap between its
  // two largest logits (a near-tie explains a flip).
  std::vector<double> flip_margins;
};

// Compares `other` (e.g. batched) against `reference` (alone), sequence by sequence.
DivergenceReport CompareGenerations(const std::vector<RecordedSequence>& reference,
                                    const std::vector<RecordedSequence>& other);

}  // namespace epwa
