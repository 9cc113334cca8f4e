// epwa detect: is this text watermarked with this key?
//
// Methods: full (one forward pass recovers every position's expert), cspv
// (the same pass, then a confidence-stratified sample) and pepi (an oracle
// predicts each expert from the output log-probabilities: from a forward
// pass, or from an API's logprobs file with no model weights at all).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "base/error.h"
#include "base/file_read.h"
#include "base/timer.h"
#include "cli.h"
#include "tokenizer/utf8.h"
#include "watermark/batch_detect.h"
#include "watermark/detector.h"
#include "watermark/logprobs.h"
#include "watermark/oracle.h"
#include "watermark/pipeline.h"

namespace epwa::cli {
namespace {

using wm::DetectItem;

json ParseJsonFile(const std::string& path) {
  // An id list is text-sized; the limit keeps /dev/zero-like paths (refused
  // anyway as devices) and huge files from exhausting memory.
  const std::string text = ReadRegularFile(path, kMaxTextInputBytes, "the --ids file");
  Require(tokenizer_internal::IsValidUtf8(text), "the --ids file '" + path + "' is not valid UTF-8");
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  Require(!j.is_discarded(), "the --ids file '" + path + "' is not valid JSON");
  return j;
}

// A malformed input, to be reported in its own result.
DetectItem BadInput(const std::string& label, const std::string& error) {
  return DetectItem{label, std::nullopt, std::nullopt, std::nullopt, error};
}

// The summary fields of a result (wm::SummaryJson), back as numbers to print.
wm::Summary SummaryFrom(const json& j) {
  wm::Summary s;
  s.scored = j.at("scored").get<int64_t>();
  s.green = j.at("green").get<int64_t>();
  s.green_fraction = j.at("green_fraction").get<double>();
  s.p0 = j.at("p0").get<double>();
  s.z = j.at("z").get<double>();
  s.p_value = j.at("p_value").get<double>();
  s.log10_p = j.at("log10_p").get<double>();
  s.detected = j.at("detected").get<bool>();
  s.skipped_repeats = j.at("skipped_repeats").get<int64_t>();
  s.skipped_low_margin = j.at("skipped_low_margin").get<int64_t>();
  s.candidates = j.at("candidates").get<int64_t>();
  return s;
}

std::string PValueText(const wm::Summary& s) {
  char buf[64];
  if (s.log10_p > -300) std::snprintf(buf, sizeof(buf), "%.3g", s.p_value);
  else std::snprintf(buf, sizeof(buf), "1e%.1f", s.log10_p);
  return buf;
}

void PrintSummary(const std::string& what, const wm::Summary& s, double z_threshold) {
  std::printf("  %-6s %lld scored (%lld repeats, %lld low-margin skipped), %lld green (%.1f%%, "
              "null %.1f%%), z = %.2f, p = %s -> %s\n",
              what.c_str(), (long long)s.scored, (long long)s.skipped_repeats,
              (long long)s.skipped_low_margin, (long long)s.green, 100 * s.green_fraction,
              100 * s.p0, s.z, PValueText(s).c_str(),
              s.detected ? "WATERMARKED" : (s.z > z_threshold ? "?" : "not detected"));
}

// The oracle's held-out accuracy: "not measured" when it was trained without
// a held-out part, rather than a 0/0 shown as 0%.
std::string HeldoutText(const json& heldout_accuracy) {
  if (heldout_accuracy.is_null()) return "held-out accuracy not measured";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "held-out accuracy %.1f%%", 100 * heldout_accuracy.get<double>());
  return buf;
}

// The human-readable lines of one result.
void PrintResult(const json& j, double z_threshold) {
  const std::string label = j.at("input").get<std::string>();
  const std::string with_prompt = j.value("prompt_given", false) ? " (with prompt)" : "";
  const std::string method = j.at("method").get<std::string>();
  const std::string scheme = j.at("scheme").get<std::string>();
  if (method == "full") {
    std::printf("%s%s: %s (%s)\n", label.c_str(), with_prompt.c_str(), scheme.c_str(),
                j.at("version").get<std::string>().c_str());
    PrintSummary("full", SummaryFrom(j), z_threshold);
  } else if (method == "cspv") {
    std::printf("%s%s: %s, cspv, %lld of %lld tokens sampled\n", label.c_str(), with_prompt.c_str(), scheme.c_str(),
                (long long)j.at("scored").get<int64_t>(), (long long)j.at("population").get<int64_t>());
    PrintSummary("sample", SummaryFrom(j), z_threshold);
    PrintSummary("low", SummaryFrom(j.at("strata").at("low_confidence")), z_threshold);
    PrintSummary("random", SummaryFrom(j.at("strata").at("random")), z_threshold);
    PrintSummary("high", SummaryFrom(j.at("strata").at("high_confidence")), z_threshold);
  } else {
    const json& oracle = j.at("oracle");
    if (j.at("source") == "logprobs") {
      std::printf("%s: pepi from logprobs (oracle %s, chance %.1f%%)\n", label.c_str(),
                  HeldoutText(oracle.at("heldout_accuracy")).c_str(), 100.0 * oracle.at("chance").get<double>());
    } else {
      std::printf("%s%s: pepi (oracle %s, chance %.1f%%; agrees with the router on %.1f%% of this text)\n",
                  label.c_str(), with_prompt.c_str(), HeldoutText(oracle.at("heldout_accuracy")).c_str(),
                  100.0 * oracle.at("chance").get<double>(), 100.0 * oracle.at("agreement_with_router").get<double>());
    }
    PrintSummary("pepi", SummaryFrom(j), z_threshold);
  }
}

}  // namespace

