// Process memory figures read from /proc, for load statistics and benches.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

namespace epwa {

// Reads a "Key:   N kB" line of /proc/self/status in bytes; 0 if unavailable.
inline uint64_t ProcStatusBytes(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, key.size() + 1, key + ":") == 0) {
      return std::stoull(line.substr(key.size() + 1)) * 1024ull;
    }
  }
  return 0;
}

inline uint64_t PeakRssBytes() { return ProcStatusBytes("VmHWM"); }
inline uint64_t CurrentRssBytes() { return ProcStatusBytes("VmRSS"); }

}  // namespace epwa
