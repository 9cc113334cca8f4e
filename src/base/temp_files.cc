#include "base/temp_files.h"

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <ctime>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace epwa {

namespace {

// The registry is a fixed table so that the signal handler can walk it
// without allocating or locking: each slot's path is written first, then the
// slot is published by a release store of `used`; the handler reads `used`
// with an acquire load before touching the path.
constexpr int kSlots = 64;
constexpr size_t kMaxPath = 4096;
struct Slot {
  std::atomic<bool> used{false};
  char path[kMaxPath];
};
Slot g_slots[kSlots];
std::mutex g_mutex;  // serialises Register/Unregister (never taken by the handler)

constexpr long kStaleSeconds = 60;

constexpr int kSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};

}  // namespace

// Also called by the SIGBUS reporter (mapped_regions.cc): async-signal-safe.
void RemoveRegisteredTempFilesFromSignal() {
  for (Slot& s : g_slots) {
    if (s.used.load(std::memory_order_acquire)) ::unlink(s.path);
  }
}

namespace {

void CleanupHandler(int sig) {
  const int saved_errno = errno;
  RemoveRegisteredTempFilesFromSignal();
  // Re-raise with the default action so that the parent sees the process
  // die of this signal, exactly as it would have without the handler.
  ::signal(sig, SIG_DFL);
  ::raise(sig);
  errno = saved_errno;
}

}  // namespace

void InstallTempFileCleanup() {
  static std::once_flag once;
  std::call_once(once, [] {
    for (int sig : kSignals) {
      struct sigaction old {};
      ::sigaction(sig, nullptr, &old);
      // A signal ignored by the parent (nohup, background jobs) stays
      // ignored: installing a handler would change what the user asked for.
      if (old.sa_handler == SIG_IGN) continue;
      struct sigaction sa {};
      sa.sa_handler = CleanupHandler;
      sigemptyset(&sa.sa_mask);
      for (int other : kSignals) sigaddset(&sa.sa_mask, other);
      sa.sa_flags = SA_RESETHAND;
      ::sigaction(sig, &sa, nullptr);
    }
  });
}

void RegisterTempFile(const std::string& path) {
  if (path.size() + 1 > kMaxPath) return;
  InstallTempFileCleanup();
  std::lock_guard<std::mutex> lock(g_mutex);
  for (Slot& s : g_slots) {
    if (!s.used.load(std::memory_order_relaxed)) {
      std::memcpy(s.path, path.c_str(), path.size() + 1);
      s.used.store(true, std::memory_order_release);
      return;
    }
  }
}

void UnregisterTempFile(const std::string& path) {
  std::lock_guard<std::mutex> lock(g_mutex);
  for (Slot& s : g_slots) {
    if (s.used.load(std::memory_order_relaxed) && path == s.path) {
      s.used.store(false, std::memory_order_release);
      return;
    }
  }
}

std::string TempPathFor(const std::string& target) {
  return target + ".tmp." + std::to_string(::getpid());
}

int RemoveStaleTempFiles(const std::string& folder) {
  DIR* dir = ::opendir(folder.c_str());
  if (dir == nullptr) return 0;
  int removed = 0;
  while (const dirent* entry = ::readdir(dir)) {
    const std::string name = entry->d_name;
    const size_t mark = name.rfind(".tmp.");
    if (mark == std::string::npos || mark == 0) continue;
    const std::string digits = name.substr(mark + 5);
    if (digits.empty() || digits.size() > 9 ||
        digits.find_first_not_of("0123456789") != std::string::npos)
      continue;
    const long pid = std::strtol(digits.c_str(), nullptr, 10);
    if (pid <= 0 || pid == ::getpid()) continue;
    // kill(pid, 0) fails with ESRCH only when no such process exists; EPERM
    // means it exists under another user, so its file is left alone. A pid
    // reused by an unrelated process keeps the file until that one ends,
    // which is harmless.
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;
    const std::string path = folder + "/" + name;
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    // A process in another PID namespace (a second container sharing the
    // folder) looks dead from here, but its file is still being written and
    // so keeps a fresh mtime; only files untouched for a minute are taken.
    if (::time(nullptr) - st.st_mtime < kStaleSeconds) continue;
    if (::unlink(path.c_str()) == 0) ++removed;
  }
  ::closedir(dir);
  return removed;
}

}  // namespace epwa
