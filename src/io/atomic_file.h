// Atomic file output: write to "<path>.tmp.<pid>", fsync, rename over <path>.
// If anything throws before Commit(), the temporary file is removed, so
// callers never leave partial output behind.
#pragma once

#include <cstdio>
#include <string>

namespace epwa {

class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);  // throws epwa::Error on failure
  ~AtomicFile();                                 // removes the temp file unless committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void Write(const void* data, size_t n);  // throws epwa::Error (e.g. disk full)
  void Commit();                           // flush, fsync, rename

 private:
  std::string path_;
  std::string tmp_path_;
  std::FILE* f_ = nullptr;
  bool committed_ = false;
};

}  // namespace epwa
