#include "base/file_read.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>

#include "base/error.h"

namespace epwa {

namespace {

std::string FormatLimit(uint64_t bytes) {
  if (bytes >= (1ull << 30) && bytes % (1ull << 30) == 0) return std::to_string(bytes >> 30) + " GiB";
  if (bytes >= (1ull << 20) && bytes % (1ull << 20) == 0) return std::to_string(bytes >> 20) + " MiB";
  return std::to_string(bytes) + " bytes";
}

}  // namespace

std::string DescribeFileType(unsigned mode) {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "not a regular file";
}

int OpenRegularFile(const std::string& path, uint64_t max_bytes, const std::string& what) {
  // O_NONBLOCK makes open() return at once on a FIFO that has no writer
  // (instead of waiting forever); fstat then refuses it like any other
  // non-regular file. On a regular file O_NONBLOCK has no effect.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) {
    const int err = errno;
    throw Error("cannot open " + what + " '" + path + "': " + std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error("cannot read " + what + " '" + path + "': " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(what + " '" + path + "' is " + DescribeFileType(st.st_mode) +
                ", not a regular file");
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    ::close(fd);
    throw Error(what + " '" + path + "' is " + std::to_string(st.st_size) +
                " bytes, more than the " + FormatLimit(max_bytes) + " epwa accepts for it");
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  return fd;
}

std::string ReadRegularFile(const std::string& path, uint64_t max_bytes, const std::string& what) {
  const int fd = OpenRegularFile(path, max_bytes, what);
  struct stat st {};
  ::fstat(fd, &st);
  std::string data;
  try {
    data.resize(static_cast<size_t>(st.st_size));
    size_t have = 0;
    // Reads until end of file; a file that grows while it is read is still
    // held to the limit, one byte past which is enough to tell.
    for (;;) {
      if (have == data.size()) {
        if (data.size() > max_bytes) break;
        data.resize(std::min<uint64_t>(max_bytes + 1, data.size() + (64u << 10)));
        if (have == data.size()) break;
      }
      const ssize_t n = ::read(fd, data.data() + have, data.size() - have);
      if (n < 0) {
        if (errno == EINTR) continue;
        const int err = errno;
        throw Error("reading " + what + " '" + path + "' failed: " + std::strerror(err));
      }
      if (n == 0) break;
      have += static_cast<size_t>(n);
    }
    data.resize(have);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  Require(data.size() <= max_bytes, what + " '" + path + "' grew past the " +
                                        FormatLimit(max_bytes) + " epwa accepts for it while it was read");
  return data;
}

}  // namespace epwa
