// _epwa: the C++ half of the Python module `epwa` (python/epwa/__init__.py is
// the other half and the documented API).
//
// This file only translates: Python values in, the library's calls, NumPy
// arrays and JSON text out. Every decision (the quantization level, the
// prompt's tokens, the watermark, the detection statistics) is made by the
// same library code the CLI runs, so a Python call and the matching CLI
// command give the same numbers. Results that the CLI prints as JSON cross
// as that JSON text, parsed once in Python, so no field can drift.
//
// Model work runs with the GIL released; an Engine is not thread-safe, so
// each one has a mutex, taken after the GIL is let go (never the other way
// round, which could deadlock against a thread that holds the mutex and waits
// for the GIL). The kernels' switches (set_kernel_flags) are process-wide:
// model work holds KernelFlagsMutex() shared, taken before the engine's
// mutex, and a change of switches holds it alone, so that it waits for the
// calls running on other threads rather than switch a kernel in the middle
// of a product whose scratch was sized for the old switches.
#include <cmath>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "base/error.h"
#include "base/sysinfo.h"
#include "kernels/kernels.h"
#include "plan/quant_level.h"
#include "runtime/engine.h"
#include "serve/chat_session.h"
#include "template/chat_template.h"
#include "tokenizer/text_stream.h"
#include "watermark/batch_detect.h"
#include "watermark/key.h"
#include "watermark/processor.h"

namespace py = pybind11;
using nlohmann::json;

namespace epwa::python {
namespace {

// The key named by "key_file" in a settings object, else $EPWA_KEY_FILE,
// read as `epwa --key-file` reads it.
wm::SecretKey KeyFrom(const json& j) {
  const std::string key_file = j.at("key_file").is_null() ? "" : j.at("key_file").get<std::string>();
  return wm::SecretKey::FromFile(wm::ResolveKeyPath(key_file, std::getenv("EPWA_KEY_FILE")));
}

std::shared_mutex& KernelFlagsMutex() {
  static std::shared_mutex mutex;
  return mutex;
}

// Held by a call that runs the model: the switches shared, then the engine.
class ModelWorkLock {
 public:
  explicit ModelWorkLock(std::mutex& engine) : flags_(KernelFlagsMutex()), engine_(engine) {}

 private:
  std::shared_lock<std::shared_mutex> flags_;
  std::lock_guard<std::mutex> engine_;
};

// The kernels' switches and what they select on this CPU, as JSON: the
// arithmetic of the prefill at each weight type names the instruction that
// `epwa bench` sets its figures against.
std::string KernelFlagsJson() {
  namespace k = epwa::kernels;
  return json{{"isa", k::IsaName(k::ActiveIsa())},
              {"float_activations", k::FloatActivations()},
              {"bf16_activations", k::Bf16Activations()},
              {"split_activations", k::SplitBf16Activations()},
              {"prefill_bf16", k::PrefillDotName(k::PrefillDotFor(DType::kBF16))},
              {"prefill_int", k::PrefillDotName(k::PrefillDotFor(DType::kQ4))}}
      .dump();
}

// A loaded model. Python's Engine wraps one.
class PyEngine {
 public:
  PyEngine(const std::string& model_dir, const std::optional<std::string>& quant, int64_t ctx, int threads,
           std::optional<uint64_t> mem_budget, bool cache, int parallel, int64_t batch_tokens, bool int8_lm_head,
           bool no_mmap, const std::optional<std::string>& kv_cache) {
    LoadOptions o;
    o.model_dir = model_dir;
    o.threads = threads;
    // As the CLI: an explicit level wins, else the EPW_* variables, else
    // auto. Every EPW_* variable is validated, so a typo raises.
    const LevelRequest level = ResolveLevel(quant, [](const char* n) { return std::getenv(n); });
    EnvForcesCpu([](const char* n) { return std::getenv(n); });
    o.quant = level.level;
    o.quant_source = quant ? "quant=\"" + *quant + "\"" : level.source;
    o.plan_ctx = ctx;
    o.parallel = parallel;
    o.batch_tokens = batch_tokens;
    o.use_cache = cache;
    o.int8_lm_head = int8_lm_head;
    o.copy_weights = CopyWeightsRequested(no_mmap, [](const char* n) { return std::getenv(n); });
    // As the CLI: the argument, else EPW_KV_CACHE, else f32.
    const char* env_kv = std::getenv("EPW_KV_CACHE");
    o.kv_cache = ParseKvCacheType(kv_cache ? *kv_cache : env_kv && *env_kv ? env_kv : "f32");
    o.mem_budget_bytes = mem_budget;
    py::gil_scoped_release release;
    std::shared_lock<std::shared_mutex> flags(KernelFlagsMutex());
    engine_ = Engine::Load(o);
  }

