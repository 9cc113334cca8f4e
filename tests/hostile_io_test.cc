// Hostile-input regressions for files and output (../shared/reports/
// hostile-sweep-2026-12-01.md: F1, F4, F7, F8, F15, F18): the real epwa binary
// on broken model folders, device nodes, FIFOs, full and closed output.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "cli_util.h"
#include "test_util.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;

using HostileIoTest = SynthModelCliTest;

// F4: a FIFO in place of any model file is refused at once, not waited on.
TEST_F(HostileIoTest, FifosInTheModelFolderAreRefusedNotWaitedOn) {
  for (const char* file : {"model.safetensors", "config.json", "tokenizer.json"}) {
    const std::string m = CopyModel(std::string("fifo-") + file);
    fs::remove(m + "/" + file);
    ASSERT_EQ(::mkfifo((m + "/" + file).c_str(), 0600), 0);
    const auto start = std::chrono::steady_clock::now();
    Result r = RunEpwa("info -m " + m, scratch_);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_LT(seconds, 10.0) << file;
    ExpectCleanError(r, 1, "FIFO");
    EXPECT_NE(r.err.find(file), std::string::npos) << r.err;
  }
}

// F15: a model.safetensors link to a missing blob (a Hugging Face cache whose
// download failed) is named as such, not "no .safetensors weights".
TEST_F(HostileIoTest, DanglingWeightLinkIsNamed) {
  const std::string m = CopyModel("dangling");
  fs::remove(m + "/model.safetensors");
  fs::create_symlink("../blobs/0123abcd", m + "/model.safetensors");
  ExpectCleanError(RunEpwa("info -m " + m, scratch_), 1, "symbolic link to '../blobs/0123abcd'");
  fs::remove(m + "/model.safetensors");
  fs::create_symlink("model.safetensors", m + "/model.safetensors");  // a loop
  ExpectCleanError(RunEpwa("info -m " + m, scratch_), 1, "symbolic link");
}

// F7: output that cannot be written fails the command.
TEST_F(HostileIoTest, StdoutWriteErrorsFailTheCommand) {
  for (const std::string& args :
       {"tokenize -m " + model_ + " --text 'hello world'",
        "run -m " + model_ + " -p hello -n 4 --temp 0 --json",
        "run -m " + model_ + " -p hello -n 4 --temp 0"}) {
    const std::string err = scratch_.path() + "/err";
    const std::string full = std::string(EPWA_BINARY) + " " + args + " >/dev/full 2>" + err;
    int status = std::system(full.c_str());
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 1) << args;
    std::string text = testing::ReadFile(err);
    // The reason (ENOSPC) is named when the failing write is the last one;
    // a streamed run may have failed several writes earlier.
    EXPECT_NE(text.find("epwa: error: writing standard output failed"), std::string::npos)
        << args << ": " << text;
    const std::string closed = std::string(EPWA_BINARY) + " " + args + " >&- 2>" + err;
    status = std::system(closed.c_str());
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 1) << args;
    text = testing::ReadFile(err);
    EXPECT_NE(text.find("epwa: error: writing standard output failed"), std::string::npos)
        << args << ": " << text;
  }
}

// F15: a misspelt command is named, with the closest command and the list.
TEST_F(HostileIoTest, UnknownCommandIsNamed) {
  Result r = RunEpwa("frobnicate -m x", scratch_);
  ExpectCleanError(r, 2, "unknown command 'frobnicate'");
  EXPECT_NE(r.err.find("run, score"), std::string::npos) << r.err;
  r = RunEpwa("tokenise --text hi", scratch_);
  ExpectCleanError(r, 2, "did you mean 'tokenize'?");
}

// F1: --logits-out naming a device writes into it and leaves it a device (as
// root, renaming over it replaced the node for the whole system). The node is
// a private copy of /dev/null made with mknod; skipped when not root.
TEST_F(HostileIoTest, LogitsOutToADeviceKeepsTheDevice) {
  const std::string node = scratch_.path() + "/null";
  if (::mknod(node.c_str(), S_IFCHR | 0666, makedev(1, 3)) != 0) {
    GTEST_SKIP() << "mknod needs root: " << std::strerror(errno);
  }
  Result r = RunEpwa("score -m " + model_ + " --ids 1,2,3 --logits-out " + node, scratch_);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  struct stat st {};
  ASSERT_EQ(::lstat(node.c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  const std::string full = scratch_.path() + "/full";
  ASSERT_EQ(::mknod(full.c_str(), S_IFCHR | 0666, makedev(1, 7)), 0);
  r = RunEpwa("score -m " + model_ + " --ids 1,2,3 --logits-out " + full, scratch_);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("No space left"), std::string::npos) << r.err;
  ASSERT_EQ(::lstat(full.c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_EQ(fs::directory_iterator(scratch_.path()) == fs::directory_iterator(), false);
  for (const auto& e : fs::directory_iterator(scratch_.path()))
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
}

// F5: a prompt that cannot fit the context is refused from its byte length
// before it is tokenized (1 MB used to be tokenized in full first).
TEST_F(HostileIoTest, HugePromptIsRefusedBeforeTokenizing) {
  const std::string prompt = scratch_.path() + "/prompt.txt";
  std::ofstream(prompt) << std::string(1 << 20, 'a');
  const auto start = std::chrono::steady_clock::now();
  Result r = RunEpwa("run -m " + model_ + " -f " + prompt + " -n 2", scratch_);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ExpectCleanError(r, 1, "the text is 1048576 bytes");
  EXPECT_NE(r.err.find("cannot fit the model's context of"), std::string::npos) << r.err;
  EXPECT_LT(seconds, 5.0);
}

}  // namespace
}  // namespace epwa
