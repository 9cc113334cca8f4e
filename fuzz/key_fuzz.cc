// libFuzzer target for the watermark key-file check (a file of exactly 32
// raw bytes). The reader is tiny; the target pins its contract: any input is
// either a key equal to its bytes or an epwa::Error whose message never
// contains the bytes themselves (a key must not leak into messages).
//
// Run: ./build-fuzz/key_fuzz -max_total_time=60 /tmp/key-corpus fuzz/corpus/key

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#include "base/error.h"
#include "watermark/key.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const epwa::wm::SecretKey key = epwa::wm::SecretKey::FromFileBytes(std::span(data, size), "fuzz.key");
    if (size != epwa::wm::kKeyBytes) __builtin_trap();
    if (std::memcmp(key.bytes().data(), data, size) != 0) __builtin_trap();
  } catch (const epwa::Error& e) {
    if (size == epwa::wm::kKeyBytes) __builtin_trap();
    // The message is determined by the length alone, so it cannot quote the
    // file's content (a key must never leak into messages).
    const std::string expected =
        "the key file 'fuzz.key' must hold exactly 32 bytes, but it has " +
        (size > epwa::wm::kKeyBytes ? std::string("more") : std::to_string(size)) +
        " (epwa keygen writes a valid one)";
    if (e.what() != expected) __builtin_trap();
  }
  return 0;
}
