// F18 of the hostile sweep: a memory-mapped file truncated while in use
// killed epwa with a bare SIGBUS. The handler names the file and exits 1.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "io/test_temp_dir.h"

namespace epwa {
namespace {

TEST(MappedFileTest, TruncationWhileMappedIsReportedWithTheFileName) {
  testing::TempDir dir;
  const std::string path = dir.File("model.safetensors");
  testing::WriteBytes(path, std::vector<uint8_t>(1 << 20, 7));
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::dup2(pipe_fds[1], STDERR_FILENO);
    auto file = MappedFile::Open(path);
    std::filesystem::resize_file(path, 0);
    volatile uint8_t byte = file->data()[file->size() / 2];  // SIGBUS here
    (void)byte;
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  std::string err;
  char buf[512];
  for (ssize_t n; (n = ::read(pipe_fds[0], buf, sizeof buf)) > 0;) err.append(buf, n);
  ::close(pipe_fds[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 1);
  EXPECT_EQ(err, "epwa: error: " + path +
                     " changed size while epwa was reading it (truncated or replaced in place, "
                     "e.g. by a download into the same path); run again once the file is complete\n");
}

}  // namespace
}  // namespace epwa
