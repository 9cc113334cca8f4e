// libFuzzer target for the logprobs-file reader (black-box PEPI's input, an
// API dump that may come from anywhere). The contract under test: any input
// either parses or throws epwa::Error; anything else (another exception, an
// out-of-bounds read, undefined behaviour; the target is built with ASan and
// UBSan) is a crash.
//
// Run: ./build-fuzz/logprobs_fuzz -dict=fuzz/logprobs.dict -max_total_time=120 \
//        /tmp/logprobs-corpus fuzz/corpus/logprobs

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "base/error.h"
#include "watermark/logprobs.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // 4096 is the bundled model's vocabulary, which the seed files use; inputs
  // with another vocabulary are refused early, which is covered too.
  constexpr int64_t kVocab = 4096;
  try {
    const std::string_view bytes(reinterpret_cast<const char*>(data), size);
    int64_t count = 0;
    const epwa::wm::LogprobsScan scan = epwa::wm::ScanLogprobsBytes(
        bytes, "fuzz.json", kVocab,
        [&](int64_t index, const epwa::wm::LogprobsEntry& e, const auto& where) {
          // Whatever is handed out must be what the format promises.
          if (index != count++) __builtin_trap();
          if (e.id < 0 || e.id >= kVocab) __builtin_trap();
          if (e.top.ids.size() != e.top.logprobs.size()) __builtin_trap();
          for (size_t i = 0; i < e.top.ids.size(); ++i) {
            if (e.top.ids[i] < 0 || e.top.ids[i] >= kVocab) __builtin_trap();
            if (!std::isfinite(e.top.logprobs[i]) || e.top.logprobs[i] > 0) __builtin_trap();
          }
          if (index % 64 == 0 && where().empty()) __builtin_trap();
        });
    if (scan.tokens != count || scan.tokens < 1 || scan.max_listed < 1) __builtin_trap();
  } catch (const epwa::Error&) {
    // Refusing malformed input with a message is the expected outcome.
  }
  return 0;
}
