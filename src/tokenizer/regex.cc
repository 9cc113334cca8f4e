#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cctype>
#include <memory>
#include <utility>

#include "base/error.h"
#include "tokenizer/unicode_data.h"
#include "tokenizer/utf8.h"

namespace epwa::tokenizer_internal {
namespace {

std::string Pcre2Message(int code) {
  PCRE2_UCHAR buffer[256];
  if (pcre2_get_error_message(code, buffer, sizeof(buffer)) < 0) return "unknown PCRE2 error";
  return reinterpret_cast<const char*>(buffer);
}

// The JIT machine stack defaults to 32 KiB, which patterns such as
// \s+(?!\S) can exhaust on long whitespace runs. Each thread gets its own
// larger stack because a JIT stack must not be shared between threads, and
// its own match context because every attempt sets its own limits in it.
struct ThreadMatchContext {
  pcre2_jit_stack* stack = nullptr;
  pcre2_match_context* context = nullptr;

  ThreadMatchContext() {
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(64 * 1024, 8 * 1024 * 1024, nullptr);
    if (context != nullptr && stack != nullptr) pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~ThreadMatchContext() {
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(stack);
  }
};

pcre2_match_context* MatchContext() {
  thread_local ThreadMatchContext tls;
  return tls.context;
}

struct MatchDataDeleter {
  void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};

thread_local RegexWorkScope* current_scope = nullptr;

// Every attempt first looks at most this many bytes ahead and may take this
// many backtracking steps; both double while the attempt needs more. Nearly
// every match of a tokenizer's pattern (a word, a number, a run of spaces)
// is decided within the first window.
constexpr size_t kFirstWindow = 32;
constexpr uint32_t kFirstMatchLimit = 64;
// PCRE2's own default: one attempt that needs more backtracking steps than
// this (catastrophic patterns such as (a+)+$) fails outright.
constexpr uint32_t kMaxMatchLimit = 10'000'000;

// Finds \G and backtracking-control verbs such as (*SKIP) or (*COMMIT)
// outside \Q...\E quotes and character classes. Both depend on where PCRE2
// starts its search, which the bounded matcher below moves one position at a
// time, and Oniguruma (the reference) has neither.
std::string UnsupportedConstruct(std::string_view pattern) {
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char next = pattern[i + 1];
      if (next == 'Q') {
        const size_t close = pattern.find("\\E", i + 2);
        if (close == std::string_view::npos) return "";
        i = close + 1;
        continue;
      }
      if (next == 'G' && !in_class) return "\\G";
      ++i;
      continue;
    }
    if (in_class) {
      if (c == ']') in_class = false;
      continue;
    }
    if (c == '[') {
      in_class = true;
      // A ']' right after '[' or '[^' is a literal member of the class.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') ++i;
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') ++i;
      continue;
    }
    if (c == '(' && i + 1 < pattern.size() && pattern[i + 1] == '*') return "(*";
  }
  return "";
}

// Reads the digits of a \x{...}, \o{...} or \N{U+...} escape that starts at
// pattern[open] (the brace), in `base`; returns the value (clamped above the
// Unicode range on overflow) and sets *next past the closing brace.
char32_t ReadBraced(std::string_view pattern, size_t open, int base, size_t* next) {
  uint64_t value = 0;
  size_t i = open + 1;
  for (; i < pattern.size() && pattern[i] != '}'; ++i) {
    const char c = pattern[i];
    int digit = -1;
    if (c >= '0' && c <= '9') digit = c - '0';
    if (base == 16 && c >= 'a' && c <= 'f') digit = c - 'a' + 10;
    if (base == 16 && c >= 'A' && c <= 'F') digit = c - 'A' + 10;
    if (digit < 0 || digit >= base) continue;
    value = std::min<uint64_t>(value * base + digit, 0x110000);
  }
  *next = i < pattern.size() ? i + 1 : i;
  return static_cast<char32_t>(value);
}

// True when `pattern` names, as a literal, an escape or the end of a class
// range, a code point that RegexStandIn substitutes or substitutes with. The
// scan errs on the side of finding one: anything it cannot read as a single
// code point simply ends a class range.
bool MentionsStandIns(std::string_view pattern) {
  bool in_class = false;
  bool in_quote = false;
  bool have_previous = false;  // A single code point just came in a class...
  char32_t previous = 0;       // ...and this is it.
  bool pending_dash = false;   // "x-" seen in a class; the next one ends a range.
  const auto note = [&](char32_t cp) {
    if (in_class && pending_dash && have_previous) {
      pending_dash = false;
      have_previous = false;
      return TouchesRegexStandIns(std::min(previous, cp), std::max(previous, cp));
    }
    pending_dash = false;
    have_previous = in_class;
    previous = cp;
    return TouchesRegexStandIns(cp, cp);
  };
  const auto not_a_code_point = [&] {
    pending_dash = false;
    have_previous = false;
  };
  size_t i = 0;
  while (i < pattern.size()) {
    const char c = pattern[i];
    if (in_quote) {
      if (c == '\\' && i + 1 < pattern.size() && pattern[i + 1] == 'E') {
        in_quote = false;
        i += 2;
        continue;
      }
      const size_t length = CharLength(pattern, i);
      if (note(DecodeAt(pattern, i, length))) return true;
      i += length;
      continue;
    }
    if (c == '\\' && i + 1 < pattern.size()) {
      const char n = pattern[i + 1];
      size_t next = i + 2;
      if (n == 'Q') {
        in_quote = true;
        i = next;
        continue;
      }
      if (n == 'x' && next < pattern.size() && pattern[next] == '{') {
        if (note(ReadBraced(pattern, next, 16, &next))) return true;
      } else if (n == 'o' && next < pattern.size() && pattern[next] == '{') {
        if (note(ReadBraced(pattern, next, 8, &next))) return true;
      } else if (n == 'N' && pattern.substr(next, 3) == "{U+") {
        if (note(ReadBraced(pattern, next + 2, 16, &next))) return true;
      } else if (n == 'u' && next + 4 <= pattern.size() &&
                 std::all_of(pattern.begin() + next, pattern.begin() + next + 4,
                             [](char h) { return std::isxdigit(static_cast<unsigned char>(h)); })) {
        // \uHHHH, which TranslateOnigurumaEscapes turns into \x{HHHH}.
        if (note(static_cast<char32_t>(
                std::stoul(std::string(pattern.substr(next, 4)), nullptr, 16)))) {
          return true;
        }
        next += 4;
      } else if (n == 'p' || n == 'P') {
        if (next < pattern.size() && pattern[next] == '{') {
          while (next < pattern.size() && pattern[next] != '}') ++next;
          ++next;
        } else {
          ++next;
        }
        not_a_code_point();
      } else {
        // Class and assertion escapes (\d, \s, \w, \b, ...) name no code
        // point. The others (\xhh, octal escapes, \n, \t, escaped
        // punctuation) name one below U+0800, where no stand-in is, so their
        // exact value does not matter, only that they can start a range.
        if (std::string_view("dDsSwWhHvVRXNbBAzZGCK").find(n) != std::string_view::npos) {
          not_a_code_point();
        } else if (note(static_cast<char32_t>(static_cast<uint8_t>(n) & 0x7F))) {
          return true;
        }
      }
      i = next;
      continue;
    }
    if (in_class) {
      if (c == ']') {
        in_class = false;
        not_a_code_point();
        ++i;
        continue;
      }
      if (c == '-' && have_previous && !pending_dash) {
        pending_dash = true;
        ++i;
        continue;
      }
      if (c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
        const size_t close = pattern.find(":]", i + 2);
        i = close == std::string_view::npos ? pattern.size() : close + 2;
        not_a_code_point();
        continue;
      }
    } else if (c == '[') {
      in_class = true;
      not_a_code_point();
      ++i;
      if (i < pattern.size() && pattern[i] == '^') ++i;
      // A ']' right after '[' or '[^' is a literal member of the class.
      if (i < pattern.size() && pattern[i] == ']') {
        note(']');
        ++i;
      }
      continue;
    }
    const size_t length = CharLength(pattern, i);
    if (note(DecodeAt(pattern, i, length))) return true;
    i += length;
  }
  return false;
}

// Oniguruma's \w, as the reference sees it: alphabetic characters, marks,
// decimal digits, connector punctuation, and the superscript digits and
// vulgar fractions of Latin-1. PCRE2 10.42's \w is letters, numbers and "_".
constexpr std::string_view kOnigurumaWord =
    R"(\p{Alpha}\p{M}\p{Nd}\p{Pc}\x{B2}\x{B3}\x{B9}\x{BC}-\x{BE})";

// Rewrites the escapes whose meaning differs between Oniguruma (the
// reference's engine, Ruby syntax) and PCRE2 into PCRE2 for Oniguruma's
// meaning: \w, \W, \b and \B (by Oniguruma's word characters), \h and \H (a
// hexadecimal digit or not, where PCRE2 means horizontal space), \v (the
// vertical tab only, where PCRE2 means vertical space) and \uHHHH (which
// PCRE2 does not accept). \W inside a class keeps PCRE2's meaning, which a
// class cannot express otherwise.
std::string TranslateOnigurumaEscapes(std::string_view pattern) {
  const std::string word(kOnigurumaWord);
  std::string out;
  out.reserve(pattern.size());
  bool in_class = false;
  bool in_quote = false;
  size_t i = 0;
  const auto is_hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
  while (i < pattern.size()) {
    const char c = pattern[i];
    if (in_quote) {
      if (c == '\\' && i + 1 < pattern.size() && pattern[i + 1] == 'E') in_quote = false;
      const size_t length = c == '\\' && !in_quote ? 2 : 1;
      out.append(pattern.substr(i, length));
      i += length;
      continue;
    }
    if (c == '\\' && i + 1 < pattern.size()) {
      const char n = pattern[i + 1];
      std::string replacement;
      size_t consumed = 2;
      if (n == 'Q') {
        in_quote = true;
      } else if (n == 'w') {
        replacement = in_class ? word : "[" + word + "]";
      } else if (n == 'W' && !in_class) {
        replacement = "[^" + word + "]";
      } else if (n == 'b' && !in_class) {
        replacement =
            "(?:(?<=[" + word + "])(?![" + word + "])|(?<![" + word + "])(?=[" + word + "]))";
      } else if (n == 'B' && !in_class) {
        replacement =
            "(?:(?<=[" + word + "])(?=[" + word + "])|(?<![" + word + "])(?![" + word + "]))";
      } else if (n == 'h') {
        replacement = in_class ? "0-9a-fA-F" : "[0-9a-fA-F]";
      } else if (n == 'H' && !in_class) {
        replacement = "[^0-9a-fA-F]";
      } else if (n == 'v') {
        replacement = "\\x{0B}";
      } else if (n == 'u' && i + 6 <= pattern.size() && is_hex(pattern[i + 2]) &&
                 is_hex(pattern[i + 3]) && is_hex(pattern[i + 4]) && is_hex(pattern[i + 5])) {
        replacement = "\\x{" + std::string(pattern.substr(i + 2, 4)) + "}";
        consumed = 6;
      }
      if (replacement.empty()) {
        out.append(pattern.substr(i, 2));
      } else {
        out += replacement;
      }
      i += consumed;
      continue;
    }
    if (in_class) {
      if (c == ']') {
        in_class = false;
      } else if (c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
        // A POSIX class such as [:alpha:] is copied whole so that its ']'
        // does not end the enclosing class.
        const size_t close = pattern.find(":]", i + 2);
        const size_t end = close == std::string_view::npos ? pattern.size() : close + 2;
        out.append(pattern.substr(i, end - i));
        i = end;
        continue;
      }
    } else if (c == '[') {
      in_class = true;
      out.push_back(c);
      ++i;
      if (i < pattern.size() && pattern[i] == '^') out.push_back(pattern[i++]);
      // A ']' right after '[' or '[^' is a literal member of the class.
      if (i < pattern.size() && pattern[i] == ']') out.push_back(pattern[i++]);
      continue;
    }
    out.push_back(c);
    ++i;
  }
  return out;
}

}  // namespace