  Engine& engine() { return *engine_; }
  std::mutex& mutex() { return mutex_; }

  std::string InfoJson() const {
    const ModelConfig& c = engine_->config();
    json j{{"model_dir", engine_->model_dir()},
           {"architecture", c.architecture},
           {"vocab_size", c.vocab_size},
           {"hidden_size", c.hidden_size},
           {"num_layers", c.num_layers},
           {"moe_layers", c.NumMoeLayers()},
           {"num_experts", c.num_experts},
           {"experts_per_token", c.num_experts_per_tok},
           {"context_limit", engine_->max_context()},
           {"threads", engine_->threads()},
           {"router_hash", engine_->load_stats().router_hash},
           {"quant_level", engine_->load_stats().quant_level},
           {"load", LoadStatsJson(engine_->load_stats())}};
    return j.dump();
  }

  std::string PlanJson() const {
    const LoadStats& s = engine_->load_stats();
    json j{{"quant_level", s.quant_level},     {"quant_source", s.quant_source},
           {"planned_bytes", s.planned_bytes}, {"budget_bytes", s.budget_bytes},
           {"ctx", s.plan_ctx},                {"parallel", s.plan_parallel},
           {"batch_tokens", s.plan_batch_tokens}, {"peak_rss_bytes", PeakRssBytes()},
           {"weight_bytes", s.weight_bytes},   {"cache", s.cache}};
    return j.dump();
  }

  std::vector<int32_t> Tokenize(const std::string& text, bool special) {
    py::gil_scoped_release release;
    return special ? engine_->EncodePrompt(text) : engine_->tokenizer().Encode(text, false);
  }

  std::string Decode(const std::vector<int32_t>& ids) {
    py::gil_scoped_release release;
    for (int32_t id : ids)
      Require(id >= 0 && id < engine_->tokenizer().VocabSize(),
              "token id " + std::to_string(id) + " is outside the tokenizer's vocabulary");
    return engine_->tokenizer().Decode(ids);
  }

  // Renders a conversation (JSON text of the messages array) with the
  // model's chat template, as `epwa run --messages` does.
  std::string RenderChat(const std::string& messages_json) {
    const nlohmann::ordered_json messages = nlohmann::ordered_json::parse(messages_json);
    const ChatTemplate chat = ChatTemplate::FromModelDir(engine_->model_dir());
    try {
      return chat.Render(messages, ChatRenderOptions{});
    } catch (const jinja::TemplateError& e) {
      throw Error("the chat template refused the conversation: " + std::string(e.what()));
    }
  }

