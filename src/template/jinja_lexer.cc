// The lexer: jinja2.lexer.Lexer's rules for the default delimiters with
// trim_blocks=True, lstrip_blocks=True and keep_trailing_newline=False, the
// settings transformers renders chat templates with. Where the whitespace
// of the output comes from, this file decides, so it follows Jinja2's
// regular expressions step by step (each rule is quoted where it is
// implemented).
#include <charconv>
#include <cmath>
#include <cstdio>

#include "template/jinja_internal.h"
#include "template/jinja_unicode.h"

namespace epwa::jinja::internal {
namespace {

bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsNameStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool IsNameChar(char c) { return IsNameStart(c) || IsDigit(c); }

// The operators, longest first, as Jinja2's operator regex tries them.
constexpr std::string_view kOperators[] = {
    "//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]", "(",
    ")",  "{",  "}",  ">",  "<",  "=",  ".", ":", "|", ",", ";",
};

// Python's repr() of a one-character string, for "unexpected char" messages.
std::string CharRepr(std::string_view text, size_t pos) {
  size_t end = pos;
  unicode::Next(text, &end);
  return ReprString(text.substr(pos, end - pos));
}

class Lexer {
 public:
  explicit Lexer(std::string_view source) : src_(source) {}

  std::vector<Token> Run() {
    while (pos_ < src_.size()) Root();
    Emit(Tok::kEof, "", src_.size());
    return std::move(tokens_);
  }

 private:
  [[noreturn]] void Fail(const std::string& message, size_t pos) {
    throw TemplateError(LineAt(pos), "TemplateSyntaxError", message);
  }

  // 1-based line of byte `pos`. Positions are asked for in increasing order
  // (tokens are made left to right), so counting is incremental.
  int LineAt(size_t pos) {
    if (pos < line_pos_) {
      line_pos_ = 0;
      line_ = 1;
    }
    for (; line_pos_ < pos && line_pos_ < src_.size(); ++line_pos_)
      if (src_[line_pos_] == '\n') ++line_;
    return line_;
  }

  void Emit(Tok type, std::string text, size_t pos) {
    Token t;
    t.type = type;
    t.line = LineAt(pos);
    t.text = std::move(text);
    tokens_.push_back(std::move(t));
  }

  size_t SkipSpace(size_t pos) {
    while (size_t len = unicode::SpaceAt(src_, pos)) pos += len;
    return pos;
  }

  bool At(size_t pos, std::string_view s) const { return src_.compare(pos, s.size(), s) == 0; }

  // Text before a tag, after Jinja2's OptionalLStrip: "-" strips all
  // whitespace before the tag; otherwise, unless the tag is "{{" or marked
  // "+", lstrip_blocks removes spaces and tabs between the start of the line
  // and the tag. line_starting_ says whether the previous token ended a line,
  // which counts as a line start when the text has no newline of its own.
  void EmitText(size_t start, size_t end, char sign, bool is_variable) {
    std::string_view text = src_.substr(start, end - start);
    if (sign == '-') {
      text = unicode::RStripSpace(text);
    } else if (sign != '+' && !is_variable) {
      const size_t newline = text.rfind('\n');
      const size_t l_pos = newline == std::string_view::npos ? 0 : newline + 1;
      if (l_pos > 0 || line_starting_) {
        if (text.find_first_not_of(" \t", l_pos) == std::string_view::npos) text = text.substr(0, l_pos);
      }
    }
    if (!text.empty()) Emit(Tok::kData, std::string(text), start);
  }

  // The root state: "(.*?)(?:raw_begin|{#(-|+|)|{%(-|+|)|{{(-|+|))" and
  // otherwise ".+" to the end.
  void Root() {
    size_t i = pos_;
    for (;; ++i) {
      i = src_.find('{', i);
      if (i == std::string_view::npos || i + 1 >= src_.size()) {
        Emit(Tok::kData, std::string(src_.substr(pos_)), pos_);
        pos_ = src_.size();
        return;
      }
      const char c = src_[i + 1];
      if (c == '{' || c == '%' || c == '#') break;
    }
    const char kind = src_[i + 1];
    const char sign = (i + 2 < src_.size() && (src_[i + 2] == '-' || src_[i + 2] == '+')) ? src_[i + 2] : 0;
    size_t after = i + 2 + (sign ? 1 : 0);
    if (kind == '%') {
      // "{%(-|+|)\s*raw\s*(?:-%}\s*|%})": note no trim_blocks newline here.
      size_t k = SkipSpace(after);
      if (At(k, "raw")) {
        k = SkipSpace(k + 3);
        size_t end = std::string_view::npos;
        if (At(k, "-%}")) {
          end = SkipSpace(k + 3);
        } else if (At(k, "%}")) {
          end = k + 2;
        }
        if (end != std::string_view::npos) {
          EmitText(pos_, i, sign, false);
          line_starting_ = src_[end - 1] == '\n';
          pos_ = end;
          Raw(i);
          return;
        }
      }
    }
    EmitText(pos_, i, sign, kind == '{');
    line_starting_ = false;  // the match ends with the tag's opening
    if (kind == '#') {
      Comment(i, after);
    } else if (kind == '%') {
      Emit(Tok::kBlockBegin, "", i);
      pos_ = after;
      Tag(false);
    } else {
      Emit(Tok::kVariableBegin, "", i);
      pos_ = after;
      Tag(true);
    }
  }

