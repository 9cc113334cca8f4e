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
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/engine.h"
#include "text/wordnet.h"
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
  int router_layer = kSchemeDefaultLayer;
  DetectOptions detect;
  int64_t cspv_sample = 48;
  uint64_t seed = 1;
  std::string human_text;  // the held-out corpus (contents): paragraphs split at blank lines
  // Human texts given one by one (a JSONL corpus); used instead of
  // human_text's paragraphs when not empty.
  std::vector<std::string> human_texts;
  const ExpertOracle* oracle = nullptr;  // PEPI is evaluated when given
  // Robustness: fractions of generated tokens replaced by random ids.
  std::vector<double> substitution_rates;
  // Fractions of generated tokens deleted, and after which a random token is
  // inserted.
  std::vector<double> deletion_rates, insertion_rates;
  // Text-level attacks on the decoded text, detected after re-tokenization:
  // WordNet synonyms replacing this fraction of the words (MarkLLM's
  // SynonymSubstitution; needs `synonyms`), and decoding then encoding
  // again with no edit.
  std::vector<double> synonym_rates;
  // Copy-paste: a span of this fraction of new_tokens watermarked tokens
  // put at a random place among human tokens, new_tokens in all, detected
  // without a prompt.
  std::vector<double> copy_paste_fractions;
  // The emoji attack (Kirchenbauer et al. 2023): the user asks the model to
  // put an emoji after every word and strips them from the answer. Here a
  // fixed token (the first of `emoji_text`) is forced after every generated
  // token while the watermark runs as usual; the stripped ids are detected
  // with the prompt. Empty: not run.
  std::string emoji_text;
  const text::SynonymTable* synonyms = nullptr;
  // MarkMyWords' size: tokens needed to reach this p-value.
  double size_p_value = 0.02;
  // z against length: each watermarked text (with the prompt) scored on its
  // first n generated tokens, for every n here up to new_tokens.
  std::vector<int> z_lengths = {25, 50, 100, 150, 200};
  // Every z-score in the JSON (for plots: `--report`), not only summaries.
  bool raw_z = false;
  // Cross-precision: detection by this engine (the same model at another
  // quantization level), with and without a router-margin filter.
  Engine* other_engine = nullptr;
  double other_min_margin = 0.1;
  // Texts per forward pass of the scoring (Engine::ScoreBatch): human
  // paragraphs, unwatermarked and watermarked texts and their attacked
  // copies. Figures do not depend on it, only the time.
  int score_batch_texts = 32;
  std::function<void(const std::string&)> progress;
};

// z-scores of one detector over a set of texts; texts too short to score are
// counted apart.
struct ZSet {
  std::vector<double> z;
  int64_t too_short = 0;
  int Detected(double threshold) const;
  // n, detected, mean, sd, quantiles, max; with `raw`, every z as "z".
  nlohmann::json Json(double threshold, bool raw = false) const;
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
  std::vector<ZSet> deleted, inserted, synonyms, copy_paste;  // per the matching rates
  ZSet retokenized, emoji;
  std::vector<ZSet> by_length;  // per EvalOptions::z_lengths
  // This scheme's own null: the human texts and the unwatermarked
  // generations scored under its lists (v1 and KGW also have the report's
  // human_full / human_kgw, which are the same numbers).
  ZSet human, plain;
  // Against `human`: the area under the ROC curve of full_prompt, and the
  // true-positive rate at the thresholds that give 1% and 0.1% false alarms
  // on the human texts (empirical, not from the normal approximation).
  double roc_auc = 0, tpr_at_fpr_1pct = 0, tpr_at_fpr_01pct = 0;
  double threshold_fpr_1pct = 0, threshold_fpr_01pct = 0;
  // MarkMyWords' size: the median number of generated tokens after which the
  // p-value first falls to EvalOptions::size_p_value (texts that never do
  // count as infinitely long), and how many never do.
  double size_median = 0;
  int64_t size_never = 0;
  // Quality: perplexity of the generated tokens under the unwatermarked
  // model (the report's plain_perplexity is the same for plain text), and
  // distinct-2 (distinct token bigrams / bigrams).
  double perplexity = 0, distinct2 = 0;
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
  double plain_perplexity = 0, plain_distinct2 = 0;
  int64_t human_paragraphs_used = 0, human_paragraphs_skipped = 0;
  // Sequences generated together (the engine's plan, `--parallel`): above 1
  // the generations ran batched (GenerateAll), and each one's decode time per
  // token is that of the steps it shared.
  int generation_parallel = 1;
  // The scoring's forward passes on the evaluated model (the other level's
  // are not counted): texts and tokens scored and the time they took.
  int64_t texts_scored = 0, tokens_scored = 0;
  double scoring_seconds = 0;
  int score_batch_texts = 1;
  double seconds = 0;
  nlohmann::json Json(const EvalOptions& o) const;
};

EvalReport EvaluateWatermark(Engine& engine, const SecretKey& key, const EvalOptions& options);

// The sampling of every evaluation text: new_tokens tokens (EOS ignored, so
// every text has the same length) with the model's default temperature,
// top-k and top-p.
GenerateOptions EvaluationGenerateOptions(const Engine& engine, int new_tokens);

// The fixed, public key of evaluations (SHA-256 of "epwa evaluation key"), so
// published figures can be rerun exactly. Never use it to mark real text.
SecretKey EvaluationKey();

// Empirical figures of a detector from its z-scores on positives and
// negatives (exposed for tests): ROC AUC (ties count half), and the TPR at
// the largest threshold whose false-alarm rate on the negatives is at most
// `fpr` (the threshold is the (floor(fpr * N) + 1)-th largest negative).
double RocAuc(const std::vector<double>& positives, const std::vector<double>& negatives);
double ThresholdAtFpr(const std::vector<double>& negatives, double fpr);
// Tokens a detector needs to reach p-value `p` on a text scored in order:
// the smallest (position - first + 1) at which the running tally of the
// filtered tokens has a binomial p-value <= p; nullopt if it never does.
std::optional<int64_t> TokensToDetect(std::span<const TokenScore> tokens, int64_t first, double p0,
                                      const DetectOptions& o, double p);

// Paragraphs of a text (separated by blank lines), whitespace-trimmed.
std::vector<std::string> Paragraphs(const std::string& text);

}  // namespace epwa::wm
