// UTF-8 helpers shared by the tokenizer components.
//
// The reference tokenizer library works on Rust strings, which are always
// valid UTF-8. These helpers let the C++ port keep the same guarantees: input
// is sanitised once at the boundary, and byte sequences produced while
// decoding are repaired exactly the way Rust's String::from_utf8_lossy does.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace epwa::tokenizer_internal {

// Length in bytes of the valid UTF-8 sequence starting at `text[pos]`, or 0
// when the bytes there do not form a complete, well-formed sequence (overlong
// forms, surrogates and code points above U+10FFFF are rejected, as in Rust).
size_t ValidSequenceLength(std::string_view text, size_t pos);

// Decodes the code point of the valid sequence at `text[pos]` whose length is
// `length` (as returned by ValidSequenceLength).
char32_t DecodeAt(std::string_view text, size_t pos, size_t length);

// Appends the UTF-8 encoding of `code_point` to `out`.
void AppendUtf8(char32_t code_point, std::string* out);

// Returns true when `text` is entirely valid UTF-8.
bool IsValidUtf8(std::string_view text);

// Converts `bytes` to valid UTF-8 the way Rust's String::from_utf8_lossy does:
// each maximal invalid subpart becomes one U+FFFD.
std::string LossyUtf8(std::string_view bytes);

// Length of the UTF-8 character starting at `text[pos]` in a string already
// known to be valid; 1 for a stray byte so that loops always advance.
size_t CharLength(std::string_view text, size_t pos);

// Number of code points in valid UTF-8 `text`.
size_t CountChars(std::string_view text);

// Unicode White_Space property, which is what Rust's char::is_whitespace and
// the regex class \s test.
bool IsWhitespace(char32_t code_point);

// The regex class \w of the reference's Rust regex crate (alphabetic, marks,
// decimal digits, connector punctuation, joiners), which it uses to decide
// whether a single_word added token stands alone.
bool IsWordChar(char32_t code_point);

// The GPT-2 bytes-to-unicode table: byte b maps to a printable code point so
// that every byte sequence becomes a visible string.
const std::array<std::string, 256>& ByteToUnicode();

// Inverse of ByteToUnicode: returns the byte for `code_point`, or -1 when the
// code point is not in the table.
int UnicodeToByte(char32_t code_point);

}  // namespace epwa::tokenizer_internal
