// Atomic file output. The temporary file sits in the same folder as the
// target so that the final rename never crosses file systems, which is what
// makes it atomic.

#include "io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <new>

#include "base/error.h"
#include "base/file_read.h"
#include "base/temp_files.h"

namespace epwa {

AtomicFile::AtomicFile(const std::string& path) : path_(path), final_path_(path) {
  Require(!path.empty(), "an output file name is empty");
  struct stat link_st {};
  if (::lstat(path.c_str(), &link_st) == 0) {
    struct stat st = link_st;
    if (S_ISLNK(link_st.st_mode)) {
      if (::stat(path.c_str(), &st) != 0) {
        throw Error("cannot write '" + path + "': it is a symbolic link to nothing (" +
                    std::strerror(errno) + ")");
      }
      if (S_ISREG(st.st_mode)) {
        // /dev/stdout and /proc/self/fd/N name an already open file (a shell
        // redirection): replacing that file by rename would cut the output
        // the process writes through the descriptor, so it is written in
        // place like a device.
        if (path.rfind("/dev/", 0) == 0 || path.rfind("/proc/", 0) == 0) {
          st.st_mode = S_IFCHR;
        } else {
          // Replacing the link itself would silently turn it into a file;
          // the user meant the file it names.
          std::error_code ec;
          const std::filesystem::path resolved = std::filesystem::canonical(path, ec);
          if (ec) throw Error("cannot resolve the symbolic link '" + path + "': " + ec.message());
          final_path_ = resolved.string();
        }
      }
    }
    if (S_ISDIR(st.st_mode) || S_ISBLK(st.st_mode)) {
      throw Error("cannot write '" + path + "': it is " + DescribeFileType(st.st_mode) +
                  ", not a file");
    }
    if (S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)) {
      streaming_ = true;
      f_ = std::fopen(path.c_str(), "wb");
      if (f_ == nullptr) {
        throw Error("cannot open '" + path + "' for writing: " + std::strerror(errno));
      }
      return;
    }
  }
  tmp_path_ = TempPathFor(final_path_);
  // O_EXCL: never write through something that already sits at the
  // temporary name (a symlink planted there, or a leftover of a process with
  // the same pid), and 0666 & ~umask as fopen would.
  RegisterTempFile(tmp_path_);
  int fd = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0 && errno == EEXIST) {
    // A leftover of an earlier process that had our pid: it is not ours to
    // keep, and only a regular file may be removed.
    struct stat old {};
    if (::lstat(tmp_path_.c_str(), &old) == 0 && S_ISREG(old.st_mode)) ::unlink(tmp_path_.c_str());
    fd = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  }
  if (fd < 0) {
    const int err = errno;
    UnregisterTempFile(tmp_path_);
    throw Error("cannot create '" + tmp_path_ + "' to write " + path_ + ": " + std::strerror(err));
  }
  f_ = ::fdopen(fd, "wb");
  if (f_ == nullptr) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp_path_.c_str());
    UnregisterTempFile(tmp_path_);
    throw Error("cannot write " + path_ + ": " + std::strerror(err));
  }
  // With its default 4 KiB buffer stdio hands the kernel small writes, and
  // the file then sits in the page cache in 4 KiB pages. With an 8 MiB
  // buffer every write() is whole 8 MiB blocks at 8 MiB-aligned offsets, so
  // Linux keeps the file in 2 MiB folios (ext4 since 6.x); weights used in
  // place from such a file (a model `epwa synth` wrote, a weight cache)
  // decoded 1.5x faster on the development VM (4-layer OLMoE shape, fp16,
  // mapped). glibc ignores the size of a buffer it allocates itself, so the
  // buffer is ours.
  buffer_ = std::unique_ptr<char[]>(new (std::nothrow) char[kWriteBlockBytes]);
  if (buffer_ != nullptr) std::setvbuf(f_, buffer_.get(), _IOFBF, kWriteBlockBytes);
}

AtomicFile::~AtomicFile() {
  if (f_ != nullptr) std::fclose(f_);
  if (!committed_ && !streaming_) {
    std::remove(tmp_path_.c_str());
    UnregisterTempFile(tmp_path_);
  }
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
  if (streaming_) {
    // Devices and pipes have nothing to make durable (fsync would fail with
    // EINVAL on most of them); the flush above caught any write error.
    const int close_result = std::fclose(f_);
    f_ = nullptr;
    if (close_result != 0) {
      throw Error("writing " + path_ + " failed (close): " + std::strerror(errno));
    }
    committed_ = true;
    return;
  }
  if (::fsync(::fileno(f_)) != 0) {
    throw Error("writing " + path_ + " failed (fsync): " + std::strerror(errno));
  }
  const int close_result = std::fclose(f_);
  f_ = nullptr;
  if (close_result != 0) {
    throw Error("writing " + path_ + " failed (close): " + std::strerror(errno));
  }
  // The target may have been replaced by a device or folder since the
  // constructor looked; rename() would replace a device node, so look again
  // (a remaining race needs an attacker with write access to the folder,
  // who could replace the file anyway).
  struct stat st {};
  if (::lstat(final_path_.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    throw Error("cannot write '" + path_ + "': it became " + DescribeFileType(st.st_mode) +
                " while it was written");
  }
  if (std::rename(tmp_path_.c_str(), final_path_.c_str()) != 0) {
    throw Error("cannot rename '" + tmp_path_ + "' to '" + final_path_ + "': " + std::strerror(errno));
  }
  committed_ = true;
  UnregisterTempFile(tmp_path_);
  // Make the rename itself durable. Failure here cannot undo the rename and
  // the data is already safe, so it is not an error.
  std::filesystem::path folder = std::filesystem::path(final_path_).parent_path();
  if (folder.empty()) folder = ".";
  const int dir_fd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

}  // namespace epwa
