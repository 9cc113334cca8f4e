#include "template/jinja_unicode.h"

namespace epwa::jinja::unicode {
namespace {

struct Range {
  char32_t first, last;
};

template <size_t N>
bool InRanges(const Range (&ranges)[N], char32_t cp) {
  size_t lo = 0, hi = N;
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    if (cp < ranges[mid].first) {
      hi = mid;
    } else if (cp > ranges[mid].last) {
      lo = mid + 1;
    } else {
      return true;
    }
  }
  return false;
}

// Code points Python's str.isprintable() rejects besides the ASCII controls:
// the other control, format, separator, surrogate and private-use characters
// (categories Cc, Cf, Zs, Zl, Zp, Cs, Co) and the large unassigned stretches.
// Sorted, for the binary search above.
constexpr Range kUnprintable[] = {
    {0x7F, 0xA0},       {0xAD, 0xAD},       {0x378, 0x379},     {0x380, 0x383},
    {0x38B, 0x38B},     {0x38D, 0x38D},     {0x3A2, 0x3A2},     {0x530, 0x530},
    {0x600, 0x605},     {0x61C, 0x61C},     {0x6DD, 0x6DD},     {0x70F, 0x70F},
    {0x890, 0x891},     {0x8E2, 0x8E2},     {0x1680, 0x1680},   {0x180E, 0x180E},
    {0x2000, 0x200F},   {0x2028, 0x202F},   {0x205F, 0x2064},   {0x2065, 0x206F},
    {0x3000, 0x3000},   {0xD800, 0xF8FF},   {0xFDD0, 0xFDEF},   {0xFEFF, 0xFEFF},
    {0xFFF0, 0xFFFB},   {0xFFFE, 0xFFFF},   {0x110BD, 0x110BD}, {0x110CD, 0x110CD},
    {0x13430, 0x1343F}, {0x1BCA0, 0x1BCA3}, {0x1D173, 0x1D17A}, {0x2FA20, 0x2FFFF},
    {0x3134B, 0xDFFFF}, {0xE0000, 0xE00FF}, {0xE01F0, 0x10FFFF},
};

// Letters outside the cased scripts that str.isalpha() accepts: the main
// blocks of the uncased scripts chat text uses. An approximation of the
// Unicode letter categories, good enough for isalpha()/isalnum() tests.
constexpr Range kUncasedLetters[] = {
    {0xAA, 0xAA},       {0xBA, 0xBA},       {0x5D0, 0x5EA},     {0x620, 0x64A},
    {0x671, 0x6D3},     {0x904, 0x939},     {0x958, 0x961},     {0x985, 0x9B9},
    {0xE01, 0xE30},     {0xE40, 0xE46},     {0x10D0, 0x10FA},   {0x1100, 0x11FF},
    {0x3041, 0x3096},   {0x309D, 0x309F},   {0x30A1, 0x30FA},   {0x30FC, 0x30FF},
    {0x3105, 0x312F},   {0x3131, 0x318E},   {0x3400, 0x4DBF},   {0x4E00, 0x9FFF},
    {0xAC00, 0xD7A3},   {0xF900, 0xFAFF},   {0xFF66, 0xFF9D},   {0x20000, 0x2A6DF},
    {0x2A700, 0x2EBE0},
};

// Decimal digits of other scripts (str.isdecimal()); each range is 0..9.
constexpr Range kDecimalDigits[] = {
    {0x660, 0x669}, {0x6F0, 0x6F9}, {0x7C0, 0x7C9}, {0x966, 0x96F},
    {0x9E6, 0x9EF}, {0xE50, 0xE59}, {0xFF10, 0xFF19},
};

// The simple uppercase mapping, or `cp` itself.
char32_t SimpleUpper(char32_t cp) {
  if (cp < 0x80) return (cp >= 'a' && cp <= 'z') ? cp - 32 : cp;
  if (cp == 0xB5) return 0x39C;
  if (cp >= 0xE0 && cp <= 0xFE && cp != 0xF7) return cp - 0x20;
  if (cp == 0xFF) return 0x178;
  if (cp >= 0x100 && cp <= 0x12F) return (cp & 1) ? cp - 1 : cp;
  if (cp == 0x131) return 'I';
  if (cp >= 0x132 && cp <= 0x137) return (cp & 1) ? cp - 1 : cp;
  if (cp >= 0x139 && cp <= 0x148) return (cp & 1) ? cp : cp - 1;
  if (cp >= 0x14A && cp <= 0x177) return (cp & 1) ? cp - 1 : cp;
  if (cp >= 0x179 && cp <= 0x17E) return (cp & 1) ? cp : cp - 1;
  if (cp == 0x17F) return 'S';
  if (cp == 0x3AC) return 0x386;
  if (cp >= 0x3AD && cp <= 0x3AF) return cp - 0x25;
  if (cp >= 0x3B1 && cp <= 0x3CB) return cp == 0x3C2 ? 0x3A3 : cp - 0x20;
  if (cp == 0x3CC) return 0x38C;
  if (cp >= 0x3CD && cp <= 0x3CE) return cp - 0x3F;
  if (cp >= 0x430 && cp <= 0x44F) return cp - 0x20;
  if (cp >= 0x450 && cp <= 0x45F) return cp - 0x50;
  if (cp >= 0x460 && cp <= 0x481) return (cp & 1) ? cp - 1 : cp;
  if (cp >= 0x48A && cp <= 0x4BF) return (cp & 1) ? cp - 1 : cp;
  if (cp >= 0x4C1 && cp <= 0x4CE) return (cp & 1) ? cp : cp - 1;
  if (cp == 0x4CF) return 0x4C0;
  if (cp >= 0x4D0 && cp <= 0x52F) return (cp & 1) ? cp - 1 : cp;
  if (cp >= 0x561 && cp <= 0x586) return cp - 0x30;
  if (cp >= 0x1E00 && cp <= 0x1E95) return (cp & 1) ? cp - 1 : cp;
  if (cp >= 0x1EA0 && cp <= 0x1EFF) return (cp & 1) ? cp - 1 : cp;
  if (cp >= 0xFF41 && cp <= 0xFF5A) return cp - 0x20;
  return cp;
}

// The simple lowercase mapping, or `cp` itself.
char32_t SimpleLower(char32_t cp) {
  if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
  if (cp >= 0xC0 && cp <= 0xDE && cp != 0xD7) return cp + 0x20;
  if (cp == 0x178) return 0xFF;
  if (cp >= 0x100 && cp <= 0x12F) return (cp & 1) ? cp : cp + 1;
  if (cp == 0x130) return 'i';
  if (cp >= 0x132 && cp <= 0x137) return (cp & 1) ? cp : cp + 1;
  if (cp >= 0x139 && cp <= 0x148) return (cp & 1) ? cp + 1 : cp;
  if (cp >= 0x14A && cp <= 0x177) return (cp & 1) ? cp : cp + 1;
  if (cp >= 0x179 && cp <= 0x17E) return (cp & 1) ? cp + 1 : cp;
  if (cp == 0x386) return 0x3AC;
  if (cp >= 0x388 && cp <= 0x38A) return cp + 0x25;
  if (cp == 0x38C) return 0x3CC;
  if (cp >= 0x38E && cp <= 0x38F) return cp + 0x3F;
  if (cp >= 0x391 && cp <= 0x3AB && cp != 0x3A2) return cp + 0x20;
  if (cp >= 0x400 && cp <= 0x40F) return cp + 0x50;
  if (cp >= 0x410 && cp <= 0x42F) return cp + 0x20;
  if (cp >= 0x460 && cp <= 0x481) return (cp & 1) ? cp : cp + 1;
  if (cp >= 0x48A && cp <= 0x4BF) return (cp & 1) ? cp : cp + 1;
  if (cp == 0x4C0) return 0x4CF;
  if (cp >= 0x4C1 && cp <= 0x4CE) return (cp & 1) ? cp + 1 : cp;
  if (cp >= 0x4D0 && cp <= 0x52F) return (cp & 1) ? cp : cp + 1;
  if (cp >= 0x531 && cp <= 0x556) return cp + 0x30;
  if (cp >= 0x1E00 && cp <= 0x1E95) return (cp & 1) ? cp : cp + 1;
  if (cp == 0x1E9E) return 0xDF;
  if (cp >= 0x1EA0 && cp <= 0x1EFF) return (cp & 1) ? cp : cp + 1;
  if (cp >= 0xFF21 && cp <= 0xFF3A) return cp + 0x20;
  return cp;
}

}  // namespace

