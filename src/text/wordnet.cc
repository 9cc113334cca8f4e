#include "text/wordnet.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>
#include <system_error>
#include <unordered_map>

#include "base/error.h"
#include "base/file_read.h"

namespace epwa::text {

namespace {

// The data files that hold synsets, one per part of speech. The index files
// are not needed: every synset lists its own words.
constexpr std::array<const char*, 4> kDataFiles = {"data.noun", "data.verb", "data.adj",
                                                   "data.adv"};

bool IsDecimalDigit(char c) { return c >= '0' && c <= '9'; }

int HexDigitValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// True when `s` is 1 to `max_digits` decimal digits. The widths come from
// wndb(5); allowing shorter fields costs nothing and bounds every value.
bool IsDecimal(std::string_view s, size_t max_digits) {
  if (s.empty() || s.size() > max_digits) return false;
  return std::all_of(s.begin(), s.end(), IsDecimalDigit);
}

bool IsHex(std::string_view s, size_t max_digits) {
  if (s.empty() || s.size() > max_digits) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return HexDigitValue(c) >= 0; });
}

// The value of a field already checked with IsDecimal / IsHex (at most three
// digits here, so it cannot overflow).
size_t DecimalValue(std::string_view s) {
  size_t v = 0;
  for (char c : s) v = v * 10 + static_cast<size_t>(c - '0');
  return v;
}

size_t HexValue(std::string_view s) {
  size_t v = 0;
  for (char c : s) v = v * 16 + static_cast<size_t>(HexDigitValue(c));
  return v;
}

