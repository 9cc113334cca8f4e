// Running the epwa binary from tests: its exit code and output, and the
// shape every user-facing error must have.
#pragma once

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "test_util.h"

namespace epwa {

struct Result {
  int exit_code;  // -1 when killed by a signal
  std::string out, err;
};

inline std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Runs under `timeout` with standard input from the file `stdin_path`, so
// that a regression to a hang (a FIFO waited on, a runaway regex) fails its
// test with exit code 124 instead of stalling the suite.
inline Result RunEpwaWithStdin(const std::string& args, const std::string& stdin_path, const testing::TempDir& dir) {
  const std::string out = dir.path() + "/stdout", err = dir.path() + "/stderr";
  const std::string cmd = "timeout 300 " + std::string(EPWA_BINARY) + " " + args + " >" + out + " 2>" + err + " <" +
                          stdin_path;
  const int status = std::system(cmd.c_str());
  Result r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = testing::ReadFile(out);
  r.err = testing::ReadFile(err);
  return r;
}

// Standard input from /dev/null.
inline Result RunEpwa(const std::string& args, const testing::TempDir& dir) {
  return RunEpwaWithStdin(args, "/dev/null", dir);
}

// `input` on standard input (a file, not a terminal).
inline Result RunEpwaWithInput(const std::string& args, const std::string& input, const testing::TempDir& dir) {
  const std::string in = dir.path() + "/stdin";
  std::ofstream(in, std::ios::binary | std::ios::trunc) << input;
  return RunEpwaWithStdin(args, in, dir);
}

// Exit code `code` and exactly one error line, the last line of stderr,
// containing `needle` (load statistics may precede it when the failure comes
// after a successful load). Nothing on stdout.
inline void ExpectCleanError(const Result& r, int code, const std::string& needle) {
  EXPECT_EQ(r.exit_code, code) << r.err;
  ASSERT_FALSE(r.err.empty());
  ASSERT_EQ(r.err.back(), '\n') << r.err;
  const size_t start = r.err.rfind('\n', r.err.size() - 2);
  const std::string last = r.err.substr(start == std::string::npos ? 0 : start + 1);
  EXPECT_EQ(last.rfind("epwa: error: ", 0), 0u) << r.err;
  EXPECT_NE(last.find(needle), std::string::npos) << "stderr was: " << r.err;
  size_t error_lines = 0;
  for (size_t pos = r.err.find("epwa: error"); pos != std::string::npos;
       pos = r.err.find("epwa: error", pos + 1))
    ++error_lines;
  EXPECT_EQ(error_lines, 1u) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

// Writes 32 fixed key bytes (a function of `salt`) to `path`, replacing what
// is there (keygen never overwrites, so tests fix a key this way).
inline void WriteFixedKey(const std::string& path, int salt) {
  std::ofstream key(path, std::ios::binary | std::ios::trunc);
  for (int i = 0; i < 32; ++i) key.put(static_cast<char>(i * 37 + salt));
}

// The set-up of a suite that runs watermark commands: the binary's weight
// cache goes to the suite's folder `dir`, no key comes from the environment,
// and dir/test.key is made by keygen (so its mode is keygen's) and then given
// fixed bytes, so that statistical checks see the same green lists on every
// run (a random key each run made thresholds such as CSPV's on a 30-token
// sample fail now and then). Returns the key's path.
inline std::string PrepareWatermarkSuite(const testing::TempDir& dir, int salt) {
  setenv("EPWA_CACHE_DIR", (dir.path() + "/cache").c_str(), 1);
  unsetenv("EPWA_KEY_FILE");
  const std::string key = dir.path() + "/test.key";
  Result k = RunEpwa("keygen --out " + key, dir);
  EXPECT_EQ(k.exit_code, 0) << k.err;
  WriteFixedKey(key, salt);
  return key;
}

// A suite whose tests share one seeded synthetic model folder
// (tiny-random-moe) and a weight cache of their own; each test gets a
// scratch folder and can break a copy of the model in it.
class SynthModelCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    // Quantized-weight caches go to the suite's own folder, not the user's.
    setenv("EPWA_CACHE_DIR", (dir_->path() + "/cache").c_str(), 1);
    model_ = testing::MakeModel(*dir_, "tiny-random-moe");
  }
  static void TearDownTestSuite() { delete dir_; }
  // A copy of the model folder to break in one way.
  std::string CopyModel(const std::string& name) {
    const std::string to = scratch_.path() + "/" + name;
    std::filesystem::copy(model_, to, std::filesystem::copy_options::recursive);
    return to;
  }
  static void WriteFile(const std::string& path, const std::string& text) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
  }
  static inline testing::TempDir* dir_ = nullptr;
  static inline std::string model_;
  testing::TempDir scratch_;
};

}  // namespace epwa
