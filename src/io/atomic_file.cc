// Atomic file output. The temporary file sits in the same folder as the
// target so that the final rename never crosses file systems, which is what
// makes it atomic.

#include "io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "base/error.h"

namespace epwa {

AtomicFile::AtomicFile(const std::string& path)
    : path_(path), tmp_path_(path + ".tmp." + std::to_string(::getpid())) {
  f_ = std::fopen(tmp_path_.c_str(), "wb");
  if (f_ == nullptr) {
    throw Error("cannot create '" + tmp_path_ + "' to write " + path_ + ": " +
                std::strerror(errno));
  }
}

AtomicFile::~AtomicFile() {
  if (f_ != nullptr) std::fclose(f_);
  if (!committed_) std::remove(tmp_path_.c_str());
}

void AtomicFile::Write(const void* data, size_t n) {
  Require(f_ != nullptr && !committed_, "writing " + path_ + " after it was committed");
  if (n == 0) return;
  if (std::fwrite(data, 1, n, f_) != n) {
    throw Error("writing " + path_ + " failed: " + std::strerror(errno));
  }
}

void AtomicFile::Commit() {
  Require(f_ != nullptr && !committed_, "committing " + path_ + " twice");
  // Buffered data can still hit a full disk here, so each step is checked;
  // a failure leaves committed_ false and the destructor removes the file.
  if (std::fflush(f_) != 0) {
    throw Error("writing " + path_ + " failed: " + std::strerror(errno));
  }
  if (::fsync(::fileno(f_)) != 0) {
    throw Error("writing " + path_ + " failed (fsync): " + std::strerror(errno));
  }
  const int close_result = std::fclose(f_);
  f_ = nullptr;
  if (close_result != 0) {
    throw Error("writing " + path_ + " failed (close): " + std::strerror(errno));
  }
  if (std::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    throw Error("cannot rename '" + tmp_path_ + "' to '" + path_ + "': " + std::strerror(errno));
  }
  committed_ = true;
  // Make the rename itself durable. Failure here cannot undo the rename and
  // the data is already safe, so it is not an error.
  std::filesystem::path folder = std::filesystem::path(path_).parent_path();
  if (folder.empty()) folder = ".";
  const int dir_fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

}  // namespace epwa