size_t FirstInvalidUtf8(std::string_view text) {
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    char32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return i;
    }
    if (n - i < len) return i;
    for (size_t k = 1; k < len; ++k) {
      const unsigned char d = static_cast<unsigned char>(text[i + k]);
      if ((d & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (d & 0x3F);
    }
    // Overlong forms, surrogates and code points past U+10FFFF.
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return i;
    i += len;
  }
  return n;
}

char32_t Next(std::string_view text, size_t* pos) {
  const unsigned char c = static_cast<unsigned char>(text[*pos]);
  const size_t len = SequenceLength(c);
  if (len == 1 || *pos + len > text.size()) {
    ++*pos;
    return c;
  }
  char32_t cp = c & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
  for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(text[*pos + k]) & 0x3F);
  *pos += len;
  return cp;
}

void Append(std::string* out, char32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::u32string Decode(std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) out.push_back(Next(text, &pos));
  return out;
}

std::string Encode(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t cp : text) Append(&out, cp);
  return out;
}

size_t Length(std::string_view text) {
  size_t n = 0;
  for (unsigned char c : text) n += (c & 0xC0) != 0x80;
  return n;
}

bool IsSpace(char32_t cp) {
  if (cp < 0x80) return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20);
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

size_t SpaceAt(std::string_view text, size_t pos) {
  if (pos >= text.size()) return 0;
  size_t next = pos;
  const char32_t cp = Next(text, &next);
  return IsSpace(cp) ? next - pos : 0;
}

