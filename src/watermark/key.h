// The watermark's secret key: exactly 32 raw bytes in a file.
//
// The key never leaves this type in printable form: there is no accessor that
// formats it, error messages name the file and its length but never its
// content, and the only thing derived from it that epwa outputs is green-list
// membership (docs/watermark.md).
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>

namespace epwa::wm {

inline constexpr size_t kKeyBytes = 32;

class SecretKey {
 public:
  // Reads `path`; throws epwa::Error if it is missing, unreadable, or not
  // exactly 32 bytes long.
  static SecretKey FromFile(const std::string& path);
  // The key-file check on a file's whole content (`path` names it in
  // messages): exactly 32 bytes. FromFile's parser, exposed for fuzzing.
  static SecretKey FromFileBytes(std::span<const uint8_t> bytes, const std::string& path);
  // For tests and reference vectors.
  static SecretKey FromBytes(std::span<const uint8_t> bytes);

  std::span<const uint8_t> bytes() const { return bytes_; }

 private:
  std::array<uint8_t, kKeyBytes> bytes_{};
};

// Writes 32 bytes from the operating system's CSPRNG (getrandom) to `path`
// with mode 0600. Refuses to replace an existing file unless `overwrite`;
// the file appears complete or not at all.
void WriteNewKeyFile(const std::string& path, bool overwrite);

// The key file to use: `flag_path` if given, else $EPWA_KEY_FILE; throws
// epwa::Error naming both when neither is set.
std::string ResolveKeyPath(const std::string& flag_path, const char* env_value);

}  // namespace epwa::wm
