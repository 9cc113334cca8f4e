// libFuzzer target for the readers of the machine's facts in base/meminfo.h:
// HostMemoryFromFiles (/proc/meminfo, /proc/self/cgroup and the cgroup
// files) and LastLevelCacheBytesFromFiles (sysfs's cache folders). The input
// is cut at 0x01 bytes into the meminfo text, the cgroup text and the
// contents of the files the readers may ask for, in a fixed order; missing
// pieces are unreadable files. Neither reader may throw, crash or read out
// of bounds, and their results must keep the documented relations.
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/meminfo.h"

namespace {

std::vector<std::string> Pieces(const uint8_t* data, size_t size) {
  std::vector<std::string> pieces(1);
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == 0x01) {
      pieces.emplace_back();
    } else {
      pieces.back().push_back(static_cast<char>(data[i]));
    }
  }
  return pieces;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<std::string> pieces = Pieces(data, size);
  // Paths the readers ask for, given contents in this order after the first
  // two pieces.
  static const char* const kPaths[] = {
      "/sys/fs/cgroup/memory.max",
      "/sys/fs/cgroup/memory.current",
      "/sys/fs/cgroup/a/memory.max",
      "/sys/fs/cgroup/a/memory.current",
      "/sys/fs/cgroup/memory/memory.limit_in_bytes",
      "/sys/fs/cgroup/memory/memory.usage_in_bytes",
      "/sys/fs/cgroup/memory/a/memory.limit_in_bytes",
      "/sys/fs/cgroup/memory/a/memory.usage_in_bytes",
      "/sys/devices/system/cpu/cpu0/cache/index0/level",
      "/sys/devices/system/cpu/cpu0/cache/index0/type",
      "/sys/devices/system/cpu/cpu0/cache/index0/size",
      "/sys/devices/system/cpu/cpu0/cache/index1/level",
      "/sys/devices/system/cpu/cpu0/cache/index1/type",
      "/sys/devices/system/cpu/cpu0/cache/index1/size",
      "/sys/devices/system/cpu/cpu0/cache/index3/level",
      "/sys/devices/system/cpu/cpu0/cache/index3/type",
      "/sys/devices/system/cpu/cpu0/cache/index3/size",
  };
  std::map<std::string, std::string> files;
  for (size_t i = 0; i < std::size(kPaths) && i + 2 < pieces.size(); ++i) files[kPaths[i]] = pieces[i + 2];
  auto read_file = [&files](const std::string& path) -> std::optional<std::string> {
    auto it = files.find(path);
    if (it == files.end()) return std::nullopt;
    return it->second;
  };
  const std::string_view meminfo = pieces[0];
  const std::string_view cgroup = pieces.size() > 1 ? std::string_view(pieces[1]) : std::string_view();
  const epwa::HostMemory m = epwa::HostMemoryFromFiles(meminfo, cgroup, read_file);
  // The free figure is the smaller of the bounds that could be read.
  if (!m.source.empty() && m.source.rfind("Mem", 0) == 0 && m.free_bytes != m.available_bytes) __builtin_trap();
  if (m.cgroup_limit_bytes && m.source.find("cgroup") != std::string::npos && m.free_bytes > *m.cgroup_limit_bytes)
    __builtin_trap();
  const uint64_t llc = epwa::LastLevelCacheBytesFromFiles(read_file);
  // A size the reader returns came from one of the size files: at least one byte.
  if (llc != 0 && files.count("/sys/devices/system/cpu/cpu0/cache/index0/size") == 0) __builtin_trap();
  return 0;
}