std::string_view LStripSpace(std::string_view text) {
  size_t pos = 0;
  while (size_t len = SpaceAt(text, pos)) pos += len;
  return text.substr(pos);
}

std::string_view RStripSpace(std::string_view text) {
  size_t end = text.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
    if (SpaceAt(text, start) != end - start) break;
    end = start;
  }
  return text.substr(0, end);
}

std::string_view StripSpace(std::string_view text) { return RStripSpace(LStripSpace(text)); }

bool IsUpper(char32_t cp) { return SimpleLower(cp) != cp; }
bool IsLower(char32_t cp) {
  return SimpleUpper(cp) != cp || cp == 0xDF || cp == 0x138 || cp == 0x149;
}
bool IsCased(char32_t cp) { return IsUpper(cp) || IsLower(cp); }
bool IsAlpha(char32_t cp) { return IsCased(cp) || InRanges(kUncasedLetters, cp); }
bool IsDecimal(char32_t cp) {
  return (cp >= '0' && cp <= '9') || InRanges(kDecimalDigits, cp);
}
bool IsDigit(char32_t cp) {
  return IsDecimal(cp) || cp == 0xB2 || cp == 0xB3 || cp == 0xB9 || cp == 0x2070 ||
         (cp >= 0x2074 && cp <= 0x2079) || (cp >= 0x2080 && cp <= 0x2089) ||
         (cp >= 0x2460 && cp <= 0x2468);
}

bool IsPrintable(char32_t cp) {
  if (cp < 0x20) return false;
  if (cp < 0x7F) return true;
  return !InRanges(kUnprintable, cp);
}

void AppendUpper(std::u32string* out, char32_t cp) {
  if (cp == 0xDF) {
    out->append(U"SS");
  } else if (cp == 0x149) {
    out->push_back(0x2BC);
    out->push_back('N');
  } else {
    out->push_back(SimpleUpper(cp));
  }
}

void AppendLower(std::u32string* out, char32_t cp) {
  if (cp == 0x130) {
    out->push_back('i');
    out->push_back(0x307);
  } else {
    out->push_back(SimpleLower(cp));
  }
}

void AppendTitle(std::u32string* out, char32_t cp) {
  if (cp == 0xDF) {
    out->append(U"Ss");
  } else if (cp == 0x149) {
    out->push_back(0x2BC);
    out->push_back('N');
  } else {
    out->push_back(SimpleUpper(cp));
  }
}

std::string Upper(std::string_view text) {
  if (IsAscii(text)) {
    std::string out(text);
    for (char& c : out)
      if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
    return out;
  }
  std::u32string out;
  for (char32_t cp : Decode(text)) AppendUpper(&out, cp);
  return Encode(out);
}

std::string Lower(std::string_view text) {
  if (IsAscii(text)) {
    std::string out(text);
    for (char& c : out)
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
    return out;
  }
  std::u32string out;
  for (char32_t cp : Decode(text)) AppendLower(&out, cp);
  return Encode(out);
}

}  // namespace epwa::jinja::unicode
