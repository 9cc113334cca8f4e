// Hex helpers shared by the watermark tests (vectors store bytes as hex).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace epwa::wm {

inline std::vector<uint8_t> FromHex(const std::string& hex) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

inline std::string ToHex(std::span<const uint8_t> bytes) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (uint8_t b : bytes) s += {d[b >> 4], d[b & 15]};
  return s;
}

}  // namespace epwa::wm
