// libFuzzer target for tokenizer.json loading, encoding and decoding: the
// tokenizer file is untrusted input (it comes with a downloaded model), and so
// is the text. The input is split at its first NUL byte: the part before it
// is the tokenizer.json, the part after it the text. The contract under test:
// loading, Encode and Decode either succeed or throw epwa::Error; anything
// else (another exception, an ASan/UBSan report, a hang, runaway memory) is a
// crash. On success the invariants below must hold.
//
// Run: ./build-fuzz/tokenizer_fuzz -max_total_time=300 -rss_limit_mb=4096 \
//        -dict=fuzz/tokenizer.dict /tmp/tokenizer-corpus fuzz/corpus/tokenizer

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find('\0');
  const std::string_view json = input.substr(0, split);
  const std::string_view text = split == std::string_view::npos ? std::string_view() : input.substr(split + 1);
  std::unique_ptr<epwa::Tokenizer> tok;
  try {
    tok = epwa::Tokenizer::FromJson(json, "fuzz/tokenizer.json");
  } catch (const epwa::Error&) {
    return 0;  // Refusing a malformed file with a message is the expected outcome.
  }
  for (const bool special : {false, true}) {
    std::vector<int32_t> ids;
    try {
      ids = tok->Encode(text, special);
    } catch (const epwa::Error&) {
      continue;  // E.g. a regex that needs more work than the budget allows.
    }
    // Every id Encode produces must name a token: decoding it and feeding it
    // to the model rely on that.
    for (const int32_t id : ids) {
      if (id < 0 || id >= tok->VocabSize()) __builtin_trap();
      try {
        (void)tok->IdToPiece(id);
      } catch (const epwa::Error&) {
        __builtin_trap();
      }
    }
    // MaxTokenBytes promises that no token stands for more input bytes.
    const size_t max_bytes = tok->MaxTokenBytes();
    if (!special && max_bytes != std::numeric_limits<size_t>::max() &&
        text.size() > ids.size() * static_cast<uint64_t>(max_bytes)) {
      __builtin_trap();
    }
    try {
      const std::string decoded = tok->Decode(ids, /*skip_special_tokens=*/special);
      (void)decoded;
    } catch (const epwa::Error&) {
      // A decoder stage may refuse to grow the text past its limit.
    }
  }
  return 0;
}
