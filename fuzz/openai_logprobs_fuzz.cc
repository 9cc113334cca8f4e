// libFuzzer target for the OpenAI-format logprobs that `epwa serve`'s
// /v1/watermark/detect reads for PEPI (wm::LogprobsFromOpenAi): a request
// body from anyone who can reach the server. The contract under test: any
// JSON value either converts or throws epwa::Error; anything else (another
// exception, an out-of-bounds read, undefined behaviour such as a huge
// number converted to float or int; the target is built with ASan and
// UBSan) is a crash.
//
// Run: make fuzz FUZZ_TARGETS=openai_logprobs   (or ./build-fuzz/openai_logprobs_fuzz
//        -dict=fuzz/openai_logprobs.dict build-fuzz/corpus/openai_logprobs fuzz/corpus/openai_logprobs)

#include <cmath>
#include <cstddef>
#include <cstdint>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "watermark/logprobs.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  constexpr int64_t kVocab = 4096;
  // The server parses the body first (and refuses what is not JSON), so the
  // converter only ever sees a parsed value.
  const nlohmann::json body = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return 0;
  try {
    const epwa::wm::LogprobsFile file = epwa::wm::LogprobsFromOpenAi(body, kVocab);
    // Whatever is handed out must be what the detector may score.
    if (file.tokens.empty() || file.vocab_size != kVocab) __builtin_trap();
    bool listed = false;
    for (const epwa::wm::LogprobsEntry& e : file.tokens) {
      if (e.id < 0 || e.id >= kVocab) __builtin_trap();
      if (e.top.ids.size() != e.top.logprobs.size()) __builtin_trap();
      for (size_t i = 0; i < e.top.ids.size(); ++i) {
        if (e.top.ids[i] < 0 || e.top.ids[i] >= kVocab) __builtin_trap();
        if (!std::isfinite(e.top.logprobs[i]) || e.top.logprobs[i] > 0) __builtin_trap();
      }
      listed = listed || !e.top.ids.empty();
    }
    if (!listed) __builtin_trap();
  } catch (const epwa::Error&) {
    // Refusing a malformed body with a message is the expected outcome.
  }
  return 0;
}
