// Strict boolean environment switches.
//
// A switch that is misspelled must not silently read as "off": EnvBool accepts
// a small fixed set of spellings and raises epwa::Error for anything else,
// naming the variable, quoting the value and listing what is accepted.
#pragma once

#include <optional>

namespace epwa {

// Value of a boolean environment variable: nullopt when unset, empty or only
// whitespace; true for "1", "true", "yes", "on"; false for "0", "false", "no",
// "off" (case-insensitive, surrounding whitespace ignored). Anything else
// throws epwa::Error, e.g.
//   EPW_LOAD_IN_4BIT="yes please" is not a boolean (use true/false, 1/0, yes/no, on/off)
std::optional<bool> EnvBool(const char* name);

// The testable core: `value_or_null` is what getenv(name) returned.
std::optional<bool> ParseEnvBool(const char* name, const char* value_or_null);

}  // namespace epwa
