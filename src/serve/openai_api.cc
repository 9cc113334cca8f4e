#include "serve/openai_api.h"
#include <algorithm>

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <set>

namespace epwa::serve {
namespace {

// OpenAI documents no limit; bounding it bounds the work per step.
constexpr size_t kMaxLogitBias = 1024;

[[noreturn]] void Invalid(const std::string& message, const std::string& param = {}) {
  throw ApiError(400, "invalid_request_error", message, param);
}

// nlohmann's parser recurses once per nesting level, so a body of a million
// '[' would exhaust the stack before any size limit applies. No real request
// nests deeper than a tool schema does; 64 levels leave ample room.
constexpr int kMaxNesting = 64;

void CheckNesting(const std::string& body) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (const char c : body) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '[' || c == '{') {
      if (++depth > kMaxNesting)
        Invalid("the request body nests JSON deeper than " + std::to_string(kMaxNesting) + " levels");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}


// A field given as null is treated as absent, as OpenAI does (its SDKs send
// null for unset optional fields).
const json* Field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

bool GetBool(const json& body, const char* name, bool fallback) {
  const json* v = Field(body, name);
  if (!v) return fallback;
  if (!v->is_boolean()) Invalid(std::string("'") + name + "' must be a boolean", name);
  return v->get<bool>();
}

double GetNumber(const json& body, const char* name, double fallback, double lo, double hi,
                 bool lo_open = false) {
  const json* v = Field(body, name);
  if (!v) return fallback;
  if (!v->is_number()) Invalid(std::string("'") + name + "' must be a number", name);
  const double x = v->get<double>();
  if (!std::isfinite(x) || x > hi || (lo_open ? x <= lo : x < lo)) {
    char range[96];
    std::snprintf(range, sizeof range, "%s%g, %g]", lo_open ? "(" : "[", lo, hi);
    Invalid(std::string("'") + name + "' must be in " + range, name);
  }
  return x;
}

int64_t GetInt(const json& body, const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const json* v = Field(body, name);
  if (!v) return fallback;
  // 3.0 is accepted as 3, as Python clients may send it; 3.5 is not.
  int64_t x = 0;
  if (v->is_number_integer()) {
    if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(hi))
      Invalid(std::string("'") + name + "' must be at most " + std::to_string(hi), name);
    x = v->is_number_unsigned() ? static_cast<int64_t>(v->get<uint64_t>()) : v->get<int64_t>();
  } else if (v->is_number_float() && std::isfinite(v->get<double>()) &&
             v->get<double>() == std::floor(v->get<double>()) && std::fabs(v->get<double>()) < 9e15) {
    x = static_cast<int64_t>(v->get<double>());
  } else {
    Invalid(std::string("'") + name + "' must be an integer", name);
  }
  if (x < lo || x > hi)
    Invalid(std::string("'") + name + "' must be between " + std::to_string(lo) + " and " + std::to_string(hi),
            name);
  return x;
}

void CheckKnownFields(const json& body, const std::set<std::string>& known, const char* route) {
  for (auto it = body.begin(); it != body.end(); ++it) {
    if (!known.count(it.key()))
      Invalid("unknown field '" + it.key() + "' in a " + route + " request (epwa refuses fields it would ignore)",
              it.key());
  }
}

