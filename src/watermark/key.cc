#include "watermark/key.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

#include "base/error.h"
#include "base/file_read.h"
#include "base/temp_files.h"

namespace epwa::wm {

SecretKey SecretKey::FromFile(const std::string& path) {
  // OpenRegularFile opens without blocking, so a FIFO at the key path is
  // refused instead of hanging, and so is a folder or a device. Its size
  // limit is not used: the exact-length check below gives the better message.
  int fd = -1;
  try {
    fd = OpenRegularFile(path, UINT64_MAX, "the key file");
  } catch (const Error&) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0 && errno == ENOENT)
      throw Error("cannot read the key file '" + path + "': " + std::strerror(ENOENT) +
                  " (make one with: epwa keygen --out " + path + ")");
    throw;
  }
  // Read one byte more than a key so that a longer file is detected without
  // trusting st_size (which /proc-like files misreport).
  uint8_t buffer[kKeyBytes + 1];
  size_t got = 0;
  int read_errno = 0;
  while (got < sizeof(buffer)) {
    const ssize_t n = ::read(fd, buffer + got, sizeof(buffer) - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) read_errno = errno;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  if (read_errno != 0) {
    explicit_bzero(buffer, sizeof(buffer));
    throw Error("cannot read the key file '" + path + "': " + std::strerror(read_errno));
  }
  try {
    SecretKey key = FromFileBytes(std::span<const uint8_t>(buffer, got), path);
    explicit_bzero(buffer, sizeof(buffer));
    return key;
  } catch (...) {
    explicit_bzero(buffer, sizeof(buffer));
    throw;
  }
}

SecretKey SecretKey::FromFileBytes(std::span<const uint8_t> bytes, const std::string& path) {
  Require(bytes.size() == kKeyBytes,
          "the key file '" + path + "' must hold exactly 32 bytes, but it has " +
              (bytes.size() > kKeyBytes ? std::string("more") : std::to_string(bytes.size())) +
              " (epwa keygen writes a valid one)");
  SecretKey key;
  std::memcpy(key.bytes_.data(), bytes.data(), kKeyBytes);
  return key;
}

SecretKey SecretKey::FromBytes(std::span<const uint8_t> bytes) {
  Require(bytes.size() == kKeyBytes, "a watermark key must be exactly 32 bytes");
  SecretKey key;
  std::memcpy(key.bytes_.data(), bytes.data(), kKeyBytes);
  return key;
}

void WriteNewKeyFile(const std::string& path, bool overwrite) {
  Require(!path.empty(), "keygen needs an output file: --out FILE");
  // --force replaces a key file, nothing else. rename() would just as
  // happily replace a device node (as root, `--out /dev/null --force` turned
  // /dev/null into a regular file holding the key), a FIFO or a socket, and
  // it replaces a symbolic link itself rather than the file it names. Links
  // are refused rather than followed: a key is a secret, and following a link
  // writes it wherever the link points, which may not be where the user
  // believes; naming the real file is unambiguous. (Without --force, link()
  // below refuses anything that exists.)
  if (overwrite) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
      throw Error("the key file '" + path + "' exists and is " + DescribeFileType(st.st_mode) +
                  ", not a regular file; keygen --force only replaces a key file" +
                  (S_ISLNK(st.st_mode) ? " (give the path of the file the link names)" : ""));
  }
  uint8_t bytes[kKeyBytes];
  size_t got = 0;
  while (got < kKeyBytes) {
    const ssize_t n = ::getrandom(bytes + got, kKeyBytes - got, 0);
    if (n < 0 && errno == EINTR) continue;
    Require(n > 0, std::string("the system random source failed: ") + std::strerror(errno));
    got += static_cast<size_t>(n);
  }
  // The key is written to a temporary file created 0600 (never readable by
  // others, not even briefly), then linked into place: link() fails if the
  // target exists, which gives "never overwrite" without a race; rename()
  // replaces it atomically when asked to. The temporary file is registered so
  // that Ctrl-C (or SIGTERM/SIGHUP) while it exists still removes it: a
  // stray copy of a secret key must not be left behind.
  const std::string tmp = TempPathFor(path);
  RegisterTempFile(tmp);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    const int e = errno;
    UnregisterTempFile(tmp);
    explicit_bzero(bytes, sizeof(bytes));
    throw Error("cannot create the key file '" + path + "': " + std::strerror(e));
  }
  bool ok = ::fchmod(fd, 0600) == 0 && ::write(fd, bytes, kKeyBytes) == (ssize_t)kKeyBytes &&
            ::fsync(fd) == 0;
  const int write_errno = errno;
  ok = (::close(fd) == 0) && ok;
  explicit_bzero(bytes, sizeof(bytes));
  auto remove_tmp = [&] {
    ::unlink(tmp.c_str());
    UnregisterTempFile(tmp);
  };
  if (!ok) {
    remove_tmp();
    throw Error("cannot write the key file '" + path + "': " + std::strerror(write_errno));
  }
  if (overwrite) {
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      const int e = errno;
      remove_tmp();
      throw Error("cannot write the key file '" + path + "': " + std::strerror(e));
    }
    UnregisterTempFile(tmp);
    return;
  }
  const int linked = ::link(tmp.c_str(), path.c_str());
  const int e = errno;
  remove_tmp();
  if (linked != 0) {
    Require(e != EEXIST, "the key file '" + path +
                             "' already exists; keygen never replaces a key (use --force to do so, "
                             "and lose the ability to detect text marked with the old key)");
    throw Error("cannot write the key file '" + path + "': " + std::strerror(e));
  }
}

std::string ResolveKeyPath(const std::string& flag_path, const char* env_value) {
  if (!flag_path.empty()) return flag_path;
  if (env_value != nullptr && *env_value != '\0') return env_value;
  throw Error("no watermark key given: use --key-file FILE or set EPWA_KEY_FILE (make a key with "
              "epwa keygen --out FILE)");
}

}  // namespace epwa::wm