RegexWorkScope::RegexWorkScope(size_t input_bytes, std::string origin)
    : input_bytes_(input_bytes),
      origin_(std::move(origin)),
      limit_(kBaseWork + kWorkPerByte * static_cast<uint64_t>(input_bytes)),
      previous_(current_scope) {
  current_scope = this;
}

RegexWorkScope::~RegexWorkScope() { current_scope = previous_; }

bool RegexWorkScope::Spend(uint64_t units) {
  if (units > limit_ - spent_) {
    spent_ = limit_;
    return false;
  }
  spent_ += units;
  return true;
}

RegexWorkScope* RegexWorkScope::Current() { return current_scope; }

void RegexWorkScope::CheckTextGrowth(size_t bytes, const char* stage, size_t fallback_input_bytes) {
  const RegexWorkScope* scope = current_scope;
  const uint64_t input = scope != nullptr ? scope->input_bytes_ : fallback_input_bytes;
  const uint64_t cap = kGrowthPerByte * input + (uint64_t{1} << 20);
  if (bytes <= cap) return;
  throw Error((scope != nullptr ? scope->origin_ : std::string("the tokenizer")) + ": its " + stage +
              " grows a " + std::to_string(input) + "-byte input to more than " + std::to_string(cap) +
              " bytes (the limit is " + std::to_string(kGrowthPerByte) +
              " bytes per input byte plus 1 MiB); real tokenizers grow text by small factors, so "
              "this tokenizer is refused.");
}

