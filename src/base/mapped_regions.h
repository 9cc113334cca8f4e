// Naming the file behind a SIGBUS.
//
// Weights are read in place from memory-mapped files. When such a file is
// truncated while epwa runs (a re-download into the same path, say), the next
// read of a page past the new end raises SIGBUS, which by default kills the
// process with no word about the cause. Every mapping is registered here; the
// handler installed by InstallMappedFileFaultReport() finds the mapping that
// holds the faulting address and prints
//   epwa: error: <file> changed size while epwa was reading it (...)
// with async-signal-safe calls only, removes the temporary files registered in
// base/temp_files.h, and exits with status 1, like any other epwa error.
#pragma once

#include <cstddef>
#include <string>

namespace epwa {

// Installs the SIGBUS handler once per process (idempotent).
void InstallMappedFileFaultReport();

// Registers [begin, begin + size) as a mapping of `path`, until
// UnregisterMappedFile(begin). Thread-safe; at most 1024 mappings are named
// (a fault in any other one is still reported, without the file name).
void RegisterMappedFile(const void* begin, size_t size, const std::string& path);
void UnregisterMappedFile(const void* begin);

// True when [p, p + bytes) lies inside one registered mapping: memory that
// belongs to a file, which madvise(MADV_DONTNEED) may drop and the kernel
// reads back, unlike the process's own memory, which it would zero.
bool InRegisteredMapping(const void* p, size_t bytes);

}  // namespace epwa