// A field of a hostile file as it can be shown in one line of an error
// message: at most 40 bytes, with control and non-ASCII bytes escaped.
std::string Shown(std::string_view field) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "'";
  for (size_t i = 0; i < field.size() && i < 40; ++i) {
    const auto c = static_cast<unsigned char>(field[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  if (field.size() > 40) out += "...";
  return out + "'";
}

char AsciiLower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }
char AsciiUpper(char c) { return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c; }

// Accumulates the synsets of one or more data files into word -> synonyms,
// so that Load can parse each file and free it before reading the next.
class TableBuilder {
 public:
  void AddFile(const WordNetFile& file) {
    size_t line_number = 0;
    size_t pos = 0;
    const std::string_view content = file.content;
    while (pos < content.size()) {
      size_t end = content.find('\n', pos);
      if (end == std::string_view::npos) end = content.size();
      std::string_view line = content.substr(pos, end - pos);
      pos = end + 1;
      ++line_number;
      // A file converted to CRLF line ends is still the same data.
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      // The licence at the top of every data file: its lines start with two
      // spaces, which no synset line (starting with its offset) can.
      if (line.starts_with("  ")) continue;
      AddSynsetLine(line, file.name, line_number);
    }
  }

  std::vector<std::pair<std::string, std::vector<std::string>>> Finish() {
    std::vector<std::pair<std::string, std::vector<std::string>>> entries;
    entries.reserve(synonyms_.size());
    for (auto& [word, list] : synonyms_) {
      // A word in several synsets with a shared second word (e.g. a noun
      // and a verb sense) collects that word more than once.
      std::sort(list.begin(), list.end());
      list.erase(std::unique(list.begin(), list.end()), list.end());
      entries.emplace_back(word, std::move(list));
    }
    synonyms_.clear();
    std::sort(entries.begin(), entries.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    return entries;
  }

 private:
  [[noreturn]] static void Fail(const std::string& file, size_t line, const std::string& what) {
    throw Error("WordNet data file '" + file + "', line " + std::to_string(line) + ": " + what +
                " (see `man 5 wndb` for the format)");
  }

  // Parses one synset line of wndb(5):
  //   synset_offset lex_filenum ss_type w_cnt word lex_id [word lex_id...]
  //   p_cnt [ptr...] [frames...] | gloss
  // Every field is checked, not only the words this table needs, so that a
  // truncated or damaged line is reported instead of silently yielding
  // wrong synonyms; only the words are kept.
  void AddSynsetLine(std::string_view line, const std::string& file, size_t line_number) {
    auto fail = [&](const std::string& what) { Fail(file, line_number, what); };
    if (line.empty()) fail("the line is empty, but every line after the licence must be a synset");
    // The gloss is free text (it may hold any character but '\n'), so the
    // fields end at the first '|', which no field can contain.
    const size_t bar = line.find('|');
    if (bar == std::string_view::npos) {
      fail("the line has no '|' before its gloss, so it is truncated or not a synset line");
    }
    fields_.clear();
    const std::string_view head = line.substr(0, bar);
    for (size_t i = 0; i < head.size();) {
      if (head[i] == ' ') {
        ++i;
        continue;
      }
      const size_t end = std::min(head.find(' ', i), head.size());
      fields_.push_back(head.substr(i, end - i));
      i = end;
    }

    size_t next = 0;
    auto take = [&](const char* what) -> std::string_view {
      if (next >= fields_.size()) fail(std::string("the line ends before its ") + what);
      return fields_[next++];
    };
    const std::string_view offset = take("synset offset");
    if (!IsDecimal(offset, 10)) fail("the synset offset " + Shown(offset) + " is not a decimal number");
    const std::string_view lex_filenum = take("lexicographer file number");
    if (!IsDecimal(lex_filenum, 2)) {
      fail("the lexicographer file number " + Shown(lex_filenum) + " is not a two-digit decimal number");
    }
    const std::string_view ss_type = take("synset type");
    if (ss_type.size() != 1 || std::string_view("nvasr").find(ss_type[0]) == std::string_view::npos) {
      fail("the synset type " + Shown(ss_type) + " is not one of n, v, a, s, r");
    }
    const std::string_view w_cnt_field = take("word count");
    if (!IsHex(w_cnt_field, 2)) {
      fail("the word count " + Shown(w_cnt_field) + " is not a two-digit hexadecimal number");
    }
    const size_t w_cnt = HexValue(w_cnt_field);
    if (w_cnt == 0) fail("the word count is 0, but every synset has at least one word");
    // Each word is followed by its lex_id, and the words by the pointer count.
    if (fields_.size() - next < 2 * w_cnt + 1) {
      fail("the word count " + Shown(w_cnt_field) + " promises " + std::to_string(w_cnt) +
           " words (" + std::to_string(2 * w_cnt) + " fields) and a pointer count, but only " +
           std::to_string(fields_.size() - next) + " fields follow it");
    }
    members_.clear();
    for (size_t w = 0; w < w_cnt; ++w) {
      std::string_view word = fields_[next++];
      const std::string_view lex_id = fields_[next++];
      if (!IsHex(lex_id, 1)) {
        fail("the lex_id " + Shown(lex_id) + " of word " + Shown(word) + " is not one hexadecimal digit");
      }
      // Adjectives may carry a syntactic marker: (a) before the noun,
      // (p) predicate, (ip) immediately after the noun. It is no part of
      // the word.
      for (std::string_view marker : {"(a)", "(p)", "(ip)"}) {
        if (word.ends_with(marker)) {
          word.remove_suffix(marker.size());
          break;
        }
      }
      if (word.empty()) fail("word " + std::to_string(w + 1) + " is empty");
      for (char c : word) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) {
          fail("the word " + Shown(word) + " contains a control character");
        }
      }
      // Multi-word lemmas ("motor_vehicle") cannot replace one word of a text.
      if (word.find('_') != std::string_view::npos) continue;
      std::string lower(word);
      std::transform(lower.begin(), lower.end(), lower.begin(), AsciiLower);
      members_.push_back(std::move(lower));
    }

    const std::string_view p_cnt_field = fields_[next++];
    if (!IsDecimal(p_cnt_field, 3)) {
      fail("the pointer count " + Shown(p_cnt_field) + " is not a three-digit decimal number");
    }
    const size_t p_cnt = DecimalValue(p_cnt_field);
    if (fields_.size() - next < 4 * p_cnt) {
      fail("the pointer count " + Shown(p_cnt_field) + " promises " + std::to_string(p_cnt) +
           " pointers (" + std::to_string(4 * p_cnt) + " fields), but only " +
           std::to_string(fields_.size() - next) + " fields follow it");
    }
    for (size_t p = 0; p < p_cnt; ++p) {
      const std::string_view symbol = fields_[next++];
      const std::string_view target = fields_[next++];
      const std::string_view pos = fields_[next++];
      const std::string_view source_target = fields_[next++];
      const std::string where = "pointer " + std::to_string(p + 1);
      if (symbol.size() > 2) fail("the symbol " + Shown(symbol) + " of " + where + " is longer than two characters");
      if (!IsDecimal(target, 10)) fail("the synset offset " + Shown(target) + " of " + where + " is not a decimal number");
      if (pos.size() != 1 || std::string_view("nvasr").find(pos[0]) == std::string_view::npos) {
        fail("the part of speech " + Shown(pos) + " of " + where + " is not one of n, v, a, s, r");
      }
      if (source_target.size() != 4 || !IsHex(source_target, 4)) {
        fail("the source/target field " + Shown(source_target) + " of " + where +
             " is not four hexadecimal digits");
      }
    }

    // Verb synsets end with their sentence frames: f_cnt, then "+ f_num w_num"
    // per frame.
    if (ss_type[0] == 'v') {
      const std::string_view f_cnt_field = take("frame count (every verb synset has one)");
      if (!IsDecimal(f_cnt_field, 2)) {
        fail("the frame count " + Shown(f_cnt_field) + " is not a two-digit decimal number");
      }
      const size_t f_cnt = DecimalValue(f_cnt_field);
      if (fields_.size() - next < 3 * f_cnt) {
        fail("the frame count " + Shown(f_cnt_field) + " promises " + std::to_string(f_cnt) +
             " frames (" + std::to_string(3 * f_cnt) + " fields), but only " +
             std::to_string(fields_.size() - next) + " fields follow it");
      }
      for (size_t f = 0; f < f_cnt; ++f) {
        const std::string_view plus = fields_[next++];
        const std::string_view f_num = fields_[next++];
        const std::string_view w_num = fields_[next++];
        if (plus != "+" || !IsDecimal(f_num, 2) || !IsHex(w_num, 2)) {
          fail("frame " + std::to_string(f + 1) + " is not '+ f_num w_num' but " + Shown(plus) +
               " " + Shown(f_num) + " " + Shown(w_num));
        }
      }
    }
    if (next != fields_.size()) {
      fail("the field " + Shown(fields_[next]) +
           " follows the last field the counts announce (is a count too small?)");
    }

    std::sort(members_.begin(), members_.end());
    members_.erase(std::unique(members_.begin(), members_.end()), members_.end());
    if (members_.size() < 2) return;
    for (const std::string& word : members_) {
      std::vector<std::string>& list = synonyms_[word];
      for (const std::string& other : members_) {
        if (other != word) list.push_back(other);
      }
    }
  }

  std::unordered_map<std::string, std::vector<std::string>> synonyms_;
  // Scratch space reused from line to line.
  std::vector<std::string_view> fields_;
  std::vector<std::string> members_;
};

