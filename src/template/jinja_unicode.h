// Python's str semantics on UTF-8 text, as far as chat templates can see them.
//
// Jinja2 runs on Python strings: lengths, indices and slices count code
// points, str.isspace() decides what `trim` and `-%}` remove, and repr()
// escapes the characters Python deems unprintable. The interpreter keeps its
// strings as UTF-8 (always valid: the template source and the JSON inputs are
// checked once at the boundary), so these helpers translate between bytes and
// code points and carry the few Unicode property tables Python's behaviour
// depends on.
//
// Case mapping covers Latin (Basic, Latin-1, Extended-A, Extended Additional),
// Greek, Cyrillic, Armenian and the fullwidth Latin letters, which is what
// chat content and role names use in practice; other scripts keep their case.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace epwa::jinja::unicode {

// Length in bytes of the UTF-8 sequence whose lead byte is `lead` (1 for
// ASCII and for stray continuation bytes, which valid input never has).
inline size_t SequenceLength(unsigned char lead) {
  if (lead < 0xC0) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

// Offset of the first byte that is not part of well-formed UTF-8 (overlong
// forms and surrogates are not), or text.size() when all of it is.
size_t FirstInvalidUtf8(std::string_view text);
inline bool IsValidUtf8(std::string_view text) { return FirstInvalidUtf8(text) == text.size(); }

// The code point at `text[*pos]`, advancing *pos past it. `text` must be
// valid UTF-8 and *pos < text.size().
char32_t Next(std::string_view text, size_t* pos);

// Appends the UTF-8 encoding of `cp` to `out`.
void Append(std::string* out, char32_t cp);

std::u32string Decode(std::string_view text);
std::string Encode(std::u32string_view text);

// Number of code points in valid UTF-8 `text`.
size_t Length(std::string_view text);
inline bool IsAscii(std::string_view text) {
  for (unsigned char c : text)
    if (c >= 0x80) return false;
  return true;
}

// Python's str.isspace() for one code point (also what `\s` matches in
// Python's regular expressions on str).
bool IsSpace(char32_t cp);
// Byte length of the whitespace code point at text[pos], 0 when none.
size_t SpaceAt(std::string_view text, size_t pos);
// str.strip() / lstrip() / rstrip() without arguments.
std::string_view StripSpace(std::string_view text);
std::string_view LStripSpace(std::string_view text);
std::string_view RStripSpace(std::string_view text);

// Character classes used by str.isalpha(), isdigit(), islower(), ...
bool IsUpper(char32_t cp);
bool IsLower(char32_t cp);
bool IsCased(char32_t cp);
bool IsAlpha(char32_t cp);
bool IsDigit(char32_t cp);
bool IsDecimal(char32_t cp);
// Python's str.isprintable() for one code point, which decides what repr()
// escapes.
bool IsPrintable(char32_t cp);

// Full case mappings (a few code points map to two, e.g. U+00DF to "SS").
void AppendUpper(std::u32string* out, char32_t cp);
void AppendLower(std::u32string* out, char32_t cp);
// The title-case form of a single code point (Python's capitalize() and
// title() use it for the first letter of a word).
void AppendTitle(std::u32string* out, char32_t cp);

std::string Upper(std::string_view text);
std::string Lower(std::string_view text);

}  // namespace epwa::jinja::unicode
