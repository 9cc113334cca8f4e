// epwa score: one causal forward pass over a text, with per-position
// log-probabilities, alternatives and the full routing trace.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "base/error.h"
#include "cli.h"
#include "io/npy.h"

namespace epwa::cli {

Runner RegisterScore(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "score", "log-probabilities, top-k alternatives and MoE routing for every position");
  struct Flags {
    ModelFlags model;
    std::string prompt, ids, logits_out;
    int32_t top = 5;
    bool json = false;
    bool no_routing = false;
  };
  auto f = std::make_shared<Flags>();
  AddModelFlags(cmd, &f->model);
  auto* p = cmd->add_option("-p,--prompt,--text", f->prompt, "text to score (BOS added as for run)");
  auto* i = cmd->add_option("--ids", f->ids, "token ids to score, e.g. 1,2,3 (used verbatim)");
  p->excludes(i);
  cmd->add_option("--top", f->top, "alternatives to list per position")->check(CLI::Range(0, 1000));
  cmd->add_option("--logits-out", f->logits_out, "write the [T, vocab] float32 logits as .npy");
  cmd->add_flag("--json", f->json, "print one JSON object (default: a table)");
  cmd->add_flag("--no-routing", f->no_routing, "leave router logits out of the JSON");

  return [f, p, i]() {
    Require(p->count() + i->count() == 1, "score needs the text: give -p TEXT or --ids 1,2,3");
    Require(i->count() || !f->prompt.empty(), "nothing to score: the text is empty");
    std::vector<int32_t> ids;
    if (i->count()) ids = ParseIdList(f->ids, "--ids");
    auto engine = LoadEngine(f->model, /*quiet=*/f->json);
    if (!i->count()) ids = engine->EncodePrompt(f->prompt);
    Require(!ids.empty(), "nothing to score: the text has no tokens");
    const Tokenizer& tok = engine->tokenizer();
    const int64_t V = engine->config().vocab_size;
    for (int32_t id : ids)
      Require(id < V, "token id " + std::to_string(id) + " is outside the vocabulary (vocab_size " +
                          std::to_string(V) + ")");
    ScoreResult r = engine->Score(ids);
    const int64_t T = static_cast<int64_t>(ids.size());
    if (!f->logits_out.empty()) WriteNpyF32(f->logits_out, r.logits.data(), {T, V});

    auto piece = [&](int32_t id) {
      return id < tok.VocabSize() ? tok.Decode(std::span<const int32_t>(&id, 1)) : std::string();
    };
    // Ids past the tokenizer's vocabulary (padding rows of the embedding)
    // have no text.
    auto raw_piece = [&](int32_t id) { return id < tok.VocabSize() ? tok.IdToPiece(id) : std::string(); };
    // Log-softmax of row t gives the log-probability of token t + 1.
    std::vector<float> logprobs(V);
    std::vector<int32_t> order(V);
    json positions = json::array();
    double total_logprob = 0;
    std::vector<float> row_lp(T, 0.f);
    for (int64_t t = 0; t < T; ++t) {
      json pos{{"position", t}, {"id", ids[t]}, {"piece", raw_piece(ids[t])}, {"text", piece(ids[t])}};
      if (t == 0) {
        pos["logprob"] = nullptr;
        pos["top"] = json::array();
      } else {
        const float* row = r.logits.data() + (t - 1) * V;
        const float m = *std::max_element(row, row + V);
        double sum = 0;
        for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v] - m));
        const float lse = m + static_cast<float>(std::log(sum));
        for (int64_t v = 0; v < V; ++v) logprobs[v] = row[v] - lse;
        pos["logprob"] = logprobs[ids[t]];
        row_lp[t] = logprobs[ids[t]];
        total_logprob += logprobs[ids[t]];
        std::iota(order.begin(), order.end(), 0);
        const int64_t k = std::min<int64_t>(f->top, V);
        std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
          return logprobs[a] != logprobs[b] ? logprobs[a] > logprobs[b] : a < b;
        });
        json top = json::array();
        for (int64_t j = 0; j < k; ++j)
          top.push_back({{"id", order[j]}, {"text", piece(order[j])}, {"logprob", logprobs[order[j]]}});
        pos["top"] = top;
      }
      json routing = json::array();
      for (int64_t m = 0; m < r.routing.num_moe_layers(); ++m) {
        json layer{{"layer", r.routing.moe_layers()[m]},
                   {"experts", std::vector<int32_t>(r.routing.Experts(t, m).begin(), r.routing.Experts(t, m).end())},
                   {"weights", std::vector<float>(r.routing.Weights(t, m).begin(), r.routing.Weights(t, m).end())}};
        if (!f->no_routing)
          layer["router_logits"] = std::vector<float>(r.routing.Logits(t, m).begin(), r.routing.Logits(t, m).end());
        routing.push_back(layer);
      }
      pos["routing"] = routing;
      positions.push_back(pos);
    }
    const double scored = static_cast<double>(std::max<int64_t>(T - 1, 1));
    const double ppl = std::exp(-total_logprob / scored);
    // Engine::Score has refused non-finite logits already; a perplexity can
    // still overflow double when the logits are finite but absurdly spread,
    // and JSON would print that as null.
    Require(std::isfinite(total_logprob) && (T < 2 || std::isfinite(ppl)),
            "the perplexity of this text overflows (mean log-probability " +
                std::to_string(-total_logprob / scored) +
                " per token); the model's logits are implausibly large");
    if (f->json) {
      PrintJson(json{{"ids", ids},
                     {"num_tokens", T},
                     {"total_logprob", total_logprob},
                     {"perplexity", T > 1 ? json(ppl) : json(nullptr)},
                     {"moe_layers", r.routing.moe_layers()},
                     {"positions", positions},
                     {"logits_out", f->logits_out.empty() ? json(nullptr) : json(f->logits_out)}});
      return 0;
    }
    std::printf("%5s %8s %10s  %-20s %s\n", "pos", "id", "logprob", "token", "experts (last MoE layer)");
    for (int64_t t = 0; t < T; ++t) {
      std::string experts;
      if (r.routing.num_moe_layers() > 0)
        for (int32_t e : r.routing.Experts(t, r.routing.num_moe_layers() - 1))
          experts += std::to_string(e) + " ";
      json s = raw_piece(ids[t]);
      std::printf("%5lld %8d %10s  %-20s %s\n", (long long)t, ids[t],
                  t == 0 ? "-" : std::to_string(row_lp[t]).c_str(),
                  s.dump(-1, ' ', false, json::error_handler_t::replace).c_str(), experts.c_str());
    }
    std::printf("tokens %lld, total logprob %.4f, perplexity %.4f\n", (long long)T, total_logprob, ppl);
    return 0;
  };
}

}  // namespace epwa::cli