// Sampling fields common to both routes.
SamplingRequest ParseSampling(const json& body, const SamplerParams& defaults, const RequestLimits& limits,
                              int64_t default_max_tokens) {
  SamplingRequest r;
  if (const json* m = Field(body, "model")) {
    if (!m->is_string()) Invalid("'model' must be a string", "model");
    r.model = m->get<std::string>();
  }
  const char* max_name = Field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  r.max_tokens = GetInt(body, max_name, default_max_tokens, 1, limits.max_tokens_cap);

  r.sampler = defaults;
  r.sampler.temperature = static_cast<float>(GetNumber(body, "temperature", defaults.temperature, 0.0, 2.0));
  r.sampler.top_p = static_cast<float>(GetNumber(body, "top_p", defaults.top_p, 0.0, 1.0, /*lo_open=*/true));
  r.sampler.top_k = static_cast<int32_t>(GetInt(body, "top_k", defaults.top_k, 0, 1 << 30));
  r.sampler.min_p = static_cast<float>(GetNumber(body, "min_p", defaults.min_p, 0.0, 1.0));
  r.sampler.repeat_penalty =
      static_cast<float>(GetNumber(body, "repetition_penalty", defaults.repeat_penalty, 0.0, 10.0, true));
  for (const char* name : {"presence_penalty", "frequency_penalty"}) {
    if (GetNumber(body, name, 0.0, -2.0, 2.0) != 0.0)
      Invalid(std::string("'") + name + "' is not supported (use repetition_penalty)", name);
  }
  if (const json* seed = Field(body, "seed")) {
    if (!seed->is_number_integer()) Invalid("'seed' must be an integer", "seed");
    // OpenAI's seed is a signed 64-bit integer; the sampler's is its bit pattern.
    r.sampler.seed = seed->is_number_unsigned() ? seed->get<uint64_t>()
                                                : static_cast<uint64_t>(seed->get<int64_t>());
    r.seed_given = true;
  } else {
    static thread_local std::mt19937_64 fresh{std::random_device{}()};
    r.sampler.seed = fresh();
  }
  if (const json* stop = Field(body, "stop")) {
    std::vector<std::string> list;
    if (stop->is_string()) {
      list.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const json& s : *stop) {
        if (!s.is_string()) Invalid("'stop' must be a string or an array of strings", "stop");
        list.push_back(s.get<std::string>());
      }
    } else {
      Invalid("'stop' must be a string or an array of strings", "stop");
    }
    if (list.size() > limits.max_stop_sequences)
      Invalid("'stop' may hold at most " + std::to_string(limits.max_stop_sequences) + " sequences", "stop");
    for (const std::string& s : list) {
      if (s.empty()) Invalid("'stop' sequences must not be empty", "stop");
      if (s.size() > limits.max_stop_bytes)
        Invalid("'stop' sequences may be at most " + std::to_string(limits.max_stop_bytes) + " bytes", "stop");
    }
    r.stop = std::move(list);
  }
  r.stream = GetBool(body, "stream", false);
  if (const json* so = Field(body, "stream_options")) {
    if (!so->is_object()) Invalid("'stream_options' must be an object", "stream_options");
    if (!r.stream) Invalid("'stream_options' is only allowed with \"stream\": true", "stream_options");
    for (auto it = so->begin(); it != so->end(); ++it)
      if (it.key() != "include_usage") Invalid("unknown field 'stream_options." + it.key() + "'", "stream_options");
    r.include_usage = GetBool(*so, "include_usage", false);
  }
  if (GetInt(body, "n", 1, 1, std::numeric_limits<int64_t>::max()) != 1)
    Invalid("'n' must be 1: one choice per request", "n");
  if (const json* bias = Field(body, "logit_bias")) {
    if (!bias->is_object()) Invalid("'logit_bias' must be an object of token ids to numbers", "logit_bias");
    if (bias->size() > kMaxLogitBias)
      Invalid("'logit_bias' has " + std::to_string(bias->size()) + " entries; at most " +
                  std::to_string(kMaxLogitBias) + " are allowed",
              "logit_bias");
    for (auto it = bias->begin(); it != bias->end(); ++it) {
      const std::string& key = it.key();
      // Decimal ids only ("007" or "+5" are not token ids), within int32.
      const bool digits = !key.empty() && key.size() <= 10 &&
                          std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
                          (key == "0" || key[0] != '0');
      const long long id = digits ? std::stoll(key) : -1;
      if (!digits || id > std::numeric_limits<int32_t>::max())
        Invalid("'logit_bias' keys must be token ids (decimal integers), not '" + key.substr(0, 32) + "'",
                "logit_bias");
      const json& v = it.value();
      if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < -100 || v.get<double>() > 100)
        Invalid("'logit_bias' values must be numbers from -100 to 100", "logit_bias");
      r.logit_bias.emplace_back(static_cast<int32_t>(id), v.get<float>());
    }
    std::sort(r.logit_bias.begin(), r.logit_bias.end());
  }
  if (const json* user = Field(body, "user"); user && !user->is_string())
    Invalid("'user' must be a string", "user");
  if (const json* wm = Field(body, "watermark")) {
    if (!wm->is_boolean()) Invalid("'watermark' must be a boolean", "watermark");
    r.watermark = wm->get<bool>();
  }
  return r;
}