Regex::Regex(std::string_view pattern, const std::string& where, bool reference_categories)
    : pattern_(pattern), where_(where) {
  const std::string unsupported = UnsupportedConstruct(pattern);
  if (!unsupported.empty()) {
    throw Error(where + " holds the regular expression " + Describe() + ", which uses " + unsupported +
                "; epwa (like the Oniguruma engine of the reference) does not support that.");
  }
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  // USE_OFFSET_LIMIT lets each attempt pin its start position (see MatchAt).
  // NO_START_OPTIMIZE because PCRE2 10.42's JIT, in a partial match, lets its
  // scan for a possible first character run past the offset limit and into
  // the middle of a character: [\x{B2}] then "matches" the second byte of
  // "ò" (C3 B2). Every attempt starts at one given position anyway, so the
  // scan would save little.
  const std::string translated =
      reference_categories ? TranslateOnigurumaEscapes(pattern) : std::string(pattern);
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                        PCRE2_UTF | PCRE2_UCP | PCRE2_USE_OFFSET_LIMIT | PCRE2_NO_START_OPTIMIZE,
                        &error_code, &error_offset, nullptr);
  if (code_ == nullptr) {
    // An offset into the translated pattern would mislead; it is given only
    // when the translation changed nothing.
    throw Error(
        where + " holds a regular expression that does not compile (" + Pcre2Message(error_code) +
        (translated == pattern ? " at offset " + std::to_string(error_offset) : std::string()) +
        ").");
  }
  // JIT compilation is an optimisation only: when it is unavailable the
  // interpreter gives the same matches. Both modes are compiled because
  // MatchAt matches windows of the text with PARTIAL_HARD.
  pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE | PCRE2_JIT_PARTIAL_HARD);
  // A pattern that names a substituted code point (or a stand-in) would
  // match it differently in the substituted text, so it sees the text as it
  // is; real tokenizer patterns name only ASCII and Unicode properties.
  use_stand_ins_ = reference_categories && !MentionsStandIns(pattern);
}

