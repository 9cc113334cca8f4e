// epwa eval watermark: the watermark's evaluation protocol on a model
// (src/watermark/evaluate.h): detection rates, false alarms on human and
// unwatermarked text, z distributions, expert recovery and decode cost.
#include <cmath>
#include <cstdio>
#include <sstream>

#include <filesystem>

#include "base/error.h"
#include "io/atomic_file.h"
#include "base/file_read.h"
#include "cli.h"
#include "text/wordnet.h"
#include "watermark/evaluate.h"
#include "watermark/report.h"
#include "watermark/steal.h"

namespace epwa::cli {
namespace {

void PrintZ(const char* what, const wm::ZSet& s, double threshold) {
  const json j = s.Json(threshold);
  if (s.z.empty()) {
    std::printf("  %-34s no scorable texts\n", what);
    return;
  }
  std::printf("  %-34s %4zu texts  detected %4d (%5.1f%%)  z mean %6.2f sd %5.2f  median %6.2f  "
              "p5 %6.2f  p95 %6.2f  max %6.2f\n",
              what, s.z.size(), s.Detected(threshold), 100.0 * j["rate"].get<double>(),
              j["mean"].get<double>(), j["sd"].get<double>(), j["median"].get<double>(),
              j["p05"].get<double>(), j["p95"].get<double>(), j["max"].get<double>());
}

// The "text" field of every line of a JSONL corpus (blank lines skipped);
// errors name the line.
std::vector<std::string> HumanTextsFromJsonl(const std::string& path, const std::string& contents) {
  std::vector<std::string> out;
  std::stringstream ss(contents);
  int64_t line_no = 0;
  for (std::string line; std::getline(ss, line);) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    Require(j.is_object() && j.contains("text") && j["text"].is_string(),
            "'" + path + "' line " + std::to_string(line_no) + ": expected a JSON object with a \"text\" string");
    out.push_back(j["text"].get<std::string>());
  }
  Require(!out.empty(), "'" + path + "' holds no texts");
  return out;
}

}  // namespace

// epwa eval report: one report over several models' eval.json files (each
// from `eval watermark --report`), with a side-by-side table.
Runner RegisterEvalReport(CLI::App& eval, CLI::App** out_cmd) {
  auto* cmd = eval.add_subcommand("report", "write one watermark report (report.md, SVG plots) from the eval.json "
                                            "files of `eval watermark --report`, one per model, side by side");
  *out_cmd = cmd;
  struct Flags {
    std::vector<std::string> inputs;
    std::string out;
  };
  auto f = std::make_shared<Flags>();
  cmd->add_option("inputs", f->inputs, "eval.json files")->required();
  cmd->add_option("--out", f->out, "report folder")->required();
  return [f]() {
    std::vector<json> evals;
    for (const std::string& path : f->inputs) {
      const std::string text = ReadRegularFile(path, kMaxTextInputBytes, "an evaluation JSON");
      json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
      Require(!j.is_discarded(), "'" + path + "' is not valid JSON");
      evals.push_back(std::move(j));
    }
    wm::WriteWatermarkReport(evals, f->out);
    std::printf("wrote %s/report.md\n", f->out.c_str());
    return 0;
  };
}