Runner RegisterDetect(CLI::App& app) {
  auto* cmd = app.add_subcommand("detect", "test texts for a watermark (full, cspv or pepi)");
  struct Flags {
    ModelFlags model;
    WatermarkFlags wm;
    std::vector<std::string> texts, files;
    std::string ids_file, jsonl_file, logprobs_file, oracle_file;
    std::optional<std::string> prompt;
    std::string method = "full";
    wm::DetectOptions detect;
    bool no_dedup = false;
    int64_t sample = 48;
    uint64_t seed = 0;
    bool json = false;
    int batch_texts = 64;
  };
  auto f = std::make_shared<Flags>();
  AddModelFlags(cmd, &f->model);
  AddWatermarkFlags(cmd, &f->wm, /*generation=*/false);
  cmd->add_option("--text", f->texts, "text to test (repeatable)");
  cmd->add_option("--file", f->files, "file whose whole content is one text to test (repeatable)");
  cmd->add_option("--ids", f->ids_file,
                  "JSON file: an array of generated token ids, or an array of such arrays (a batch, "
                  "like --jsonl)");
  cmd->add_option("--jsonl", f->jsonl_file,
                  "one JSON object per line: {\"text\": ...} or {\"ids\": [...]}, optional "
                  "\"prompt\". In a batch every input gets its own result; one that cannot be "
                  "tested gets an \"error\" naming it (file:line) instead, the others are still "
                  "tested, and the exit status is then 1");
  cmd->add_option("--prompt", f->prompt, "the prompt the text continued (optional; improves recovery)");
  cmd->add_option("--method", f->method, "full (default), cspv or pepi")
      ->check(CLI::IsMember({"full", "cspv", "pepi"}));
  cmd->add_option("--z-threshold", f->detect.z_threshold, "decide 'watermarked' above this z (default 4)")
      ->check(FiniteNumber());
  cmd->add_flag("--no-dedup", f->no_dedup, "score repeated (expert, token) pairs every time");
  cmd->add_option("--min-tokens", f->detect.min_tokens, "fewest scored tokens for a verdict (default 16)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  cmd->add_option("--min-margin", f->detect.min_margin,
                  "skip tokens whose router top-1 minus top-2 probability is below this (default 0)")
      ->check(FiniteNumber() & CLI::Range(0.0, 1.0));
  cmd->add_option("--sample", f->sample, "cspv: tokens in the stratified sample (default 48)")
      ->check(CLI::Range(int64_t{3}, int64_t{1} << 40));
  cmd->add_option("--seed", f->seed, "cspv: seed of the random stratum")->transform(Uint64Number());
  cmd->add_option("--oracle", f->oracle_file, "pepi: oracle file from epwa oracle train");
  cmd->add_option("--logprobs", f->logprobs_file,
                  "pepi: per-token top log-probabilities (JSON, as run --json --logprobs K "
                  "writes); needs no model");
  cmd->add_flag("--json", f->json, "one JSON object per input (one per line)");
  cmd->add_option("--batch-texts", f->batch_texts,
                  "texts scored together, packed into forward passes of up to the planned rows (default 64; 1: "
                  "one text per pass). Results do not depend on it")
      ->check(CLI::Range(1, 4096));

  return [f]() {
    f->detect.dedup = !f->no_dedup;
    wm::DetectSettings settings;
    settings.scheme = f->wm.scheme;
    settings.method = f->method;
    settings.gamma = f->wm.gamma;
    settings.router_layer = f->wm.router_layer;
    settings.detect = f->detect;
    settings.sample = f->sample;
    settings.seed = f->seed;
    settings.oracle_file = f->oracle_file;
    settings.batch_texts = f->batch_texts;
    const bool pepi = f->method == "pepi";
    wm::ResolveDetectScheme(settings);  // refuses impossible combinations before anything is read
    Require(f->logprobs_file.empty() || pepi, "--logprobs is read by --method pepi only");
    const wm::SecretKey key = LoadKey(f->wm);

    // Black-box PEPI from an API's log-probabilities: no model at all.
    if (pepi && !f->logprobs_file.empty()) {
      Require(f->texts.empty() && f->files.empty() && f->ids_file.empty() && f->jsonl_file.empty(),
              "--logprobs gives the tokens itself; leave out --text/--file/--ids/--jsonl");
      const json j = wm::DetectLogprobsFile(f->logprobs_file, key, settings);
      // Shorter lists than the oracle was trained for still give a valid
      // test (a wrong expert guess only weakens it), but a much weaker one.
      const int64_t listed = j.at("top_k_listed").at("max").get<int64_t>();
      const int64_t trained = j.at("oracle").at("top_k").get<int64_t>();
      if (listed < trained && !f->json)
        std::fprintf(stderr,
                     "note: %s lists at most %lld log-probabilities per token, the oracle was trained "
                     "on %lld: expert predictions (and detection) will be less accurate\n",
                     f->logprobs_file.c_str(), (long long)listed, (long long)trained);
      if (f->json) PrintJson(j, /*one_line=*/true);
      else PrintResult(j, f->detect.z_threshold);
      return 0;
    }

    std::vector<DetectItem> inputs;
    for (size_t i = 0; i < f->texts.size(); ++i)
      inputs.push_back({"text " + std::to_string(i + 1), f->texts[i], std::nullopt, f->prompt, std::nullopt});
    for (const std::string& path : f->files)
      inputs.push_back({path, ReadRegularFile(path, kMaxTextInputBytes, "the --file text"), std::nullopt,
                        f->prompt, std::nullopt});
    if (!f->ids_file.empty()) {
      const json j = ParseJsonFile(f->ids_file);
      if (j.is_array() && !j.empty() && j[0].is_array()) {
        // An array of arrays is a batch like --jsonl: each element stands
        // alone, so a malformed one is reported in its own result.
        for (size_t i = 0; i < j.size(); ++i) {
          const std::string label = f->ids_file + "[" + std::to_string(i) + "]";
          try {
            inputs.push_back({label, std::nullopt, wm::IdsFromJson(j[i], label), f->prompt, std::nullopt});
          } catch (const Error& e) {
            inputs.push_back(BadInput(label, e.what()));
          }
        }
      } else {
        inputs.push_back({f->ids_file, std::nullopt, wm::IdsFromJson(j, f->ids_file), f->prompt, std::nullopt});
      }
    }
    if (!f->jsonl_file.empty()) {
      // Read whole (and bounded) through ReadRegularFile: a FIFO or device
      // is refused instead of hanging or eating memory.
      const std::string data = ReadRegularFile(f->jsonl_file, kMaxTextInputBytes, "the --jsonl file");
      size_t begin = 0;
      for (int n = 1; begin < data.size(); ++n) {
        size_t end = data.find('\n', begin);
        if (end == std::string::npos) end = data.size();
        const std::string line = data.substr(begin, end - begin);
        begin = end + 1;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        const std::string where = f->jsonl_file + ":" + std::to_string(n);
        try {
          inputs.push_back(wm::DetectItemFromJsonLine(line, where, f->prompt));
        } catch (const Error& e) {
          inputs.push_back(BadInput(where, e.what()));
        }
      }
    }
    Require(!inputs.empty(), "nothing to test: give --text, --file, --ids or --jsonl");

    auto engine = LoadEngine(f->model, /*quiet=*/f->json);
    wm::BatchDetector detector(*engine, key, settings);

    // Results are printed a batch at a time, in input order, so a long
    // corpus shows progress. One input's error is its own: the others are
    // still tested and the exit status is 1; a single input's error is the
    // command's.
    int failures = 0;
    Stopwatch clock;
    const size_t kChunk = static_cast<size_t>(f->batch_texts);
    for (size_t b0 = 0; b0 < inputs.size(); b0 += kChunk) {
      const size_t b1 = std::min(inputs.size(), b0 + kChunk);
      const std::vector<json> results = detector.Detect(std::span(inputs).subspan(b0, b1 - b0));
      for (size_t i = 0; i < results.size(); ++i) {
        const json& j = results[i];
        if (j.contains("error")) {
          const std::string msg = j["error"].get<std::string>();
          if (inputs.size() == 1) throw Error(msg);
          ++failures;
          // Messages about the input's own format already start with its label.
          const std::string& label = inputs[b0 + i].label;
          if (!f->json)
            std::fprintf(stderr, "epwa: error: %s\n", (msg.rfind(label, 0) == 0 ? msg : label + ": " + msg).c_str());
        } else if (!f->json) {
          PrintResult(j, f->detect.z_threshold);
        }
        if (f->json) PrintJson(j, /*one_line=*/true);
      }
    }
    if (inputs.size() > 1) {
      const double seconds = clock.Seconds();
      std::fprintf(stderr,
                   "detect: %lld texts (%lld tokens with their context) in %.2f s: %.1f texts/s, %.0f tokens/s, "
                   "up to %zu texts per batch\n",
                   (long long)detector.texts_scored(), (long long)detector.tokens_scored(), seconds,
                   detector.texts_scored() / std::max(seconds, 1e-9), detector.tokens_scored() / std::max(seconds, 1e-9),
                   kChunk);
    }
    return failures ? 1 : 0;
  };
}

}  // namespace epwa::cli
