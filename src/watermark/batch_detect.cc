#include "watermark/batch_detect.h"

#include <algorithm>

#include "base/error.h"
#include "base/timer.h"
#include "tokenizer/utf8.h"
#include "watermark/logprobs.h"
#include "watermark/pipeline.h"

namespace epwa::wm {

using nlohmann::json;

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

DetectItem DetectItemFromJsonLine(const std::string& line, const std::string& where,
                                  const std::optional<std::string>& default_prompt) {
  // Invalid UTF-8 is reported as such before JSON parsing, whose own message
  // for it would be obscure.
  Require(tokenizer_internal::IsValidUtf8(line), where + " is not valid UTF-8");
  json j;
  try {
    j = json::parse(line);
  } catch (const json::exception& e) {
    // nlohmann's message says where in the line the syntax broke.
    const std::string what = e.what();
    const size_t colon = what.find(": ");
    throw Error(where + " is not valid JSON (" + (colon == std::string::npos ? what : what.substr(colon + 2)) +
                ")");
  }
  Require(j.is_object() && (j.contains("text") != j.contains("ids")),
          where + " must be an object with either \"text\" or \"ids\"");
  DetectItem item{where, std::nullopt, std::nullopt, default_prompt, std::nullopt};
  if (j.contains("text")) {
    Require(j["text"].is_string(), where + ": \"text\" must be a string");
    item.text = j["text"].get<std::string>();
  } else {
    item.ids = IdsFromJson(j["ids"], where);
  }
  if (j.contains("prompt")) {
    Require(j["prompt"].is_string(), where + ": \"prompt\" must be a string");
    item.prompt = j["prompt"].get<std::string>();
  }
  return item;
}

Scheme ResolveDetectScheme(const DetectSettings& s) {
  Require(s.method == "full" || s.method == "cspv" || s.method == "pepi",
          "the detection method must be full, cspv or pepi, not '" + s.method + "'");
  const bool pepi = s.method == "pepi";
  const Scheme scheme = !s.scheme.empty() ? ParseScheme(s.scheme) : pepi ? Scheme::kGsg : kDefaultScheme;
  Require(!pepi || !s.oracle_file.empty(), "--method pepi needs --oracle FILE (epwa oracle train makes one)");
  Require(scheme != Scheme::kKgw || s.method == "full",
          "kgw green lists are keyed by the previous token, which the text itself gives: use "
          "--method full");
  Require(!pepi || KeyedByOf(scheme) == KeyedBy::kExpert,
          "pepi predicts one router's expert from log-probabilities, which keys gsg and ewp only; "
          "detect " + std::string(SchemeName(scheme)) + " with --method full or cspv");
  Require(s.batch_texts >= 1, "the batch size must be at least 1 text");
  return scheme;
}

json SummaryJson(const Summary& s) {
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

json HeldoutJson(const OracleInfo& info) {
  return info.heldout_examples > 0 ? json(info.heldout_accuracy) : json();
}

json DetectLogprobsFile(const std::string& path, const SecretKey& key, const DetectSettings& settings) {
  const Scheme scheme = ResolveDetectScheme(settings);
  Require(settings.method == "pepi", "a logprobs file is read by --method pepi only");
  const ExpertOracle oracle = ExpertOracle::Load(settings.oracle_file);
  const OracleInfo& info = oracle.info();
  Stopwatch clock;
  GreenLists lists(key, KeyedBy::kExpert, info.router_hash, info.vocab_size, settings.gamma);
  // Streamed: each entry is scored as it is parsed, so memory stays near the
  // file's size whatever its length (read_ms is reading the bytes, detect_ms
  // parsing, predicting and scoring).
  LogprobsScan scan;
  const auto tokens = ScoreLogprobsFile(path, oracle, lists, &scan);
  const Summary s = SummarizeChecked(tokens, lists.p0(), settings.detect);
  const double read_ms = scan.read_ms;
  const double score_ms = clock.Millis() - read_ms;
  json j{{"input", path},
         {"method", "pepi"},
         {"source", "logprobs"},
         {"scheme", SchemeName(scheme)},
         {"version", SchemeVersion(scheme)},
         {"tokens", scan.tokens},
         {"top_k_listed", {{"min", scan.min_listed}, {"max", scan.max_listed}}},
         {"oracle",
          {{"heldout_accuracy", HeldoutJson(info)},
           {"chance", 1.0 / info.num_experts},
           {"top_k", info.top_k},
           {"router_layer", info.router_layer}}},
         {"router_hash", info.router_hash},
         {"z_threshold", settings.detect.z_threshold},
         {"dedup", settings.detect.dedup},
         {"read_ms", read_ms},
         {"detect_ms", score_ms},
         {"tokens_per_s", scan.tokens / std::max(1e-9, (read_ms + score_ms) / 1e3)}};
  j.update(SummaryJson(s));
  return j;
}

namespace {

GreenLists ListsFor(const SecretKey& key, Scheme scheme, const Engine& engine, double gamma) {
  Require(scheme == Scheme::kKgw || engine.config().IsMoe(),
          "this model is dense (no router), so only --watermark kgw can be detected on it");
  return GreenLists(key, KeyedByOf(scheme), engine.load_stats().router_hash, engine.config().vocab_size, gamma);
}

}  // namespace

BatchDetector::BatchDetector(Engine& engine, const SecretKey& key, const DetectSettings& settings)
    : engine_(engine),
      settings_(settings),
      scheme_(ResolveDetectScheme(settings)),
      lists_(ListsFor(key, scheme_, engine, settings.gamma)) {
  const ModelConfig& config = engine.config();
  const std::string& router_hash = engine.load_stats().router_hash;
  slot_ = scheme_ == Scheme::kKgw ? -1 : ResolveRouterLayer(scheme_, settings.router_layer, config.NumMoeLayers());
  if (settings.method == "pepi") {
    oracle_ = ExpertOracle::Load(settings.oracle_file);
    const OracleInfo& info = oracle_->info();
    Require(info.router_hash == router_hash,
            "the oracle '" + settings.oracle_file + "' was trained on another model (router hash " +
                info.router_hash.substr(0, 16) + "..., this model " + router_hash.substr(0, 16) + "...)");
    Require(info.router_layer == slot_, "the oracle predicts router layer " + std::to_string(info.router_layer) +
                                            ", but --router-layer selects " + std::to_string(slot_));
    Require(info.vocab_size == config.vocab_size, "the oracle's vocabulary does not match the model's");
  }
}

json BatchDetector::Header(const DetectItem& item) const {
  return json{{"input", item.label},
              {"method", settings_.method},
              {"scheme", SchemeName(scheme_)},
              {"version", SchemeVersion(scheme_)}};
}

void BatchDetector::Report(const DetectInput& in, const std::vector<TokenScore>& tokens, const ScoreResult& pass,
                           double ms, json& j) {
  const DetectOptions& o = settings_.detect;
  j["prompt_given"] = in.prompt_given;
  j["bos_prepended"] = in.bos_prepended;
  j["tokens"] = static_cast<int64_t>(in.ids.size()) - in.first;
  j["z_threshold"] = o.z_threshold;
  j["dedup"] = o.dedup;
  j["min_margin"] = o.min_margin;
  if (scheme_ != Scheme::kKgw) {
    j["router_layer"] = slot_;
    j["router_hash"] = engine_.load_stats().router_hash;
  }
  if (settings_.method == "full") {
    j.update(SummaryJson(SummarizeChecked(tokens, lists_.p0(), o)));
  } else if (settings_.method == "cspv") {
    const CspvResult r = Cspv(tokens, lists_.p0(), o, settings_.sample, settings_.seed);
    Require(r.population >= o.min_tokens, "only " + std::to_string(r.population) +
                                              " tokens could be scored; detection needs at least " +
                                              std::to_string(o.min_tokens) + " (--min-tokens)");
    j.update(SummaryJson(r.sample));
    j["population"] = r.population;
    j["sample_size"] = settings_.sample;
    j["strata"] = {{"low_confidence", SummaryJson(r.low)},
                   {"random", SummaryJson(r.random)},
                   {"high_confidence", SummaryJson(r.high)}};
  } else {
    const std::vector<int32_t> seeds = PredictExperts(*oracle_, pass, engine_.config().vocab_size, in.first);
    int64_t agree = 0, compared = 0;
    for (const TokenScore& s : tokens) {
      agree += seeds[s.position - 1] == s.seed;
      ++compared;
    }
    const auto pepi_tokens = ScoreBySeeds(in.ids, in.first, seeds, lists_);
    j.update(SummaryJson(SummarizeChecked(pepi_tokens, lists_.p0(), o)));
    j["source"] = "model";
    j["oracle"] = {{"heldout_accuracy", HeldoutJson(oracle_->info())},
                   {"chance", 1.0 / oracle_->info().num_experts},
                   {"top_k", oracle_->info().top_k},
                   {"agreement_with_router", compared ? double(agree) / compared : 0.0}};
  }
  j["detect_ms"] = ms;
}

std::vector<json> BatchDetector::Detect(std::span<const DetectItem> items) {
  std::vector<json> results;
  results.reserve(items.size());
  const bool pepi = settings_.method == "pepi";
  const size_t batch_size = static_cast<size_t>(settings_.batch_texts);
  const ScoreResult no_pass;  // what Report gets where no logits were kept
  for (size_t b0 = 0; b0 < items.size(); b0 += batch_size) {
    const size_t b1 = std::min(items.size(), b0 + batch_size);
    std::vector<json> outs;
    std::vector<size_t> ready;  // offsets in the batch of the inputs that could be prepared
    std::vector<DetectInput> batch;
    for (size_t i = b0; i < b1; ++i) {
      outs.push_back(Header(items[i]));
      try {
        if (items[i].error) throw Error(*items[i].error);
        batch.push_back(items[i].text ? InputFromText(engine_, items[i].prompt, *items[i].text)
                                      : InputFromIds(engine_, items[i].prompt, items[i].ids.value_or(std::vector<int32_t>{})));
        ready.push_back(i - b0);
      } catch (const Error& e) {
        outs.back()["error"] = e.what();
      }
    }
    // KGW needs no forward pass, PEPI the logits too.
    std::vector<std::vector<TokenScore>> tokens;
    std::vector<ScoreResult> passes;
    double batch_ms = 0;
    bool batched = false;
    if (!batch.empty()) {
      try {
        Stopwatch clock;
        tokens = ScoreInputs(engine_, batch, lists_, slot_, pepi, pepi ? &passes : nullptr);
        batch_ms = clock.Millis();
        batched = true;
      } catch (const Error&) {
        // Scored one by one below, so that the error names its input.
      }
    }
    int64_t batch_tokens = 0;
    for (const DetectInput& in : batch) batch_tokens += static_cast<int64_t>(in.ids.size());
    tokens_scored_ += batch_tokens;
    texts_scored_ += static_cast<int64_t>(batch.size());
    for (size_t r = 0; r < ready.size(); ++r) {
      json& j = outs[ready[r]];
      const DetectInput& in = batch[r];
      try {
        if (batched) {
          // The input's share of the batch's time, by its token count.
          const double share = batch_tokens ? static_cast<double>(in.ids.size()) / batch_tokens : 0.0;
          Report(in, tokens[r], pepi ? passes[r] : no_pass, batch_ms * share, j);
        } else {
          Stopwatch clock;
          std::vector<ScoreResult> pass;
          const std::vector<TokenScore> one =
              std::move(ScoreInputs(engine_, std::span(&in, 1), lists_, slot_, pepi, pepi ? &pass : nullptr)[0]);
          Report(in, one, pepi ? pass[0] : no_pass, clock.Millis(), j);
        }
      } catch (const Error& e) {
        j = Header(items[b0 + ready[r]]);
        j["error"] = e.what();
      }
    }
    for (json& j : outs) results.push_back(std::move(j));
  }
  return results;
}

}  // namespace epwa::wm
