// libFuzzer target for the safetensors header parser, the one place where
// epwa interprets untrusted bytes with nontrivial logic. The contract under
// test: any input either parses or throws epwa::Error. Any other exception
// escapes and is reported by libFuzzer as a crash, as are out-of-bounds
// reads, leaks and undefined behaviour (the target is built with ASan and
// UBSan).
//
// Run: ./build-fuzz/safetensors_fuzz -max_total_time=120 fuzz/corpus
// (copy fuzz/corpus first if the generated inputs should not land there).

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "base/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // libFuzzer's buffer is already exactly `size` bytes long, so ASan catches
  // any read past its end.
  try {
    uint64_t data_section_offset = 0;
    const std::vector<epwa::TensorInfo> tensors =
        epwa::ParseSafetensorsHeader(data, size, "fuzz.safetensors", &data_section_offset);
    // Whatever parses must describe ranges inside the input; touching every
    // byte of every tensor lets ASan prove it.
    uint8_t checksum = 0;
    for (const epwa::TensorInfo& t : tensors) {
      if (data_section_offset + t.end > size || t.begin > t.end) __builtin_trap();
      const uint8_t* begin = data + data_section_offset + t.begin;
      for (size_t i = 0; i < t.NumBytes(); ++i) checksum ^= begin[i];
      if (static_cast<uint64_t>(t.NumElements()) * epwa::DTypeSize(t.dtype) != t.NumBytes()) {
        __builtin_trap();
      }
    }
    volatile uint8_t sink = checksum;
    (void)sink;
  } catch (const epwa::Error&) {
    // Rejecting malformed input with a message is the expected outcome.
  }
  return 0;
}