  // generate(): returns (JSON text of the result, experts [steps, moe_layers, top_k]).
  py::tuple Generate(const std::string& prompt_text, bool chat, const std::optional<int32_t>& max_new_tokens,
                     const std::optional<float>& temperature, const std::optional<float>& top_p,
                     const std::optional<int32_t>& top_k, const std::optional<float>& min_p,
                     const std::optional<float>& repeat_penalty, uint64_t seed, bool ignore_eos,
                     const std::optional<std::string>& watermark_json) {
    std::vector<int32_t> prompt, generated;
    std::vector<int32_t> experts;  // [steps, moe_layers, top_k]
    json out;
    int64_t moe_layers = 0, top = 0;
    {
      py::gil_scoped_release release;
      ModelWorkLock lock(mutex_);
      Engine& e = *engine_;
      // Sampling: generation_config.json's defaults, overridden by what is
      // given, as the CLI's flags override them.
      GenerateOptions o = DefaultGenerateOptions(e.defaults(), /*default_max_tokens=*/64);
      if (max_new_tokens) o.max_new_tokens = *max_new_tokens;
      Require(o.max_new_tokens >= 0, "max_new_tokens must not be negative");
      SamplerParams& s = o.sampler;
      if (temperature) s.temperature = *temperature;
      if (top_k) s.top_k = *top_k;
      if (top_p) s.top_p = *top_p;
      if (min_p) s.min_p = *min_p;
      if (repeat_penalty) s.repeat_penalty = *repeat_penalty;
      Require(std::isfinite(s.temperature) && s.temperature >= 0, "temperature must be a finite number >= 0");
      Require(std::isfinite(s.top_p) && s.top_p > 0 && s.top_p <= 1, "top_p must be in (0, 1]");
      Require(std::isfinite(s.min_p) && s.min_p >= 0 && s.min_p <= 1, "min_p must be in [0, 1]");
      Require(std::isfinite(s.repeat_penalty) && s.repeat_penalty > 0, "repeat_penalty must be > 0");
      Require(s.top_k >= 0, "top_k must not be negative");
      s.seed = seed;
      o.ignore_eos = ignore_eos;
      if (chat) {
        const ChatTemplate tmpl = ChatTemplate::FromModelDir(e.model_dir());
        prompt = e.tokenizer().Encode(prompt_text, /*add_special_tokens=*/false);
        o.stop_token_ids = ChatStopTokenIds(tmpl, e);
      } else {
        Require(!prompt_text.empty(), "the prompt is empty");
        prompt = e.EncodePrompt(prompt_text);
      }
      std::unique_ptr<wm::WatermarkProcessor> watermark;
      if (watermark_json) {
        const json w = json::parse(*watermark_json);
        wm::WatermarkParams p;
        p.scheme = wm::ParseScheme(w.at("scheme").get<std::string>());
        p.gamma = w.at("gamma").get<double>();
        p.delta = w.at("delta").get<double>();
        p.router_layer = w.at("router_layer").get<int>();
        if (!w.at("expert_deltas").is_null()) {
          Require(p.scheme == wm::Scheme::kEwp, "expert_deltas only applies to the ewp scheme");
          p.expert_deltas = w.at("expert_deltas").get<std::vector<double>>();
        }
        const wm::SecretKey key = KeyFrom(w);
        watermark = std::make_unique<wm::WatermarkProcessor>(key, p, e.config(), e.load_stats().router_hash);
      }
      moe_layers = e.config().NumMoeLayers();
      top = e.config().IsMoe() ? e.config().num_experts_per_tok : 0;
      // The expert choice each generated token was sampled under: the
      // routing of the position that predicted it (the trace's last token).
      o.logits_processor = [&](std::span<float> logits, const RoutingTrace& routing,
                               std::span<const int32_t> context) {
        if (watermark) watermark->Apply(logits, routing, context);
        const int64_t last = routing.num_tokens() - 1;
        for (int64_t m = 0; m < routing.num_moe_layers(); ++m)
          for (int32_t x : routing.Experts(last, m)) experts.push_back(x);
      };
      e.ValidatePrompt(prompt);
      GenerateResult r = e.Generate(prompt, o);
      generated = r.tokens;
      // Only the experts of sampled tokens (the processor may run once more
      // than tokens kept when a callback stops early; it never does here).
      experts.resize(std::min(experts.size(), generated.size() * moe_layers * top));
      TextStream whole(e.tokenizer(), prompt);
      std::string text;
      for (int32_t t : generated) text += whole.Push(t);
      text += whole.Flush();
      json wjson = nullptr;
      if (watermark) {
        const wm::WatermarkParams& p = watermark->params();
        wjson = json{{"scheme", wm::SchemeName(p.scheme)},
                     {"version", wm::SchemeVersion(p.scheme)},
                     {"gamma", p.gamma},
                     {"delta", p.delta},
                     {"steps", watermark->steps()},
                     {"mean_bias", watermark->mean_bias()}};
        if (p.scheme != wm::Scheme::kKgw) {
          wjson["router_layer"] = watermark->router_slot();
          wjson["router_hash"] = e.load_stats().router_hash;
        }
      }
      out = json{{"prompt", prompt_text},
                 {"prompt_ids", prompt},
                 {"text", text},
                 {"ids", generated},
                 {"watermark", wjson},
                 {"stats", GenerateStatsJson(r.stats)}};
      out["stats"]["threads"] = e.threads();
      out["stats"]["peak_rss_bytes"] = PeakRssBytes();
    }
    const py::ssize_t steps = top ? static_cast<py::ssize_t>(experts.size() / (moe_layers * top)) : 0;
    py::array_t<int32_t> arr({steps, static_cast<py::ssize_t>(moe_layers), static_cast<py::ssize_t>(top)});
    std::copy(experts.begin(), experts.end(), arr.mutable_data());
    return py::make_tuple(out.dump(-1, ' ', false, json::error_handler_t::replace), arr);
  }

