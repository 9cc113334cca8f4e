// Atomic file output: write to "<path>.tmp.<pid>", fsync, rename over <path>.
// If anything throws before Commit(), the temporary file is removed, so
// callers never leave partial output behind; the temporary file is also
// registered for removal if SIGINT/SIGTERM/SIGHUP stop the process
// (base/temp_files.h).
//
// The rename would replace whatever sits at <path>, so the target is checked
// first (as root, renaming over /dev/null would replace the device node for
// the whole system):
//  - a regular file, or nothing: written atomically beside it, as above;
//  - a symbolic link: followed, and the regular file it names is replaced
//    atomically (the link stays); a dangling link is refused;
//  - a character device, FIFO or socket (/dev/null, /dev/stdout, a pipe):
//    written in place as a stream, since such a target has no "partial file"
//    to protect and replacing it would destroy it; write errors (ENOSPC on
//    /dev/full) are still reported;
//  - a folder or block device: refused.
#pragma once

#include <cstddef>
#include <cstdio>
#include <memory>
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

  // True when the target is a device, FIFO or socket written in place.
  bool streaming() const { return streaming_; }

 private:
  std::string path_;         // as given, for messages
  std::string final_path_;   // the regular file to replace (symlinks resolved)
  std::string tmp_path_;     // empty when streaming
  std::FILE* f_ = nullptr;
  // The stdio buffer of a regular file's writes (see the constructor); f_
  // is closed (in Commit or the destructor's body) before it is freed.
  static constexpr size_t kWriteBlockBytes = size_t{8} << 20;
  std::unique_ptr<char[]> buffer_;
  bool committed_ = false;
  bool streaming_ = false;
};

}  // namespace epwa