// Punctuation that may surround a word in running text and is kept as it is
// instead of being looked up: ASCII punctuation, plus the UTF-8 quotes,
// dashes and ellipsis that language models often write.
constexpr std::array<std::string_view, 9> kUnicodePunctuation = {
    "\xE2\x80\x9C", "\xE2\x80\x9D",  // “ ”
    "\xE2\x80\x98", "\xE2\x80\x99",  // ‘ ’
    "\xE2\x80\x93", "\xE2\x80\x94",  // – —
    "\xE2\x80\xA6",                  // …
    "\xC2\xAB",     "\xC2\xBB",      // « »
};

bool IsAsciiPunctuation(char c) {
  return (c >= '!' && c <= '/') || (c >= ':' && c <= '@') || (c >= '[' && c <= '`') ||
         (c >= '{' && c <= '~');
}

bool IsAsciiWhitespace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// The length of the punctuation mark at the start (or end) of `s`; 0 if none.
size_t LeadingPunctuation(std::string_view s) {
  if (s.empty()) return 0;
  if (IsAsciiPunctuation(s.front())) return 1;
  for (std::string_view p : kUnicodePunctuation) {
    if (s.starts_with(p)) return p.size();
  }
  return 0;
}

size_t TrailingPunctuation(std::string_view s) {
  if (s.empty()) return 0;
  if (IsAsciiPunctuation(s.back())) return 1;
  for (std::string_view p : kUnicodePunctuation) {
    if (s.ends_with(p)) return p.size();
  }
  return 0;
}

