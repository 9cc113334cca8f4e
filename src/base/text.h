// Small text helpers shared by the parsers of /proc files and environment values.
#pragma once

#include <string_view>

namespace epwa {

// `s` without leading and trailing ASCII whitespace.
inline std::string_view TrimWhitespace(std::string_view s) {
  constexpr const char* kWhitespace = " \t\r\n\v\f";
  const size_t begin = s.find_first_not_of(kWhitespace);
  if (begin == std::string_view::npos) return {};
  const size_t end = s.find_last_not_of(kWhitespace);
  return s.substr(begin, end - begin + 1);
}

}  // namespace epwa
