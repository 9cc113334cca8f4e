// Tests for AtomicFile: output appears only on Commit, and every failure
// leaves the folder as it was.

#include "io/atomic_file.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>

#include <string>
#include <vector>

#include "base/error.h"
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

}  // namespace
}  // namespace epwa
