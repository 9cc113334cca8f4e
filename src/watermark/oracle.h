// PEPI expert oracle: predicts which MoE expert the router chose at a
// position from nothing but the top-k log-probabilities an API returns there.
//
// Why it exists. The watermark keys the green list of the token generated at
// step t on e = argmax of the last MoE layer's router logits at position t-1
// (the position that predicts it). A black-box detector sees no weights and no
// routing, only, per generated token, the top-k (id, logprob) pairs of the
// distribution that token was drawn from (OpenAI-style top_logprobs, k <= 20).
// The watermark owner trains this oracle on the model's own routing over a
// text corpus, ships it to the detector, and the detector uses its expert
// probabilities in place of the unseen router decision.
//
// Model. An "embedding bag" over sparse features of the top-k list (see
// oracle.cc, "Feature design"): each listed token v contributes a learned
// vector for "v is listed" plus one scaled by its log-probability, the top-1
// token one more, and a one-hot bucket of the top-1 log-probability one more.
// With hidden = 0 the bag has num_experts entries and is the experts' scores
// (multinomial logistic regression); with hidden = H it has H entries and
// goes through ReLU and an [H, num_experts] layer. The hidden layer is the
// default because it predicts better (tiny-moe, Jargon File, held out: k = 20
// 84.7% against 82.5% for the linear model; k = 5 78.6% against 75.6%; the
// first 1024 entries of the full distribution 91.4%; chance 12.5%, most
// common expert 32%). Prediction costs O(k * width + H * experts) and
// allocates nothing for inputs already in canonical order.
//
// Inputs. Only the first info().top_k entries of an input (in canonical
// order) are used; top_k is at most kMaxTopK = 1024, which is also the best
// choice for a full distribution (oracle.cc explains). An input may list
// fewer (an API that returns fewer, or none): missing entries are treated
// exactly like tokens outside the top-k, i.e. they contribute nothing, so the
// prediction rests on the listed entries alone (for an empty list, a learned
// constant). That costs accuracy: train with the k the detector will get (an
// oracle trained at k = 20 and given 5 entries scores 65%, one trained at
// k = 5 scores 78.6%).
// Entries need not be sorted; they are put in canonical order (descending
// logprob, lower id first on ties) before use. Every id must lie in
// [0, vocab_size) and appear once, and every logprob must be finite and
// <= 0; anything else is an epwa::Error naming the problem.
//
// File format, version 1 (all integers and floats little-endian):
//   bytes [0, 8)        magic "EPWORCL1"
//   bytes [8, 16)       u64 n: length of the JSON metadata
//   bytes [16, 16+n)    JSON metadata (UTF-8): {"format": "epwa-expert-oracle",
//                       "version": 1, "info": {every OracleInfo field, including
//                       "features" (design name) and "hidden"}, "tensors": [
//                       {"name": "embed", "shape": [R, W]},
//                       {"name": "embed_bias", "shape": [W]},
//                       and only when hidden > 0:
//                       {"name": "out", "shape": [hidden, num_experts]},
//                       {"name": "out_bias", "shape": [num_experts]}]}
//                       R = feature rows of the design (a multiple of
//                       vocab_size plus bucket rows), W = hidden or, when
//                       hidden = 0, num_experts
//   then                the float32 tensors in the order listed, row-major
//   last 32 bytes       SHA-256 of every byte before it
// Load validates every part (magic, lengths, JSON schema, shapes against the
// design and vocabulary, exact byte count, checksum, finite weights) and
// rejects anything wrong with one sentence that names the file.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace epwa::wm {

// The top-k entries of one position's output distribution, in descending
// log-probability order. Log-probabilities are natural-log probabilities over
// the full vocabulary (log-softmax of the logits, not renormalised over k).
struct TopLogprobs {
  std::vector<int32_t> ids;     // [k]
  std::vector<float> logprobs;  // [k]
};

// Log-softmax of one logits row ([vocab]), then its k largest entries in
// descending order (ties: lower id first). Logits of -inf (masked tokens) are
// allowed but never listed, so fewer than k entries come back when fewer than
// k logits are finite. NaN or +inf logits, a row without a finite logit, an
// empty row or k < 1 are an epwa::Error.
TopLogprobs TopKFromLogits(std::span<const float> logits, int k);

