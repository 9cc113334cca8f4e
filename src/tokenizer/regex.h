// A compiled PCRE2 regular expression with the matching semantics of the
// Oniguruma-based regexes used by the Hugging Face tokenizers library.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct pcre2_real_code_8;

namespace epwa::tokenizer_internal {

class Regex {
 public:
  // Compiles `pattern` with UTF and UCP semantics (so \p{L}, \s and \w follow
  // Unicode, as in the reference). Throws epwa::Error whose message starts
  // with `where` (the file and field that hold the pattern) when it does not
  // compile.
  Regex(std::string_view pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Byte ranges [begin, end) of the successive non-overlapping matches in
  // `text`, which must be valid UTF-8. An empty match right where the previous
  // match ended is skipped, as the onig crate's find_iter does, so the loop
  // always advances.
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view text) const;

  // Escapes `literal` so that it matches itself.
  static std::string Escape(std::string_view literal);

 private:
  pcre2_real_code_8* code_ = nullptr;
  std::string where_;
};

}  // namespace epwa::tokenizer_internal