// A message's content as the chat template expects it: a string. OpenAI also
// allows an array of parts; text parts are joined, other kinds (images,
// audio) are refused because this server serves text models.
json NormalizeContent(const json& content, size_t index) {
  const std::string where = "messages[" + std::to_string(index) + "].content";
  if (content.is_string() || content.is_null()) return content;
  if (!content.is_array()) Invalid("'" + where + "' must be a string, null or an array of parts", "messages");
  std::string text;
  for (const json& part : content) {
    if (!part.is_object()) Invalid("'" + where + "' parts must be objects", "messages");
    const json* type = Field(part, "type");
    if (!type || !type->is_string()) Invalid("'" + where + "' parts need a string 'type'", "messages");
    if (*type != "text")
      Invalid("'" + where + "' has a part of type '" + type->get<std::string>() +
                  "': only text parts are supported",
              "messages");
    const json* t = Field(part, "text");
    if (!t || !t->is_string()) Invalid("'" + where + "' text parts need a string 'text'", "messages");
    text += t->get<std::string>();
  }
  return text;
}

}  // namespace

json ParseRequestObject(const std::string& body) {
  CheckNesting(body);
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) Invalid("the request body is not valid JSON");
  if (!j.is_object()) Invalid("the request body must be a JSON object");
  return j;
}

json ValidateMessages(const json* messages, const RequestLimits& limits) {
  if (!messages) Invalid("'messages' is required", "messages");
  if (!messages->is_array() || messages->empty())
    Invalid("'messages' must be a non-empty array", "messages");
  if (messages->size() > limits.max_messages)
    Invalid("'messages' may hold at most " + std::to_string(limits.max_messages) + " messages", "messages");
  static const std::set<std::string> roles = {"system", "developer", "user", "assistant", "tool"};
  static const std::set<std::string> keys = {"role", "content", "name", "tool_calls", "tool_call_id",
                                             "reasoning_content", "refusal"};
  json out = json::array();
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) Invalid("'" + where + "' must be an object", "messages");
    for (auto it = m.begin(); it != m.end(); ++it)
      if (!keys.count(it.key())) Invalid("unknown field '" + where + "." + it.key() + "'", "messages");
    const json* role = Field(m, "role");
    if (!role || !role->is_string() || !roles.count(role->get<std::string>()))
      Invalid("'" + where + ".role' must be one of system, developer, user, assistant, tool", "messages");
    json copy = m;
    copy["content"] = NormalizeContent(m.contains("content") ? m["content"] : json(), i);
    if (copy["content"].is_null() && !(*role == "assistant" && Field(m, "tool_calls")))
      Invalid("'" + where + ".content' is required", "messages");
    for (const char* s : {"name", "tool_call_id", "reasoning_content", "refusal"})
      if (const json* v = Field(m, s); v && !v->is_string())
        Invalid("'" + where + "." + s + "' must be a string", "messages");
    if (const json* calls = Field(m, "tool_calls")) {
      if (!calls->is_array()) Invalid("'" + where + ".tool_calls' must be an array", "messages");
      for (const json& c : *calls) {
        const json* fn = c.is_object() ? Field(c, "function") : nullptr;
        if (!fn || !fn->is_object() || !Field(*fn, "name") || !(*fn)["name"].is_string())
          Invalid("'" + where + ".tool_calls' entries need a function with a string name", "messages");
      }
    }
    out.push_back(std::move(copy));
  }
  return out;
}


