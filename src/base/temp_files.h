// Temporary files that must not outlive an interrupted command.
//
// epwa writes every output file as "<target>.tmp.<pid>" and renames it into
// place, so a reader never sees a partial file. A destructor removes the
// temporary file when a write fails, but destructors do not run when the
// process is stopped by SIGINT (Ctrl-C), SIGTERM or SIGHUP. Every temporary
// file is therefore registered here while it exists; InstallTempFileCleanup()
// installs handlers for those signals that unlink every registered file (with
// async-signal-safe calls only) and then re-raise the signal with its default
// action, so the exit status still says which signal stopped the process.
// SIGKILL cannot be caught: its leftovers are swept by the next run (see
// RemoveStaleTempFiles).
#pragma once

#include <string>

namespace epwa {

// Installs the signal handlers once per process (idempotent, thread-safe).
void InstallTempFileCleanup();

// Registers `path` for removal if a signal stops the process before
// UnregisterTempFile(path). Thread-safe; at most 64 files at once (the rest
// are still removed by their owners' destructors, just not on a signal).
void RegisterTempFile(const std::string& path);
void UnregisterTempFile(const std::string& path);

// The temporary name for `target` in this process: "<target>.tmp.<pid>".
std::string TempPathFor(const std::string& target);

// Removes, in `folder`, files named "<anything>.tmp.<pid>" whose process no
// longer exists (left by a process killed with SIGKILL or a power loss) and
// that nobody has written for a minute.
// Returns how many it removed. Files of running processes are left alone.
int RemoveStaleTempFiles(const std::string& folder);

}  // namespace epwa
