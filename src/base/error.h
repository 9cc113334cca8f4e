// Error reporting for epwa.
//
// Every user-facing failure (bad file, bad flag, unsupported model) is raised
// as epwa::Error with one complete sentence that names the file, tensor or flag
// at fault. Frontends catch it at the top, print the message on one line of
// stderr and exit non-zero, so no failure ever surfaces as a crash.
#pragma once

#include <stdexcept>
#include <string>

namespace epwa {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Throws epwa::Error(message) when `condition` is false. Used for validating
// untrusted input; internal invariants use assert.
inline void Require(bool condition, const std::string& message) {
  if (!condition) throw Error(message);
}

}  // namespace epwa
