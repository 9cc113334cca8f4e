#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <memory>

#include "base/error.h"
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
// larger stack because a JIT stack must not be shared between threads.
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

}  // namespace

Regex::Regex(std::string_view pattern, const std::string& where) : where_(where) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                        PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (code_ == nullptr) {
    throw Error(where + " holds a regular expression that does not compile (" +
                Pcre2Message(error_code) + " at offset " + std::to_string(error_offset) + ").");
  }
  // JIT compilation is an optimisation only: when it is unavailable the
  // interpreter gives the same matches.
  pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
}

Regex::~Regex() { pcre2_code_free(code_); }

std::vector<std::pair<size_t, size_t>> Regex::FindAll(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> matches;
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> data(
      pcre2_match_data_create_from_pattern(code_, nullptr));
  if (!data) throw Error(where_ + ": out of memory while matching its regular expression.");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t search_from = 0;
  bool have_last_end = false;
  size_t last_match_end = 0;
  while (search_from <= text.size()) {
    // The input was validated once up front, so PCRE2 need not re-check it
    // on every call (which would make the loop quadratic).
    int rc = pcre2_match(code_, subject, text.size(), search_from, PCRE2_NO_UTF_CHECK, data.get(),
                         MatchContext());
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      // Retry with the interpreter, whose backtracking memory lives on the heap.
      rc = pcre2_match(code_, subject, text.size(), search_from, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                       data.get(), nullptr);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      throw Error(where_ + ": matching its regular expression failed (" + Pcre2Message(rc) + ").");
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data.get());
    const size_t begin = ovector[0];
    const size_t end = ovector[1];
    if (begin == end && have_last_end && last_match_end == end) {
      search_from += search_from < text.size() ? CharLength(text, search_from) : 1;
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