json ApiError::Body() const {
  return {{"error",
           {{"message", what()},
            {"type", type_},
            {"param", param_.empty() ? json(nullptr) : json(param_)},
            {"code", status_}}}};
}

ChatRequest ParseChatRequest(const std::string& body_text, const SamplerParams& defaults,
                             const RequestLimits& limits) {
  const json body = ParseRequestObject(body_text);
  static const std::set<std::string> known = {
      "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p",
      "repetition_penalty", "presence_penalty", "frequency_penalty", "seed", "stop", "stream",
      "stream_options", "logprobs", "top_logprobs", "n", "logit_bias", "user", "tools", "tool_choice",
      "parallel_tool_calls", "response_format", "chat_template_kwargs", "add_generation_prompt", "watermark"};
  CheckKnownFields(body, known, "chat completion");
  ChatRequest r;
  r.sampling = ParseSampling(body, defaults, limits, limits.default_max_tokens);
  r.messages = ValidateMessages(Field(body, "messages"), limits);
  const bool logprobs = GetBool(body, "logprobs", false);
  if (Field(body, "top_logprobs") && !logprobs)
    Invalid("'top_logprobs' needs \"logprobs\": true", "top_logprobs");
  // OpenAI returns an empty top list when logprobs is true without a count.
  if (logprobs) r.sampling.top_logprobs = static_cast<int32_t>(GetInt(body, "top_logprobs", 0, 0, limits.max_top_logprobs));
  if (const json* tools = Field(body, "tools")) {
    if (!tools->is_array()) Invalid("'tools' must be an array", "tools");
    for (const json& t : *tools) {
      const json* fn = t.is_object() ? Field(t, "function") : nullptr;
      if (!fn || !fn->is_object() || !Field(*fn, "name") || !(*fn)["name"].is_string())
        Invalid("'tools' entries must be {\"type\": \"function\", \"function\": {\"name\": ...}}", "tools");
    }
    r.tools = *tools;
  }
  if (const json* choice = Field(body, "tool_choice")) {
    // The template shows the tools to the model; nothing forces a call, so
    // only the choices that need no forcing are accepted.
    if (!choice->is_string() || (*choice != "auto" && *choice != "none"))
      Invalid("'tool_choice' may be \"auto\" or \"none\"", "tool_choice");
    if (*choice == "none") r.tools = nullptr;
  }
  if (const json* p = Field(body, "parallel_tool_calls"); p && !p->is_boolean())
    Invalid("'parallel_tool_calls' must be a boolean", "parallel_tool_calls");
  if (const json* rf = Field(body, "response_format")) {
    if (!rf->is_object() || !Field(*rf, "type") || (*rf)["type"] != "text")
      Invalid("'response_format' may only be {\"type\": \"text\"}", "response_format");
  }
  if (const json* kw = Field(body, "chat_template_kwargs")) {
    if (!kw->is_object()) Invalid("'chat_template_kwargs' must be an object", "chat_template_kwargs");
    static const std::set<std::string> reserved = {"messages", "tools", "add_generation_prompt", "bos_token",
                                                   "eos_token"};
    for (auto it = kw->begin(); it != kw->end(); ++it)
      if (reserved.count(it.key()))
        Invalid("'chat_template_kwargs' may not set '" + it.key() + "'", "chat_template_kwargs");
    r.template_kwargs = *kw;
  }
  r.add_generation_prompt = GetBool(body, "add_generation_prompt", true);
  return r;
}

