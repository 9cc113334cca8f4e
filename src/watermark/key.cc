#include "watermark/key.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "base/error.h"

namespace epwa::wm {

SecretKey SecretKey::FromFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  Require(fd >= 0, "cannot read the key file '" + path + "': " + std::strerror(errno) +
                       " (make one with: epwa keygen --out " + path + ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error("the key file '" + path + "' is not a regular file");
  }
  SecretKey key;
  // Read one byte more than a key so that a longer file is detected without
  // trusting st_size (which /proc-like files misreport).
  uint8_t buffer[kKeyBytes + 1];
  size_t got = 0;
  while (got < sizeof(buffer)) {
    const ssize_t n = ::read(fd, buffer + got, sizeof(buffer) - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  Require(got == kKeyBytes, "the key file '" + path + "' must hold exactly 32 bytes, but it has " +
                                (got > kKeyBytes ? std::string("more") : std::to_string(got)) +
                                " (epwa keygen writes a valid one)");
  std::memcpy(key.bytes_.data(), buffer, kKeyBytes);
  // Wipe the stack copy: keys should not linger in memory longer than needed.
  explicit_bzero(buffer, sizeof(buffer));
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
  // replaces it atomically when asked to.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  Require(fd >= 0, "cannot create the key file '" + path + "': " + std::strerror(errno));
  bool ok = ::fchmod(fd, 0600) == 0 && ::write(fd, bytes, kKeyBytes) == (ssize_t)kKeyBytes &&
            ::fsync(fd) == 0;
  const int write_errno = errno;
  ok = (::close(fd) == 0) && ok;
  explicit_bzero(bytes, sizeof(bytes));
  if (!ok) {
    ::unlink(tmp.c_str());
    throw Error("cannot write the key file '" + path + "': " + std::strerror(write_errno));
  }
  if (overwrite) {
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      const int e = errno;
      ::unlink(tmp.c_str());
      throw Error("cannot write the key file '" + path + "': " + std::strerror(e));
    }
    return;
  }
  const int linked = ::link(tmp.c_str(), path.c_str());
  const int e = errno;
  ::unlink(tmp.c_str());
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
