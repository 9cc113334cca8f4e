// Detection of many user inputs with one loaded model, each reported as the
// JSON object `epwa detect --json` prints for it.
//
// This is the one implementation behind every frontend that detects: the
// CLI (`epwa detect`), the Python module (`epwa.WatermarkDetector`) and the
// corpus detector on Dask (`python3 -m epwa.detect_corpus`). Keeping it in
// the library, not in a frontend, is what makes their numbers the same for
// the same inputs: they do not merely agree in spirit, they run this code.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/engine.h"
#include "watermark/detector.h"
#include "watermark/key.h"
#include "watermark/oracle.h"
#include "watermark/pipeline.h"
#include "watermark/processor.h"

namespace epwa::wm {

// One input as a user gave it: a text or generated ids, with the prompt it
// continued when known.
struct DetectItem {
  std::string label;  // names the input in its result and its errors ("text 1", "in.jsonl:7")
  std::optional<std::string> text;
  std::optional<std::vector<int32_t>> ids;
  std::optional<std::string> prompt;
  // Set when the input itself was malformed before it got here (a bad JSON
  // line): it is reported in its own result, and the other inputs are still
  // tested.
  std::optional<std::string> error;
};

// Parses one line of a JSON Lines batch: {"text": ...} or {"ids": [...]},
// with an optional "prompt" (else `default_prompt`). Throws epwa::Error
// starting with `where` (file:line) for anything malformed.
DetectItem DetectItemFromJsonLine(const std::string& line, const std::string& where,
                                  const std::optional<std::string>& default_prompt);
// Token ids from a JSON array; throws epwa::Error naming `origin`.
std::vector<int32_t> IdsFromJson(const nlohmann::json& j, const std::string& origin);

// What to test for, and how; `epwa detect`'s flags.
struct DetectSettings {
  // Empty: kDefaultScheme, or gsg for PEPI (PEPI predicts one router's
  // expert, which keys v1's lists only; gsg and ewp share those lists).
  std::string scheme;
  std::string method = "full";  // full, cspv or pepi
  double gamma = 0.25;
  int router_layer = kSchemeDefaultLayer;
  DetectOptions detect;
  int64_t sample = 48;  // cspv: tokens in the stratified sample
  uint64_t seed = 0;    // cspv: seed of the random stratum
  std::string oracle_file;  // pepi
  // Texts scored together in one call of Engine::ScoreBatch; results do not
  // depend on it (scoring is row-invariant).
  int batch_texts = 64;
};

// The scheme `s` names (ParseScheme), with the defaults above; throws
// epwa::Error for combinations that cannot be tested (kgw with cspv or pepi,
// pepi without an oracle or with a v2 scheme).
Scheme ResolveDetectScheme(const DetectSettings& s);

// The summary fields of a result ("scored", "green", "z", ...).
nlohmann::json SummaryJson(const Summary& s);
// The oracle's held-out accuracy, null when it was trained without a
// held-out part (rather than a 0/0 shown as 0).
nlohmann::json HeldoutJson(const OracleInfo& info);

// Black-box PEPI: the tokens and top log-probabilities of an API's logprobs
// file, scored with no model at all.
// "top_k_listed" says how many log-probabilities the file lists per token;
// fewer than the oracle's "top_k" still gives a valid test, but a weaker one.
nlohmann::json DetectLogprobsFile(const std::string& path, const SecretKey& key, const DetectSettings& settings);

// Detection with a loaded model. Construction checks the settings against
// the model (a dense model only has kgw; the oracle must match its router)
// and throws epwa::Error when they cannot work.
class BatchDetector {
 public:
  BatchDetector(Engine& engine, const SecretKey& key, const DetectSettings& settings);

  Scheme scheme() const { return scheme_; }
  int router_slot() const { return slot_; }
  const DetectSettings& settings() const { return settings_; }
  const std::optional<ExpertOracle>& oracle() const { return oracle_; }

  // One result per item, in order: the object `epwa detect --json` prints.
  // An input that cannot be tested gets {"input", "method", "scheme",
  // "version", "error"} instead, naming the problem; the others are still
  // tested. Texts are scored settings.batch_texts at a time; a batch whose
  // forward pass fails is scored text by text, so each error names its own
  // input. "detect_ms" is the input's share of its batch's time.
  std::vector<nlohmann::json> Detect(std::span<const DetectItem> items);

  // Counters over every Detect call, for throughput reports.
  int64_t texts_scored() const { return texts_scored_; }
  int64_t tokens_scored() const { return tokens_scored_; }

 private:
  nlohmann::json Header(const DetectItem& item) const;
  void Report(const DetectInput& in, const std::vector<TokenScore>& tokens, const ScoreResult& pass, double ms,
              nlohmann::json& j);

  Engine& engine_;
  DetectSettings settings_;
  Scheme scheme_;
  GreenLists lists_;
  int slot_ = -1;
  std::optional<ExpertOracle> oracle_;
  int64_t texts_scored_ = 0;
  int64_t tokens_scored_ = 0;
};

}  // namespace epwa::wm
