// libFuzzer target for the WordNet data-file reader (text/wordnet.h) and the
// synonym-substitution attack. The contract under test: any input either
// loads or throws epwa::Error; anything else (another exception, an
// out-of-bounds read, undefined behaviour; the target is built with ASan and
// UBSan) is a crash.
//
// A file that loads is then checked against the table's promises (every
// synonym list sorted, unique, lowercase, without the word itself or a
// multi-word lemma), and the input itself, as text, is attacked with the
// table: the attack must keep the word count, replace no more words than it
// may, and change nothing at ratio 0. Feeding the file back as the text makes
// the attacked words the very words the table holds.
//
// Run: ./build-fuzz/wordnet_fuzz -dict=fuzz/wordnet.dict -max_total_time=120 \
//        /tmp/wordnet-corpus fuzz/corpus/wordnet

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "base/error.h"
#include "text/wordnet.h"

namespace {

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// The number of runs of non-whitespace in `s`, as the attack counts words.
int64_t CountWords(std::string_view s) {
  int64_t n = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (!IsSpace(s[i]) && (i == 0 || IsSpace(s[i - 1]))) ++n;
  }
  return n;
}

void CheckList(std::string_view word, std::span<const std::string> list) {
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string& s = list[i];
    if (s.empty() || s == word) __builtin_trap();
    if (i > 0 && !(list[i - 1] < s)) __builtin_trap();
    for (char c : s) {
      if (c == '_' || IsSpace(c) || (c >= 'A' && c <= 'Z')) __builtin_trap();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  epwa::text::SynonymTable table;
  try {
    const epwa::text::WordNetFile file{"fuzz/data.noun", bytes};
    table = epwa::text::SynonymTable::FromFiles(std::span(&file, 1));
  } catch (const epwa::Error&) {
    // Refusing malformed input with a message is the expected outcome.
    return 0;
  }

  // Look up every whitespace-separated field of the input, lowercased: the
  // lemmas among them are the table's keys.
  std::string key;
  for (size_t i = 0; i < bytes.size();) {
    if (IsSpace(bytes[i])) {
      ++i;
      continue;
    }
    const size_t begin = i;
    while (i < bytes.size() && !IsSpace(bytes[i])) ++i;
    key.assign(bytes.substr(begin, i - begin));
    std::transform(key.begin(), key.end(), key.begin(),
                   [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; });
    CheckList(key, table.Synonyms(key));
  }

  try {
    const int64_t words = CountWords(bytes);
    const double ratio = size > 0 ? (data[0] % 11) / 10.0 : 0.5;
    int64_t replaced = -1;
    const std::string out = epwa::text::SubstituteSynonyms(bytes, ratio, size, table, &replaced);
    if (replaced < 0 || replaced > words || CountWords(out) != words) __builtin_trap();
    if (replaced == 0 && out != bytes) __builtin_trap();
    if (epwa::text::SubstituteSynonyms(bytes, 0.0, 1, table, &replaced) != bytes) __builtin_trap();
    if (replaced != 0) __builtin_trap();
  } catch (const epwa::Error&) {
    // The ratios above are valid, so the attack itself must never refuse.
    __builtin_trap();
  }
  return 0;
}
