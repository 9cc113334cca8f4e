// A compiled PCRE2 regular expression with the matching semantics of the
// Oniguruma-based regexes used by the Hugging Face tokenizers library, and a
// bound on the total matching work per input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct pcre2_real_code_8;
struct pcre2_real_match_data_8;

namespace epwa::tokenizer_internal {

// The matching work every regex may spend on one input, shared by all the
// regexes (pre-tokenizer splits, Replace normalizers and decoders) that run
// over it. While a RegexWorkScope lives, Regex::FindAll on the same thread
// draws from its budget; without one, each FindAll call gets a budget sized
// for its own text.
//
// Why a total: PCRE2's match limit bounds one match attempt, but a pattern
// such as `a*b|.` scans to the end of a run of 'a's on every attempt and
// makes one attempt per character, so 1 MB takes ~10^12 steps although no
// single attempt is large. The budget is kWorkPerByte units per input byte
// (plus a constant), where a unit is one character a match attempt may
// inspect or one backtracking step PCRE2 may take; ordinary tokenizer
// patterns spend under 40 units per byte, so only patterns whose work grows
// faster than the input run out.
class RegexWorkScope {
 public:
  static constexpr uint64_t kWorkPerByte = 512;
  static constexpr uint64_t kBaseWork = uint64_t{1} << 20;

  // `origin` (the tokenizer file) is named in the errors of CheckTextGrowth.
  explicit RegexWorkScope(size_t input_bytes, std::string origin = "the tokenizer");
  ~RegexWorkScope();
  RegexWorkScope(const RegexWorkScope&) = delete;
  RegexWorkScope& operator=(const RegexWorkScope&) = delete;

  // Takes `units` from the budget; false once it is exhausted.
  bool Spend(uint64_t units);
  uint64_t limit() const { return limit_; }
  size_t input_bytes() const { return input_bytes_; }

  // The innermost scope of this thread, or nullptr.
  static RegexWorkScope* Current();

  // Throws epwa::Error when a text built from the input (normalized text,
  // pre-tokenized pieces, decoded tokens) reaches `bytes`, which is more
  // than kGrowthPerByte bytes per input byte plus 1 MiB. Real stages grow text
  // by small factors (NFKC, ByteLevel, "▁" for spaces); without the check a
  // few Replace steps or a Sequence of ByteLevel pre-tokenizers could grow it
  // exponentially and exhaust memory. `stage` names the stage in the message.
  // Without a scope, `fallback_input_bytes` is taken as the input's size.
  static constexpr uint64_t kGrowthPerByte = 64;
  static void CheckTextGrowth(size_t bytes, const char* stage, size_t fallback_input_bytes);

 private:
  size_t input_bytes_;
  std::string origin_;
  uint64_t limit_;
  uint64_t spent_ = 0;
  RegexWorkScope* previous_;
};

class Regex {
 public:
  // Compiles `pattern` with UTF and UCP semantics (so \p{L}, \s and \w follow
  // Unicode, as in the reference). Throws epwa::Error whose message starts
  // with `where` (the file and field that hold the pattern) when it does not
  // compile, or when it uses \G or a (*VERB), which Oniguruma does not have
  // and which the bounded matcher below could not honour.
  //
  // With `reference_categories`, FindAll matches as if PCRE2 had the
  // reference's Unicode 16.0 categories instead of its own (see
  // RegexStandIn), unless the pattern names a code point that this would
  // misjudge (one with a stand-in, or a stand-in). Patterns built from the
  // reference's own code point sets pass false.
  Regex(std::string_view pattern, const std::string& where, bool reference_categories = true);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Byte ranges [begin, end) of the successive non-overlapping matches in
  // `text`, which must be valid UTF-8. An empty match right where the previous
  // match ended is skipped, as the onig crate's find_iter does, so the loop
  // always advances. Throws epwa::Error naming the pattern when the work
  // budget (RegexWorkScope) runs out or one attempt exceeds PCRE2's limits.
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view text) const;

  // Escapes `literal` so that it matches itself.
  static std::string Escape(std::string_view literal);

 private:
  // The leftmost match that starts exactly at `start`, if any.
  bool MatchAt(std::string_view text, size_t start, RegexWorkScope* budget,
               pcre2_real_match_data_8* data, size_t* begin, size_t* end) const;
  std::string Describe() const;

  pcre2_real_code_8* code_ = nullptr;
  std::string pattern_;
  std::string where_;
  // Whether FindAll matches on a copy of the text with stand-ins.
  bool use_stand_ins_ = false;
};

}  // namespace epwa::tokenizer_internal
