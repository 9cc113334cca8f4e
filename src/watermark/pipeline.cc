#include "watermark/pipeline.h"

#include <algorithm>
#include <functional>

#include "base/error.h"

namespace epwa::wm {

DetectInput InputFromText(const Engine& engine, const std::optional<std::string>& prompt,
                          const std::string& text) {
  Require(!text.empty(), "the text to test is empty");
  DetectInput in;
  if (prompt) {
    Require(!prompt->empty(), "--prompt is empty; leave it out to detect without the prompt");
    const std::vector<int32_t> prompt_ids = engine.EncodePrompt(*prompt);
    in.ids = engine.EncodePrompt(*prompt + text);
    // The prompt's tokens normally form a prefix of the joint tokenization;
    // where a token spans the boundary, scoring starts after the common part.
    const auto diff = std::mismatch(prompt_ids.begin(), prompt_ids.end(), in.ids.begin(), in.ids.end());
    in.first = std::max<int64_t>(1, diff.first - prompt_ids.begin());
    in.prompt_given = true;
  } else {
    in.ids = engine.EncodePrompt(text);
    in.bos_prepended = engine.defaults().add_bos_token && !in.ids.empty() &&
                       in.ids.front() == engine.defaults().bos_token_id;
    in.first = in.bos_prepended ? 1 : 0;
  }
  Require(static_cast<int64_t>(in.ids.size()) > in.first, "the text to test has no tokens");
  return in;
}

DetectInput InputFromIds(const Engine& engine, const std::optional<std::string>& prompt,
                         const std::vector<int32_t>& ids) {
  Require(!ids.empty(), "the id list to test is empty");
  const int64_t vocab = engine.config().vocab_size;
  for (int32_t id : ids)
    Require(id >= 0 && id < vocab,
            "token id " + std::to_string(id) + " is outside this model's vocabulary of " +
                std::to_string(vocab) + " ids (were these ids made by another tokenizer?)");
  DetectInput in;
  if (prompt) {
    Require(!prompt->empty(), "--prompt is empty; leave it out to detect without the prompt");
    in.ids = engine.EncodePrompt(*prompt);
    in.prompt_given = true;
  } else if (engine.defaults().add_bos_token && engine.defaults().bos_token_id >= 0 &&
             ids.front() != engine.defaults().bos_token_id) {
    // Generation started from BOS + prompt; BOS alone is the closest context
    // a detector without the prompt can give the router.
    in.ids.push_back(engine.defaults().bos_token_id);
    in.bos_prepended = true;
  }
  in.first = static_cast<int64_t>(in.ids.size());
  in.ids.insert(in.ids.end(), ids.begin(), ids.end());
  return in;
}

std::vector<TokenScore> ScoreInput(Engine& engine, const DetectInput& input, GreenLists& lists,
                                   int slot, int shift, ScoreResult* score) {
  if (lists.keyed_by() == KeyedBy::kPreviousToken && score == nullptr)
    return ScoreByPreviousToken(input.ids, input.first, lists);
  ScoreResult local;
  ScoreResult& r = score ? *score : local;
  if (const int deepest = DeepestSlotRead(lists.keyed_by(), slot, engine.config().NumMoeLayers());
      score == nullptr && slot >= 0 && deepest >= 0) {
    // Nobody sees the pass: it stops at the deepest router the scores read,
    // with the routing up to it exactly a whole pass's (Engine::ScoreBatch).
    r = std::move(engine.ScoreBatch(std::span(&input.ids, 1), /*logits=*/false, deepest)[0]);
  } else {
    r = engine.Score(input.ids);
  }
  if (lists.keyed_by() == KeyedBy::kPreviousToken) return ScoreByPreviousToken(input.ids, input.first, lists);
  Require(r.routing.num_tokens() == static_cast<int64_t>(input.ids.size()),
          "the model returned no routing, so experts cannot be recovered (is it an MoE model?)");
  if (IsV2(lists.keyed_by())) {
    Require(shift == 1, "EPW-A v2 is scored at the alignment it was generated with only");
    return ScoreByContext(input.ids, input.first, r.routing, slot, lists);
  }
  return ScoreByRouting(input.ids, input.first, r.routing, slot, lists, shift);
}

std::vector<std::vector<TokenScore>> ScoreInputs(Engine& engine, std::span<const DetectInput> inputs,
                                                 GreenLists& lists, int slot, bool logits,
                                                 std::vector<ScoreResult>* passes) {
  std::vector<std::vector<TokenScore>> out(inputs.size());
  if (lists.keyed_by() == KeyedBy::kPreviousToken && passes == nullptr) {
    for (size_t i = 0; i < inputs.size(); ++i) out[i] = ScoreByPreviousToken(inputs[i].ids, inputs[i].first, lists);
    return out;
  }
  std::vector<std::vector<int32_t>> texts;
  texts.reserve(inputs.size());
  for (const DetectInput& in : inputs) texts.push_back(in.ids);
  // Without logits, and with nobody to hand the passes to, the passes stop
  // at the deepest router the scores read.
  const int deepest = DeepestSlotRead(lists.keyed_by(), slot, engine.config().NumMoeLayers());
  const bool route_only = !logits && passes == nullptr && slot >= 0 && deepest >= 0;
  std::vector<ScoreResult> local = engine.ScoreBatch(texts, logits, route_only ? deepest : -1);
  for (size_t i = 0; i < inputs.size(); ++i) {
    const DetectInput& in = inputs[i];
    const RoutingTrace& routing = local[i].routing;
    if (lists.keyed_by() == KeyedBy::kPreviousToken) {
      out[i] = ScoreByPreviousToken(in.ids, in.first, lists);
      continue;
    }
    Require(routing.num_tokens() == static_cast<int64_t>(in.ids.size()),
            "the model returned no routing, so experts cannot be recovered (is it an MoE model?)");
    out[i] = IsV2(lists.keyed_by()) ? ScoreByContext(in.ids, in.first, routing, slot, lists)
                                    : ScoreByRouting(in.ids, in.first, routing, slot, lists, 1);
  }
  if (passes) *passes = std::move(local);
  return out;
}

}  // namespace epwa::wm