  // "(.*?)((?:\+#}|\-#}\s*|#}\n?))": the first comment end, whichever form.
  void Comment(size_t open, size_t pos) {
    for (size_t j = pos; j < src_.size(); ++j) {
      size_t end = std::string_view::npos;
      if ((src_[j] == '+') && At(j + 1, "#}")) {
        end = j + 3;
      } else if (src_[j] == '-' && At(j + 1, "#}")) {
        end = SkipSpace(j + 3);
      } else if (At(j, "#}")) {
        end = j + 2;
        if (end < src_.size() && src_[end] == '\n') ++end;
      }
      if (end != std::string_view::npos) {
        line_starting_ = src_[end - 1] == '\n';
        pos_ = end;
        return;
      }
    }
    Fail("Missing end of comment tag", open);
  }

  // "(.*?)((?:{%(-|+|))\s*endraw\s*(?:\+%}|\-%}\s*|%}\n?))" with the same
  // optional stripping of the text before it as any block tag.
  void Raw(size_t open) {
    for (size_t j = pos_; j < src_.size(); ++j) {
      if (!At(j, "{%")) continue;
      const char sign = (j + 2 < src_.size() && (src_[j + 2] == '-' || src_[j + 2] == '+')) ? src_[j + 2] : 0;
      size_t k = SkipSpace(j + 2 + (sign ? 1 : 0));
      if (!At(k, "endraw")) continue;
      k = SkipSpace(k + 6);
      size_t end = std::string_view::npos;
      if (At(k, "+%}")) {
        end = k + 3;
      } else if (At(k, "-%}")) {
        end = SkipSpace(k + 3);
      } else if (At(k, "%}")) {
        end = k + 2;
        if (end < src_.size() && src_[end] == '\n') ++end;
      }
      if (end == std::string_view::npos) continue;
      EmitText(pos_, j, sign, false);
      line_starting_ = src_[end - 1] == '\n';
      pos_ = end;
      return;
    }
    Fail("Missing end of raw directive", open);
  }

  // Inside {% %} or {{ }}: the end rule first (only when brackets are
  // balanced), then whitespace, float, integer, name, string, operator.
  void Tag(bool variable) {
    std::vector<char> balance;
    while (pos_ < src_.size()) {
      if (balance.empty()) {
        size_t end = std::string_view::npos;
        if (variable) {
          // "\-}}\s*|}}"
          if (At(pos_, "-}}")) {
            end = SkipSpace(pos_ + 3);
          } else if (At(pos_, "}}")) {
            end = pos_ + 2;
          }
        } else {
          // "\+%}|\-%}\s*|%}\n?"
          if (At(pos_, "+%}")) {
            end = pos_ + 3;
          } else if (At(pos_, "-%}")) {
            end = SkipSpace(pos_ + 3);
          } else if (At(pos_, "%}")) {
            end = pos_ + 2;
            if (end < src_.size() && src_[end] == '\n') ++end;
          }
        }
        if (end != std::string_view::npos) {
          Emit(variable ? Tok::kVariableEnd : Tok::kBlockEnd, "", pos_);
          line_starting_ = src_[end - 1] == '\n';
          pos_ = end;
          return;
        }
      }
      if (size_t ws = SkipSpace(pos_); ws != pos_) {
        pos_ = ws;
        continue;
      }
      if (Float() || Integer() || Name() || String()) continue;
      Operator(&balance);
    }
    // The end of the source inside a tag: the parser reports it.
  }

  // "(\d+_)*\d+": digits with single underscores between them.
  size_t Digits(size_t pos, bool (*is_digit)(char)) {
    if (pos >= src_.size() || !is_digit(src_[pos])) return 0;
    size_t end = pos;
    while (end < src_.size() && is_digit(src_[end])) ++end;
    while (end + 1 < src_.size() && src_[end] == '_' && is_digit(src_[end + 1])) {
      end += 1;
      while (end < src_.size() && is_digit(src_[end])) ++end;
    }
    return end - pos;
  }

