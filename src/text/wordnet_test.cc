// Tests of the WordNet reader and the synonym-substitution attack: parsing a
// hand-written snippet in the WordNet data-file format, refusing malformed
// files with the file and line named, the attack's count, determinism,
// punctuation, whitespace and capitals, and (when the Debian package
// wordnet-base is installed) the real database. Runs in about a second.
#include "text/wordnet.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "base/error.h"

namespace epwa::text {
namespace {

// Whether `text` contains `part`, with both shown when it does not.
::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not contain '" << part << "'";
}

// A scratch folder made with mkdtemp (unique even across parallel test runs)
// and removed with its contents at the end of the test.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = ::testing::TempDir() + "epwa_wordnet_test_XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }
  void Write(const std::string& name, const std::string& bytes) const {
    std::ofstream out(File(name), std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }

 private:
  std::string path_;
};

// Two licence lines, as at the top of every real data file.
const std::string kLicence =
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "  2 Princeton University under the following license.  \n";

// A small database in the real format. The synonyms it defines:
//   car: auto, automobile (two synsets; motor_vehicle is multi-word)
//   run: operate (Operate is stored lowercase), go: none (alone in its synset)
//   big: great, large (adjective markers stripped)
const std::string kNoun = kLicence +
    "00001000 06 n 03 car 0 auto 0 motor_vehicle 0 001 @ 00001100 n 0000 | a motor vehicle  \n"
    "00001100 06 n 02 automobile 0 car 1 000 | the same, once more  \n";
const std::string kVerb = kLicence +
    "00002000 29 v 02 run 0 Operate 1 001 @ 00002100 v 0000 01 + 02 00 | run a machine  \n"
    "00002100 29 v 01 go 0 000 02 + 01 00 + 02 00 | a synset of one word  \n";
const std::string kAdj = kLicence +
    "00003000 00 a 02 big(a) 0 large(p) 0 001 ! 00003200 a 0101 | of great size  \n"
    "00003100 00 s 02 big 0 great(ip) 0 001 & 00003000 a 0000 | notable  \n";
const std::string kAdv = kLicence + "00004000 02 r 01 fast 0 000 | quickly  \n";

SynonymTable SnippetTable() {
  const std::vector<WordNetFile> files = {
      {"data.noun", kNoun}, {"data.verb", kVerb}, {"data.adj", kAdj}, {"data.adv", kAdv}};
  return SynonymTable::FromFiles(files);
}

std::vector<std::string> Syn(const SynonymTable& table, std::string_view word) {
  const auto s = table.Synonyms(word);
  return std::vector<std::string>(s.begin(), s.end());
}

using Words = std::vector<std::string>;

TEST(SynonymTableTest, ParsesSnippet) {
  const SynonymTable table = SnippetTable();
  EXPECT_EQ(Syn(table, "car"), (Words{"auto", "automobile"}));
  EXPECT_EQ(Syn(table, "auto"), (Words{"car"}));
  EXPECT_EQ(Syn(table, "automobile"), (Words{"car"}));
  EXPECT_EQ(Syn(table, "run"), (Words{"operate"}));
  EXPECT_EQ(Syn(table, "operate"), (Words{"run"}));
  EXPECT_EQ(Syn(table, "big"), (Words{"great", "large"}));
  EXPECT_EQ(Syn(table, "large"), (Words{"big"}));
  EXPECT_EQ(Syn(table, "great"), (Words{"big"}));
  // Single-word synsets give no synonyms; multi-word lemmas are dropped, and
  // the table is lowercase only.
  EXPECT_TRUE(Syn(table, "go").empty());
  EXPECT_TRUE(Syn(table, "fast").empty());
  EXPECT_TRUE(Syn(table, "motor_vehicle").empty());
  EXPECT_TRUE(Syn(table, "Car").empty());
  EXPECT_TRUE(Syn(table, "").empty());
  EXPECT_EQ(table.size(), 8u);
  EXPECT_EQ(SynonymTable().size(), 0u);
  EXPECT_TRUE(SynonymTable().Synonyms("car").empty());
}

TEST(SynonymTableTest, OrderOfFilesDoesNotMatter) {
  const std::vector<WordNetFile> reversed = {
      {"data.adv", kAdv}, {"data.adj", kAdj}, {"data.verb", kVerb}, {"data.noun", kNoun}};
  const SynonymTable a = SnippetTable();
  const SynonymTable b = SynonymTable::FromFiles(reversed);
  ASSERT_EQ(a.size(), b.size());
  for (const char* w : {"car", "auto", "automobile", "run", "operate", "big", "large", "great"}) {
    EXPECT_EQ(Syn(a, w), Syn(b, w)) << w;
  }
}

TEST(SynonymTableTest, AcceptsCrlfLineEnds) {
  std::string crlf;
  for (char c : kNoun) {
    if (c == '\n') crlf += '\r';
    crlf += c;
  }
  const std::vector<WordNetFile> files = {{"data.noun", crlf}};
  EXPECT_EQ(Syn(SynonymTable::FromFiles(files), "car"), (Words{"auto", "automobile"}));
}

TEST(SynonymTableTest, LoadsFolder) {
  ScratchDir dir;
  dir.Write("data.noun", kNoun);
  dir.Write("data.verb", kVerb);
  dir.Write("data.adj", kAdj);
  dir.Write("data.adv", kAdv);
  const SynonymTable table = SynonymTable::Load(dir.path());
  EXPECT_EQ(table.size(), 8u);
  EXPECT_EQ(Syn(table, "big"), (Words{"great", "large"}));
}

// The message of the epwa::Error that `f` throws; fails the test when it
// throws nothing.
template <typename F>
std::string ErrorOf(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no epwa::Error thrown";
  return "";
}

TEST(SynonymTableTest, MissingFolderSaysHowToInstall) {
  ScratchDir dir;
  const std::string missing = dir.File("no-such-folder");
  const std::string message = ErrorOf([&] { SynonymTable::Load(missing); });
  EXPECT_TRUE(Contains(message, missing));
  EXPECT_TRUE(Contains(message, "apt-get install wordnet-base"));

  // A folder without one of the four data files.
  dir.Write("data.noun", kNoun);
  dir.Write("data.verb", kVerb);
  dir.Write("data.adj", kAdj);
  const std::string no_adv = ErrorOf([&] { SynonymTable::Load(dir.path()); });
  EXPECT_TRUE(Contains(no_adv, "data.adv"));
  EXPECT_TRUE(Contains(no_adv, "apt-get install wordnet-base"));

  // data.adv a folder instead of a file.
  std::filesystem::create_directory(dir.File("data.adv"));
  const std::string folder = ErrorOf([&] { SynonymTable::Load(dir.path()); });
  EXPECT_TRUE(Contains(folder, "data.adv"));
  EXPECT_TRUE(Contains(folder, "folder"));
}

TEST(SynonymTableTest, MalformedFileInFolderNamesPathAndLine) {
  ScratchDir dir;
  dir.Write("data.noun", kNoun);
  dir.Write("data.verb", kVerb + "00002200 29 v 01 walk 0 000 | no frame count  \n");
  dir.Write("data.adj", kAdj);
  dir.Write("data.adv", kAdv);
  const std::string message = ErrorOf([&] { SynonymTable::Load(dir.path()); });
  EXPECT_TRUE(Contains(message, dir.File("data.verb") + "', line 5"));
  EXPECT_TRUE(Contains(message, "frame count"));
}

// Each malformed synset line, placed after the licence and one good line
// (so at line 4), with a phrase its error message must contain.
struct BadLine {
  const char* name;
  std::string line;
  const char* expected;
};

TEST(SynonymTableTest, RefusesMalformedLines) {
  const std::vector<BadLine> cases = {
      {"truncated, no gloss", "00001200 06 n 03 car 0 auto", "truncated"},
      {"truncated before the lex_id", "00001200 06 n 02 car 0 auto | x", "promises 2 words"},
      {"bad hex count", "00001200 06 n 0g car 0 auto 0 000 | x", "hexadecimal"},
      {"count larger than the fields", "00001200 06 n ff car 0 auto 0 000 | x", "promises 255 words"},
      {"zero words", "00001200 06 n 00 000 | x", "word count is 0"},
      {"word count too small", "00001200 06 n 01 car 0 auto 0 000 | x", "pointer count 'auto'"},
      {"pointer count too small", "00001200 06 n 01 car 0 000 @ 00001100 n 0000 | x",
       "follows the last field"},
      {"pointer count too large", "00001200 06 n 01 car 0 003 @ 00001100 n 0000 | x", "promises 3 pointers"},
      {"pointer count not decimal", "00001200 06 n 01 car 0 0x1 @ 00001100 n 0000 | x", "pointer count"},
      {"bad pointer part of speech", "00001200 06 n 01 car 0 001 @ 00001100 q 0000 | x", "part of speech"},
      {"bad source/target", "00001200 06 n 01 car 0 001 @ 00001100 n 00 | x", "source/target"},
      {"bad synset type", "00001200 06 x 01 car 0 000 | x", "synset type"},
      {"bad offset", "0000120a 06 n 01 car 0 000 | x", "synset offset"},
      {"bad lex_id", "00001200 06 n 01 car z 000 | x", "lex_id"},
      {"verb without frames", "00001200 29 v 01 walk 0 000 | x", "frame count"},
      {"frame count too large", "00001200 29 v 01 walk 0 000 02 + 01 00 | x", "promises 2 frames"},
      {"bad frame", "00001200 29 v 01 walk 0 000 01 - 01 00 | x", "frame 1"},
      {"empty word after marker", "00001200 00 a 01 (a) 0 000 | x", "is empty"},
      {"control character", std::string("00001200 06 n 01 c\tr 0 000 | x"), "control character"},
      {"NUL byte", std::string("00001200 06 n 01 c\0r 0 000 | x", 30), "control character"},
      {"empty line", "", "empty"},
      {"only the bar", "|", "ends before its synset offset"},
  };
  for (const BadLine& c : cases) {
    const std::string content =
        kLicence + "00001000 06 n 02 car 0 auto 0 000 | good  \n" + c.line + "\n";
    const std::vector<WordNetFile> files = {{"test/data.noun", content}};
    const std::string message = ErrorOf([&] { SynonymTable::FromFiles(files); });
    EXPECT_TRUE(Contains(message, "'test/data.noun', line 4")) << c.name;
    EXPECT_TRUE(Contains(message, c.expected)) << c.name;
  }
}

TEST(SynonymTableTest, ErrorMessagesEscapeHostileBytes) {
  const std::string line = "00001200 06 n 0\x01 car 0 000 | x\n";
  const std::vector<WordNetFile> files = {{"data.noun", line}};
  const std::string message = ErrorOf([&] { SynonymTable::FromFiles(files); });
  EXPECT_TRUE(Contains(message, "'0\\x01'"));
  EXPECT_EQ(message.find('\x01'), std::string::npos);
}

TEST(SynonymTableTest, EveryPrefixOfAValidFileLoadsOrThrowsError) {
  // Cutting a file anywhere (a truncated download) must give a table or an
  // epwa::Error, never anything else.
  const std::string content = kVerb + kNoun;
  for (size_t n = 0; n <= content.size(); ++n) {
    const std::vector<WordNetFile> files = {{"data.verb", std::string_view(content).substr(0, n)}};
    try {
      SynonymTable::FromFiles(files);
    } catch (const Error&) {
    }
  }
}

// The words of `text` that differ from those of `original` (same count).
int CountChangedWords(const std::string& original, const std::string& text) {
  std::istringstream a(original), b(text);
  std::string x, y;
  int changed = 0;
  while (a >> x) {
    EXPECT_TRUE(static_cast<bool>(b >> y));
    if (x != y) ++changed;
  }
  EXPECT_FALSE(static_cast<bool>(b >> y));
  return changed;
}

TEST(SubstituteSynonymsTest, RatioZeroChangesNothing) {
  const SynonymTable table = SnippetTable();
  const std::string text = "The car is big.";
  int64_t replaced = -1;
  EXPECT_EQ(SubstituteSynonyms(text, 0.0, 1, table, &replaced), text);
  EXPECT_EQ(replaced, 0);
  EXPECT_EQ(SubstituteSynonyms("", 1.0, 1, table, &replaced), "");
  EXPECT_EQ(replaced, 0);
  EXPECT_EQ(SubstituteSynonyms(" \n\t ", 1.0, 1, table, &replaced), " \n\t ");
  EXPECT_EQ(replaced, 0);
}

TEST(SubstituteSynonymsTest, KeepsWhitespacePunctuationAndCapitals) {
  const SynonymTable table = SnippetTable();
  // Every replaceable word is replaced at ratio 1. The words with a single
  // synonym have a known result; car and big have two each.
  int64_t replaced = -1;
  const std::string out = SubstituteSynonyms(
      "Auto  run!\n\n(Operate) the car,\tit's \"big\"... go", 1.0, 7, table, &replaced);
  EXPECT_EQ(replaced, 5);
  EXPECT_TRUE(out.starts_with("Car  operate!\n\n(Run) the ")) << out;
  const bool car_ok = out.find(" the auto,\t") != std::string::npos ||
                      out.find(" the automobile,\t") != std::string::npos;
  EXPECT_TRUE(car_ok) << out;
  const bool big_ok = out.ends_with("\tit's \"great\"... go") ||
                      out.ends_with("\tit's \"large\"... go");
  EXPECT_TRUE(big_ok) << out;
  // UTF-8 quotes and dashes around a word are kept too.
  const std::string quoted = SubstituteSynonyms("\xE2\x80\x9CRun\xE2\x80\x9D\xE2\x80\x94", 1.0, 1, table);
  EXPECT_EQ(quoted, "\xE2\x80\x9COperate\xE2\x80\x9D\xE2\x80\x94");
  // A word that is all punctuation is counted but never replaced.
  EXPECT_EQ(SubstituteSynonyms("-- ... !", 1.0, 1, table, &replaced), "-- ... !");
  EXPECT_EQ(replaced, 0);
}

TEST(SubstituteSynonymsTest, CountTruncatesLikeMarkLlm) {
  const SynonymTable table = SnippetTable();
  std::string ten;
  for (int i = 0; i < 10; ++i) ten += i % 2 ? "car " : "big ";
  int64_t replaced = -1;
  std::string out = SubstituteSynonyms(ten, 0.35, 3, table, &replaced);
  EXPECT_EQ(replaced, 3);  // int(0.35 * 10) = 3
  EXPECT_EQ(CountChangedWords(ten, out), 3);

  // 0.29 * 100 is 28.999999999999996 in binary floating point, and Python's
  // int() makes it 28; so must we.
  std::string hundred;
  for (int i = 0; i < 100; ++i) hundred += "car ";
  out = SubstituteSynonyms(hundred, 0.29, 3, table, &replaced);
  EXPECT_EQ(replaced, 28);
  EXPECT_EQ(CountChangedWords(hundred, out), 28);

  // Never more than the words that have synonyms.
  out = SubstituteSynonyms("car go go go go go go go go go", 1.0, 3, table, &replaced);
  EXPECT_EQ(replaced, 1);
  EXPECT_EQ(CountChangedWords("car go go go go go go go go go", out), 1);
}

TEST(SubstituteSynonymsTest, RefusesBadRatio) {
  const SynonymTable table = SnippetTable();
  for (double ratio : {-0.1, 1.5, std::numeric_limits<double>::quiet_NaN(),
                       std::numeric_limits<double>::infinity()}) {
    EXPECT_TRUE(Contains(ErrorOf([&] { SubstituteSynonyms("car", ratio, 1, table); }), "ratio"));
  }
}

TEST(SubstituteSynonymsTest, DeterministicAndUniform) {
  const SynonymTable table = SnippetTable();
  const std::string text = "car big car big car big car big";
  // The same seed gives the same text; the output for seed 42 is fixed,
  // because std::mt19937_64's output is fixed by the C++ standard and the
  // draws from it are our own: a change here changes every attacked text.
  EXPECT_EQ(SubstituteSynonyms(text, 0.5, 42, table), SubstituteSynonyms(text, 0.5, 42, table));
  EXPECT_EQ(SubstituteSynonyms(text, 0.5, 42, table), "auto big car big auto great automobile big");

  // Over many seeds, each position is chosen about half the time and each
  // synonym of a chosen word about half of that.
  const int kSeeds = 4000;
  std::vector<int> chosen(8, 0);
  int automobile = 0;
  std::set<std::string> distinct;
  for (int seed = 0; seed < kSeeds; ++seed) {
    const std::string out = SubstituteSynonyms(text, 0.5, static_cast<uint64_t>(seed), table);
    distinct.insert(out);
    std::istringstream in(out);
    std::string word;
    for (int i = 0; in >> word; ++i) {
      const bool changed = word != (i % 2 ? "big" : "car");
      chosen[static_cast<size_t>(i)] += changed;
      automobile += word == "automobile";
    }
  }
  for (int c : chosen) EXPECT_NEAR(c, kSeeds / 2, 150);  // > 4 standard deviations
  // Four car positions, each chosen with probability 1/2 and then made
  // "automobile" with probability 1/2: kSeeds on average.
  EXPECT_NEAR(automobile, kSeeds, 250);
  EXPECT_GT(distinct.size(), 100u);  // C(8,4) * 2^4 = 1120 possible texts
}

TEST(RealWordNetTest, CarHasAutomobile) {
  if (!std::filesystem::exists(std::string(kDefaultWordNetDir) + "/data.noun")) {
    GTEST_SKIP() << "WordNet is not installed in " << kDefaultWordNetDir
                 << " (apt-get install wordnet-base)";
  }
  const SynonymTable table = SynonymTable::Load();
  EXPECT_GT(table.size(), 40000u);  // 49065 in WordNet 3.0
  const auto car = Syn(table, "car");
  EXPECT_NE(std::find(car.begin(), car.end(), "automobile"), car.end());
  EXPECT_NE(std::find(car.begin(), car.end(), "auto"), car.end());
  const auto big = Syn(table, "big");
  EXPECT_NE(std::find(big.begin(), big.end(), "large"), big.end());
  // galore(ip), out_of_reach(p): markers stripped, multi-word lemmas dropped.
  const auto abounding = Syn(table, "abounding");
  EXPECT_NE(std::find(abounding.begin(), abounding.end(), "galore"), abounding.end());
  for (const char* word : {"car", "big", "abounding", "program", "run", "quickly"}) {
    const auto list = Syn(table, word);
    EXPECT_FALSE(list.empty()) << word;
    EXPECT_TRUE(std::is_sorted(list.begin(), list.end())) << word;
    EXPECT_EQ(std::adjacent_find(list.begin(), list.end()), list.end()) << word;
    for (const std::string& s : list) {
      EXPECT_NE(s, word);
      EXPECT_EQ(s.find('_'), std::string::npos) << s;
      EXPECT_EQ(s.find('('), std::string::npos) << s;
      EXPECT_FALSE(std::any_of(s.begin(), s.end(), [](char c) { return c >= 'A' && c <= 'Z'; })) << s;
    }
  }

  const std::string text =
      "The program runs quickly on a big car, and the results are good.\n"
      "Every word here is ordinary English text for the attack.";
  int64_t replaced = -1;
  const std::string out = SubstituteSynonyms(text, 0.5, 1, table, &replaced);
  EXPECT_EQ(replaced, 11);  // int(0.5 * 23); far more than 11 have synonyms
  EXPECT_EQ(CountChangedWords(text, out), 11) << out;
  EXPECT_NE(out.find('\n'), std::string::npos);
}

}  // namespace
}  // namespace epwa::text