  // score(): ids, log-probabilities and the routing of every position.
  py::dict Score(const std::vector<int32_t>& ids_in, const std::optional<std::string>& text, bool logits) {
    std::vector<int32_t> ids = ids_in;
    ScoreResult r;
    std::vector<float> token_logprobs;
    int64_t V = 0;
    {
      py::gil_scoped_release release;
      ModelWorkLock lock(mutex_);
      Engine& e = *engine_;
      if (text) ids = e.EncodePrompt(*text);
      Require(!ids.empty(), "nothing to score: the text has no tokens");
      V = e.config().vocab_size;
      for (int32_t id : ids)
        Require(id >= 0 && id < V, "token id " + std::to_string(id) + " is outside the vocabulary (vocab_size " +
                                       std::to_string(V) + ")");
      r = e.Score(ids);
      // Log-softmax of row t - 1 at token t, computed as `epwa score` does
      // (float logits, a double sum, the log-sum-exp rounded to float).
      const int64_t T = static_cast<int64_t>(ids.size());
      token_logprobs.assign(T, std::nanf(""));
      for (int64_t t = 1; t < T; ++t) {
        const float* row = r.logits.data() + (t - 1) * V;
        const float m = *std::max_element(row, row + V);
        double sum = 0;
        for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v] - m));
        const float lse = m + static_cast<float>(std::log(sum));
        token_logprobs[t] = row[ids[t]] - lse;
      }
    }
    const py::ssize_t T = static_cast<py::ssize_t>(ids.size());
    const py::ssize_t L = static_cast<py::ssize_t>(r.routing.num_moe_layers());
    const py::ssize_t K = static_cast<py::ssize_t>(r.routing.top_k());
    const py::ssize_t E = static_cast<py::ssize_t>(r.routing.num_experts());
    py::array_t<int32_t> ids_arr(T);
    std::copy(ids.begin(), ids.end(), ids_arr.mutable_data());
    py::array_t<float> lp(T);
    std::copy(token_logprobs.begin(), token_logprobs.end(), lp.mutable_data());
    py::array_t<int32_t> experts({T, L, K});
    py::array_t<float> weights({T, L, K});
    py::array_t<float> router_logits({T, L, E});
    for (py::ssize_t t = 0; t < T; ++t)
      for (py::ssize_t m = 0; m < L; ++m) {
        std::copy_n(r.routing.Experts(t, m).data(), K, experts.mutable_data() + (t * L + m) * K);
        std::copy_n(r.routing.Weights(t, m).data(), K, weights.mutable_data() + (t * L + m) * K);
        std::copy_n(r.routing.Logits(t, m).data(), E, router_logits.mutable_data() + (t * L + m) * E);
      }
    py::dict d;
    d["ids"] = ids_arr;
    d["logprobs"] = lp;
    d["experts"] = experts;
    d["expert_weights"] = weights;
    d["router_logits"] = router_logits;
    d["moe_layers"] = r.routing.moe_layers();
    if (logits) {
      py::array_t<float> full({T, static_cast<py::ssize_t>(V)});
      std::copy(r.logits.begin(), r.logits.end(), full.mutable_data());
      d["logits"] = full;
    }
    return d;
  }

 private:
  std::unique_ptr<Engine> engine_;
  std::mutex mutex_;
};

