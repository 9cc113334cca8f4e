#include "base/meminfo.h"

#include "base/text.h"

#include <dlfcn.h>
#include <glob.h>

#include <algorithm>
#include <cstddef>
#include <fstream>
#include <iterator>
#include <limits>
#include <sstream>
#include <vector>

namespace epwa {
namespace {

// ---------------------------------------------------------------------------
// Small parsing helpers. None of them throw: bad input gives nullopt.

// A plain unsigned decimal (after trimming); nullopt on anything else,
// including signs, empty strings and values that overflow 64 bits.
std::optional<uint64_t> ParseU64(std::string_view s) {
  s = TrimWhitespace(s);
  if (s.empty()) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (std::numeric_limits<uint64_t>::max() - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  return v;
}

std::vector<std::string_view> SplitLines(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t start = 0;
  while (start <= text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(start, nl - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!line.empty()) lines.push_back(line);
    start = nl + 1;
  }
  return lines;
}

// The value of a "Key:   N kB" (or "Key: N") line of /proc/meminfo in bytes.
std::optional<uint64_t> MeminfoBytes(std::string_view meminfo, std::string_view key) {
  for (std::string_view line : SplitLines(meminfo)) {
    if (line.size() <= key.size() || line.substr(0, key.size()) != key ||
        line[key.size()] != ':') {
      continue;
    }
    std::string_view rest = TrimWhitespace(line.substr(key.size() + 1));
    uint64_t scale = 1;
    if (rest.size() >= 2 && (rest.substr(rest.size() - 2) == "kB" ||
                             rest.substr(rest.size() - 2) == "KB")) {
      scale = 1024;
      rest = TrimWhitespace(rest.substr(0, rest.size() - 2));
    }
    std::optional<uint64_t> v = ParseU64(rest);
    if (!v) return std::nullopt;  // malformed: the bound is left out
    if (*v > std::numeric_limits<uint64_t>::max() / scale) return std::nullopt;
    return *v * scale;
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------
// cgroups

using ReadFileFn = std::function<std::optional<std::string>(const std::string& path)>;

constexpr uint64_t kV1UnlimitedAtOrAbove = uint64_t{1} << 62;

struct CgroupLines {
  std::optional<std::string> v1_memory_path;
  std::optional<std::string> v2_path;
};

CgroupLines ParseProcSelfCgroup(std::string_view text) {
  CgroupLines out;
  for (std::string_view line : SplitLines(text)) {
    size_t c1 = line.find(':');
    if (c1 == std::string_view::npos) continue;
    size_t c2 = line.find(':', c1 + 1);
    if (c2 == std::string_view::npos) continue;
    std::string_view id = line.substr(0, c1);
    std::string_view controllers = line.substr(c1 + 1, c2 - c1 - 1);
    std::string_view path = line.substr(c2 + 1);  // may itself contain ':'
    if (path.empty() || path.front() != '/') continue;
    if (id == "0" && controllers.empty()) {
      if (!out.v2_path) out.v2_path = std::string(path);
      continue;
    }
    size_t start = 0;
    while (start <= controllers.size()) {
      size_t comma = controllers.find(',', start);
      if (comma == std::string_view::npos) comma = controllers.size();
      if (controllers.substr(start, comma - start) == "memory") {
        if (!out.v1_memory_path) out.v1_memory_path = std::string(path);
        break;
      }
      start = comma + 1;
    }
  }
  return out;
}

// The folders to read for cgroup `path` under `root`: the folder itself, then
// each parent, ending with `root`. A path that climbs out with ".." (the
// process sits outside this namespace's root) yields the root only.
std::vector<std::string> CgroupLevels(const std::string& root, std::string_view path) {
  std::vector<std::string_view> parts;
  bool escapes = false;
  size_t start = 0;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    if (slash == std::string_view::npos) slash = path.size();
    std::string_view part = path.substr(start, slash - start);
    if (part == "..") escapes = true;
    if (!part.empty() && part != ".") parts.push_back(part);
    start = slash + 1;
  }
  std::vector<std::string> levels;
  if (!escapes) {
    for (size_t n = parts.size(); n > 0; --n) {
      std::string dir = root;
      for (size_t i = 0; i < n; ++i) {
        dir += '/';
        dir += parts[i];
      }
      levels.push_back(std::move(dir));
    }
  }
  levels.push_back(root);
  return levels;
}

struct CgroupResult {
  bool any_file_read = false;
  std::optional<uint64_t> limit;
  std::optional<uint64_t> usage;
  std::string path;
};

std::optional<std::string> SafeRead(const ReadFileFn& read_file, const std::string& path) {
  try {
    return read_file(path);
  } catch (...) {
    return std::nullopt;
  }
}

// Walks the levels of one hierarchy; the level with the least headroom
// (limit - usage, saturating) decides. Ties go to the deepest level.
CgroupResult WalkCgroup(const ReadFileFn& read_file, const std::string& root,
                        std::string_view path, bool v2) {
  const char* limit_file = v2 ? "/memory.max" : "/memory.limit_in_bytes";
  const char* usage_file = v2 ? "/memory.current" : "/memory.usage_in_bytes";
  CgroupResult result;
  std::optional<uint64_t> best_headroom;
  bool have_deepest = false;
  for (const std::string& dir : CgroupLevels(root, path)) {
    std::optional<std::string> limit_text = SafeRead(read_file, dir + limit_file);
    std::optional<std::string> usage_text = SafeRead(read_file, dir + usage_file);
    if (!limit_text && !usage_text) continue;
    result.any_file_read = true;
    std::optional<uint64_t> usage = usage_text ? ParseU64(*usage_text) : std::nullopt;
    std::optional<uint64_t> limit;
    if (limit_text) {
      std::string_view t = TrimWhitespace(*limit_text);
      if (!(v2 && t == "max")) {
        limit = ParseU64(t);  // malformed: nullopt, the bound is left out
        if (limit && !v2 && *limit >= kV1UnlimitedAtOrAbove) limit.reset();
      }
    }
    if (!have_deepest) {  // reported when no level has a limit
      have_deepest = true;
      result.path = dir;
      result.usage = usage;
    }
    if (limit) {
      uint64_t headroom = usage ? (*limit > *usage ? *limit - *usage : 0) : *limit;
      if (!best_headroom || headroom < *best_headroom) {
        best_headroom = headroom;
        result.limit = limit;
        result.usage = usage;
        result.path = dir;
      }
    }
  }
  return result;
}

std::optional<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return std::nullopt;
  return content;
}

}  // namespace

HostMemory HostMemoryFromFiles(std::string_view proc_meminfo, std::string_view proc_self_cgroup,
                               const ReadFileFn& read_file) {
  HostMemory m;
  try {
    std::optional<uint64_t> total = MeminfoBytes(proc_meminfo, "MemTotal");
    std::optional<uint64_t> available = MeminfoBytes(proc_meminfo, "MemAvailable");
    const char* available_source = "MemAvailable";
    if (!available) {
      available = MeminfoBytes(proc_meminfo, "MemFree");
      available_source = "MemFree";
    }
    m.total_bytes = total.value_or(0);
    m.available_bytes = available.value_or(0);

    CgroupLines lines = ParseProcSelfCgroup(proc_self_cgroup);
    CgroupResult cg;
    const char* cg_source = "";
    if (lines.v1_memory_path) {
      cg = WalkCgroup(read_file, "/sys/fs/cgroup/memory", *lines.v1_memory_path, false);
      cg_source = "cgroup v1 limit";
    }
    if (!cg.any_file_read && lines.v2_path) {
      cg = WalkCgroup(read_file, "/sys/fs/cgroup", *lines.v2_path, true);
      cg_source = "cgroup v2 limit";
    }
    if (cg.any_file_read) {
      m.cgroup_limit_bytes = cg.limit;
      m.cgroup_usage_bytes = cg.usage;
      m.cgroup_path = cg.path;
    }

    std::optional<uint64_t> headroom;
    if (m.cgroup_limit_bytes) {
      uint64_t usage = m.cgroup_usage_bytes.value_or(0);
      headroom = *m.cgroup_limit_bytes > usage ? *m.cgroup_limit_bytes - usage : 0;
    }
    if (available && (!headroom || *available <= *headroom)) {
      m.free_bytes = *available;
      m.source = available_source;
    } else if (headroom) {
      m.free_bytes = *headroom;
      m.source = cg_source;
    }
  } catch (...) {
    // Only std::bad_alloc can get here; keep whatever was filled in.
  }
  return m;
}

HostMemory ProbeHostMemory() {
  try {
    std::string meminfo = ReadWholeFile("/proc/meminfo").value_or("");
    std::string cgroup = ReadWholeFile("/proc/self/cgroup").value_or("");
    return HostMemoryFromFiles(meminfo, cgroup, ReadWholeFile);
  } catch (...) {
    return HostMemory{};
  }
}

// ---------------------------------------------------------------------------
// Last-level cache

namespace {

// "307200K", "32M", "1G" or plain bytes (after trimming); nullopt otherwise.
std::optional<uint64_t> ParseCacheSize(std::string_view s) {
  s = TrimWhitespace(s);
  uint64_t scale = 1;
  if (!s.empty()) {
    switch (s.back()) {
      case 'K': scale = uint64_t{1} << 10; break;
      case 'M': scale = uint64_t{1} << 20; break;
      case 'G': scale = uint64_t{1} << 30; break;
      default: break;
    }
    if (scale != 1) s.remove_suffix(1);
  }
  std::optional<uint64_t> v = ParseU64(s);
  if (!v || *v > std::numeric_limits<uint64_t>::max() / scale) return std::nullopt;
  return *v * scale;
}

}  // namespace

uint64_t LastLevelCacheBytesFromFiles(const ReadFileFn& read_file) {
  // Linux numbers a CPU's caches index0, index1, ...; a handful exist (L1
  // data and instruction, L2, L3, sometimes L4), so 16 covers them with room.
  constexpr int kMaxIndex = 16;
  uint64_t best_level = 0, best_bytes = 0;
  try {
    for (int i = 0; i < kMaxIndex; ++i) {
      const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
      const std::optional<std::string> level_text = SafeRead(read_file, dir + "level");
      const std::optional<std::string> type_text = SafeRead(read_file, dir + "type");
      const std::optional<std::string> size_text = SafeRead(read_file, dir + "size");
      if (!level_text || !type_text || !size_text) continue;
      const std::string_view type = TrimWhitespace(*type_text);
      if (type != "Unified" && type != "Data") continue;
      const std::optional<uint64_t> level = ParseU64(*level_text);
      const std::optional<uint64_t> bytes = ParseCacheSize(*size_text);
      if (!level || !bytes || *bytes == 0) continue;
      if (*level > best_level || (*level == best_level && *bytes > best_bytes)) {
        best_level = *level;
        best_bytes = *bytes;
      }
    }
  } catch (...) {
    return 0;
  }
  return best_bytes;
}

uint64_t ProbeLastLevelCacheBytes() { return LastLevelCacheBytesFromFiles(ReadWholeFile); }

// ---------------------------------------------------------------------------
// GPU

namespace {

// cudaError_t and CUresult are C enums: int-sized in the ABI.
using CudaGetDeviceCountFn = int (*)(int*);
using CudaMemGetInfoFn = int (*)(size_t*, size_t*);
using CudaGetErrorStringFn = const char* (*)(int);
using CudaGetDeviceFn = int (*)(int*);
using CudaSetDeviceFn = int (*)(int);
using CuDeviceGetFn = int (*)(int*, int);
using CuDeviceGetNameFn = int (*)(char*, int, int);

template <typename Fn>
Fn Symbol(void* handle, const char* name) {
  return reinterpret_cast<Fn>(dlsym(handle, name));
}

std::string CudaErrorText(CudaGetErrorStringFn error_string, int code) {
  std::ostringstream s;
  const char* text = error_string ? error_string(code) : nullptr;
  if (text && *text) {
    s << text << " (error " << code << ")";
  } else {
    s << "error " << code;
  }
  return s.str();
}

std::vector<std::string> CudartCandidates() {
  std::vector<std::string> names = {"libcudart.so.13", "libcudart.so.12", "libcudart.so"};
  glob_t g{};
  if (glob("/usr/local/cuda/lib64/libcudart.so*", 0, nullptr, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc; ++i) names.emplace_back(g.gl_pathv[i]);
  }
  globfree(&g);
  return names;
}

// Device 0's name through the driver API that the runtime has already loaded;
// "" when it cannot be had cheaply.
std::string DriverDeviceName() {
  void* cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  if (!cuda) return "";
  std::string name;
  auto device_get = Symbol<CuDeviceGetFn>(cuda, "cuDeviceGet");
  auto device_get_name = Symbol<CuDeviceGetNameFn>(cuda, "cuDeviceGetName");
  int device = 0;
  char buffer[256] = {};
  if (device_get && device_get_name && device_get(&device, 0) == 0 &&
      device_get_name(buffer, static_cast<int>(sizeof(buffer) - 1), device) == 0) {
    name = buffer;
  }
  dlclose(cuda);  // drops only the reference RTLD_NOLOAD added
  return name;
}

}  // namespace

GpuMemory ProbeGpuMemory() {
  GpuMemory g;
  try {
    void* handle = nullptr;
    for (const std::string& candidate : CudartCandidates()) {
      handle = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (handle) {
        g.runtime_library = candidate;
        break;
      }
    }
    if (!handle) {
      g.reason =
          "libcudart.so not found (tried libcudart.so.13, libcudart.so.12, libcudart.so and "
          "/usr/local/cuda/lib64/libcudart.so*)";
      return g;
    }
    // Never dlclose()d: the runtime registers exit-time teardown.
    auto get_device_count = Symbol<CudaGetDeviceCountFn>(handle, "cudaGetDeviceCount");
    auto mem_get_info = Symbol<CudaMemGetInfoFn>(handle, "cudaMemGetInfo");
    auto error_string = Symbol<CudaGetErrorStringFn>(handle, "cudaGetErrorString");
    auto get_device = Symbol<CudaGetDeviceFn>(handle, "cudaGetDevice");
    auto set_device = Symbol<CudaSetDeviceFn>(handle, "cudaSetDevice");
    if (!get_device_count || !mem_get_info) {
      g.reason = g.runtime_library + " lacks cudaGetDeviceCount or cudaMemGetInfo";
      return g;
    }
    int count = 0;
    int rc = get_device_count(&count);
    if (rc != 0) {
      g.reason = "no CUDA device (cudaGetDeviceCount: " + CudaErrorText(error_string, rc) + ")";
      return g;
    }
    if (count <= 0) {
      g.reason = "no CUDA device (cudaGetDeviceCount found 0 devices)";
      return g;
    }
    // Query device 0 without changing the calling thread's current device.
    int previous = 0;
    bool switched = false;
    if (get_device && set_device && get_device(&previous) == 0 && previous != 0) {
      switched = set_device(0) == 0;
    }
    size_t free_bytes = 0, total_bytes = 0;
    rc = mem_get_info(&free_bytes, &total_bytes);
    if (switched) set_device(previous);
    if (rc != 0) {
      g.reason = "cudaMemGetInfo on CUDA device 0 failed: " + CudaErrorText(error_string, rc);
      return g;
    }
    g.usable = true;
    g.free_bytes = free_bytes;
    g.total_bytes = total_bytes;
    g.name = DriverDeviceName();
  } catch (...) {
    g.usable = false;
    if (g.reason.empty()) g.reason = "probing the CUDA runtime failed unexpectedly";
  }
  return g;
}

}  // namespace epwa
