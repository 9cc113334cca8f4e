// Free memory of the host and of a GPU: the machine facts a memory planner
// starts from.
//
// Host: the smaller of MemAvailable (/proc/meminfo) and the headroom left under
// the process's cgroup memory limit (v2 memory.max / v1 memory.limit_in_bytes),
// because inside a container MemAvailable describes the whole machine while the
// cgroup limit is what the OOM killer enforces.
//
// GPU: the CUDA runtime is dlopen()ed only if it is installed; nothing links
// against CUDA at build time. A machine without a GPU, driver or runtime is a
// normal result (usable == false with a one-sentence reason), never an
// exception or a crash.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace epwa {

struct HostMemory {
  uint64_t total_bytes = 0;      // MemTotal (0 when /proc/meminfo lacks it)
  uint64_t available_bytes = 0;  // MemAvailable (MemFree on kernels without it)
  // The deciding cgroup level's memory.max (v2) or memory.limit_in_bytes (v1);
  // nullopt when unlimited at every level ("max", or v1 values >= 2^62) or
  // when there is no readable cgroup.
  std::optional<uint64_t> cgroup_limit_bytes;
  // memory.current (v2) / memory.usage_in_bytes (v1) of the same folder.
  std::optional<uint64_t> cgroup_usage_bytes;
  // The cgroup folder whose figures are reported: the level with the least
  // headroom when some level has a limit, else the deepest folder read; ""
  // when no cgroup file could be read.
  std::string cgroup_path;
  // min(available_bytes, cgroup_limit_bytes - cgroup_usage_bytes), the
  // subtraction saturating at 0; bounds that could not be read are left out.
  uint64_t free_bytes = 0;
  // Which bound decided free_bytes: "MemAvailable", "MemFree" (old kernels),
  // "cgroup v2 limit", "cgroup v1 limit", or "" when no bound was readable.
  std::string source;
};

// Reads /proc/meminfo, /proc/self/cgroup and /sys/fs/cgroup/... of the live
// system. Never throws.
HostMemory ProbeHostMemory();

// The testable core of ProbeHostMemory: the same from file contents.
// `read_file(path)` returns the content of an absolute path such as
// "/sys/fs/cgroup/a/b/memory.max", or nullopt when it cannot be read.
//
// cgroup rules:
//  * /proc/self/cgroup lines are "ID:CONTROLLERS:PATH". A v1 line whose
//    comma-separated controllers include "memory" selects v1 (folders under
//    /sys/fs/cgroup/memory); otherwise the "0::PATH" line selects v2 (folders
//    under /sys/fs/cgroup). In a hybrid layout the v1 memory line wins, since
//    the memory controller is then attached to v1; if no v1 file is readable
//    the v2 line is tried.
//  * The folder of PATH and each parent up to the root are read, because a
//    limit on a parent applies to its children. The level with the least
//    headroom (limit - usage) decides; a level whose usage is unreadable
//    counts its whole limit as headroom.
//  * Namespaced containers list a PATH that does not exist under
//    /sys/fs/cgroup; the walk then finds nothing until it reaches the root of
//    the namespace (/sys/fs/cgroup/memory.max or
//    /sys/fs/cgroup/memory/memory.limit_in_bytes), which is what applies.
//  * Malformed numbers and missing files are ignored: the bound is left out.
// Never throws.
HostMemory HostMemoryFromFiles(
    std::string_view proc_meminfo, std::string_view proc_self_cgroup,
    const std::function<std::optional<std::string>(const std::string& path)>& read_file);

// The CPU's last-level cache in bytes: the largest data or unified cache of
// the highest level that /sys/devices/system/cpu/cpu0/cache/index<i>/ lists
// (files `level`, `type` and `size`, the size as the kernel prints it, such
// as "307200K"). 0 when sysfs lists none. The benchmarks use it to read
// enough memory that the cache cannot serve what they time (a 300 MiB L3
// holds most of a 256 MiB ring of weights), and `epwa bench` to say when a
// decode step's bytes are few enough that part of them may come from it.
// Never throws.
uint64_t ProbeLastLevelCacheBytes();

// The testable core: the same through `read_file(path)`, which returns the
// content of an absolute path or nullopt. Entries whose level, type or size
// is missing or malformed are skipped (instruction caches too); a size is a
// decimal with an optional K, M or G suffix (powers of 1024).
uint64_t LastLevelCacheBytesFromFiles(
    const std::function<std::optional<std::string>(const std::string& path)>& read_file);

struct GpuMemory {
  bool usable = false;
  // When !usable: why, in one sentence (e.g. "libcudart.so not found ...",
  // "no CUDA device (cudaGetDeviceCount: ...)").
  std::string reason;
  // Device 0's name when usable and libcuda's cuDeviceGetName could be found;
  // otherwise empty.
  std::string name;
  uint64_t free_bytes = 0;   // cudaMemGetInfo on device 0
  uint64_t total_bytes = 0;  // cudaMemGetInfo on device 0
  // The soname or path that was dlopen()ed ("" when none could be loaded).
  std::string runtime_library;
};

// dlopen()s the CUDA runtime if present (libcudart.so.13, libcudart.so.12,
// libcudart.so, then /usr/local/cuda/lib64/libcudart.so*), resolves
// cudaGetDeviceCount, cudaMemGetInfo and cudaGetErrorString with dlsym and
// asks device 0 (the first device CUDA_VISIBLE_DEVICES leaves visible). The
// first call creates the CUDA context of device 0 (a few hundred MB of device
// memory, reflected in free_bytes). The library is never dlclose()d: the CUDA
// runtime tears itself down at process exit. Never throws.
GpuMemory ProbeGpuMemory();

}  // namespace epwa
