// Watermark stealing and spoofing (Jovanovic, Staab and Vechev, ICML 2024,
// simplified to the frequency form): an attacker who has the model's weights
// but not the key sees N watermarked outputs, estimates which tokens are green
// after each observable context by comparing their frequencies with the
// model's own unwatermarked text, and then writes text with the model and no
// key, biased towards the tokens it believes green. Spoof success is the
// share of those texts that the real detector (with the key) calls
// watermarked at z = 4.
//
// The attacker knows the scheme (Kerckhoffs) and runs the model itself, so it
// observes exactly the contexts detection uses: the previous token (kgw), the
// keyed router layer's expert (gsg, ewp), or v2's context items, each item a
// context of its own (epw2-minhash's candidate-chosen item is not observable,
// so the attacker counts a token after every item of its position).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/engine.h"
#include "watermark/evaluate.h"
#include "watermark/key.h"
#include "watermark/processor.h"

namespace epwa::wm {

struct StealOptions {
  std::vector<Scheme> schemes = {Scheme::kKgw, Scheme::kGsg, Scheme::kEpw2Et};
  // Watermarked outputs the attacker sees (each a separate attack, the
  // smaller ones prefixes of the larger); it also generates as many
  // unwatermarked outputs of its own as the largest.
  std::vector<int> observed = {100, 1000};
  int spoof_texts = 50;
  int new_tokens = 200;
  double gamma = 0.25, delta = 2.0;
  int router_layer = kSchemeDefaultLayer;
  // The attacker's bias on a token it believes green (spread over the
  // position's contexts, as epw2-votes spreads delta), and how much more
  // frequent than in unwatermarked text a token must be after a context
  // (smoothed) to be believed green.
  double spoof_delta = 2.0;
  double min_ratio = 1.5;
  int64_t min_count = 2;
  uint64_t seed = 1;
  std::vector<std::string> prompts;  // observed outputs use the first ones, spoofs the next
  DetectOptions detect;
  // Texts per Engine::ScoreBatch call when the outputs are run through the
  // model (as EvalOptions::score_batch_texts: the time changes, no figure).
  int score_batch_texts = 32;
  std::function<void(const std::string&)> progress;
};

struct StealResult {
  Scheme scheme = Scheme::kGsg;
  std::vector<int> observed;
  std::vector<ZSet> spoofed;              // per observed: z of the spoofed texts under the key
  std::vector<int64_t> learned_pairs;     // (context, token) pairs believed green
  std::vector<double> learned_precision;  // of those, the share that is green under the key
  ZSet attacker_plain;                    // the attacker's unbiased texts under the key (control)
};

std::vector<StealResult> EvaluateStealing(Engine& engine, const SecretKey& key, const StealOptions& options);
nlohmann::json StealJson(const std::vector<StealResult>& results, const StealOptions& options);

}  // namespace epwa::wm