// A uniform integer in [0, bound), bound > 0. std::uniform_int_distribution
// is not used because each standard library implements it differently, and
// the attacked text must be the same everywhere for a given seed; the output
// of std::mt19937_64 itself is fixed by the C++ standard. Rejecting the
// lowest 2^64 mod bound values leaves a range whose size is a multiple of
// bound, so the remainder is exactly uniform.
uint64_t UniformBelow(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t reject_below = (0 - bound) % bound;
  for (;;) {
    const uint64_t x = rng();
    if (x >= reject_below) return x % bound;
  }
}

}  // namespace

SynonymTable SynonymTable::FromFiles(std::span<const WordNetFile> files) {
  TableBuilder builder;
  for (const WordNetFile& file : files) builder.AddFile(file);
  SynonymTable table;
  table.entries_ = builder.Finish();
  return table;
}

SynonymTable SynonymTable::Load(const std::string& dir) {
  const std::string install_hint =
      "install WordNet 3.0 with `apt-get install wordnet-base` (it goes to /usr/share/wordnet), "
      "or give the folder that holds its data.noun, data.verb, data.adj and data.adv";
  std::error_code error;
  if (!std::filesystem::is_directory(dir, error)) {
    throw Error("the WordNet folder '" + dir + "' does not exist or is not a folder; " + install_hint);
  }
  TableBuilder builder;
  for (const char* name : kDataFiles) {
    const std::string path = dir + "/" + name;
    if (!std::filesystem::exists(path, error)) {
      throw Error("the WordNet folder '" + dir + "' has no " + name + "; " + install_hint);
    }
    // One file at a time, so that at most one (data.noun, ~15 MB) is in
    // memory beside the table.
    const std::string content = ReadRegularFile(path, kMaxWordNetFileBytes, "the WordNet data file");
    builder.AddFile(WordNetFile{path, content});
  }
  SynonymTable table;
  table.entries_ = builder.Finish();
  return table;
}

std::span<const std::string> SynonymTable::Synonyms(std::string_view lowercase_word) const {
  const auto it = std::lower_bound(
      entries_.begin(), entries_.end(), lowercase_word,
      [](const auto& entry, std::string_view word) { return std::string_view(entry.first) < word; });
  if (it == entries_.end() || it->first != lowercase_word) return {};
  return it->second;
}

