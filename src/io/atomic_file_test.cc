// Tests for AtomicFile: output appears only on Commit, and every failure
// leaves the folder as it was.

#include "io/atomic_file.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <thread>

#include <string>
#include <vector>

#include "base/error.h"
#include "base/temp_files.h"
#include "io/test_temp_dir.h"

namespace epwa {
namespace {

using testing::ReadBytes;
using testing::TempDir;
using testing::WriteBytes;

TEST(AtomicFileTest, CommitCreatesTheFile) {
  TempDir dir;
  const std::string path = dir.File("out.bin");
  {
    AtomicFile out(path);
    out.Write("hello ", 6);
    out.Write("world", 5);
    out.Write(nullptr, 0);
    EXPECT_EQ(dir.List().size(), 1u);  // only the temporary file so far
    EXPECT_NE(dir.List()[0], "out.bin");
    out.Commit();
  }
  EXPECT_EQ(dir.List(), std::vector<std::string>{"out.bin"});
  const std::vector<uint8_t> bytes = ReadBytes(path);
  EXPECT_EQ(std::string(bytes.begin(), bytes.end()), "hello world");
}

TEST(AtomicFileTest, ExceptionBeforeCommitLeavesNoFile) {
  TempDir dir;
  const std::string path = dir.File("out.bin");
  try {
    AtomicFile out(path);
    out.Write("partial", 7);
    throw Error("something failed half way");
  } catch (const Error&) {
  }
  EXPECT_TRUE(dir.List().empty());

  // An existing file is left untouched by an abandoned rewrite.
  WriteBytes(path, {1, 2, 3});
  try {
    AtomicFile out(path);
    out.Write("new", 3);
    throw Error("abandoned");
  } catch (const Error&) {
  }
  EXPECT_EQ(ReadBytes(path), (std::vector<uint8_t>{1, 2, 3}));
  EXPECT_EQ(dir.List(), std::vector<std::string>{"out.bin"});
}

TEST(AtomicFileTest, CommitReplacesAnExistingFile) {
  TempDir dir;
  const std::string path = dir.File("out.bin");
  WriteBytes(path, {1, 2, 3});
  AtomicFile out(path);
  out.Write("\x09", 1);
  out.Commit();
  EXPECT_EQ(ReadBytes(path), std::vector<uint8_t>{9});
  EXPECT_THROW(out.Commit(), Error);
  EXPECT_THROW(out.Write("x", 1), Error);
}

TEST(AtomicFileTest, MissingFolderIsReported) {
  TempDir dir;
  const std::string path = dir.File("no/such/folder/out.bin");
  try {
    AtomicFile out(path);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("No such file"), std::string::npos) << e.what();
  }
}

// Writes go through an 8 MiB buffer of AtomicFile's own (so that the kernel
// sees whole aligned blocks); pieces of every size, some larger than the
// buffer and some straddling its edge, must come out in order, byte for byte.
TEST(AtomicFileTest, PiecesOfEverySizeAcrossTheWriteBufferArriveInOrder) {
  TempDir dir;
  const std::string path = dir.File("weights.bin");
  std::vector<uint8_t> want;
  {
    AtomicFile out(path);
    uint32_t state = 12345;
    const size_t sizes[] = {1, 4095, 4097, (size_t{8} << 20) - 7, 3, (size_t{9} << 20) + 11, 65536, 0, 777777};
    for (size_t n : sizes) {
      std::vector<uint8_t> piece(n);
      for (uint8_t& b : piece) {
        state = state * 1664525u + 1013904223u;
        b = static_cast<uint8_t>(state >> 24);
      }
      out.Write(piece.data(), piece.size());
      want.insert(want.end(), piece.begin(), piece.end());
    }
    out.Commit();
  }
  EXPECT_TRUE(ReadBytes(path) == want);
}

// A full disk is simulated with a file size limit, which makes write() fail
// with EFBIG the way a full disk makes it fail with ENOSPC.
TEST(AtomicFileTest, WriteFailureIsAnErrorAndLeavesNoFile) {
  TempDir dir;
  const std::string path = dir.File("big.bin");
  rlimit saved;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  if (saved.rlim_max != RLIM_INFINITY && saved.rlim_max < (1 << 20)) GTEST_SKIP();
  void (*saved_handler)(int) = signal(SIGXFSZ, SIG_IGN);
  rlimit limited = saved;
  limited.rlim_cur = 1 << 16;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limited), 0);

  std::string message;
  try {
    AtomicFile out(path);
    const std::vector<char> block(1 << 20, 'x');
    for (int i = 0; i < 4; ++i) out.Write(block.data(), block.size());
    out.Commit();
  } catch (const Error& e) {
    message = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &saved);
  signal(SIGXFSZ, saved_handler);

  EXPECT_NE(message.find("writing " + path + " failed"), std::string::npos) << message;
  EXPECT_TRUE(dir.List().empty());
}