Regex::~Regex() { pcre2_code_free(code_); }

std::string Regex::Describe() const {
  constexpr size_t kShown = 80;
  if (pattern_.size() <= kShown) return "/" + pattern_ + "/";
  size_t cut = kShown;
  while (cut > 0 && (static_cast<uint8_t>(pattern_[cut]) & 0xC0) == 0x80) --cut;
  return "/" + pattern_.substr(0, cut) + "/...";
}

// One attempt at `start` only (the offset limit pins it there), first on a
// window of the text that ends kFirstWindow bytes after `start`. With
// PCRE2_PARTIAL_HARD the attempt reports a partial match as soon as it needs
// a character beyond the window, so a complete match or a failure inside the
// window is exactly what the whole text would give; a partial result
// doubles the window. Work is charged before each try as the window's length
// (the characters the attempt may inspect) plus its match limit (the
// backtracking steps it may take), which bounds what the try can cost.
bool Regex::MatchAt(std::string_view text, size_t start, RegexWorkScope* budget,
                    pcre2_match_data* data, size_t* begin, size_t* end) const {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  pcre2_match_context* context = MatchContext();
  if (context == nullptr) throw Error(where_ + ": out of memory while matching its regular expression.");
  pcre2_set_offset_limit(context, start);
  size_t window = kFirstWindow;
  uint32_t match_limit = kFirstMatchLimit;
  while (true) {
    size_t window_end = text.size();
    if (text.size() - start > window) {
      window_end = start + window;
      // Never cut a character in two: PCRE2 is told the text is valid UTF-8.
      while (window_end < text.size() && (static_cast<uint8_t>(text[window_end]) & 0xC0) == 0x80) {
        ++window_end;
      }
    }
    const bool whole = window_end == text.size();
    if (!budget->Spend((window_end - start) + match_limit)) {
      throw Error(where_ + ": matching its regular expression " + Describe() + " on this " +
                  std::to_string(budget->input_bytes()) + "-byte input needs more than " +
                  std::to_string(budget->limit()) + " steps (" +
                  std::to_string(RegexWorkScope::kWorkPerByte) +
                  " per input byte); the pattern backtracks or rescans too much to be used on it.");
    }
    pcre2_set_match_limit(context, match_limit);
    // The input was validated once up front, so PCRE2 need not re-check it
    // on every call (which would make the loop quadratic).
    const uint32_t options = PCRE2_NO_UTF_CHECK | (whole ? 0 : PCRE2_PARTIAL_HARD);
    int rc = pcre2_match(code_, subject, window_end, start, options, data, context);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      // Retry with the interpreter, whose backtracking memory lives on the heap.
      rc = pcre2_match(code_, subject, window_end, start, options | PCRE2_NO_JIT, data, context);
    }
    if (rc >= 0) {
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
      *begin = ovector[0];
      *end = ovector[1];
      return true;
    }
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    if (rc == PCRE2_ERROR_PARTIAL && !whole) {
      window *= 2;
      continue;
    }
    if (rc == PCRE2_ERROR_MATCHLIMIT && match_limit < kMaxMatchLimit) {
      match_limit = std::min<uint64_t>(uint64_t{match_limit} * 2, kMaxMatchLimit);
      continue;
    }
    throw Error(where_ + ": matching its regular expression " + Describe() + " failed (" +
                Pcre2Message(rc) + ").");
  }
}

