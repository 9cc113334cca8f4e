#include "base/env_flags.h"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "base/error.h"
#include "base/text.h"

namespace epwa {
namespace {

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

// The value between double quotes, with '"', '\' and control bytes escaped
// so that the message stays on one line.
std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20 || u == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  out += '"';
  return out;
}

}  // namespace

std::optional<bool> ParseEnvBool(const char* name, const char* value_or_null) {
  if (value_or_null == nullptr) return std::nullopt;
  std::string_view value = TrimWhitespace(value_or_null);
  if (value.empty()) return std::nullopt;
  std::string v = Lower(value);
  if (v == "1" || v == "true" || v == "yes" || v == "on") return true;
  if (v == "0" || v == "false" || v == "no" || v == "off") return false;
  throw Error(std::string(name ? name : "(unnamed variable)") + "=" + Quote(value_or_null) +
              " is not a boolean (use true/false, 1/0, yes/no, on/off)");
}

std::optional<bool> EnvBool(const char* name) {
  return ParseEnvBool(name, name ? std::getenv(name) : nullptr);
}

}  // namespace epwa
