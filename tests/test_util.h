// Helpers shared by the whole-model tests.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "synth/synth.h"

namespace epwa::testing {

// A temporary folder removed when the object goes out of scope.
class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/epwa-test-XXXXXX";
    path_ = mkdtemp(pattern);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Writes the seeded synthetic model `preset` into dir/preset and returns the path.
inline std::string MakeModel(const TempDir& dir, const std::string& preset,
                             DType dtype = DType::kBF16) {
  SynthOptions o;
  o.preset = preset;
  o.out_dir = dir.path() + "/" + preset;
  o.dtype = dtype;
  WriteSynthModel(o);
  return o.out_dir;
}

}  // namespace epwa::testing
