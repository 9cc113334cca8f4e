// The OpenAI-compatible request bodies `epwa serve` accepts, parsed and
// validated into plain structs, and the response objects it sends back.
//
// Parsing is strict on purpose: a server that silently ignores a field the
// client relies on (n = 3, a frequency penalty, a JSON response format) hands
// back an answer the client did not ask for. Every field OpenAI documents is
// either honoured or refused with a 400 that names it; fields OpenAI does not
// document are refused too, except the vendor extensions listed below, so a
// misspelt `max_token` is an error rather than a silent default.
//
// Vendor extensions (as llama.cpp and vLLM accept them): `top_k`, `min_p`,
// `repetition_penalty`, `chat_template_kwargs` (object passed to the chat
// template, e.g. {"enable_thinking": false}), `add_generation_prompt`, and
// `watermark` (false asks to opt out; only honoured when the operator allows it).
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/sampler.h"

namespace epwa::serve {

// Insertion-ordered JSON throughout the server: chat templates iterate over
// message and tool objects in the client's key order (a tool schema rendered
// with tojson must keep it), and responses list their fields in OpenAI's order.
using json = nlohmann::ordered_json;

// An error the client caused or must be told about, with its HTTP status and
// OpenAI error type ("invalid_request_error", "authentication_error", ...).
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string type, const std::string& message, std::string param = {})
      : std::runtime_error(message), status_(status), type_(std::move(type)), param_(std::move(param)) {}
  int status() const { return status_; }
  const std::string& type() const { return type_; }
  const std::string& param() const { return param_; }
  // {"error": {"message", "type", "param", "code"}}, OpenAI's error body.
  json Body() const;

 private:
  int status_;
  std::string type_;
  std::string param_;
};

// Limits the operator sets; requests beyond them are refused with 400.
struct RequestLimits {
  int64_t max_tokens_cap = 4096;     // largest max_tokens a request may ask for
  int64_t default_max_tokens = 256;  // when a chat request gives none (OpenAI: up to the context)
  int32_t max_top_logprobs = 20;     // OpenAI's limit for chat; 5 for legacy completions
  size_t max_stop_sequences = 4;     // OpenAI's limit
  size_t max_stop_bytes = 256;       // per stop sequence
  size_t max_messages = 4096;
};

// What both routes share once parsed.
struct SamplingRequest {
  std::string model;  // echoed back; one model is served
  int64_t max_tokens = 0;
  SamplerParams sampler;
  bool seed_given = false;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  // Top log-probabilities per generated token; -1 = none requested.
  int32_t top_logprobs = -1;
  // The request's `watermark` field: nullopt when absent.
  std::optional<bool> watermark;
  // OpenAI's logit_bias: (token id, bias in [-100, 100]) added to the logits
  // before sampling (and before the watermark's own bias), in id order. The
  // ids are checked against the vocabulary by the server, which knows it.
  std::vector<std::pair<int32_t, float>> logit_bias;
};

struct ChatRequest {
  SamplingRequest sampling;
  json messages;  // validated array of {role, content, ...}; content parts joined to text
  json tools;     // null when absent
  json template_kwargs = json::object();
  bool add_generation_prompt = true;
};

struct CompletionRequest {
  SamplingRequest sampling;
  // Exactly one of the two: text to encode, or token ids given directly.
  std::optional<std::string> prompt_text;
  std::vector<int32_t> prompt_ids;
};

// Parses a request body. `defaults` are the served model's sampling defaults
// (generation_config.json), which OpenAI fields override. Throws ApiError
// (400) naming the field for malformed JSON, wrong types, out-of-range values,
// unknown fields and features the server does not implement.
ChatRequest ParseChatRequest(const std::string& body, const SamplerParams& defaults,
                             const RequestLimits& limits);
CompletionRequest ParseCompletionRequest(const std::string& body, const SamplerParams& defaults,
                                         const RequestLimits& limits);

// Any request body: valid JSON, an object, nested at most 64 levels (the
// parser recurses per level). Throws ApiError (400).
json ParseRequestObject(const std::string& body);

// Checks an OpenAI `messages` array (roles, content, tool calls) and returns
// it with content parts joined into strings, as chat templates expect.
// Throws ApiError (400, param "messages"); `messages` may be null (absent).
json ValidateMessages(const json* messages, const RequestLimits& limits);

// One generated token as the logprobs fields report it.
struct TokenLogprob {
  int32_t id = 0;
  std::string text;  // the token's bytes, possibly not valid UTF-8 on its own
  float logprob = 0;
  std::vector<std::pair<int32_t, std::string>> top;  // (id, bytes), descending
  std::vector<float> top_logprobs;
};

// OpenAI chat logprobs entry: {id, token, bytes, logprob, top_logprobs: [...]}.
// `id` is an extension (as llama.cpp sends it): token strings collide, and
// detection from logprobs needs ids. `token` is the bytes decoded as UTF-8 with
// invalid sequences replaced; `bytes` the exact bytes.
json ChatLogprobJson(const TokenLogprob& t);

// A new response id: prefix + 24 random hexadecimal digits.
std::string NewResponseId(const std::string& prefix);

// The text with invalid UTF-8 replaced by U+FFFD, so that json can
// serialise it (it throws on invalid UTF-8).
std::string ValidUtf8(const std::string& bytes);

}  // namespace epwa::serve
