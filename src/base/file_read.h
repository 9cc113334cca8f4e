// Reading whole input files safely.
//
// Every file epwa reads whole (config.json, tokenizer.json, prompts, id lists,
// logprobs, keys, oracles) goes through ReadRegularFile, so that each of them
// gets the same protections against hostile or careless paths:
//  - the path is opened with O_NONBLOCK, so a FIFO with no writer cannot hang
//    the process, and then fstat()ed: anything but a regular file (a folder, a
//    FIFO, a device such as /dev/zero, a socket) is refused with a message that
//    says what it is;
//  - the size is checked against a limit that names what the file is for,
//    before any memory is allocated, and the read stops at the limit even if
//    the file grows meanwhile;
//  - every failure is an epwa::Error naming the file.
#pragma once

#include <cstdint>
#include <string>

namespace epwa {

// Limits for the files epwa reads whole. Each is far above what a real file
// of that kind needs (a real config.json is a few KB, the largest real
// tokenizer.json ~30 MB) and far below what would exhaust memory.
inline constexpr uint64_t kMaxConfigFileBytes = 4ull << 20;        // config.json & co.
inline constexpr uint64_t kMaxTokenizerFileBytes = 256ull << 20;   // tokenizer.json
inline constexpr uint64_t kMaxTextInputBytes = 64ull << 20;        // prompts, texts, id lists
inline constexpr uint64_t kMaxLogprobsFileBytes = 2ull << 30;      // API logprobs dumps

// What kind of file system object `mode` (st_mode) is, in words: "a folder",
// "a FIFO", "a character device", ...
std::string DescribeFileType(unsigned mode);

// Opens `path` for reading without blocking and checks that it is a regular
// file of at most `max_bytes`. Returns the open file descriptor (O_CLOEXEC,
// blocking mode restored); the caller closes it. `what` names the file's role
// in messages, e.g. "the model's config.json".
int OpenRegularFile(const std::string& path, uint64_t max_bytes, const std::string& what);

// The whole content of the regular file `path` (see above).
std::string ReadRegularFile(const std::string& path, uint64_t max_bytes, const std::string& what);

}  // namespace epwa