std::vector<std::pair<size_t, size_t>> Regex::FindAll(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> matches;
  // The stand-ins have the UTF-8 length of the code points they replace, so
  // offsets in the substituted text are offsets in `text`.
  std::string shadow;
  if (use_stand_ins_ && MakeRegexShadow(text, &shadow)) text = shadow;
  RegexWorkScope* budget = RegexWorkScope::Current();
  std::unique_ptr<RegexWorkScope> own_budget;
  if (budget == nullptr) {
    own_budget = std::make_unique<RegexWorkScope>(text.size());
    budget = own_budget.get();
  }
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> data(
      pcre2_match_data_create_from_pattern(code_, nullptr));
  if (!data) throw Error(where_ + ": out of memory while matching its regular expression.");
  const auto next_position = [&](size_t pos) {
    return pos < text.size() ? pos + CharLength(text, pos) : pos + 1;
  };
  size_t search_from = 0;
  bool have_last_end = false;
  size_t last_match_end = 0;
  while (search_from <= text.size()) {
    // An unanchored search, one start position at a time, so that no single
    // PCRE2 call can rescan the text from many start positions unmetered.
    size_t begin = 0;
    size_t end = 0;
    size_t start = search_from;
    bool found = false;
    while (start <= text.size()) {
      if (MatchAt(text, start, budget, data.get(), &begin, &end)) {
        found = true;
        break;
      }
      start = next_position(start);
    }
    if (!found) break;
    if (begin == end && have_last_end && last_match_end == end) {
      search_from = next_position(search_from);
      continue;
    }
    search_from = end;
    have_last_end = true;
    last_match_end = end;
    matches.emplace_back(begin, end);
  }
  return matches;
}

std::string Regex::Escape(std::string_view literal) {
  // \Q...\E quotes everything except a literal "\E", which is spliced in.
  std::string out = "\\Q";
  size_t pos = 0;
  while (true) {
    const size_t found = literal.find("\\E", pos);
    if (found == std::string_view::npos) {
      out.append(literal.substr(pos));
      break;
    }
    out.append(literal.substr(pos, found - pos));
    out.append("\\E\\\\E\\Q");
    pos = found + 2;
  }
  out.append("\\E");
  return out;
}

}  // namespace epwa::tokenizer_internal
