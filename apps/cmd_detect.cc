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
#include "watermark/detector.h"
#include "watermark/logprobs.h"
#include "watermark/oracle.h"
#include "watermark/pipeline.h"

namespace epwa::cli {
namespace {

struct Input {
  std::string label;
  std::optional<std::string> text;
  std::optional<std::vector<int32_t>> ids;
  std::optional<std::string> prompt;
  // Set when this input itself is malformed (a bad --jsonl line, a bad
  // element of an --ids array of arrays). It is reported in the input's own
  // result, so one bad line never costs the other lines theirs.
  std::optional<std::string> error;
};

std::vector<int32_t> IdsFromJson(const json& j, const std::string& origin) {
  Require(j.is_array(), origin + " must be a JSON array of token ids");
  std::vector<int32_t> ids;
  for (const json& v : j) {
    Require(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() < (int64_t{1} << 31),
            origin + " must hold non-negative integer token ids");
    ids.push_back(v.get<int32_t>());
  }
  return ids;
}

json ParseJsonFile(const std::string& path) {
  // An id list is text-sized; the limit keeps /dev/zero-like paths (refused
  // anyway as devices) and huge files from exhausting memory.
  const std::string text = ReadRegularFile(path, kMaxTextInputBytes, "the --ids file");
  Require(tokenizer_internal::IsValidUtf8(text), "the --ids file '" + path + "' is not valid UTF-8");
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  Require(!j.is_discarded(), "the --ids file '" + path + "' is not valid JSON");
  return j;
}

// One line of a --jsonl batch as an input; throws epwa::Error naming `where`
// (file:line) for anything malformed. Invalid UTF-8 is reported as such
// before JSON parsing, whose own message for it would be obscure.
Input InputFromJsonLine(const std::string& line, const std::string& where,
                        const std::optional<std::string>& default_prompt) {
  Require(tokenizer_internal::IsValidUtf8(line), where + " is not valid UTF-8");
  json j;
  try {
    j = json::parse(line);
  } catch (const json::exception& e) {
    // nlohmann's message says where in the line the syntax broke.
    const std::string what = e.what();
    const size_t colon = what.find(": ");
    throw Error(where + " is not valid JSON (" +
                (colon == std::string::npos ? what : what.substr(colon + 2)) + ")");
  }
  Require(j.is_object() && (j.contains("text") != j.contains("ids")),
          where + " must be an object with either \"text\" or \"ids\"");
  Input input{where, std::nullopt, std::nullopt, default_prompt, std::nullopt};
  if (j.contains("text")) {
    Require(j["text"].is_string(), where + ": \"text\" must be a string");
    input.text = j["text"].get<std::string>();
  } else {
    input.ids = IdsFromJson(j["ids"], where);
  }
  if (j.contains("prompt")) {
    Require(j["prompt"].is_string(), where + ": \"prompt\" must be a string");
    input.prompt = j["prompt"].get<std::string>();
  }
  return input;
}

// A malformed input, to be reported in its own result.
Input BadInput(const std::string& label, const std::string& error) {
  return Input{label, std::nullopt, std::nullopt, std::nullopt, error};
}

json SummaryJson(const wm::Summary& s) {
  return json{{"scored", s.scored},
              {"green", s.green},
              {"green_fraction", s.green_fraction},
              {"p0", s.p0},
              {"z", s.z},
              {"p_value", s.p_value},
              {"log10_p", s.log10_p},
              {"detected", s.detected},
              {"skipped_repeats", s.skipped_repeats},
              {"skipped_low_margin", s.skipped_low_margin},
              {"candidates", s.candidates}};
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

// The oracle's held-out accuracy for reports: null / "not measured" when it
// was trained without a held-out part, rather than a 0/0 shown as 0%.
json HeldoutJson(const wm::OracleInfo& info) {
  return info.heldout_examples > 0 ? json(info.heldout_accuracy) : json();
}
std::string HeldoutText(const wm::OracleInfo& info) {
  if (info.heldout_examples == 0) return "held-out accuracy not measured";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "held-out accuracy %.1f%%", 100 * info.heldout_accuracy);
  return buf;
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
    const bool pepi = f->method == "pepi";
    // PEPI predicts one router's expert, which keys v1's lists only; gsg and
    // ewp share those lists, so with PEPI an unnamed scheme is exactly v1's.
    const wm::Scheme scheme = !f->wm.scheme.empty() ? wm::ParseScheme(f->wm.scheme)
                              : pepi                ? wm::Scheme::kGsg
                                                    : wm::kDefaultScheme;
    Require(!pepi || !f->oracle_file.empty(), "--method pepi needs --oracle FILE (epwa oracle train makes one)");
    Require(f->logprobs_file.empty() || pepi, "--logprobs is read by --method pepi only");
    Require(scheme != wm::Scheme::kKgw || f->method == "full",
            "kgw green lists are keyed by the previous token, which the text itself gives: use "
            "--method full");
    Require(!pepi || wm::KeyedByOf(scheme) == wm::KeyedBy::kExpert,
            "pepi predicts one router's expert from log-probabilities, which keys gsg and ewp only; "
            "detect " + std::string(wm::SchemeName(scheme)) + " with --method full or cspv");
    const wm::SecretKey key = LoadKey(f->wm);

    std::vector<json> results;
    int failures = 0;
    auto emit = [&](json j) {
      if (f->json) PrintJson(j, /*one_line=*/true);
      results.push_back(std::move(j));
    };

    // Black-box PEPI from an API's log-probabilities: no model at all.
    if (pepi && !f->logprobs_file.empty()) {
      Require(f->texts.empty() && f->files.empty() && f->ids_file.empty() && f->jsonl_file.empty(),
              "--logprobs gives the tokens itself; leave out --text/--file/--ids/--jsonl");
      const wm::ExpertOracle oracle = wm::ExpertOracle::Load(f->oracle_file);
      const wm::OracleInfo& info = oracle.info();
      Stopwatch clock;
      wm::GreenLists lists(key, wm::KeyedBy::kExpert, info.router_hash, info.vocab_size, f->wm.gamma);
      // Streamed: each entry is scored as it is parsed, so memory stays near
      // the file's size whatever its length (read_ms is reading the bytes,
      // detect_ms parsing, predicting and scoring).
      wm::LogprobsScan scan;
      const auto tokens = wm::ScoreLogprobsFile(f->logprobs_file, oracle, lists, &scan);
      const wm::Summary s = wm::SummarizeChecked(tokens, lists.p0(), f->detect);
      const double read_ms = scan.read_ms;
      const double score_ms = clock.Millis() - read_ms;
      // Shorter lists than the oracle was trained for still give a valid
      // test (a wrong expert guess only weakens it), but a much weaker one.
      if (scan.max_listed < info.top_k && !f->json)
        std::fprintf(stderr,
                     "note: %s lists at most %lld log-probabilities per token, the oracle was trained "
                     "on %d: expert predictions (and detection) will be less accurate\n",
                     f->logprobs_file.c_str(), (long long)scan.max_listed, info.top_k);
      json j{{"input", f->logprobs_file}, {"method", "pepi"}, {"source", "logprobs"},
             {"scheme", wm::SchemeName(scheme)}, {"version", wm::SchemeVersion(scheme)}, {"tokens", scan.tokens},
             {"top_k_listed", {{"min", scan.min_listed}, {"max", scan.max_listed}}},
             {"oracle", {{"heldout_accuracy", HeldoutJson(info)},
                         {"chance", 1.0 / info.num_experts},
                         {"top_k", info.top_k},
                         {"router_layer", info.router_layer}}},
             {"router_hash", info.router_hash}, {"z_threshold", f->detect.z_threshold},
             {"dedup", f->detect.dedup}, {"read_ms", read_ms}, {"detect_ms", score_ms},
             {"tokens_per_s", scan.tokens / std::max(1e-9, (read_ms + score_ms) / 1e3)}};
      j.update(SummaryJson(s));
      emit(j);
      if (!f->json) {
        std::printf("%s: pepi from logprobs (oracle %s, chance %.1f%%)\n", f->logprobs_file.c_str(),
                    HeldoutText(info).c_str(), 100.0 / info.num_experts);
        PrintSummary("pepi", s, f->detect.z_threshold);
      }
      return 0;
    }

    std::vector<Input> inputs;
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
            inputs.push_back({label, std::nullopt, IdsFromJson(j[i], label), f->prompt, std::nullopt});
          } catch (const Error& e) {
            inputs.push_back(BadInput(label, e.what()));
          }
        }
      } else {
        inputs.push_back({f->ids_file, std::nullopt, IdsFromJson(j, f->ids_file), f->prompt, std::nullopt});
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
          inputs.push_back(InputFromJsonLine(line, where, f->prompt));
        } catch (const Error& e) {
          inputs.push_back(BadInput(where, e.what()));
        }
      }
    }
    Require(!inputs.empty(), "nothing to test: give --text, --file, --ids or --jsonl");

    auto engine = LoadEngine(f->model, /*quiet=*/f->json);
    const ModelConfig& config = engine->config();
    const std::string& router_hash = engine->load_stats().router_hash;
    Require(scheme == wm::Scheme::kKgw || config.IsMoe(),
            "this model is dense (no router), so only --watermark kgw can be detected on it");
    wm::GreenLists lists(key, wm::KeyedByOf(scheme), router_hash, config.vocab_size, f->wm.gamma);
    const int slot = scheme == wm::Scheme::kKgw ? -1 : wm::ResolveRouterLayer(scheme, f->wm.router_layer, config.NumMoeLayers());
    std::optional<wm::ExpertOracle> oracle;
    if (pepi) {
      oracle = wm::ExpertOracle::Load(f->oracle_file);
      const wm::OracleInfo& info = oracle->info();
      Require(info.router_hash == router_hash,
              "the oracle '" + f->oracle_file + "' was trained on another model (router hash " +
                  info.router_hash.substr(0, 16) + "..., this model " + router_hash.substr(0, 16) + "...)");
      Require(info.router_layer == slot, "the oracle predicts router layer " +
                                             std::to_string(info.router_layer) + ", but --router-layer selects " +
                                             std::to_string(slot));
      Require(info.vocab_size == config.vocab_size, "the oracle's vocabulary does not match the model's");
    }

    // The summary of one scored input, printed and emitted like every other.
    auto report = [&](const Input& input, const wm::DetectInput& in, const std::vector<wm::TokenScore>& tokens,
                      const ScoreResult& pass, double ms, json& j) {
      const bool need_pass = scheme != wm::Scheme::kKgw;
      j["prompt_given"] = in.prompt_given;
      j["bos_prepended"] = in.bos_prepended;
      j["tokens"] = static_cast<int64_t>(in.ids.size()) - in.first;
      j["z_threshold"] = f->detect.z_threshold;
      j["dedup"] = f->detect.dedup;
      j["min_margin"] = f->detect.min_margin;
      if (need_pass) {
        j["router_layer"] = slot;
        j["router_hash"] = router_hash;
      }
      if (f->method == "full") {
        const wm::Summary s = wm::SummarizeChecked(tokens, lists.p0(), f->detect);
        j.update(SummaryJson(s));
        j["detect_ms"] = ms;
        if (!f->json) {
          std::printf("%s%s: %s (%s)\n", input.label.c_str(), in.prompt_given ? " (with prompt)" : "",
                      wm::SchemeName(scheme), wm::SchemeVersion(scheme));
          PrintSummary("full", s, f->detect.z_threshold);
        }
      } else if (f->method == "cspv") {
        const wm::CspvResult r = wm::Cspv(tokens, lists.p0(), f->detect, f->sample, f->seed);
        Require(r.population >= f->detect.min_tokens,
                "only " + std::to_string(r.population) +
                    " tokens could be scored; detection needs at least " +
                    std::to_string(f->detect.min_tokens) + " (--min-tokens)");
        j.update(SummaryJson(r.sample));
        j["population"] = r.population;
        j["sample_size"] = f->sample;
        j["strata"] = {{"low_confidence", SummaryJson(r.low)},
                       {"random", SummaryJson(r.random)},
                       {"high_confidence", SummaryJson(r.high)}};
        j["detect_ms"] = ms;
        if (!f->json) {
          std::printf("%s%s: %s, cspv, %lld of %lld tokens sampled\n", input.label.c_str(),
                      in.prompt_given ? " (with prompt)" : "", wm::SchemeName(scheme), (long long)r.sample.scored,
                      (long long)r.population);
          PrintSummary("sample", r.sample, f->detect.z_threshold);
          PrintSummary("low", r.low, f->detect.z_threshold);
          PrintSummary("random", r.random, f->detect.z_threshold);
          PrintSummary("high", r.high, f->detect.z_threshold);
        }
      } else {
        const int64_t V = config.vocab_size;
        const std::vector<int32_t> seeds = wm::PredictExperts(*oracle, pass, V, in.first);
        int64_t agree = 0, compared = 0;
        for (const wm::TokenScore& s : tokens) {
          agree += seeds[s.position - 1] == s.seed;
          ++compared;
        }
        const auto pepi_tokens = wm::ScoreBySeeds(in.ids, in.first, seeds, lists);
        const wm::Summary s = wm::SummarizeChecked(pepi_tokens, lists.p0(), f->detect);
        j.update(SummaryJson(s));
        j["source"] = "model";
        j["oracle"] = {{"heldout_accuracy", HeldoutJson(oracle->info())},
                       {"chance", 1.0 / oracle->info().num_experts},
                       {"top_k", oracle->info().top_k},
                       {"agreement_with_router", compared ? double(agree) / compared : 0.0}};
        j["detect_ms"] = ms;
        if (!f->json) {
          std::printf("%s%s: pepi (oracle %s, chance %.1f%%; agrees with "
                      "the router on %.1f%% of this text)\n",
                      input.label.c_str(), in.prompt_given ? " (with prompt)" : "",
                      HeldoutText(oracle->info()).c_str(), 100.0 / oracle->info().num_experts,
                      compared ? 100.0 * agree / compared : 0.0);
          PrintSummary("pepi", s, f->detect.z_threshold);
        }
      }
    };
    auto fail = [&](const Input& input, const std::string& msg, json& j) {
      if (inputs.size() == 1) throw Error(msg);
      ++failures;
      j["error"] = msg;
      // Messages about the input's own format already start with its label.
      if (!f->json)
        std::fprintf(stderr, "epwa: error: %s\n", (msg.rfind(input.label, 0) == 0 ? msg : input.label + ": " + msg).c_str());
    };
    auto header = [&](const Input& input) {
      return json{{"input", input.label},
                  {"method", f->method},
                  {"scheme", wm::SchemeName(scheme)},
                  {"version", wm::SchemeVersion(scheme)}};
    };
    // Inputs are scored in batches: one forward pass carries as many texts as
    // the memory plan's rows per pass allow (Engine::ScoreBatch), so each
    // expert's weights stream once for all of them. A text's result is the
    // same as alone. A batch whose pass fails is scored text by text, so the
    // error names its own input. Results are emitted in input order, a
    // batch at a time.
    const size_t kBatchInputs = static_cast<size_t>(f->batch_texts);
    Stopwatch total_clock;
    int64_t total_tokens = 0, scored_texts = 0;
    const ScoreResult kNoPass;  // what report gets where no logits were kept
    for (size_t b0 = 0; b0 < inputs.size(); b0 += kBatchInputs) {
      const size_t b1 = std::min(inputs.size(), b0 + kBatchInputs);
      std::vector<json> outs;
      std::vector<std::optional<wm::DetectInput>> prepared(b1 - b0);
      for (size_t i = b0; i < b1; ++i) {
        outs.push_back(header(inputs[i]));
        try {
          if (inputs[i].error) throw Error(*inputs[i].error);
          prepared[i - b0] = inputs[i].text ? wm::InputFromText(*engine, inputs[i].prompt, *inputs[i].text)
                                            : wm::InputFromIds(*engine, inputs[i].prompt, *inputs[i].ids);
        } catch (const Error& e) {
          fail(inputs[i], e.what(), outs.back());
        }
      }
      std::vector<size_t> ready;
      std::vector<wm::DetectInput> batch;
      for (size_t k = 0; k < prepared.size(); ++k)
        if (prepared[k]) ready.push_back(k), batch.push_back(*prepared[k]);
      std::vector<std::vector<wm::TokenScore>> tokens;
      std::vector<ScoreResult> passes;
      double batch_ms = 0;
      bool batched = false;
      if (!batch.empty()) {
        try {
          Stopwatch clock;
          // KGW needs no forward pass, PEPI the logits too.
          tokens = wm::ScoreInputs(*engine, batch, lists, slot, pepi, pepi ? &passes : nullptr);
          batch_ms = clock.Millis();
          batched = true;
        } catch (const Error&) {
          // Scored one by one below, so that the error names its input.
        }
      }
      int64_t batch_tokens = 0;
      for (const wm::DetectInput& in : batch) batch_tokens += static_cast<int64_t>(in.ids.size());
      total_tokens += batch_tokens;
      scored_texts += static_cast<int64_t>(batch.size());
      for (size_t r = 0; r < ready.size(); ++r) {
        const size_t k = ready[r];
        json& j = outs[k];
        try {
          const wm::DetectInput& in = batch[r];
          if (batched) {
            // The input's share of the batch's time, by its token count.
            const double share = batch_tokens ? static_cast<double>(in.ids.size()) / batch_tokens : 0.0;
            report(inputs[b0 + k], in, tokens[r], pepi ? passes[r] : kNoPass, batch_ms * share, j);
          } else {
            Stopwatch clock;
            std::vector<wm::TokenScore> one;
            std::vector<ScoreResult> pass;
            one = std::move(wm::ScoreInputs(*engine, std::span(&in, 1), lists, slot, pepi, pepi ? &pass : nullptr)[0]);
            report(inputs[b0 + k], in, one, pepi ? pass[0] : kNoPass, clock.Millis(), j);
          }
        } catch (const Error& e) {
          fail(inputs[b0 + k], e.what(), j);
        }
      }
      for (json& j : outs) emit(std::move(j));
    }
    if (inputs.size() > 1) {
      const double seconds = total_clock.Seconds();
      std::fprintf(stderr,
                   "detect: %lld texts (%lld tokens with their context) in %.2f s: %.1f texts/s, %.0f tokens/s, "
                   "up to %zu texts per batch\n",
                   (long long)scored_texts, (long long)total_tokens, seconds, scored_texts / std::max(seconds, 1e-9),
                   total_tokens / std::max(seconds, 1e-9), kBatchInputs);
    }
    return failures ? 1 : 0;
  };
}

}  // namespace epwa::cli
