// Detection end to end on a loaded model: turning user input (text or ids,
// with or without the prompt) into the sequence to score, and running the one
// forward pass that recovers every position's expert.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "runtime/engine.h"
#include "watermark/detector.h"
#include "watermark/logprobs.h"
#include "watermark/oracle.h"

namespace epwa::wm {

// The sequence a detector scores: ids[0 .. first) is context (the prompt, or
// BOS when the prompt is not given and the model adds one), ids[first ..) is
// the text under test.
struct DetectInput {
  std::vector<int32_t> ids;
  int64_t first = 0;
  bool prompt_given = false;
  bool bos_prepended = false;
};

// Text: tokenized exactly as the model's tokenizer does. With a prompt the
// two are tokenized together (as they were generated: one sequence), and the
// text starts where the prompt's own tokens end. Throws epwa::Error for an
// empty text.
DetectInput InputFromText(const Engine& engine, const std::optional<std::string>& prompt,
                          const std::string& text);
// Ids as generated (no retokenization). Throws epwa::Error for an empty list
// or ids outside the model's vocabulary.
DetectInput InputFromIds(const Engine& engine, const std::optional<std::string>& prompt,
                         const std::vector<int32_t>& ids);

// Every scorable token of `input` under `lists`: for expert-keyed lists one
// causal forward pass (Engine::Score) recovers the router decision at each
// position of router slot `slot`; KGW needs no model pass. `shift` as in
// ScoreByRouting. When `score` is given it receives the forward pass (logits
// for PEPI); without it the pass stops at the deepest router slot the
// scores read (DeepestSlotRead).
std::vector<TokenScore> ScoreInput(Engine& engine, const DetectInput& input, GreenLists& lists,
                                   int slot, int shift = 1, ScoreResult* score = nullptr);

// ScoreInput (shift 1) for many inputs with their forward passes batched
// (Engine::ScoreBatch): result[i] equals ScoreInput(inputs[i]) exactly. When
// `passes` is given it receives each forward pass, with logits only if
// `logits` (PEPI needs them; the other methods read the routing alone).
// Without `passes` and logits, each pass stops at the deepest router slot
// the scores read (DeepestSlotRead; Engine::ScoreBatch's
// routing_through_slot).
std::vector<std::vector<TokenScore>> ScoreInputs(Engine& engine, std::span<const DetectInput> inputs,
                                                 GreenLists& lists, int slot, bool logits = false,
                                                 std::vector<ScoreResult>* passes = nullptr);

}  // namespace epwa::wm

namespace epwa::wm {

// PEPI with a model: the oracle's expert for every predicting position
// t in [max(first, 1) - 1, T - 1) of a forward pass over T ids ([T], 0 at
// positions that key no scored token), from the top-k of row t's logits.
std::vector<int32_t> PredictExperts(const ExpertOracle& oracle, const ScoreResult& pass,
                                    int64_t vocab, int64_t first);

// PEPI without a model: entry i of the file is generated token i and the
// distribution it was drawn from, so the oracle's expert for entry i keys
// token i. Every entry is scored.
std::vector<TokenScore> ScoreLogprobs(const LogprobsFile& file, const ExpertOracle& oracle,
                                      GreenLists& lists);
// The same, streamed from the logprobs file `path` as it is parsed (no
// entry is kept: memory is the file plus the parser's index). `scan`
// receives what the reader saw. Errors name the file and the entry.
std::vector<TokenScore> ScoreLogprobsFile(const std::string& path, const ExpertOracle& oracle,
                                          GreenLists& lists, LogprobsScan* scan);

// PEPI training data from a corpus: the text is tokenized, cut into windows
// of BOS + (window - 1) tokens, and every position of every window yields one
// example: the top-k of its output distribution and the argmax expert of
// router slot `slot` there. Examples come out in corpus order (so the last
// fraction can be held out as unseen text). Stops after max_tokens positions.
void CollectOracleExamples(Engine& engine, const std::string& text, int64_t window, int64_t max_tokens,
                           int slot, int top_k, std::vector<TopLogprobs>* x, std::vector<int32_t>* labels);

}  // namespace epwa::wm