// Settings from the JSON text Python's WatermarkingConfig and
// WatermarkDetector write.
wm::DetectSettings SettingsFrom(const json& j) {
  wm::DetectSettings s;
  s.scheme = j.at("scheme").is_null() ? "" : j.at("scheme").get<std::string>();
  s.method = j.at("method").get<std::string>();
  s.gamma = j.at("gamma").get<double>();
  s.router_layer = j.at("router_layer").get<int>();
  s.detect.z_threshold = j.at("z_threshold").get<double>();
  s.detect.dedup = j.at("dedup").get<bool>();
  s.detect.min_margin = j.at("min_margin").get<double>();
  s.detect.min_tokens = j.at("min_tokens").get<int64_t>();
  s.sample = j.at("sample").get<int64_t>();
  s.seed = j.at("seed").get<uint64_t>();
  s.oracle_file = j.at("oracle").is_null() ? "" : j.at("oracle").get<std::string>();
  s.batch_texts = j.at("batch_texts").get<int>();
  Require(std::isfinite(s.gamma) && s.gamma > 0 && s.gamma < 1, "gamma must be in (0, 1)");
  Require(std::isfinite(s.detect.z_threshold), "z_threshold must be a finite number");
  Require(std::isfinite(s.detect.min_margin) && s.detect.min_margin >= 0 && s.detect.min_margin <= 1,
          "min_margin must be in [0, 1]");
  Require(s.detect.min_tokens >= 1, "min_tokens must be at least 1");
  Require(s.sample >= 3, "sample must be at least 3");
  return s;
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// A detector bound to an engine; results cross as the CLI's JSON lines.
class PyDetector {
 public:
  PyDetector(PyEngine& engine, const std::string& settings_json) : engine_(engine) {
    const json j = json::parse(settings_json);
    const wm::DetectSettings s = SettingsFrom(j);
    const wm::SecretKey key = KeyFrom(j);
    py::gil_scoped_release release;
    ModelWorkLock lock(engine_.mutex());
    detector_ = std::make_unique<wm::BatchDetector>(engine_.engine(), key, s);
  }

  // items: (label, text or None, ids or None, prompt or None).
  std::vector<std::string> Detect(
      const std::vector<std::tuple<std::string, std::optional<std::string>, std::optional<std::vector<int32_t>>,
                                   std::optional<std::string>>>& items) {
    std::vector<wm::DetectItem> in;
    for (const auto& [label, text, ids, prompt] : items) {
      wm::DetectItem item{label, text, ids, prompt, std::nullopt};
      if (text.has_value() == ids.has_value()) item.error = label + ": give either a text or ids";
      in.push_back(std::move(item));
    }
    return Run(in);
  }

  // lines: (label, one line of a JSON Lines file), parsed exactly as
  // `epwa detect --jsonl` parses them.
  std::vector<std::string> DetectJsonLines(const std::vector<std::pair<std::string, std::string>>& lines,
                                           const std::optional<std::string>& default_prompt) {
    std::vector<wm::DetectItem> in;
    for (const auto& [label, line] : lines) {
      try {
        in.push_back(wm::DetectItemFromJsonLine(line, label, default_prompt));
      } catch (const Error& e) {
        in.push_back(wm::DetectItem{label, std::nullopt, std::nullopt, std::nullopt, e.what()});
      }
    }
    return Run(in);
  }

  int router_layer() const { return detector_->router_slot(); }
  std::string scheme() const { return wm::SchemeName(detector_->scheme()); }

 private:
  std::vector<std::string> Run(const std::vector<wm::DetectItem>& in) {
    std::vector<std::string> out;
    py::gil_scoped_release release;
    ModelWorkLock lock(engine_.mutex());
    for (const json& j : detector_->Detect(in)) out.push_back(Dump(j));
    return out;
  }

  PyEngine& engine_;
  std::unique_ptr<wm::BatchDetector> detector_;
};

}  // namespace
}  // namespace epwa::python

