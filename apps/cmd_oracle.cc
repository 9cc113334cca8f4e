// epwa oracle train: the PEPI expert oracle, learned from the model's own
// routing on a text corpus, for black-box detection from log-probabilities.
#include <cstdio>

#include "base/error.h"
#include "base/file_read.h"
#include "base/timer.h"
#include "cli.h"
#include "watermark/oracle.h"
#include "watermark/pipeline.h"

namespace epwa::cli {

Runner RegisterOracle(CLI::App& app) {
  auto* oracle = app.add_subcommand("oracle", "the PEPI expert oracle");
  oracle->require_subcommand(1);
  auto* cmd = oracle->add_subcommand(
      "train", "learn to predict the router's expert from top-k log-probabilities; prints and "
               "stores held-out accuracy");
  struct Flags {
    ModelFlags model;
    std::string corpus, out;
    int top_k = 20;
    int router_layer = -1;
    int64_t window = 256, max_tokens = 200000;
    wm::OracleTrainOptions train;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  AddModelFlags(cmd, &f->model);
  cmd->add_option("--corpus", f->corpus, "UTF-8 text to learn from")->required();
  cmd->add_option("--out", f->out, "oracle file to write")->required();
  cmd->add_option("--top-k", f->top_k,
                  "log-probabilities per position the API returns (default 20; at most 1024, which "
                  "is also the best choice for a full distribution)")
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--router-layer", f->router_layer, "MoE layer the watermark keys on (default -1)");
  cmd->add_option("--window", f->window, "tokens per forward pass (default 256)")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  cmd->add_option("--max-tokens", f->max_tokens, "positions to learn from at most (default 200000)")
      ->check(CLI::Range(int64_t{100}, int64_t{1} << 34));
  cmd->add_option("--epochs", f->train.epochs, "passes over the training data")->check(CLI::Range(1, 1000));
  cmd->add_option("--heldout", f->train.heldout_fraction,
                  "fraction of the corpus (its end) held out to measure accuracy (default 0.1)")
      ->check(FiniteNumber() & CLI::Range(0.01, 0.9));
  cmd->add_option("--seed", f->train.seed, "seed of the training order")->transform(Uint64Number());
  cmd->add_flag("--json", f->json, "print one JSON object");
  return [f]() {
    if (f->model.ctx == 0) f->model.ctx = f->window;
    auto engine = LoadEngine(f->model, /*quiet=*/f->json);
    const ModelConfig& c = engine->config();
    Require(c.IsMoe(), "the model is dense: there is no router for an oracle to predict");
    Require(f->window <= c.ContextLimit(), "--window exceeds the model's context");
    const int slot = wm::ResolveRouterLayer(f->router_layer, c.NumMoeLayers());
    Stopwatch clock;
    std::vector<wm::TopLogprobs> x;
    std::vector<int32_t> labels;
    wm::CollectOracleExamples(*engine, ReadRegularFile(f->corpus, kMaxTextInputBytes, "the --corpus text"), f->window, f->max_tokens, slot, f->top_k,
                              &x, &labels);
    const double collect_ms = clock.Millis();
    const int64_t needed = wm::ExpertOracle::MinTrainingExamples(f->train.heldout_fraction);
    char fraction[32];
    std::snprintf(fraction, sizeof(fraction), "%g", f->train.heldout_fraction);
    Require(static_cast<int64_t>(x.size()) >= needed,
            "the corpus '" + f->corpus + "' gives only " + std::to_string(x.size()) +
                " positions to learn from, too few to also hold out --heldout " + fraction +
                " of them for measuring accuracy: it needs at least " + std::to_string(needed) +
                " (use a longer corpus)");
    clock.Reset();
    wm::OracleInfo info;
    info.router_hash = engine->load_stats().router_hash;
    info.router_layer = slot;
    info.num_experts = static_cast<int>(c.num_experts);
    info.vocab_size = static_cast<int>(c.vocab_size);
    info.top_k = f->top_k;
    info.corpus = f->corpus;
    f->train.threads = engine->threads();
    const wm::ExpertOracle oracle = wm::ExpertOracle::Train(x, labels, info, f->train);
    const double train_ms = clock.Millis();
    oracle.Save(f->out);
    const wm::OracleInfo& r = oracle.info();
    if (f->json) {
      PrintJson(json{{"out", f->out},
                     {"examples", x.size()},
                     {"train_examples", r.train_examples},
                     {"heldout_examples", r.heldout_examples},
                     {"train_accuracy", r.train_accuracy},
                     {"heldout_accuracy", r.heldout_examples ? json(r.heldout_accuracy) : json()},
                     {"heldout_prior_accuracy",
                      r.heldout_examples ? json(r.heldout_prior_accuracy) : json()},
                     {"chance", 1.0 / r.num_experts},
                     {"top_k", r.top_k},
                     {"router_layer", r.router_layer},
                     {"features", oracle.features()},
                     {"collect_ms", collect_ms},
                     {"train_ms", train_ms}});
    } else {
      std::printf("oracle: %lld positions from %s (forward passes %.1f s), trained in %.1f s\n",
                  (long long)x.size(), f->corpus.c_str(), collect_ms / 1e3, train_ms / 1e3);
      std::printf("  predicts router layer %d's expert from the top %d log-probabilities\n", slot, f->top_k);
      // Train refuses a held-out part of 0 positions; this guard keeps a 0/0
      // from ever being printed as 0% should that change.
      if (r.heldout_examples > 0)
        std::printf("  accuracy: train %.1f%%, held-out %.1f%% (%lld positions at the end of the "
                    "corpus); most-common-expert guess %.1f%%, chance %.1f%%\n",
                    100 * r.train_accuracy, 100 * r.heldout_accuracy, (long long)r.heldout_examples,
                    100 * r.heldout_prior_accuracy, 100.0 / r.num_experts);
      else
        std::printf("  accuracy: train %.1f%%, held-out not measured; chance %.1f%%\n",
                    100 * r.train_accuracy, 100.0 / r.num_experts);
      std::printf("  wrote %s\n", f->out.c_str());
    }
    return 0;
  };
}

}  // namespace epwa::cli