// What an oracle was trained for and how well it did; stored in the file.
struct OracleInfo {
  std::string router_hash;  // IRSH of the model whose routing it predicts
  int router_layer = -1;    // MoE-layer slot whose argmax it predicts, as the caller gave it
  int num_experts = 0;
  int vocab_size = 0;
  int top_k = 0;            // entries of an input it uses (the API's k)
  std::string corpus;       // free text: what it was trained on
  // Filled in by Train (values passed in are ignored):
  std::string features;     // feature design (OracleTrainOptions::features)
  int hidden = 0;           // hidden units; 0 = multinomial logistic regression
  int64_t train_examples = 0, heldout_examples = 0;
  double train_accuracy = 0, heldout_accuracy = 0;  // heldout_accuracy is 0 when heldout_examples == 0
  double heldout_log_loss = 0;                      // mean -log p(true expert), nats
  double heldout_prior_accuracy = 0;  // accuracy of always guessing the most common training expert
  int epochs = 0;
  double learning_rate = 0, l2 = 0;
  int batch_size = 0;
  uint64_t seed = 0;
};

struct OracleTrainOptions {
  int epochs = 6;
  double learning_rate = 0.005;  // Adam step size, decayed linearly to a tenth; 0.02 suits hidden = 0
  double l2 = 1e-6;              // L2 penalty (lazy: applied to the rows a batch touches; not biases)
  double heldout_fraction = 0.1;
  uint64_t seed = 1;             // initial weights and the order examples are visited in
  // 0 = all hardware threads; at most kShards are used, and batches too small
  // to be worth splitting run on one. Results do not depend on it. The pool
  // spins while it waits, so on a machine whose cores are busy with other
  // work, 1 can be faster.
  int threads = 1;
  int batch_size = 256;
  std::string features = "bag_lp_top1";  // design name, see oracle.cc
  int hidden = 64;               // ReLU units between the embedding bag and the experts; 0 = linear
};

class ExpertOracle {
 public:
  static constexpr int kMaxExperts = 1024;
  static constexpr int kMaxVocab = 1 << 24;
  static constexpr int kMaxWidth = 1024;  // hidden units at most
  static constexpr int kMaxTopK = 1024;   // entries per input used at most (see oracle.cc)
  static constexpr int kShards = 4;       // gradient shards per batch: the most threads Train uses

  // Trains on examples x[i] with router decision labels[i] in
  // [0, info.num_experts). The LAST heldout_fraction of the examples is held
  // out and only used to report accuracy, so callers pass examples in corpus
  // order and the held-out part is unseen text. Deterministic for a given
  // seed, whatever opts.threads is. Throws epwa::Error on bad input.
  static ExpertOracle Train(std::span<const TopLogprobs> x, std::span<const int32_t> labels,
                            const OracleInfo& info, const OracleTrainOptions& opts);

  // The fewest examples Train accepts with this held-out fraction: enough
  // that at least one is held out (when the fraction is > 0) and one trained on.
  static int64_t MinTrainingExamples(double heldout_fraction);

  // Probability of each expert: probs_out is [num_experts] and sums to 1.
  // Thread-safe; allocates nothing for canonically ordered inputs (after a
  // thread's first input of more than 32 entries, which sizes a bitmap).
  void Predict(const TopLogprobs& x, std::span<float> probs_out) const;
  // The most probable expert (ties: lower index), always argmax of Predict.
  int32_t PredictExpert(const TopLogprobs& x) const;

  const OracleInfo& info() const { return info_; }
  const std::string& features() const { return info_.features; }

  void Save(const std::string& path) const;           // atomic: never a partial file
  static ExpertOracle Load(const std::string& path);  // validates everything
  // Load's parser on the file's bytes; `path` only names it in messages.
  static ExpertOracle FromBytes(const std::string& data, const std::string& path);

  // Every parameter in file order (embed, embed_bias, out, out_bias), for tests.
  std::vector<float> Parameters() const;

 private:
  ExpertOracle() = default;
  int width() const { return info_.hidden > 0 ? info_.hidden : info_.num_experts; }
  // Scores before softmax of a validated, canonically ordered list of n
  // entries: h is [width] scratch (the embedding bag), scores [num_experts].
  void Forward(const int32_t* ids, const float* lps, int n, float* h, float* scores) const;
  void PredictChecked(const TopLogprobs& x, float* probs) const;

  OracleInfo info_;
  int design_ = 0;
  int64_t rows_ = 0;               // feature rows of the design
  std::vector<float> embed_;       // [rows_, width]
  std::vector<float> embed_bias_;  // [width]
  std::vector<float> out_;         // [hidden, num_experts]; empty when linear
  std::vector<float> out_bias_;    // [num_experts]; empty when linear
};

}  // namespace epwa::wm
