// libFuzzer target for the .npy reader (ParseNpyF32): any input either
// parses into exactly shape-product floats or throws epwa::Error; anything
// else (another exception, a bad read, undefined behaviour) is a finding.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/error.h"
#include "io/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    std::vector<int64_t> shape;
    const std::vector<float> values = epwa::ParseNpyF32(data, size, "fuzz.npy", &shape);
    uint64_t numel = 1;
    for (int64_t d : shape) {
      if (d < 0) __builtin_trap();
      numel *= static_cast<uint64_t>(d);
    }
    if (numel != values.size() || values.size() * sizeof(float) > size) __builtin_trap();
  } catch (const epwa::Error&) {
  }
  return 0;
}
