// Where tests find their data: the repository root and the shared data
// folder. For test binaries only (header-only, no library code uses it).
#pragma once

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <system_error>

namespace epwa::testing {

// The repository root: tests run from it, but walking up from the working
// directory also lets a test binary be started from a build folder.
inline std::filesystem::path RepoRoot() {
  namespace fs = std::filesystem;
  std::error_code error;
  const fs::path dir = fs::current_path(error);
  for (fs::path candidate = dir; !candidate.empty(); candidate = candidate.parent_path()) {
    if (fs::exists(candidate / "src" / "base" / "test_paths.h", error)) return candidate;
    if (candidate == candidate.parent_path()) break;
  }
  return dir;
}

// The shared data folder: $EPWA_SHARED_DIR, else ../shared beside the
// repository; nullopt when neither holds data/ (tests then skip and say so).
inline std::optional<std::filesystem::path> SharedDir() {
  namespace fs = std::filesystem;
  std::error_code error;
  if (const char* env = std::getenv("EPWA_SHARED_DIR"); env != nullptr && *env != '\0') {
    if (fs::exists(fs::path(env) / "data", error)) return fs::path(env);
  }
  const fs::path beside = RepoRoot() / ".." / "shared";
  if (fs::exists(beside / "data", error)) return beside;
  return std::nullopt;
}

}  // namespace epwa::testing