PYBIND11_MODULE(_epwa, m) {
  using namespace epwa::python;
  m.doc() = "epwa's C++ engine; use the epwa package, which wraps it";
  static py::exception<epwa::Error> error(m, "Error", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const epwa::Error& e) {
      PyErr_SetString(error.ptr(), e.what());
    } catch (const nlohmann::json::exception& e) {
      // Only JSON that Python wrote crosses here, so this is a bug, but it
      // must still reach Python as epwa.Error rather than end the process.
      PyErr_SetString(error.ptr(), (std::string("internal JSON error: ") + e.what()).c_str());
    }
  });

  py::class_<PyEngine>(m, "_Engine")
      .def(py::init<const std::string&, const std::optional<std::string>&, int64_t, int, std::optional<uint64_t>,
                    bool, int, int64_t, bool, bool, const std::optional<std::string>&>(),
           py::arg("model_dir"), py::arg("quant"), py::arg("ctx"), py::arg("threads"), py::arg("mem_budget"),
           py::arg("cache"), py::arg("parallel"), py::arg("batch_tokens"), py::arg("int8_lm_head") = false,
           py::arg("no_mmap") = false, py::arg("kv_cache") = py::none())
      .def("info_json", &PyEngine::InfoJson)
      .def("plan_json", &PyEngine::PlanJson)
      .def("tokenize", &PyEngine::Tokenize, py::arg("text"), py::arg("special"))
      .def("decode", &PyEngine::Decode)
      .def("render_chat", &PyEngine::RenderChat)
      .def("generate", &PyEngine::Generate)
      .def("score", &PyEngine::Score, py::arg("ids"), py::arg("text"), py::arg("logits"));

  py::class_<PyDetector>(m, "_Detector")
      .def(py::init<PyEngine&, const std::string&>(), py::keep_alive<1, 2>())
      .def("detect", &PyDetector::Detect)
      .def("detect_json_lines", &PyDetector::DetectJsonLines)
      .def_property_readonly("router_layer", &PyDetector::router_layer)
      .def_property_readonly("scheme", &PyDetector::scheme);

  m.def("detect_logprobs_file", [](const std::string& path, const std::string& settings_json) {
    const json j = json::parse(settings_json);
    const epwa::wm::DetectSettings s = SettingsFrom(j);
    const epwa::wm::SecretKey key = KeyFrom(j);
    py::gil_scoped_release release;
    return Dump(epwa::wm::DetectLogprobsFile(path, key, s));
  });
  m.def("check_detect_settings", [](const std::string& settings_json) {
    const json j = json::parse(settings_json);
    epwa::wm::ResolveDetectScheme(SettingsFrom(j));
    KeyFrom(j);
  });
  m.def("keygen", [](const std::string& path, bool overwrite) { epwa::wm::WriteNewKeyFile(path, overwrite); },
        py::arg("path"), py::arg("overwrite") = false);
  m.def("default_scheme", [] { return std::string(epwa::wm::SchemeName(epwa::wm::kDefaultScheme)); });
  m.def("peak_rss_bytes", [] { return epwa::PeakRssBytes(); });
  // The kernels' process-wide switches, as the CLI's --float-activations,
  // --bf16-activations, --split-activations and EPWA_ISA set them. None
  // leaves a switch as it is. Returns what each was before.
  m.def(
      "set_kernel_flags",
      [](std::optional<bool> float_activations, std::optional<bool> bf16_activations,
         std::optional<bool> split_activations, const std::optional<std::string>& isa) {
        py::gil_scoped_release release;
        std::unique_lock<std::shared_mutex> alone(KernelFlagsMutex());
        const std::string before = KernelFlagsJson();
        if (isa) epwa::kernels::SetActiveIsa(*isa, "isa");  // throws where the CPU lacks the path
        if (float_activations) epwa::kernels::SetFloatActivations(*float_activations);
        if (bf16_activations) epwa::kernels::SetBf16Activations(*bf16_activations);
        if (split_activations) epwa::kernels::SetSplitBf16Activations(*split_activations);
        return before;
      },
      py::arg("float_activations") = py::none(), py::arg("bf16_activations") = py::none(),
      py::arg("split_activations") = py::none(), py::arg("isa") = py::none());
  m.def("kernel_flags", [] { return KernelFlagsJson(); });
}
