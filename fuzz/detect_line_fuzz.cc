// libFuzzer target for one line of a detection batch (`epwa detect --jsonl`,
// python3 -m epwa.detect_corpus): wm::DetectItemFromJsonLine. Any bytes
// either give an item with exactly one of text or ids (non-negative ids that
// fit int32; text valid UTF-8) or raise epwa::Error naming the line, never
// anything else: a corpus of millions of lines from the web must not end a
// run on one bad line.
//
// Run: ./build-fuzz/detect_line_fuzz -max_total_time=60 /tmp/c fuzz/corpus/detect_line

#include <cstddef>
#include <cstdint>
#include <string>

#include "base/error.h"
#include "tokenizer/utf8.h"
#include "watermark/batch_detect.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string line(reinterpret_cast<const char*>(data), size);
  try {
    const epwa::wm::DetectItem item = epwa::wm::DetectItemFromJsonLine(line, "in.jsonl:7", std::string("default"));
    if (item.text.has_value() == item.ids.has_value()) __builtin_trap();
    if (item.label != "in.jsonl:7" || !item.prompt.has_value() || item.error.has_value()) __builtin_trap();
    if (item.text && !epwa::tokenizer_internal::IsValidUtf8(*item.text)) __builtin_trap();
    if (item.ids)
      for (int32_t id : *item.ids)
        if (id < 0) __builtin_trap();
  } catch (const epwa::Error& e) {
    if (std::string(e.what()).rfind("in.jsonl:7", 0) != 0) __builtin_trap();
  }
  return 0;
}