Runner RegisterEvalWatermark(CLI::App& eval, CLI::App** out_cmd) {
  auto* cmd = eval.add_subcommand(
      "watermark", "round trip, false alarms, z distributions, expert recovery and decode cost of "
                   "the watermark on a model");
  *out_cmd = cmd;
  struct Flags {
    ModelFlags model;
    std::string key_file, human = "data/heldout/jargon.txt", oracle_file, schemes = "gsg,ewp,kgw,epw2-et";
    std::string substitution = "0.1,0.2,0.3", deletion = "0.1,0.3", insertion = "0.1,0.3", synonym = "0.5";
    std::string copy_paste = "0.1,0.25";
    std::string steal;
    int spoof_texts = 50;
    std::string wordnet = text::kDefaultWordNetDir;
    std::string detect_quant;
    wm::EvalOptions o;
    bool json = false;
    std::string report_dir;
  };
  auto f = std::make_shared<Flags>();
  AddModelFlags(cmd, &f->model);
  AddBatchFlags(cmd, &f->model);
  cmd->add_option("--key-file", f->key_file,
                  "secret key (default: the public evaluation key, so figures can be rerun)");
  cmd->add_option("--human", f->human,
                  "human texts scored as negatives: a text file whose paragraphs (split at blank lines) are "
                  "the texts, or a .jsonl file with one {\"text\": ...} per line (default data/heldout/jargon.txt)");
  cmd->add_option("--schemes", f->schemes, "comma-separated schemes to generate (default gsg,ewp,kgw,epw2-et; also epw2-minhash, epw2-votes)");
  cmd->add_option("--generations", f->o.generations, "watermarked texts per scheme (default 100)")
      ->check(CLI::Range(1, 1000000));
  cmd->add_option("--tokens", f->o.new_tokens, "tokens per generation (default 200)")->check(CLI::Range(16, 100000));
  cmd->add_option("--null-generations", f->o.null_generations, "unwatermarked texts (default 200)")
      ->check(CLI::Range(0, 1000000));
  cmd->add_option("--paragraphs", f->o.human_paragraphs, "human paragraphs (default 1000)")
      ->check(CLI::Range(0, 10000000));
  cmd->add_option("--batch-texts", f->o.score_batch_texts,
                  "texts scored together in one forward pass (default 32; figures do not depend on it)")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--gamma", f->o.gamma, "green fraction (default 0.25)")->check(FiniteNumber());
  cmd->add_option("--delta", f->o.delta, "bias (default 2.0)")->check(FiniteNumber());
  cmd->add_option("--router-layer", f->o.router_layer,
                  "MoE layer keying the lists (default: each scheme's own, -1 for gsg/ewp, 0 for epw2-et)");
  cmd->add_option("--z-threshold", f->o.detect.z_threshold, "detection threshold (default 4)")
      ->check(FiniteNumber());
  cmd->add_option("--oracle", f->oracle_file, "also evaluate PEPI with this oracle");
  cmd->add_option("--seed", f->o.seed, "first sampler seed (default 1)")->transform(Uint64Number());
  cmd->add_option("--substitution", f->substitution,
                  "fractions of generated tokens replaced by random ids, comma-separated (default "
                  "0.1,0.2,0.3; empty: none)");
  cmd->add_option("--deletion", f->deletion,
                  "fractions of generated tokens deleted, comma-separated (default 0.1,0.3; empty: none)");
  cmd->add_option("--insertion", f->insertion,
                  "fractions of generated tokens followed by an inserted random token (default 0.1,0.3; empty: none)");
  cmd->add_option("--synonym", f->synonym,
                  "fractions of the words replaced by WordNet synonyms in the decoded text, then "
                  "re-tokenized (default 0.5; empty: none, and no re-tokenization check)");
  cmd->add_option("--copy-paste", f->copy_paste,
                  "fractions of a text that are a watermarked span inside human text, detected without "
                  "the prompt (default 0.1,0.25; empty: none)");
  cmd->add_option("--steal", f->steal,
                  "watermark stealing: numbers of watermarked outputs an attacker with the model but no key "
                  "sees, comma-separated (e.g. 100,1000,10000); for each, it writes --spoof-texts spoofed "
                  "texts and the key's detector judges them (default: none; slow)");
  cmd->add_option("--spoof-texts", f->spoof_texts, "spoofed texts per --steal size (default 50)")
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--emoji", f->o.emoji_text,
                  "the emoji attack: this text's first token is forced after every generated token and "
                  "stripped before detection (e.g. '@'; default: not run)");
  cmd->add_option("--wordnet", f->wordnet, "WordNet database folder (default /usr/share/wordnet)");
  cmd->add_option("--size-p-value", f->o.size_p_value,
                  "p-value at which 'size' counts a text as detected (default 0.02, as MarkMyWords)")
      ->check(CLI::Range(1e-300, 0.5));
  cmd->add_option("--detect-quant", f->detect_quant,
                  "also detect with the model loaded at this level (int8, int4, ...): router flips "
                  "between precisions");
  cmd->add_option("--min-margin", f->o.detect.min_margin,
                  "every detector skips tokens whose keyed router's margin (top-1 minus top-2 probability) "
                  "is below this (default 0: none)")
      ->check(FiniteNumber() & CLI::Range(0.0, 1.0));
  cmd->add_option("--detect-min-margin", f->o.other_min_margin,
                  "router margin filter for --detect-quant (default 0.1)")
      ->check(FiniteNumber() & CLI::Range(0.0, 1.0));
  cmd->add_flag("--json", f->json, "print one JSON object");
  cmd->add_option("--report", f->report_dir,
                  "also write DIR/eval.json (every z-score included) and DIR/report.md with its SVG plots "
                  "(ROC curves, z histograms, z against length, detection against attack strength)");
  return [f]() {
    f->o.schemes.clear();
    std::stringstream ss(f->schemes);
    for (std::string s; std::getline(ss, s, ',');) f->o.schemes.push_back(wm::ParseScheme(s));
    f->o.human_text = ReadRegularFile(f->human, kMaxTextInputBytes, "the --human text");
    if (f->human.size() > 6 && f->human.substr(f->human.size() - 6) == ".jsonl") {
      f->o.human_texts = HumanTextsFromJsonl(f->human, f->o.human_text);
      f->o.human_text.clear();
    }
    auto rates = [](const std::string& list, const char* flag) {
      std::vector<double> out;
      std::stringstream ss(list);
      for (std::string r; std::getline(ss, r, ',');) {
        double v = -1;
        size_t used = 0;
        try {
          v = std::stod(r, &used);
        } catch (const std::exception&) {
        }
        Require(used == r.size() && v > 0 && v < 1,
                std::string(flag) + " takes fractions between 0 and 1, got '" + r + "'");
        out.push_back(v);
      }
      return out;
    };
    f->o.substitution_rates = rates(f->substitution, "--substitution");
    f->o.deletion_rates = rates(f->deletion, "--deletion");
    f->o.insertion_rates = rates(f->insertion, "--insertion");
    f->o.synonym_rates = rates(f->synonym, "--synonym");
    f->o.copy_paste_fractions = rates(f->copy_paste, "--copy-paste");
    std::optional<text::SynonymTable> synonyms;
    if (!f->o.synonym_rates.empty()) {
      synonyms = text::SynonymTable::Load(f->wordnet);
      f->o.synonyms = &*synonyms;
    }
    if (f->model.ctx == 0) f->model.ctx = 512;
    auto engine = LoadEngine(f->model, /*quiet=*/f->json);
    std::optional<wm::ExpertOracle> oracle;
    if (!f->oracle_file.empty()) {
      oracle = wm::ExpertOracle::Load(f->oracle_file);
      Require(oracle->info().router_hash == engine->load_stats().router_hash,
              "the oracle was trained on another model");
      f->o.oracle = &*oracle;
    }
    std::unique_ptr<Engine> other;
    if (!f->detect_quant.empty()) {
      ModelFlags m = f->model;
      m.quant = f->detect_quant;
      other = LoadEngine(m, /*quiet=*/true);
      f->o.other_engine = other.get();
    }
    const wm::SecretKey key = f->key_file.empty() ? wm::EvaluationKey() : wm::SecretKey::FromFile(f->key_file);
    if (!f->json) f->o.progress = [](const std::string& s) { std::fprintf(stderr, "eval: %s...\n", s.c_str()); };
    if (!f->report_dir.empty()) {
      f->o.raw_z = true;
      std::error_code ec;
      std::filesystem::create_directories(f->report_dir, ec);
      Require(!ec && std::filesystem::is_directory(f->report_dir),
              "cannot create the --report folder '" + f->report_dir + "': " + ec.message());
    }
    const wm::EvalReport r = wm::EvaluateWatermark(*engine, key, f->o);
    json j = r.Json(f->o);
    if (!f->steal.empty()) {
      wm::StealOptions so;
      so.schemes = f->o.schemes;
      so.observed.clear();
      std::stringstream ss(f->steal);
      for (std::string n; std::getline(ss, n, ',');) {
        size_t used = 0;
        int v = 0;
        try {
          v = std::stoi(n, &used);
        } catch (const std::exception&) {
        }
        Require(used == n.size() && v >= 1 && v <= 10000000, "--steal takes positive counts, got '" + n + "'");
        so.observed.push_back(v);
      }
      so.spoof_texts = f->spoof_texts;
      so.new_tokens = f->o.new_tokens;
      so.gamma = f->o.gamma;
      so.delta = f->o.delta;
      so.router_layer = f->o.router_layer;
      so.seed = f->o.seed;
      so.detect = f->o.detect;
      so.score_batch_texts = f->o.score_batch_texts;
      so.progress = f->o.progress;
      for (const std::string& p : f->o.human_texts.empty() ? wm::Paragraphs(f->o.human_text) : f->o.human_texts) {
        std::stringstream words(p);
        std::string w, prompt;
        for (int k = 0; k < f->o.prompt_words && words >> w; ++k) prompt += (k ? " " : "") + w;
        if (!prompt.empty()) so.prompts.push_back(prompt);
      }
      j["stealing"] = wm::StealJson(wm::EvaluateStealing(*engine, key, so), so);
    }
    j["model_dir"] = f->model.model_dir;
    j["quant"] = engine->load_stats().quant_level;
    j["key"] = f->key_file.empty() ? "public evaluation key" : "from --key-file";
    j["human_source"] = f->human;
    if (!f->report_dir.empty()) {
      const std::string path = f->report_dir + "/eval.json";
      AtomicFile out(path);
      const std::string text = j.dump(1) + "\n";
      out.Write(text.data(), text.size());
      out.Commit();
      wm::WriteWatermarkReport({j}, f->report_dir);
      if (!f->json) std::fprintf(stderr, "eval: wrote %s and %s/report.md\n", path.c_str(), f->report_dir.c_str());
    }
    if (f->json) {
      PrintJson(j);
      return 0;
    }
    const double t = f->o.detect.z_threshold;
    std::printf("gamma %.2f, delta %.1f, %d tokens per text, z threshold %.1f, dedup on, weights %s\n",
                f->o.gamma, f->o.delta, f->o.new_tokens, t, engine->load_stats().quant_level.c_str());
    for (const wm::SchemeEval& s : r.schemes) {
      std::printf("%s: %d watermarked generations (mean bias %.2f, identical to unwatermarked: %d; "
                  "%.1f distinct scored pairs per text)\n",
                  wm::SchemeName(s.scheme), f->o.generations, s.mean_bias, s.identical_to_plain,
                  s.mean_scored_pairs);
      PrintZ("full, with prompt", s.full_prompt, t);
      PrintZ("full, without prompt", s.full_no_prompt, t);
      PrintZ("human texts (this scheme's null)", s.human, t);
      PrintZ("unwatermarked generations", s.plain, t);
      std::printf("  ROC AUC %.4f; TPR %.1f%% at FPR 1%% (z > %.2f), %.1f%% at FPR 0.1%% (z > %.2f); size %s "
                  "tokens to p <= %g (%lld never); perplexity %.2f (unwatermarked %.2f), distinct-2 %.3f (%.3f)\n",
                  s.roc_auc, 100 * s.tpr_at_fpr_1pct, s.threshold_fpr_1pct, 100 * s.tpr_at_fpr_01pct,
                  s.threshold_fpr_01pct, std::isfinite(s.size_median) ? std::to_string((int)s.size_median).c_str() : "inf",
                  f->o.size_p_value, (long long)s.size_never, s.perplexity, r.plain_perplexity, s.distinct2,
                  r.plain_distinct2);
      auto attacks = [&](const std::vector<wm::ZSet>& sets, const std::vector<double>& rates, const char* what) {
        for (size_t a = 0; a < sets.size(); ++a) {
          const std::string label =
              std::to_string(static_cast<int>(std::lround(100 * rates[a]))) + "% of " + what;
          PrintZ(label.c_str(), sets[a], t);
        }
      };
      attacks(s.substituted, f->o.substitution_rates, "tokens substituted");
      attacks(s.deleted, f->o.deletion_rates, "tokens deleted");
      attacks(s.inserted, f->o.insertion_rates, "tokens followed by an insertion");
      attacks(s.synonyms, f->o.synonym_rates, "words -> WordNet synonyms");
      attacks(s.copy_paste, f->o.copy_paste_fractions, "a human text = a watermarked span");
      if (synonyms) PrintZ("decoded and re-tokenized", s.retokenized, t);
      if (!f->o.emoji_text.empty()) PrintZ("emoji attack (stripped)", s.emoji, t);
      if (s.scheme == wm::Scheme::kKgw) continue;
      PrintZ("cspv (sample)", s.cspv, t);
      if (oracle) PrintZ("pepi", s.pepi, t);
      if (other) {
        const std::string lvl = "detected at " + other->load_stats().quant_level;
        PrintZ(lvl.c_str(), s.other_level, t);
        char what[96];
        std::snprintf(what, sizeof what, "  ... with --min-margin %.2f", f->o.other_min_margin);
        PrintZ(what, s.other_level_margin, t);
        std::printf("  experts at %s agree with %s on %.2f%% of tokens; %.2f%% of the %.1f%% above the "
                    "margin\n",
                    other->load_stats().quant_level.c_str(), engine->load_stats().quant_level.c_str(),
                    100 * s.other_level_expert_agreement, 100 * s.other_level_expert_agreement_margin,
                    100 * s.other_level_margin_kept);
      }
      if (wm::KeyedByOf(s.scheme) != wm::KeyedBy::kExpert) {
        std::printf("  expert recovery: %.1f%% with the prompt, %.1f%% without\n", 100 * s.expert_recovery_prompt,
                    100 * s.expert_recovery_no_prompt);
        continue;
      }
      PrintZ("misaligned: expert at t (original)", s.shift0, t);
      PrintZ("misaligned: expert at t-2", s.shift2, t);
      PrintZ("misaligned at t, expert changed", s.shift0_changed, t);
      std::printf("  the router keeps its expert from one position to the next %.1f%% of the time\n",
                  100 * s.adjacent_same_expert);
      std::printf("  expert recovery: %.1f%% with the prompt, %.1f%% without%s\n",
                  100 * s.expert_recovery_prompt, 100 * s.expert_recovery_no_prompt,
                  oracle ? (", PEPI oracle agrees " + std::to_string(100 * s.pepi_agreement).substr(0, 4) + "%").c_str() : "");
    }
    if (j.contains("stealing")) {
      std::printf("stealing (an attacker with the model, no key; %d spoofed texts per size, detected with the key):\n",
                  f->spoof_texts);
      for (const auto& s : j["stealing"]["schemes"])
        for (const auto& run : s["runs"])
          std::printf("  %-13s after %6d outputs: %3d/%zu spoofs detected (%5.1f%%), median z %6.2f; %lld pairs "
                      "believed green, %.1f%% of them green\n",
                      s["scheme"].get<std::string>().c_str(), run["observed_outputs"].get<int>(),
                      run["spoofed"]["detected"].get<int>(), run["spoofed"]["n"].get<size_t>(),
                      100 * run["spoof_success"].get<double>(),
                      run["spoofed"].contains("median") ? run["spoofed"]["median"].get<double>() : 0.0,
                      (long long)run["learned_pairs"].get<int64_t>(), 100 * run["learned_precision"].get<double>());
    }
    std::printf("held-out human paragraphs (%lld used, %lld too short):\n",
                (long long)r.human_paragraphs_used, (long long)r.human_paragraphs_skipped);
    PrintZ("full (dedup)", r.human_full, t);
    PrintZ("full without dedup", r.human_no_dedup, t);
    PrintZ("cspv", r.human_cspv, t);
    if (oracle) PrintZ("pepi", r.human_pepi, t);
    PrintZ("kgw", r.human_kgw, t);
    std::printf("unwatermarked generations:\n");
    PrintZ("full (dedup)", r.plain_full, t);
    PrintZ("full without dedup", r.plain_no_dedup, t);
    PrintZ("cspv", r.plain_cspv, t);
    if (oracle) PrintZ("pepi", r.plain_pepi, t);
    PrintZ("kgw", r.plain_kgw, t);
    std::printf("decode: %.3f ms/token unwatermarked", r.plain_decode_ms_per_token);
    for (const wm::SchemeEval& s : r.schemes)
      std::printf(", %s %.3f (%+.1f%%)", wm::SchemeName(s.scheme), s.decode_ms_per_token,
                  100 * (s.decode_ms_per_token / r.plain_decode_ms_per_token - 1));
    std::printf("\nscoring: %lld texts, %lld tokens in %.1f s = %.0f tokens/s (%d texts per pass)\n",
                (long long)r.texts_scored, (long long)r.tokens_scored, r.scoring_seconds,
                r.scoring_seconds > 0 ? r.tokens_scored / r.scoring_seconds : 0.0, r.score_batch_texts);
    std::printf("%.1f s in all\n", r.seconds);
    return 0;
  };
}

}  // namespace epwa::cli
