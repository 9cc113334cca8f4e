// libFuzzer target for the bodies `epwa serve` accepts (POST
// /v1/chat/completions and /v1/completions): bytes from any client on the
// network. The contract under test: any input either parses into a request
// whose fields respect the documented limits, or throws serve::ApiError with
// a 4xx status; anything else (another exception, an out-of-bounds read,
// undefined behaviour under ASan/UBSan, a stack overflow from deep nesting)
// is a crash.
//
// Run: make fuzz FUZZ_TARGETS=openai_request

#include <cstddef>
#include <cstdint>
#include <string>

#include "serve/openai_api.h"

namespace {

void CheckSampling(const epwa::serve::SamplingRequest& s, const epwa::serve::RequestLimits& limits) {
  if (s.max_tokens < 1 || s.max_tokens > limits.max_tokens_cap) __builtin_trap();
  if (!(s.sampler.temperature >= 0 && s.sampler.temperature <= 2)) __builtin_trap();
  if (!(s.sampler.top_p > 0 && s.sampler.top_p <= 1)) __builtin_trap();
  if (s.top_logprobs > limits.max_top_logprobs) __builtin_trap();
  if (s.stop.size() > limits.max_stop_sequences) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  const epwa::serve::RequestLimits limits;
  const epwa::SamplerParams defaults;
  try {
    const auto chat = epwa::serve::ParseChatRequest(body, defaults, limits);
    CheckSampling(chat.sampling, limits);
    if (!chat.messages.is_array() || chat.messages.empty()) __builtin_trap();
    // The parsed messages go to the chat template and back out as JSON.
    (void)chat.messages.dump(-1, ' ', false, epwa::serve::json::error_handler_t::replace);
  } catch (const epwa::serve::ApiError& e) {
    if (e.status() < 400 || e.status() > 499) __builtin_trap();
  }
  try {
    const auto completion = epwa::serve::ParseCompletionRequest(body, defaults, limits);
    CheckSampling(completion.sampling, limits);
    if (completion.prompt_text.has_value() == !completion.prompt_ids.empty()) __builtin_trap();
  } catch (const epwa::serve::ApiError& e) {
    if (e.status() < 400 || e.status() > 499) __builtin_trap();
  }
  return 0;
}
