// The watermark's evaluation protocol on a loaded model, shared by
// `epwa eval watermark` (figures for the README) and the CTest suite (bars):
//
// - round trip: watermarked generations (one per prompt and seed) detected by
//   full with and without the prompt, by CSPV and by PEPI; the expert
//   recovery rate; scoring with off-by-one alignments (must fall to noise);
// - null: held-out human paragraphs and unwatermarked generations from the
//   same prompts and seeds, with and without dedup;
// - guard: every watermarked generation must differ from the plain one at the
//   same seed (a watermark that changes nothing is no watermark);
// - cost: decode time per token with and without the watermark, interleaved.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/engine.h"
#include "watermark/detector.h"
#include "watermark/key.h"
#include "watermark/oracle.h"
#include "watermark/processor.h"

namespace epwa::wm {

struct EvalOptions {
  std::vector<Scheme> schemes = {Scheme::kGsg, Scheme::kEwp, Scheme::kKgw};
  int generations = 100;        // watermarked texts per scheme
  int new_tokens = 200;
  int null_generations = 200;   // unwatermarked texts
  int human_paragraphs = 1000;  // held-out paragraphs scored as negatives
  int prompt_words = 8;         // prompts: the first words of held-out paragraphs
  double gamma = 0.25, delta = 2.0;
  int router_layer = -1;
  DetectOptions detect;
  int64_t cspv_sample = 48;
  uint64_t seed = 1;
  std::string human_text;  // the held-out corpus (contents)
  const ExpertOracle* oracle = nullptr;  // PEPI is evaluated when given
  // Robustness: fractions of generated tokens replaced by random ids.
  std::vector<double> substitution_rates;
  // Cross-precision: detection by this engine (the same model at another
  // quantization level), with and without a router-margin filter.
  Engine* other_engine = nullptr;
  double other_min_margin = 0.1;
  std::function<void(const std::string&)> progress;
};

// z-scores of one detector over a set of texts; texts too short to score are
// counted apart.
struct ZSet {
  std::vector<double> z;
  int64_t too_short = 0;
  int Detected(double threshold) const;
  nlohmann::json Json(double threshold) const;  // n, detected, mean, sd, quantiles, max
};

struct SchemeEval {
  Scheme scheme = Scheme::kGsg;
  ZSet full_prompt, full_no_prompt, shift0, shift2, cspv, pepi;
  // shift0 restricted to positions whose expert differs from the previous
  // position's: where the misaligned pairing cannot borrow the right list.
  ZSet shift0_changed;
  double adjacent_same_expert = 0;  // how often the router keeps its expert
  // Mean number of distinct (seed, token) pairs scored per watermarked text
  // (with the prompt, after dedup): the evidence a text carries. With few
  // experts, repeated pairs are many and scored once.
  double mean_scored_pairs = 0;
  std::vector<ZSet> substituted;    // per EvalOptions::substitution_rates
  ZSet other_level, other_level_margin;
  double other_level_expert_agreement = 0, other_level_expert_agreement_margin = 0;
  double other_level_margin_kept = 0;  // fraction of tokens at or above the margin
  double expert_recovery_prompt = 0, expert_recovery_no_prompt = 0;  // fraction of steps
  double pepi_agreement = 0;     // oracle vs the generation's expert
  double mean_bias = 0;
  int identical_to_plain = 0;    // generations equal to the unwatermarked one
  double decode_ms_per_token = 0;
};

struct EvalReport {
  std::vector<SchemeEval> schemes;
  ZSet human_full, human_no_dedup, human_cspv, human_pepi, human_kgw;
  ZSet plain_full, plain_no_dedup, plain_cspv, plain_pepi, plain_kgw;
  double plain_decode_ms_per_token = 0;
  int64_t human_paragraphs_used = 0, human_paragraphs_skipped = 0;
  double seconds = 0;
  nlohmann::json Json(const EvalOptions& o) const;
};

EvalReport EvaluateWatermark(Engine& engine, const SecretKey& key, const EvalOptions& options);

// The fixed, public key of evaluations (SHA-256 of "epwa evaluation key"), so
// published figures can be rerun exactly. Never use it to mark real text.
SecretKey EvaluationKey();

// Paragraphs of a text (separated by blank lines), whitespace-trimmed.
std::vector<std::string> Paragraphs(const std::string& text);

}  // namespace epwa::wm