namespace epwa::wm {

std::vector<int32_t> PredictExperts(const ExpertOracle& oracle, const ScoreResult& pass,
                                    int64_t vocab, int64_t first) {
  const int64_t T = static_cast<int64_t>(pass.ids.size());
  std::vector<int32_t> experts(static_cast<size_t>(T), 0);
  for (int64_t t = std::max<int64_t>(first, 1) - 1; t + 1 < T; ++t)
    experts[t] = oracle.PredictExpert(TopKFromLogits(
        std::span<const float>(pass.logits.data() + t * vocab, static_cast<size_t>(vocab)),
        oracle.info().top_k));
  return experts;
}

std::vector<TokenScore> ScoreLogprobs(const LogprobsFile& file, const ExpertOracle& oracle,
                                      GreenLists& lists) {
  std::vector<TokenScore> out;
  out.reserve(file.tokens.size());
  for (size_t i = 0; i < file.tokens.size(); ++i) {
    TokenScore s;
    s.position = static_cast<int64_t>(i);
    s.token = file.tokens[i].id;
    s.seed = oracle.PredictExpert(file.tokens[i].top);
    s.green = lists.For(s.seed).Contains(s.token);
    out.push_back(s);
  }
  return out;
}

std::vector<TokenScore> ScoreLogprobsFile(const std::string& path, const ExpertOracle& oracle,
                                          GreenLists& lists, LogprobsScan* scan) {
  std::vector<TokenScore> out;
  *scan = ScanLogprobsFile(
      path, oracle.info().vocab_size,
      [&](int64_t i, const LogprobsEntry& e, const std::function<std::string()>& where) {
        TokenScore s;
        s.position = i;
        s.token = e.id;
        try {
          s.seed = oracle.PredictExpert(e.top);
        } catch (const Error& err) {
          // The oracle's message names "the top-logprobs input"; say which.
          throw Error(where() + ": " + err.what());
        }
        s.green = lists.For(s.seed).Contains(s.token);
        out.push_back(s);
      });
  return out;
}

void CollectOracleExamples(Engine& engine, const std::string& text, int64_t window, int64_t max_tokens,
                           int slot, int top_k, std::vector<TopLogprobs>* x, std::vector<int32_t>* labels) {
  Require(window >= 2, "the training window must hold at least 2 tokens");
  // Tokenize only as much of the corpus as the examples need: paragraph by
  // paragraph (blank-line separated), a few tokens beyond max_tokens.
  std::vector<int32_t> ids;
  for (size_t at = 0; at < text.size() && static_cast<int64_t>(ids.size()) < max_tokens + window;) {
    size_t end = text.find("\n\n", at);
    end = end == std::string::npos ? text.size() : end + 2;
    const std::vector<int32_t> part = engine.tokenizer().Encode(std::string_view(text).substr(at, end - at));
    for (int32_t id : part) ids.push_back(id);  // (insert() trips a false GCC 12 warning)
    at = end;
  }
  Require(!ids.empty(), "the training corpus has no tokens");
  const int64_t V = engine.config().vocab_size;
  const int32_t bos = engine.defaults().bos_token_id;
  const int64_t body = bos >= 0 ? window - 1 : window;
  int64_t taken = 0;
  for (size_t start = 0; start < ids.size() && taken < max_tokens; start += static_cast<size_t>(body)) {
    std::vector<int32_t> chunk;
    if (bos >= 0) chunk.push_back(bos);
    const size_t end = std::min(ids.size(), start + static_cast<size_t>(body));
    for (size_t k = start; k < end; ++k) chunk.push_back(ids[k]);
    const ScoreResult r = engine.Score(chunk);
    for (int64_t t = 0; t < static_cast<int64_t>(chunk.size()) && taken < max_tokens; ++t, ++taken) {
      x->push_back(TopKFromLogits(std::span<const float>(r.logits.data() + t * V, static_cast<size_t>(V)), top_k));
      labels->push_back(ChooseExpert(r.routing, t, slot).expert);
    }
  }
}

}  // namespace epwa::wm
