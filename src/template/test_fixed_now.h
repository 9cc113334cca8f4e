// The local time the template tests give strftime_now(): 2025-08-05
// 12:34:56, a Tuesday, the same as tests/data/templates/make_expected.py
// gives jinja2, so that expectations made there compare byte for byte.
#pragma once

#include <ctime>

namespace epwa {

inline std::tm FixedNow() {
  std::tm tm{};
  tm.tm_year = 125;
  tm.tm_mon = 7;
  tm.tm_mday = 5;
  tm.tm_hour = 12;
  tm.tm_min = 34;
  tm.tm_sec = 56;
  tm.tm_wday = 2;
  tm.tm_yday = 216;
  return tm;
}

}  // namespace epwa
