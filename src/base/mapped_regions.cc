#include "base/mapped_regions.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>

#include "base/temp_files.h"

namespace epwa {

void RemoveRegisteredTempFilesFromSignal();  // temp_files.cc

namespace {

// A fixed table, for the same reason as in temp_files.cc: the handler may
// neither allocate nor lock. `begin` doubles as the slot's "in use" flag and
// is published last (release) and read first (acquire).
constexpr int kSlots = 1024;
constexpr size_t kMaxPath = 512;
struct Region {
  std::atomic<uintptr_t> begin{0};
  size_t size = 0;
  char path[kMaxPath];
};
Region g_regions[kSlots];
std::mutex g_mutex;

void WriteAll(const char* s) {
  size_t n = std::strlen(s);
  while (n > 0) {
    const ssize_t w = ::write(STDERR_FILENO, s, n);
    if (w <= 0) return;
    s += w;
    n -= static_cast<size_t>(w);
  }
}

void SigbusHandler(int, siginfo_t* info, void*) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
  const char* path = nullptr;
  for (Region& r : g_regions) {
    const uintptr_t b = r.begin.load(std::memory_order_acquire);
    if (b != 0 && addr >= b && addr - b < r.size) {
      path = r.path;
      break;
    }
  }
  if (path != nullptr) {
    WriteAll("epwa: error: ");
    WriteAll(path);
    WriteAll(" changed size while epwa was reading it (truncated or replaced in place, e.g. by a "
             "download into the same path); run again once the file is complete\n");
  } else {
    WriteAll("epwa: error: a memory-mapped file changed size while epwa was reading it "
             "(SIGBUS); run again once it is complete\n");
  }
  RemoveRegisteredTempFilesFromSignal();
  ::_exit(1);
}

}  // namespace

void InstallMappedFileFaultReport() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = SigbusHandler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_SIGINFO;
    ::sigaction(SIGBUS, &sa, nullptr);
  });
}

void RegisterMappedFile(const void* begin, size_t size, const std::string& path) {
  if (begin == nullptr || size == 0) return;
  std::lock_guard<std::mutex> lock(g_mutex);
  for (Region& r : g_regions) {
    if (r.begin.load(std::memory_order_relaxed) == 0) {
      r.size = size;
      const size_t n = std::min(path.size(), kMaxPath - 1);
      std::memcpy(r.path, path.data(), n);
      r.path[n] = '\0';
      r.begin.store(reinterpret_cast<uintptr_t>(begin), std::memory_order_release);
      return;
    }
  }
}

bool InRegisteredMapping(const void* p, size_t bytes) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> lock(g_mutex);
  for (const Region& r : g_regions) {
    const uintptr_t b = r.begin.load(std::memory_order_relaxed);
    if (b != 0 && addr >= b && addr - b <= r.size && bytes <= r.size - (addr - b)) return true;
  }
  return false;
}

void UnregisterMappedFile(const void* begin) {
  if (begin == nullptr) return;
  std::lock_guard<std::mutex> lock(g_mutex);
  for (Region& r : g_regions) {
    if (r.begin.load(std::memory_order_relaxed) == reinterpret_cast<uintptr_t>(begin)) {
      r.begin.store(0, std::memory_order_release);
      return;
    }
  }
}

}  // namespace epwa