// F1 of the hostile sweep: as root, renaming over /dev/null replaced the
// device node. A device is written in place and stays a device; here a
// character device node made with mknod stands in for /dev/null (needs
// root; skipped otherwise) and a FIFO with a reader for a pipe.
TEST(AtomicFileTest, DeviceNodeIsWrittenInPlaceNotReplaced) {
  TempDir dir;
  const std::string node = dir.File("null");
  if (::mknod(node.c_str(), S_IFCHR | 0666, makedev(1, 3)) != 0) {
    GTEST_SKIP() << "mknod needs root: " << std::strerror(errno);
  }
  {
    AtomicFile out(node);
    EXPECT_TRUE(out.streaming());
    out.Write("secret", 6);
    out.Commit();
  }
  struct stat st {};
  ASSERT_EQ(::lstat(node.c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_EQ(dir.List(), std::vector<std::string>{"null"});  // no temporary file either

  // /dev/full's ENOSPC is an error, not a silent success.
  const std::string full = dir.File("full");
  ASSERT_EQ(::mknod(full.c_str(), S_IFCHR | 0666, makedev(1, 7)), 0);
  std::string message;
  try {
    AtomicFile out(full);
    const std::vector<char> block(1 << 16, 'x');
    out.Write(block.data(), block.size());
    out.Commit();
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("No space left"), std::string::npos) << message;
  ASSERT_EQ(::lstat(full.c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
}

TEST(AtomicFileTest, FifoIsWrittenAsAStream) {
  TempDir dir;
  const std::string fifo = dir.File("pipe");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  // The reader must exist before the writer's open() returns.
  std::string received;
  std::thread reader([&] {
    std::ifstream in(fifo, std::ios::binary);
    received.assign(std::istreambuf_iterator<char>(in), {});
  });
  {
    AtomicFile out(fifo);
    EXPECT_TRUE(out.streaming());
    out.Write("through the pipe", 16);
    out.Commit();
  }
  reader.join();
  EXPECT_EQ(received, "through the pipe");
  struct stat st {};
  ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
}

TEST(AtomicFileTest, SymlinkIsFollowedAndKept) {
  TempDir dir;
  const std::string real = dir.File("real.bin"), link = dir.File("link.bin");
  WriteBytes(real, {1});
  ASSERT_EQ(::symlink("real.bin", link.c_str()), 0);
  {
    AtomicFile out(link);
    EXPECT_FALSE(out.streaming());
    out.Write("\x07", 1);
    out.Commit();
  }
  struct stat st {};
  ASSERT_EQ(::lstat(link.c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  EXPECT_EQ(ReadBytes(real), std::vector<uint8_t>{7});

  const std::string dangling = dir.File("dangling.bin");
  ASSERT_EQ(::symlink("missing.bin", dangling.c_str()), 0);
  EXPECT_THROW(AtomicFile{dangling}, Error);
}

TEST(AtomicFileTest, FolderIsRefused) {
  TempDir dir;
  try {
    AtomicFile out(dir.path());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is a folder"), std::string::npos) << e.what();
  }
}

// F8: Ctrl-C while a file is written leaves no temporary file behind. A
// child process writes, then sends itself SIGINT before committing.
TEST(AtomicFileTest, InterruptedWriteLeavesNoTemporaryFile) {
  TempDir dir;
  const std::string path = dir.File("out.bin");
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      AtomicFile out(path);
      out.Write("partial", 7);
      ::raise(sig);
      ::_exit(0);  // not reached: the handler re-raises with the default action
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status)) << "signal " << sig;
    EXPECT_EQ(WTERMSIG(status), sig);
    EXPECT_TRUE(dir.List().empty()) << "signal " << sig << ": " << dir.List()[0];
  }
}

// SIGKILL cannot be caught: the next run sweeps the dead process's file, but
// only once nobody has written it for a minute, and never a live process's.
TEST(AtomicFileTest, StaleTemporaryFilesOfDeadProcessesAreSwept) {
  TempDir dir;
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) ::_exit(0);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);
  const std::string dead = dir.File("cache.epwq.tmp." + std::to_string(child));
  const std::string live = dir.File("cache.epwq.tmp." + std::to_string(::getppid()));
  const std::string fresh = dir.File("other.epwq.tmp." + std::to_string(child));
  const std::string unrelated = dir.File("notes.tmp.txt");
  for (const std::string& p : {dead, live, fresh, unrelated}) WriteBytes(p, {1});
  const timeval old[2] = {{::time(nullptr) - 3600, 0}, {::time(nullptr) - 3600, 0}};
  for (const std::string& p : {dead, live, unrelated}) ASSERT_EQ(::utimes(p.c_str(), old), 0);
  EXPECT_EQ(RemoveStaleTempFiles(dir.path()), 1);
  std::vector<std::string> left = dir.List();
  std::sort(left.begin(), left.end());
  std::vector<std::string> expected = {"cache.epwq.tmp." + std::to_string(::getppid()),
                                       "notes.tmp.txt", "other.epwq.tmp." + std::to_string(child)};
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(left, expected);
}

}  // namespace
}  // namespace epwa
