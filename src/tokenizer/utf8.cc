#include "tokenizer/utf8.h"

#include "tokenizer/unicode_data.h"

namespace epwa::tokenizer_internal {
namespace {

// Bounds of the second byte for each lead byte, per the table of well-formed
// UTF-8 byte sequences in the Unicode standard (chapter 3, table 3-7). The
// narrower ranges after E0, ED, F0 and F4 exclude overlong forms, surrogates
// and code points above U+10FFFF.
struct LeadInfo {
  int length;           // 0 for a byte that cannot start a sequence.
  uint8_t second_low;   // Allowed range of the second byte.
  uint8_t second_high;
};

LeadInfo InfoForLead(uint8_t lead) {
  if (lead < 0x80) return {1, 0, 0};
  if (lead < 0xC2) return {0, 0, 0};
  if (lead < 0xE0) return {2, 0x80, 0xBF};
  if (lead == 0xE0) return {3, 0xA0, 0xBF};
  if (lead == 0xED) return {3, 0x80, 0x9F};
  if (lead < 0xF0) return {3, 0x80, 0xBF};
  if (lead == 0xF0) return {4, 0x90, 0xBF};
  if (lead < 0xF4) return {4, 0x80, 0xBF};
  if (lead == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

bool IsContinuation(uint8_t byte) { return byte >= 0x80 && byte <= 0xBF; }

// Number of bytes at `pos` that form a well-formed prefix of a sequence (at
// least 1). When it equals the lead's length the sequence is complete.
size_t WellFormedPrefix(std::string_view text, size_t pos, int* needed) {
  const auto lead = static_cast<uint8_t>(text[pos]);
  const LeadInfo info = InfoForLead(lead);
  *needed = info.length;
  if (info.length <= 1) return 1;
  size_t taken = 1;
  if (pos + 1 >= text.size()) return taken;
  const auto second = static_cast<uint8_t>(text[pos + 1]);
  if (second < info.second_low || second > info.second_high) return taken;
  ++taken;
  while (static_cast<int>(taken) < info.length && pos + taken < text.size() &&
         IsContinuation(static_cast<uint8_t>(text[pos + taken]))) {
    ++taken;
  }
  return taken;
}

}  // namespace

size_t ValidSequenceLength(std::string_view text, size_t pos) {
  if (pos >= text.size()) return 0;
  int needed = 0;
  const size_t taken = WellFormedPrefix(text, pos, &needed);
  return static_cast<int>(taken) == needed ? taken : 0;
}

char32_t DecodeAt(std::string_view text, size_t pos, size_t length) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(text[pos + i]); };
  switch (length) {
    case 1:
      return byte(0);
    case 2:
      return (char32_t(byte(0) & 0x1F) << 6) | (byte(1) & 0x3F);
    case 3:
      return (char32_t(byte(0) & 0x0F) << 12) | (char32_t(byte(1) & 0x3F) << 6) |
             (byte(2) & 0x3F);
    default:
      return (char32_t(byte(0) & 0x07) << 18) | (char32_t(byte(1) & 0x3F) << 12) |
             (char32_t(byte(2) & 0x3F) << 6) | (byte(3) & 0x3F);
  }
}

void AppendUtf8(char32_t code_point, std::string* out) {
  if (code_point < 0x80) {
    out->push_back(static_cast<char>(code_point));
  } else if (code_point < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (code_point >> 6)));
    out->push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else if (code_point < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (code_point >> 12)));
    out->push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (code_point >> 18)));
    out->push_back(static_cast<char>(0x80 | ((code_point >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  }
}

bool IsValidUtf8(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    if (static_cast<uint8_t>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const size_t length = ValidSequenceLength(text, pos);
    if (length == 0) return false;
    pos += length;
  }
  return true;
}

std::string LossyUtf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    if (static_cast<uint8_t>(bytes[pos]) < 0x80) {
      out.push_back(bytes[pos++]);
      continue;
    }
    int needed = 0;
    const size_t taken = WellFormedPrefix(bytes, pos, &needed);
    if (static_cast<int>(taken) == needed) {
      out.append(bytes.substr(pos, taken));
    } else {
      out.append("\xEF\xBF\xBD");
    }
    pos += taken;
  }
  return out;
}

size_t CharLength(std::string_view text, size_t pos) {
  const auto lead = static_cast<uint8_t>(text[pos]);
  size_t length = 1;
  if (lead >= 0xF0) {
    length = 4;
  } else if (lead >= 0xE0) {
    length = 3;
  } else if (lead >= 0xC0) {
    length = 2;
  }
  return pos + length <= text.size() ? length : 1;
}

size_t CountChars(std::string_view text) {
  size_t count = 0;
  for (char c : text) {
    if ((static_cast<uint8_t>(c) & 0xC0) != 0x80) ++count;
  }
  return count;
}

bool IsWhitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

bool IsWordChar(char32_t c) {
  if (c < 0x80)
    return c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  return IsReferenceWordChar(c);
}

namespace {

// Builds the table once: printable Latin-1 bytes map to themselves and the
// remaining bytes take the code points from U+0100 upwards, in byte order.
struct ByteTables {
  std::array<std::string, 256> byte_to_string;
  std::array<char32_t, 256> byte_to_code_point;

  ByteTables() {
    int next_extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const char32_t cp = printable ? char32_t(b) : char32_t(256 + next_extra++);
      byte_to_code_point[b] = cp;
      AppendUtf8(cp, &byte_to_string[b]);
    }
  }
};

const ByteTables& Tables() {
  static const ByteTables tables;
  return tables;
}

}  // namespace

const std::array<std::string, 256>& ByteToUnicode() { return Tables().byte_to_string; }

int UnicodeToByte(char32_t code_point) {
  // Every mapped code point is below U+0144, so a small direct table suffices.
  static const auto inverse = [] {
    std::array<int16_t, 512> table;
    table.fill(-1);
    for (int b = 0; b < 256; ++b) table[Tables().byte_to_code_point[b]] = static_cast<int16_t>(b);
    return table;
  }();
  return code_point < inverse.size() ? inverse[code_point] : -1;
}

}  // namespace epwa::tokenizer_internal
