// WordNet synonyms and the synonym-substitution attack on watermarked text.
//
// The watermark evaluation attacks a watermarked text by replacing a share of
// its words with synonyms, as MarkLLM's SynonymSubstitution editor does, and
// then checks whether the detector still finds the watermark. MarkLLM takes
// its synonyms from NLTK's copy of WordNet 3.0; epwa reads the same database
// from the files the Debian package wordnet-base installs in
// /usr/share/wordnet, so that the attack needs neither Python nor a download.
//
// Only the four data files (data.noun, data.verb, data.adj, data.adv) are
// read; the synonyms of a word are the other lemmas of every synset (a set of
// words that share one meaning) the word belongs to, whatever its part of
// speech. Every input file is untrusted: a malformed line is refused with an
// epwa::Error that names the file and the line.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace epwa::text {

// Where the Debian package wordnet-base installs the WordNet 3.0 database.
inline constexpr const char* kDefaultWordNetDir = "/usr/share/wordnet";

// The largest data file accepted. The largest real one, data.noun, is about
// 15 MB; the limit keeps a wrong or hostile path from exhausting memory.
inline constexpr uint64_t kMaxWordNetFileBytes = 64ull << 20;

// The content of one WordNet data file, and the name its errors mention
// (normally its path).
struct WordNetFile {
  std::string name;
  std::string_view content;
};

// For every word, the sorted list of its single-word synonyms.
class SynonymTable {
 public:
  // An empty table: no word has synonyms.
  SynonymTable() = default;

  // Reads data.noun, data.verb, data.adj and data.adv from `dir`. Throws
  // epwa::Error when the folder or a file is missing (with the command that
  // installs them), unreadable, too large or malformed.
  static SynonymTable Load(const std::string& dir = kDefaultWordNetDir);

  // Builds the table from the contents of WordNet data files (any number, in
  // any order; the result does not depend on the order). Throws epwa::Error
  // naming the file and line of the first malformed line.
  static SynonymTable FromFiles(std::span<const WordNetFile> files);

  // The synonyms of `lowercase_word` (which must already be lowercase: the
  // table stores lowercase words only): lowercase single words (no multi-word
  // lemmas such as "motor_vehicle"), without adjective markers such as "(a)",
  // never the word itself, sorted and unique. Empty when the word is not in
  // WordNet or has no single-word synonym. The span stays valid as long as
  // the table is neither destroyed nor assigned to.
  std::span<const std::string> Synonyms(std::string_view lowercase_word) const;

  // How many words have at least one synonym.
  size_t size() const { return entries_.size(); }

 private:
  // Sorted by word, so that a lookup is a binary search and the table has no
  // iteration order that depends on a hash function.
  std::vector<std::pair<std::string, std::vector<std::string>>> entries_;
};

// The synonym-substitution attack: returns `text` with
// min(floor(ratio * W), R) of its words replaced by synonyms, where W is the
// number of words (runs of non-whitespace) and R the number of them that have
// synonyms in `table`. Which words are replaced, and by which synonym, is
// drawn uniformly at random from `seed`, identically on every platform and
// standard library. Whitespace is kept exactly; punctuation at either end of
// a word ("program," or "(car)") is kept and not looked up; a word whose first
// letter is a capital gets a synonym with a capital first letter. `ratio` must
// be in [0, 1] (else epwa::Error). When `replaced` is not null it receives the
// number of words replaced.
std::string SubstituteSynonyms(std::string_view text, double ratio, uint64_t seed,
                               const SynonymTable& table, int64_t* replaced = nullptr);

}  // namespace epwa::text