  // "(?<!\.)(\d+_)*\d+((\.(\d+_)*\d+)?e[+\-]?(\d+_)*\d+|\.(\d+_)*\d+)", case-insensitive.
  bool Float() {
    if (pos_ > 0 && src_[pos_ - 1] == '.') return false;
    const size_t whole = Digits(pos_, IsDigit);
    if (whole == 0) return false;
    size_t p = pos_ + whole;
    size_t frac_end = p;
    if (p < src_.size() && src_[p] == '.') {
      if (const size_t frac = Digits(p + 1, IsDigit)) frac_end = p + 1 + frac;
    }
    size_t end = std::string_view::npos;
    // Exponent, after the fraction or directly after the digits.
    if (frac_end < src_.size() && (src_[frac_end] == 'e' || src_[frac_end] == 'E')) {
      size_t q = frac_end + 1;
      if (q < src_.size() && (src_[q] == '+' || src_[q] == '-')) ++q;
      if (const size_t exp = Digits(q, IsDigit)) end = q + exp;
    }
    if (end == std::string_view::npos && frac_end != p) end = frac_end;
    if (end == std::string_view::npos) return false;
    std::string text;
    for (size_t k = pos_; k < end; ++k)
      if (src_[k] != '_') text.push_back(src_[k]);
    double value = 0;
    const auto result = std::from_chars(text.data(), text.data() + text.size(), value);
    if (result.ec == std::errc::result_out_of_range) {
      const size_t e = text.find_first_of("eE");
      value = (e != std::string::npos && text[e + 1] == '-') ? 0.0 : HUGE_VAL;
    }
    Token t;
    t.type = Tok::kFloat;
    t.line = LineAt(pos_);
    t.text = std::string(src_.substr(pos_, end - pos_));
    t.float_value = value;
    tokens_.push_back(std::move(t));
    pos_ = end;
    return true;
  }

  // "(0b(_?[0-1])+|0o(_?[0-7])+|0x(_?[\da-f])+|[1-9](_?\d)*|0(_?0)*)", case-insensitive.
  bool Integer() {
    if (pos_ >= src_.size() || !IsDigit(src_[pos_])) return false;
    auto prefixed = [&](char letter, int base) -> size_t {
      if (src_[pos_] != '0' || pos_ + 1 >= src_.size() || (src_[pos_ + 1] | 0x20) != letter) return 0;
      size_t p = pos_ + 2;
      auto digit_ok = [&](char c) {
        const int d = IsDigit(c) ? c - '0' : ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') ? (c | 0x20) - 'a' + 10 : 99;
        return d < base;
      };
      size_t count = 0;
      while (p < src_.size()) {
        if (src_[p] == '_' && p + 1 < src_.size() && digit_ok(src_[p + 1])) {
          p += 2;
        } else if (digit_ok(src_[p])) {
          p += 1;
        } else {
          break;
        }
        ++count;
      }
      return count ? p - pos_ : 0;
    };
    int base = 10;
    size_t len = 0;
    if ((len = prefixed('b', 2))) {
      base = 2;
    } else if ((len = prefixed('o', 8))) {
      base = 8;
    } else if ((len = prefixed('x', 16))) {
      base = 16;
    } else if (src_[pos_] != '0') {
      len = Digits(pos_, IsDigit);
    } else {
      len = Digits(pos_, [](char c) { return c == '0'; });
    }
    std::string digits;
    for (size_t k = pos_ + (base == 10 ? 0 : 2); k < pos_ + len; ++k)
      if (src_[k] != '_') digits.push_back(src_[k]);
    int64_t value = 0;
    const auto result = std::from_chars(digits.data(), digits.data() + digits.size(), value, base);
    if (result.ec != std::errc()) Fail("the integer literal " + std::string(src_.substr(pos_, len)) + " does not fit in 64 bits", pos_);
    Token t;
    t.type = Tok::kInteger;
    t.line = LineAt(pos_);
    t.text = std::string(src_.substr(pos_, len));
    t.int_value = value;
    tokens_.push_back(std::move(t));
    pos_ += len;
    return true;
  }

  bool Name() {
    if (!IsNameStart(src_[pos_])) return false;
    size_t end = pos_ + 1;
    while (end < src_.size() && IsNameChar(src_[end])) ++end;
    Emit(Tok::kName, std::string(src_.substr(pos_, end - pos_)), pos_);
    pos_ = end;
    return true;
  }

  // "('([^'\\]*(?:\\.[^'\\]*)*)'|\"([^\"\\]*(?:\\.[^\"\\]*)*)\")", then
  // Python's "unicode-escape" decoding of the text between the quotes.
  bool String() {
    const char quote = src_[pos_];
    if (quote != '\'' && quote != '"') return false;
    size_t end = pos_ + 1;
    while (end < src_.size() && src_[end] != quote) end += src_[end] == '\\' ? 2 : 1;
    if (end >= src_.size()) return false;  // unterminated: "unexpected char"
    Token t;
    t.type = Tok::kString;
    t.line = LineAt(pos_);
    t.text = Unescape(src_.substr(pos_ + 1, end - pos_ - 1), pos_);
    tokens_.push_back(std::move(t));
    pos_ = end + 1;
    return true;
  }