CompletionRequest ParseCompletionRequest(const std::string& body_text, const SamplerParams& defaults,
                                         const RequestLimits& limits) {
  const json body = ParseRequestObject(body_text);
  static const std::set<std::string> known = {
      "model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
      "presence_penalty", "frequency_penalty", "seed", "stop", "stream", "stream_options", "logprobs", "n",
      "best_of", "echo", "suffix", "logit_bias", "user", "watermark"};
  CheckKnownFields(body, known, "completion");
  CompletionRequest r;
  // OpenAI's legacy default is 16 tokens.
  r.sampling = ParseSampling(body, defaults, limits, 16);
  if (Field(body, "logprobs"))
    r.sampling.top_logprobs = static_cast<int32_t>(GetInt(body, "logprobs", 0, 0, std::min(limits.max_top_logprobs, 5)));
  if (GetBool(body, "echo", false)) Invalid("'echo' is not supported", "echo");
  if (GetInt(body, "best_of", 1, 1, std::numeric_limits<int64_t>::max()) != 1)
    Invalid("'best_of' must be 1", "best_of");
  if (Field(body, "suffix")) Invalid("'suffix' is not supported", "suffix");

  const json* prompt = Field(body, "prompt");
  if (!prompt) Invalid("'prompt' is required", "prompt");
  // OpenAI accepts a string, an array of ids, or a batch of either; a batch
  // of exactly one is the same request.
  const json* p = prompt;
  if (p->is_array() && p->size() == 1 && ((*p)[0].is_string() || (*p)[0].is_array())) p = &(*p)[0];
  if (p->is_string()) {
    r.prompt_text = p->get<std::string>();
    if (r.prompt_text->empty()) Invalid("'prompt' must not be empty", "prompt");
  } else if (p->is_array() && !p->empty()) {
    for (const json& id : *p) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > std::numeric_limits<int32_t>::max())
        Invalid("'prompt' must be a string or an array of token ids (one prompt per request)", "prompt");
      r.prompt_ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
  } else {
    Invalid("'prompt' must be a non-empty string or an array of token ids (one prompt per request)", "prompt");
  }
  return r;
}

std::string ValidUtf8(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = 0;
    uint32_t cp = 0;
    if (c < 0x80) { len = 1; cp = c; }
    else if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
    bool ok = len > 0 && i + len <= s.size();
    for (size_t k = 1; ok && k < len; ++k) {
      const unsigned char cc = static_cast<unsigned char>(s[i + k]);
      ok = (cc & 0xC0) == 0x80;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are invalid too.
    if (ok) ok = !(len == 2 && cp < 0x80) && !(len == 3 && cp < 0x800) && !(len == 4 && cp < 0x10000) &&
                 !(cp >= 0xD800 && cp <= 0xDFFF) && cp <= 0x10FFFF;
    if (ok) {
      out.append(s, i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

json ChatLogprobJson(const TokenLogprob& t) {
  // JSON has no infinity (nlohmann would write null): an impossible token's
  // -inf is reported as the lowest float, as llama-server does.
  auto finite = [](float x) { return std::isfinite(x) ? x : std::numeric_limits<float>::lowest(); };
  auto bytes = [](const std::string& s) {
    json b = json::array();
    for (const char c : s) b.push_back(static_cast<unsigned char>(c));
    return b;
  };
  json top = json::array();
  for (size_t i = 0; i < t.top.size(); ++i)
    top.push_back({{"id", t.top[i].first},
                   {"token", ValidUtf8(t.top[i].second)},
                   {"bytes", bytes(t.top[i].second)},
                   {"logprob", finite(t.top_logprobs[i])}});
  return {{"id", t.id},
          {"token", ValidUtf8(t.text)},
          {"bytes", bytes(t.text)},
          {"logprob", finite(t.logprob)},
          {"top_logprobs", std::move(top)}};
}

std::string NewResponseId(const std::string& prefix) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  char hex[25];
  const uint64_t a = rng(), b = rng();
  std::snprintf(hex, sizeof hex, "%016llx%08llx", static_cast<unsigned long long>(a),
                static_cast<unsigned long long>(b & 0xffffffffULL));
  return prefix + hex;
}

}  // namespace epwa::serve