// MarkLLM's SynonymSubstitution (evaluation/tools/text_editor.py) is the
// reference. What is the same: words are runs of non-whitespace; a word is
// replaceable when WordNet has a synonym for it; min(int(ratio * words),
// replaceable) of the replaceable words are drawn without replacement
// (random.sample) and each gets a random synonym. The count truncates like
// Python's int(), not rounds, so that a ratio gives the same number of
// replacements as in MarkLLM.
//
// What differs, on purpose:
//  - MarkLLM looks the raw word up, so "program," or "(car)" is never
//    replaced; here the punctuation around a word is set aside, the word
//    looked up, and the punctuation kept around the synonym.
//  - MarkLLM joins the words with single spaces, losing newlines and
//    paragraph breaks; here all whitespace stays as it was.
//  - MarkLLM picks a synset (with more than one lemma), then one of its lemmas
//    other than the first; that may be the word itself (when it is not the
//    synset's first lemma) or a multi-word lemma ("motor vehicle"). Here the
//    synonym is drawn uniformly from the word's distinct single-word
//    synonyms, never the word itself, so every replacement changes the word
//    and the word count stays the same.
//  - NLTK's wordnet.synsets() also finds inflected forms through morphy
//    ("cars" -> "car"); this table holds WordNet's lemmas only, so an
//    inflected form is replaceable only when WordNet lists it as a lemma.
//  - The capital of a capitalised word is kept (MarkLLM writes the lemma as
//    WordNet spells it).
// The random draws cannot match Python's, so the same seed does not give the
// same text as MarkLLM; the distribution of the attack is what matches.
std::string SubstituteSynonyms(std::string_view text, double ratio, uint64_t seed,
                               const SynonymTable& table, int64_t* replaced) {
  Require(std::isfinite(ratio) && ratio >= 0.0 && ratio <= 1.0,
          "the synonym substitution ratio must be between 0 and 1, not " + std::to_string(ratio));

  // A word that has synonyms: where its looked-up core is in `text`.
  struct Candidate {
    size_t begin;
    size_t end;
    std::span<const std::string> synonyms;
    std::string_view replacement;
  };
  std::vector<Candidate> candidates;
  uint64_t num_words = 0;
  std::string key;
  for (size_t i = 0; i < text.size();) {
    if (IsAsciiWhitespace(text[i])) {
      ++i;
      continue;
    }
    size_t begin = i;
    while (i < text.size() && !IsAsciiWhitespace(text[i])) ++i;
    size_t end = i;
    ++num_words;
    while (size_t n = LeadingPunctuation(text.substr(begin, end - begin))) begin += n;
    while (size_t n = TrailingPunctuation(text.substr(begin, end - begin))) end -= n;
    if (begin == end) continue;
    key.assign(text.substr(begin, end - begin));
    std::transform(key.begin(), key.end(), key.begin(), AsciiLower);
    const std::span<const std::string> synonyms = table.Synonyms(key);
    if (!synonyms.empty()) candidates.push_back({begin, end, synonyms, {}});
  }

  // ratio <= 1, so the product is at most num_words and the cast is exact
  // truncation, like Python's int() of a non-negative float.
  const uint64_t wanted = static_cast<uint64_t>(ratio * static_cast<double>(num_words));
  const uint64_t count = std::min<uint64_t>(wanted, candidates.size());

  // The first `count` steps of a Fisher-Yates shuffle of the candidates'
  // indices draw `count` distinct candidates uniformly; then each chosen
  // word draws its synonym, in the order the words were chosen.
  std::mt19937_64 rng(seed);
  std::vector<size_t> order(candidates.size());
  std::iota(order.begin(), order.end(), size_t{0});
  for (uint64_t j = 0; j < count; ++j) {
    const uint64_t r = j + UniformBelow(rng, order.size() - j);
    std::swap(order[j], order[r]);
  }
  for (uint64_t j = 0; j < count; ++j) {
    Candidate& c = candidates[order[j]];
    c.replacement = c.synonyms[UniformBelow(rng, c.synonyms.size())];
  }

  std::string out;
  out.reserve(text.size() + text.size() / 4);
  size_t copied = 0;
  for (const Candidate& c : candidates) {
    if (c.replacement.empty()) continue;
    out.append(text.substr(copied, c.begin - copied));
    const bool capital = text[c.begin] >= 'A' && text[c.begin] <= 'Z';
    out += capital ? AsciiUpper(c.replacement.front()) : c.replacement.front();
    out.append(c.replacement.substr(1));
    copied = c.end;
  }
  out.append(text.substr(copied));
  if (replaced != nullptr) *replaced = static_cast<int64_t>(count);
  return out;
}

}  // namespace epwa::text