  std::string Unescape(std::string_view raw, size_t at) {
    std::string out;
    out.reserve(raw.size());
    auto hex = [&](size_t pos, size_t count, const char* what) -> char32_t {
      char32_t v = 0;
      for (size_t k = 0; k < count; ++k) {
        const char c = pos + k < raw.size() ? raw[pos + k] : 0;
        int d;
        if (IsDigit(c)) {
          d = c - '0';
        } else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') {
          d = (c | 0x20) - 'a' + 10;
        } else {
          Fail(std::string("truncated ") + what + " escape", at);
        }
        v = v * 16 + static_cast<char32_t>(d);
      }
      return v;
    };
    for (size_t i = 0; i < raw.size();) {
      if (raw[i] != '\\' || i + 1 >= raw.size()) {
        out.push_back(raw[i++]);
        continue;
      }
      const char c = raw[i + 1];
      i += 2;
      char32_t cp;
      switch (c) {
        case '\n': continue;  // a line continuation
        case '\\': out.push_back('\\'); continue;
        case '\'': out.push_back('\''); continue;
        case '"': out.push_back('"'); continue;
        case 'a': out.push_back('\a'); continue;
        case 'b': out.push_back('\b'); continue;
        case 'f': out.push_back('\f'); continue;
        case 'n': out.push_back('\n'); continue;
        case 'r': out.push_back('\r'); continue;
        case 't': out.push_back('\t'); continue;
        case 'v': out.push_back('\v'); continue;
        case 'x':
          cp = hex(i, 2, "\\xXX");
          i += 2;
          break;
        case 'u':
          cp = hex(i, 4, "\\uXXXX");
          i += 4;
          break;
        case 'U':
          cp = hex(i, 8, "\\UXXXXXXXX");
          i += 8;
          if (cp > 0x10FFFF) Fail("illegal Unicode character", at);
          break;
        case 'N':
          Fail("\\N{...} escapes in string literals are not supported", at);
        default:
          if (c >= '0' && c <= '7') {
            cp = static_cast<char32_t>(c - '0');
            for (int k = 0; k < 2 && i < raw.size() && raw[i] >= '0' && raw[i] <= '7'; ++k) cp = cp * 8 + (raw[i++] - '0');
            break;
          }
          if (static_cast<unsigned char>(c) >= 0x80) {
            // Jinja2 first turns non-ASCII characters into backslash escapes
            // ("backslashreplace"), so a backslash before one escapes the
            // backslash of that escape: the result is its literal text.
            size_t p = i - 1;
            const char32_t ch = unicode::Next(raw, &p);
            char buf[16];
            if (ch < 0x100) {
              std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(ch));
            } else if (ch < 0x10000) {
              std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(ch));
            } else {
              std::snprintf(buf, sizeof buf, "\\U%08x", static_cast<unsigned>(ch));
            }
            out.append(buf);
            i = p;
            continue;
          }
          // Unknown escapes keep their backslash, as in Python.
          out.push_back('\\');
          out.push_back(c);
          continue;
      }
      if (cp >= 0xD800 && cp <= 0xDFFF) {
        char buf[16];
        std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(cp));
        Fail(std::string("a string literal holds the lone surrogate ") + buf + ", which cannot be output as UTF-8", at);
      }
      unicode::Append(&out, cp);
    }
    return out;
  }

  void Operator(std::vector<char>* balance) {
    for (std::string_view op : kOperators) {
      if (!At(pos_, op)) continue;
      if (op == "{" || op == "(" || op == "[") {
        balance->push_back(op == "{" ? '}' : op == "(" ? ')' : ']');
      } else if (op == "}" || op == ")" || op == "]") {
        if (balance->empty()) Fail("unexpected '" + std::string(op) + "'", pos_);
        const char expected = balance->back();
        balance->pop_back();
        if (expected != op[0])
          Fail("unexpected '" + std::string(op) + "', expected '" + std::string(1, expected) + "'", pos_);
      }
      Emit(Tok::kOperator, std::string(op), pos_);
      pos_ += op.size();
      return;
    }
    Fail("unexpected char " + CharRepr(src_, pos_) + " at " + std::to_string(pos_), pos_);
  }

  std::string_view src_;
  size_t pos_ = 0;
  bool line_starting_ = true;
  size_t line_pos_ = 0;
  int line_ = 1;
  std::vector<Token> tokens_;
};

}  // namespace

std::string NormalizeNewlines(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out.push_back(source[i]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

std::vector<Token> Tokenize(std::string_view source) { return Lexer(source).Run(); }

}  // namespace epwa::jinja::internal
