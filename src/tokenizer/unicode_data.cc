#include "tokenizer/unicode_data.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstdio>
#include <iterator>

#include "tokenizer/utf8.h"

namespace epwa::tokenizer_internal {
namespace {

struct StandInRange {
  char32_t first;
  char32_t last;
  char32_t stand_in;
};

struct CodePointRange {
  char32_t first;
  char32_t last;
};

struct LowercaseOverride {
  char32_t from;
  char32_t to;
};

#include "tokenizer/unicode_tables.inc"

// Binary search over a table sorted by `first` whose ranges do not overlap.
template <typename Row, size_t N>
const Row* FindRange(const Row (&table)[N], char32_t c) {
  const Row* it =
      std::upper_bound(std::begin(table), std::end(table), c,
                       [](char32_t value, const Row& row) { return value < row.first; });
  if (it == std::begin(table)) return nullptr;
  --it;
  return c <= it->last ? it : nullptr;
}

std::string ClassBody(const CodePointRange* begin, const CodePointRange* end) {
  std::string body;
  char buffer[32];
  for (const CodePointRange* range = begin; range != end; ++range) {
    if (range->first == range->last) {
      std::snprintf(buffer, sizeof(buffer), "\\x{%X}", static_cast<unsigned>(range->first));
    } else {
      std::snprintf(buffer, sizeof(buffer), "\\x{%X}-\\x{%X}", static_cast<unsigned>(range->first),
                    static_cast<unsigned>(range->last));
    }
    body += buffer;
  }
  return body;
}

// The smallest code point any table entry below is about; everything under
// it is answered without a search.
constexpr char32_t kFirstStandIn = kRegexStandIns[0].first;

}  // namespace

char32_t RegexStandIn(char32_t c) {
  if (c < kFirstStandIn) return 0;
  const StandInRange* row = FindRange(kRegexStandIns, c);
  return row == nullptr ? 0 : row->stand_in;
}

bool TouchesRegexStandIns(char32_t first, char32_t last) {
  for (const StandInRange& row : kRegexStandIns) {
    if (row.first <= last && first <= row.last) return true;
    if (first <= row.stand_in && row.stand_in <= last) return true;
  }
  return false;
}

bool MakeRegexShadow(std::string_view text, std::string* shadow) {
  // Every stand-in is needed by a code point of three or four bytes, so text
  // without such lead bytes (ASCII, Latin, Cyrillic, ...) is left alone fast.
  size_t pos = 0;
  for (; pos < text.size(); ++pos) {
    const auto byte = static_cast<uint8_t>(text[pos]);
    if (byte < 0xE0) continue;
    const size_t length = CharLength(text, pos);
    if (RegexStandIn(DecodeAt(text, pos, length)) != 0) break;
    pos += length - 1;
  }
  if (pos >= text.size()) return false;
  shadow->assign(text.substr(0, pos));
  while (pos < text.size()) {
    const size_t length = CharLength(text, pos);
    const auto byte = static_cast<uint8_t>(text[pos]);
    const char32_t stand_in = byte >= 0xE0 ? RegexStandIn(DecodeAt(text, pos, length)) : 0;
    if (stand_in != 0) {
      AppendUtf8(stand_in, shadow);
    } else {
      shadow->append(text.substr(pos, length));
    }
    pos += length;
  }
  return true;
}

bool IsNormalizationInert(char32_t c) {
  if (c < kNormalizationInert[0].first) return false;
  return FindRange(kNormalizationInert, c) != nullptr;
}

char32_t ReferenceLowercase(char32_t c) {
  const auto it = std::lower_bound(
      std::begin(kLowercaseOverrides), std::end(kLowercaseOverrides), c,
      [](const LowercaseOverride& row, char32_t value) { return row.from < value; });
  if (it != std::end(kLowercaseOverrides) && it->from == c) return it->to;
  return static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
}

bool IsReferenceWordChar(char32_t c) { return FindRange(kWordCharacters, c) != nullptr; }

const std::string& NumericClassBody() {
  static const std::string body = ClassBody(std::begin(kNumeric), std::end(kNumeric));
  return body;
}

const std::string& PunctuationClassBody() {
  static const std::string body = ClassBody(std::begin(kPunctuation), std::end(kPunctuation));
  return body;
}

const std::string& WhitespaceClassBody() {
  static const std::string body = ClassBody(std::begin(kWhitespace), std::end(kWhitespace));
  return body;
}

const std::string& WordClassBody() {
  static const std::string body = ClassBody(std::begin(kWordCharacters), std::end(kWordCharacters));
  return body;
}

}  // namespace epwa::tokenizer_internal
