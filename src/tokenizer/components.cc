#include "tokenizer/components.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>

#include "base/error.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode_data.h"
#include "tokenizer/utf8.h"

namespace epwa::tokenizer_internal {

using Json = nlohmann::json;

// ---------------------------------------------------------------------------
// JSON access helpers.

void JsonPlace::Fail(const std::string& problem) const {
  throw Error(origin + ": field '" + path + "' " + problem + ".");
}

const Json& RequireMember(const Json& node, const char* key, const JsonPlace& place) {
  if (!node.is_object()) place.Fail("must be a JSON object");
  const auto it = node.find(key);
  if (it == node.end()) place.Child(key).Fail("is missing");
  return *it;
}

std::string RequireString(const Json& node, const char* key, const JsonPlace& place) {
  const Json& value = RequireMember(node, key, place);
  if (!value.is_string()) place.Child(key).Fail("must be a string");
  return value.get<std::string>();
}

std::string OptionalString(const Json& node, const char* key, const JsonPlace& place,
                           const std::string& fallback) {
  if (!node.is_object()) place.Fail("must be a JSON object");
  const auto it = node.find(key);
  if (it == node.end() || it->is_null()) return fallback;
  if (!it->is_string()) place.Child(key).Fail("must be a string");
  return it->get<std::string>();
}

bool OptionalBool(const Json& node, const char* key, const JsonPlace& place, bool fallback) {
  if (!node.is_object()) place.Fail("must be a JSON object");
  const auto it = node.find(key);
  if (it == node.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) place.Child(key).Fail("must be true or false");
  return it->get<bool>();
}

int64_t RequireInt(const Json& node, const char* key, const JsonPlace& place) {
  const Json& value = RequireMember(node, key, place);
  if (!value.is_number_integer()) place.Child(key).Fail("must be an integer");
  return value.get<int64_t>();
}

namespace {

const Json& RequireArray(const Json& node, const char* key, const JsonPlace& place) {
  const Json& value = RequireMember(node, key, place);
  if (!value.is_array()) place.Child(key).Fail("must be an array");
  return value;
}

// Reads a field that holds exactly one character, such as Metaspace's
// replacement "▁".
std::string RequireChar(const Json& node, const char* key, const JsonPlace& place) {
  std::string value = RequireString(node, key, place);
  if (CountChars(value) != 1) place.Child(key).Fail("must be exactly one character");
  return value;
}

std::string TypeOf(const Json& node, const JsonPlace& place) {
  return RequireString(node, "type", place);
}

[[noreturn]] void Unsupported(const JsonPlace& place, const std::string& type,
                              const std::string& supported) {
  place.Child("type").Fail("is \"" + type + "\", which epwa does not support (supported: " +
                           supported + ")");
}

// A pattern field {"String": "..."} or {"Regex": "..."}, compiled to a regex
// either way (literal strings are escaped), as the reference does.
std::unique_ptr<Regex> MakePattern(const Json& node, const char* key, const JsonPlace& place,
                                   std::string* literal_out) {
  const Json& pattern = RequireMember(node, key, place);
  const JsonPlace pattern_place = place.Child(key);
  if (pattern.is_object() && pattern.contains("String") && pattern["String"].is_string()) {
    const std::string literal = pattern["String"].get<std::string>();
    if (literal_out != nullptr) *literal_out = literal;
    return std::make_unique<Regex>(Regex::Escape(literal), pattern_place.origin + ": field '" +
                                                               pattern_place.path + ".String'");
  }
  if (pattern.is_object() && pattern.contains("Regex") && pattern["Regex"].is_string()) {
    return std::make_unique<Regex>(pattern["Regex"].get<std::string>(),
                                   pattern_place.origin + ": field '" + pattern_place.path + ".Regex'");
  }
  pattern_place.Fail("must be {\"String\": ...} or {\"Regex\": ...}");
}

// Replaces every match of `regex` in `text` by `content`.
std::string RegexReplace(const Regex& regex, const std::string& text, const std::string& content) {
  std::string out;
  size_t previous = 0;
  for (const auto& [begin, end] : regex.FindAll(text)) {
    out.append(text, previous, begin - previous);
    // A long content replacing many matches could grow the text without
    // limit; check before it does.
    RegexWorkScope::CheckTextGrowth(out.size() + content.size(), "Replace step", text.size());
    out.append(content);
    previous = end;
  }
  out.append(text, previous, std::string::npos);
  return out;
}

std::string LiteralReplace(const std::string& text, const std::string& from, const std::string& to) {
  std::string out;
  size_t previous = 0;
  while (true) {
    const size_t found = text.find(from, previous);
    if (found == std::string::npos) break;
    out.append(text, previous, found - previous);
    RegexWorkScope::CheckTextGrowth(out.size() + to.size(), "Replace step", text.size());
    out.append(to);
    previous = found + from.size();
  }
  out.append(text, previous, std::string::npos);
  return out;
}

// ---------------------------------------------------------------------------
// Splitting, shared by the pre-tokenizers. This mirrors the reference's
// NormalizedString::split: a pattern yields segments covering the text, each
// flagged as a match or not, and a SplitDelimiterBehavior decides how matches
// join their neighbours.

struct Segment {
  size_t begin;
  size_t end;
  bool is_match;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

SplitBehavior ParseBehavior(const Json& node, const JsonPlace& place) {
  const std::string name = RequireString(node, "behavior", place);
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  place.Child("behavior").Fail("is \"" + name + "\", which is not a known split behavior");
}

std::vector<Segment> SegmentsOf(const Regex& regex, std::string_view text, bool invert) {
  std::vector<Segment> segments;
  if (text.empty()) {
    segments.push_back({0, 0, invert});
    return segments;
  }
  size_t previous = 0;
  for (const auto& [begin, end] : regex.FindAll(text)) {
    if (previous != begin) segments.push_back({previous, begin, invert});
    segments.push_back({begin, end, !invert});
    previous = end;
  }
  if (previous != text.size()) segments.push_back({previous, text.size(), invert});
  return segments;
}

std::vector<std::pair<size_t, size_t>> ApplyBehavior(const std::vector<Segment>& segments,
                                                     SplitBehavior behavior) {
  std::vector<std::pair<size_t, size_t>> ranges;
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Segment& s : segments) ranges.emplace_back(s.begin, s.end);
      break;
    case SplitBehavior::kRemoved:
      for (const Segment& s : segments) {
        if (!s.is_match) ranges.emplace_back(s.begin, s.end);
      }
      break;
    case SplitBehavior::kContiguous:
      for (const Segment& s : segments) {
        if (s.is_match == previous_match && !ranges.empty()) {
          ranges.back().second = s.end;
        } else {
          ranges.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Segment& s : segments) {
        if (s.is_match && !previous_match && !ranges.empty()) {
          ranges.back().second = s.end;
        } else {
          ranges.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto it = segments.rbegin(); it != segments.rend(); ++it) {
        if (it->is_match && !previous_match && !ranges.empty()) {
          ranges.back().first = it->begin;
        } else {
          ranges.emplace_back(it->begin, it->end);
        }
        previous_match = it->is_match;
      }
      std::reverse(ranges.begin(), ranges.end());
      break;
  }
  return ranges;
}

// Appends the non-empty pieces of `split` named by `ranges`. Only a piece
// that starts where its parent started can still be at the input's origin.
void EmitRanges(const TextSplit& split, const std::vector<std::pair<size_t, size_t>>& ranges,
                std::vector<TextSplit>* out) {
  for (const auto& [begin, end] : ranges) {
    if (begin >= end) continue;
    out->push_back({split.text.substr(begin, end - begin), split.at_origin && begin == 0});
  }
}

void SplitAll(const Regex& regex, bool invert, SplitBehavior behavior,
              std::vector<TextSplit>* splits) {
  std::vector<TextSplit> out;
  out.reserve(splits->size());
  for (const TextSplit& split : *splits) {
    EmitRanges(split, ApplyBehavior(SegmentsOf(regex, split.text, invert), behavior), &out);
  }
  *splits = std::move(out);
}

// ---------------------------------------------------------------------------
// Normalizers.

// Multiplies coverage->shrink by `factor`; a factor past any useful bound
// (it would overflow after enough stages) counts as no bound at all.
void ShrinkBy(size_t factor, Coverage* coverage) {
  constexpr size_t kUselessShrink = size_t{1} << 20;
  if (coverage->shrink > kUselessShrink / factor) {
    coverage->unbounded = true;
  } else {
    coverage->shrink *= factor;
  }
}

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(int options) : options_(options) {}
  void Normalize(std::string* text) const override {
    // ASCII is invariant under every normalization form.
    if (std::all_of(text->begin(), text->end(), [](char c) { return (c & 0x80) == 0; })) return;
    // The reference's normalization tables are those of Unicode 9.0: a code
    // point that only later versions give a decomposition, a combining class
    // or a part in a composition is a plain starter to it. Such a starter
    // ends every reordering and composition, so the stretches between them
    // normalize independently, and utf8proc (whose newer data agrees with
    // 9.0 on everything 9.0 has) handles each stretch.
    std::string out;
    size_t stretch = 0;
    for (size_t pos = 0; pos < text->size();) {
      const size_t length = CharLength(*text, pos);
      if (length > 1 && IsNormalizationInert(DecodeAt(*text, pos, length))) {
        out += Map(std::string_view(*text).substr(stretch, pos - stretch));
        out.append(*text, pos, length);
        stretch = pos + length;
      }
      pos += length;
    }
    if (stretch == 0) {
      *text = Map(*text);
    } else {
      out += Map(std::string_view(*text).substr(stretch));
      *text = std::move(out);
    }
  }
  void DescribeCoverage(Coverage* coverage) const override {
    // A normalized character is at least one byte and stands for at most one
    // input character of at most four bytes (compatibility mappings such as
    // U+1D400 -> "A"); compositions shrink less than that.
    ShrinkBy(4, coverage);
  }

 private:
  std::string Map(std::string_view text) const {
    if (text.empty()) return std::string();
    utf8proc_uint8_t* result = nullptr;
    const utf8proc_ssize_t length =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                     static_cast<utf8proc_ssize_t>(text.size()), &result,
                     static_cast<utf8proc_option_t>(options_));
    if (length < 0) {
      throw Error(std::string("Unicode normalization failed: ") + utf8proc_errmsg(length) + ".");
    }
    std::string mapped(reinterpret_cast<const char*>(result), static_cast<size_t>(length));
    std::free(result);
    return mapped;
  }

  int options_;
};

class LowercaseNormalizer : public Normalizer {
 public:
  void Normalize(std::string* text) const override {
    std::string out;
    out.reserve(text->size());
    size_t pos = 0;
    while (pos < text->size()) {
      const size_t length = CharLength(*text, pos);
      const char32_t c = DecodeAt(*text, pos, length);
      if (c == 0x130) {
        // Rust's char::to_lowercase maps U+0130 to two code points, "i̇".
        out.append("i\xCC\x87");
      } else {
        AppendUtf8(ReferenceLowercase(c), &out);
      }
      pos += length;
    }
    *text = std::move(out);
  }
  void DescribeCoverage(Coverage* coverage) const override {
    // Some characters lose bytes when lowercased (U+212A KELVIN SIGN -> "k").
    ShrinkBy(4, coverage);
  }
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void Normalize(std::string* text) const override {
    size_t begin = 0;
    size_t end = text->size();
    if (left_) {
      while (begin < end) {
        const size_t length = CharLength(*text, begin);
        if (!IsWhitespace(DecodeAt(*text, begin, length))) break;
        begin += length;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<uint8_t>((*text)[start]) & 0xC0) == 0x80) --start;
        if (!IsWhitespace(DecodeAt(*text, start, end - start))) break;
        end = start;
      }
    }
    *text = text->substr(begin, end - begin);
  }
  void DescribeCoverage(Coverage* coverage) const override { coverage->unbounded = true; }

 private:
  bool left_;
  bool right_;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void Normalize(std::string* text) const override {
    // The reference leaves empty strings empty.
    if (!text->empty()) text->insert(0, prefix_);
  }
  void DescribeCoverage(Coverage* /*coverage*/) const override {}

 private:
  std::string prefix_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(std::unique_ptr<Regex> regex, std::string literal, std::string content)
      : regex_(std::move(regex)), literal_(std::move(literal)), content_(std::move(content)) {}
  void Normalize(std::string* text) const override {
    *text = literal_.empty() ? RegexReplace(*regex_, *text, content_)
                             : LiteralReplace(*text, literal_, content_);
  }
  void DescribeCoverage(Coverage* coverage) const override {
    // A literal replaced by a non-empty content shrinks by at most their
    // length ratio; a regex can match any length.
    if (literal_.empty() || content_.empty()) {
      coverage->unbounded = true;
    } else {
      ShrinkBy((literal_.size() + content_.size() - 1) / content_.size(), coverage);
    }
  }

 private:
  std::unique_ptr<Regex> regex_;
  std::string literal_;  // Non-empty for a literal String pattern (fast path).
  std::string content_;
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  void Normalize(std::string* text) const override {
    for (const auto& step : steps_) {
      step->Normalize(text);
      RegexWorkScope::CheckTextGrowth(text->size(), "normalizer", text->size());
    }
  }
  void DescribeCoverage(Coverage* coverage) const override {
    for (const auto& step : steps_) step->DescribeCoverage(coverage);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

// ---------------------------------------------------------------------------
// Pre-tokenizers.

// The GPT-2 pre-tokenization regex used by ByteLevel when use_regex is true.
const Regex& Gpt2Regex() {
  static const Regex regex(
      R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)",
      "the built-in GPT-2 pre-tokenization regex");
  return regex;
}

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {}
  void PreTokenize(std::vector<TextSplit>* splits) const override {
    if (add_prefix_space_) {
      for (TextSplit& split : *splits) {
        if (!split.text.empty() && split.text[0] != ' ') split.text.insert(0, " ");
      }
    }
    if (use_regex_) SplitAll(Gpt2Regex(), false, SplitBehavior::kIsolated, splits);
    // Every byte becomes its printable stand-in, so that BPE works on bytes.
    const auto& table = ByteToUnicode();
    for (TextSplit& split : *splits) {
      std::string mapped;
      mapped.reserve(split.text.size() * 2);
      for (char c : split.text) mapped.append(table[static_cast<uint8_t>(c)]);
      split.text = std::move(mapped);
    }
  }
  void DescribeCoverage(Coverage* coverage) const override { coverage->byte_level = true; }

 private:
  bool add_prefix_space_;
  bool use_regex_;
};

enum class PrependScheme { kAlways, kNever, kFirst };

PrependScheme ParsePrependScheme(const Json& node, const JsonPlace& place) {
  // Files written before prepend_scheme existed say add_prefix_space instead.
  if (!node.contains("prepend_scheme") || node["prepend_scheme"].is_null()) {
    return OptionalBool(node, "add_prefix_space", place, true) ? PrependScheme::kAlways
                                                               : PrependScheme::kNever;
  }
  const std::string scheme = RequireString(node, "prepend_scheme", place);
  if (scheme == "always") return PrependScheme::kAlways;
  if (scheme == "never") return PrependScheme::kNever;
  if (scheme == "first") return PrependScheme::kFirst;
  place.Child("prepend_scheme").Fail("is \"" + scheme + "\"; expected \"always\", \"never\" or \"first\"");
}

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}
  void PreTokenize(std::vector<TextSplit>* splits) const override {
    std::vector<TextSplit> out;
    for (TextSplit& split : *splits) {
      std::string text = LiteralReplace(split.text, " ", replacement_);
      // "first" prepends only to the piece at the very start of the input,
      // which is why " Hello" and "Hello" both become "▁Hello".
      const bool prepend = scheme_ == PrependScheme::kAlways ||
                           (scheme_ == PrependScheme::kFirst && split.at_origin);
      if (prepend && !text.empty() && text.compare(0, replacement_.size(), replacement_) != 0) {
        text.insert(0, replacement_);
      }
      if (!split_) {
        if (!text.empty()) out.push_back({std::move(text), split.at_origin});
        continue;
      }
      // Split before every replacement character (MergedWithNext).
      size_t begin = 0;
      size_t found = text.find(replacement_, 1);
      while (found != std::string::npos) {
        out.push_back({text.substr(begin, found - begin), split.at_origin && begin == 0});
        begin = found;
        found = text.find(replacement_, found + replacement_.size());
      }
      if (begin < text.size()) out.push_back({text.substr(begin), split.at_origin && begin == 0});
    }
    *splits = std::move(out);
  }
  void DescribeCoverage(Coverage* /*coverage*/) const override {}

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class RegexSplitPreTokenizer : public PreTokenizer {
 public:
  RegexSplitPreTokenizer(std::unique_ptr<Regex> regex, bool invert, SplitBehavior behavior)
      : regex_(std::move(regex)), invert_(invert), behavior_(behavior) {}
  void PreTokenize(std::vector<TextSplit>* splits) const override {
    SplitAll(*regex_, invert_, behavior_, splits);
  }
  void DescribeCoverage(Coverage* coverage) const override {
    // Removed delimiters belong to no token.
    if (behavior_ == SplitBehavior::kRemoved) coverage->unbounded = true;
  }

 private:
  std::unique_ptr<Regex> regex_;
  bool invert_;
  SplitBehavior behavior_;
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void PreTokenize(std::vector<TextSplit>* splits) const override {
    for (const auto& step : steps_) {
      step->PreTokenize(splits);
      // Each ByteLevel step can double the text, so a long Sequence of them
      // would grow it exponentially.
      size_t total = 0;
      for (const TextSplit& split : *splits) total += split.text.size();
      RegexWorkScope::CheckTextGrowth(total, "pre_tokenizer", total);
    }
  }
  void DescribeCoverage(Coverage* coverage) const override {
    for (const auto& step : steps_) step->DescribeCoverage(coverage);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

// `reference_categories` as for Regex: false for patterns built from the
// reference's own code point sets.
std::unique_ptr<PreTokenizer> MakeRegexSplit(const std::string& pattern, const std::string& what,
                                             bool invert, SplitBehavior behavior,
                                             bool reference_categories = true) {
  return std::make_unique<RegexSplitPreTokenizer>(
      std::make_unique<Regex>(pattern, what, reference_categories), invert, behavior);
}

// ---------------------------------------------------------------------------
// Decoders.

class ByteLevelDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::string bytes;
    for (const std::string& token : *tokens) {
      // A token whose characters all come from the byte table stands for
      // those bytes; any other token (e.g. an added token containing a plain
      // space) is taken as its own UTF-8, as the reference does.
      const size_t mark = bytes.size();
      bool all_mapped = true;
      size_t pos = 0;
      while (pos < token.size()) {
        const size_t length = CharLength(token, pos);
        const int byte = UnicodeToByte(DecodeAt(token, pos, length));
        if (byte < 0) {
          all_mapped = false;
          break;
        }
        bytes.push_back(static_cast<char>(byte));
        pos += length;
      }
      if (!all_mapped) {
        bytes.resize(mark);
        bytes.append(token);
      }
    }
    tokens->assign(1, LossyUtf8(bytes));
  }
};

class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, PrependScheme scheme)
      : replacement_(std::move(replacement)), scheme_(scheme) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      // In the first token every replacement character is dropped (not only
      // the leading one) unless the scheme is "never", as in the reference.
      const bool drop = i == 0 && scheme_ != PrependScheme::kNever;
      (*tokens)[i] = LiteralReplace((*tokens)[i], replacement_, drop ? "" : " ");
    }
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(std::unique_ptr<Regex> regex, std::string literal, std::string content)
      : regex_(std::move(regex)), literal_(std::move(literal)), content_(std::move(content)) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (std::string& token : *tokens) {
      token = literal_.empty() ? RegexReplace(*regex_, token, content_)
                               : LiteralReplace(token, literal_, content_);
    }
  }

 private:
  std::unique_ptr<Regex> regex_;
  std::string literal_;
  std::string content_;
};

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Returns the byte named by a "<0xNN>" token, or -1.
int ByteTokenValue(const std::string& token) {
  if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>') return -1;
  const int high = HexDigit(token[3]);
  const int low = HexDigit(token[4]);
  if (high < 0 || low < 0) return -1;
  return high * 16 + low;
}

class ByteFallbackDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens->size());
    std::string pending;  // Bytes of consecutive "<0xNN>" tokens.
    const auto flush = [&] {
      if (pending.empty()) return;
      if (IsValidUtf8(pending)) {
        out.push_back(pending);
      } else {
        // The reference emits one U+FFFD per byte of an invalid run.
        for (size_t i = 0; i < pending.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (std::string& token : *tokens) {
      const int byte = ByteTokenValue(token);
      if (byte >= 0) {
        pending.push_back(static_cast<char>(byte));
        continue;
      }
      flush();
      out.push_back(std::move(token));
    }
    flush();
    *tokens = std::move(out);
  }
};

class FuseDecoder : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::string joined;
    for (const std::string& token : *tokens) joined.append(token);
    tokens->assign(1, std::move(joined));
  }
};

class StripDecoder : public Decoder {
 public:
  StripDecoder(std::string content, size_t start, size_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (std::string& token : *tokens) {
      // Character boundaries of the token, so that counts are in characters.
      std::vector<size_t> bounds;
      for (size_t pos = 0; pos < token.size(); pos += CharLength(token, pos)) bounds.push_back(pos);
      bounds.push_back(token.size());
      const size_t count = bounds.size() - 1;
      const auto char_at = [&](size_t i) {
        return std::string_view(token).substr(bounds[i], bounds[i + 1] - bounds[i]);
      };
      size_t start_cut = 0;
      for (size_t i = 0; i < std::min(start_, count) && char_at(i) == content_; ++i) start_cut = i + 1;
      size_t stop_cut = count;
      for (size_t i = 0; i < std::min(stop_, count); ++i) {
        const size_t index = count - i - 1;
        if (char_at(index) != content_) break;
        stop_cut = index;
      }
      if (stop_cut <= start_cut) {
        token.clear();
      } else {
        token = token.substr(bounds[start_cut], bounds[stop_cut] - bounds[start_cut]);
      }
    }
  }

 private:
  std::string content_;
  size_t start_;
  size_t stop_;
};

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (const auto& step : steps_) {
      step->DecodeChain(tokens);
      size_t total = 0;
      for (const std::string& token : *tokens) total += token.size();
      RegexWorkScope::CheckTextGrowth(total, "decoder", total);
    }
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

// ---------------------------------------------------------------------------
// Post-processors.

class TemplatePostProcessor : public PostProcessor {
 public:
  // `before` and `after` are the special ids around the single sequence.
  TemplatePostProcessor(std::vector<int32_t> before, std::vector<int32_t> after)
      : before_(std::move(before)), after_(std::move(after)) {}
  void AddSpecialTokens(std::vector<int32_t>* ids) const override {
    ids->insert(ids->begin(), before_.begin(), before_.end());
    ids->insert(ids->end(), after_.begin(), after_.end());
  }

 private:
  std::vector<int32_t> before_;
  std::vector<int32_t> after_;
};

class SequencePostProcessor : public PostProcessor {
 public:
  explicit SequencePostProcessor(std::vector<std::unique_ptr<PostProcessor>> steps)
      : steps_(std::move(steps)) {}
  void AddSpecialTokens(std::vector<int32_t>* ids) const override {
    for (const auto& step : steps_) step->AddSpecialTokens(ids);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

class NoOpPostProcessor : public PostProcessor {
 public:
  void AddSpecialTokens(std::vector<int32_t>* /*ids*/) const override {}
};

// A special-token id that the post-processor inserts. It must name a token of
// the vocabulary: otherwise every encode with special tokens would produce an
// id that decoding and the model refuse, far from the file that caused it.
int32_t CheckedId(int64_t id, const JsonPlace& place, const IdCheck& id_exists) {
  if (id < 0 || id > INT32_MAX) place.Fail("holds the id " + std::to_string(id) + ", which is out of range");
  if (id_exists && !id_exists(static_cast<int32_t>(id))) {
    place.Fail("holds the id " + std::to_string(id) +
               ", which is not a token of the vocabulary or the added tokens");
  }
  return static_cast<int32_t>(id);
}

std::unique_ptr<PostProcessor> MakeTemplate(const Json& node, const JsonPlace& place,
                                            const IdCheck& id_exists) {
  const Json& special = RequireMember(node, "special_tokens", place);
  if (!special.is_object()) place.Child("special_tokens").Fail("must be an object");
  const Json& single = RequireArray(node, "single", place);
  std::vector<int32_t> before;
  std::vector<int32_t> after;
  bool seen_sequence = false;
  for (size_t i = 0; i < single.size(); ++i) {
    const JsonPlace piece_place = place.Child("single").Index(i);
    const Json& piece = single[i];
    if (piece.is_object() && piece.contains("Sequence")) {
      const std::string id = RequireString(piece["Sequence"], "id", piece_place.Child("Sequence"));
      if (id != "A") piece_place.Fail("names sequence \"" + id + "\", but a single template may only use \"A\"");
      if (seen_sequence) piece_place.Fail("repeats the sequence \"A\"");
      seen_sequence = true;
      continue;
    }
    if (!piece.is_object() || !piece.contains("SpecialToken")) {
      piece_place.Fail("must be {\"SpecialToken\": ...} or {\"Sequence\": ...}");
    }
    const std::string name = RequireString(piece["SpecialToken"], "id", piece_place.Child("SpecialToken"));
    const JsonPlace token_place = place.Child("special_tokens").Child(name);
    if (!special.contains(name)) token_place.Fail("is missing although the template uses it");
    const Json& ids = RequireArray(special[name], "ids", token_place);
    for (size_t k = 0; k < ids.size(); ++k) {
      if (!ids[k].is_number_integer()) token_place.Child("ids").Index(k).Fail("must be an integer id");
      const int32_t id = CheckedId(ids[k].get<int64_t>(), token_place.Child("ids").Index(k), id_exists);
      (seen_sequence ? after : before).push_back(id);
    }
  }
  if (!seen_sequence) place.Child("single").Fail("does not contain the sequence \"A\"");
  return std::make_unique<TemplatePostProcessor>(std::move(before), std::move(after));
}

// RobertaProcessing and BertProcessing hold ["token", id] pairs.
int32_t TokenPairId(const Json& node, const char* key, const JsonPlace& place, const IdCheck& id_exists) {
  const Json& pair = RequireMember(node, key, place);
  if (!pair.is_array() || pair.size() != 2 || !pair[1].is_number_integer()) {
    place.Child(key).Fail("must be a [\"token\", id] pair");
  }
  return CheckedId(pair[1].get<int64_t>(), place.Child(key), id_exists);
}

}  // namespace

// ---------------------------------------------------------------------------
// Factories.

namespace {

// Real tokenizers nest Sequence components two or three levels deep and list
// a handful of steps. Without limits a hostile tokenizer.json could nest them
// 100,000 deep (one C++ stack frame and one JsonPlace path per level: the
// stack overflows) or list millions of steps (every step runs over every
// input, so encoding would take time proportional to both). The limits sit
// far above any real file and are checked before recursing.
constexpr int kMaxComponentDepth = 32;
constexpr int kMaxComponentsPerStage = 256;

// Tracks one pipeline stage (normalizer, pre_tokenizer, ...) while it is built.
struct BuildState {
  const char* stage;  // "normalizer", for messages.
  int components = 0;
};

// Called once per component about to be built, at nesting level `depth`
// (0 for the stage's top-level component).
void CheckLimits(const JsonPlace& place, int depth, BuildState* state) {
  if (depth > kMaxComponentDepth) {
    throw Error(place.origin + ": the " + state->stage + " nests Sequence components more than " +
                std::to_string(kMaxComponentDepth) + " levels deep (at field '" + place.path +
                "'); real tokenizers nest two or three levels, so this file is refused.");
  }
  if (++state->components > kMaxComponentsPerStage) {
    throw Error(place.origin + ": the " + state->stage + " has more than " +
                std::to_string(kMaxComponentsPerStage) + " components (at field '" + place.path +
                "'); real tokenizers have a handful, so this file is refused.");
  }
}

std::unique_ptr<Normalizer> BuildNormalizer(const Json& node, const JsonPlace& place, int depth,
                                            BuildState* state) {
  if (node.is_null()) return nullptr;
  CheckLimits(place, depth, state);
  const std::string type = TypeOf(node, place);
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_COMPOSE);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE);
  if (type == "NFKC") {
    return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
  }
  if (type == "NFKD") {
    return std::make_unique<UnicodeNormalizer>(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
  }
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "Strip") {
    return std::make_unique<StripNormalizer>(OptionalBool(node, "strip_left", place, true),
                                             OptionalBool(node, "strip_right", place, true));
  }
  if (type == "Prepend") return std::make_unique<PrependNormalizer>(RequireString(node, "prepend", place));
  if (type == "Replace") {
    std::string literal;
    auto regex = MakePattern(node, "pattern", place, &literal);
    return std::make_unique<ReplaceNormalizer>(std::move(regex), literal,
                                               RequireString(node, "content", place));
  }
  if (type == "Sequence") {
    const Json& list = RequireArray(node, "normalizers", place);
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (size_t i = 0; i < list.size(); ++i) {
      auto step = BuildNormalizer(list[i], place.Child("normalizers").Index(i), depth + 1, state);
      if (step) steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  Unsupported(place, type, "NFC, NFD, NFKC, NFKD, Lowercase, Strip, Prepend, Replace, Sequence");
}

std::unique_ptr<PreTokenizer> BuildPreTokenizer(const Json& node, const JsonPlace& place, int depth,
                                                BuildState* state) {
  if (node.is_null()) return nullptr;
  CheckLimits(place, depth, state);
  const std::string type = TypeOf(node, place);
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevelPreTokenizer>(OptionalBool(node, "add_prefix_space", place, true),
                                                   OptionalBool(node, "use_regex", place, true));
  }
  if (type == "Metaspace") {
    return std::make_unique<MetaspacePreTokenizer>(RequireChar(node, "replacement", place),
                                                   ParsePrependScheme(node, place),
                                                   OptionalBool(node, "split", place, true));
  }
  if (type == "Split") {
    return std::make_unique<RegexSplitPreTokenizer>(MakePattern(node, "pattern", place, nullptr),
                                                    OptionalBool(node, "invert", place, false),
                                                    ParseBehavior(node, place));
  }
  if (type == "Sequence") {
    const Json& list = RequireArray(node, "pretokenizers", place);
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (size_t i = 0; i < list.size(); ++i) {
      auto step = BuildPreTokenizer(list[i], place.Child("pretokenizers").Index(i), depth + 1, state);
      if (step) steps.push_back(std::move(step));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  // The reference's built-in pre-tokenizers below test characters with
  // Rust's char methods, the unicode_categories crate (Punctuation) or a
  // pattern of Rust's regex crate (Whitespace), each with its own Unicode
  // version; their patterns here spell out the reference's exact sets.
  if (type == "Digits") {
    const bool individual = OptionalBool(node, "individual_digits", place, false);
    return MakeRegexSplit("[" + NumericClassBody() + "]", "the built-in Digits pattern", false,
                          individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous,
                          /*reference_categories=*/false);
  }
  if (type == "Whitespace") {
    const std::string word = "[" + WordClassBody() + "]";
    return MakeRegexSplit(word + "+|[^" + WordClassBody() + WhitespaceClassBody() + "]+",
                          "the built-in Whitespace pattern", true, SplitBehavior::kRemoved,
                          /*reference_categories=*/false);
  }
  if (type == "WhitespaceSplit") {
    return MakeRegexSplit("[" + WhitespaceClassBody() + "]", "the built-in WhitespaceSplit pattern",
                          false, SplitBehavior::kRemoved, /*reference_categories=*/false);
  }
  if (type == "Punctuation") {
    const SplitBehavior behavior =
        node.contains("behavior") ? ParseBehavior(node, place) : SplitBehavior::kIsolated;
    return MakeRegexSplit("[" + PunctuationClassBody() + "]", "the built-in Punctuation pattern",
                          false, behavior, /*reference_categories=*/false);
  }
  if (type == "CharDelimiterSplit") {
    return MakeRegexSplit(Regex::Escape(RequireChar(node, "delimiter", place)),
                          place.origin + ": field '" + place.path + ".delimiter'", false,
                          SplitBehavior::kRemoved);
  }
  Unsupported(place, type,
              "ByteLevel, Metaspace, Split, Sequence, Digits, Whitespace, WhitespaceSplit, "
              "Punctuation, CharDelimiterSplit");
}

std::unique_ptr<Decoder> BuildDecoder(const Json& node, const JsonPlace& place, int depth,
                                      BuildState* state) {
  if (node.is_null()) return nullptr;
  CheckLimits(place, depth, state);
  const std::string type = TypeOf(node, place);
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    return std::make_unique<MetaspaceDecoder>(RequireChar(node, "replacement", place),
                                              ParsePrependScheme(node, place));
  }
  if (type == "Replace") {
    std::string literal;
    auto regex = MakePattern(node, "pattern", place, &literal);
    return std::make_unique<ReplaceDecoder>(std::move(regex), literal,
                                            RequireString(node, "content", place));
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    const int64_t start = RequireInt(node, "start", place);
    const int64_t stop = RequireInt(node, "stop", place);
    if (start < 0) place.Child("start").Fail("must not be negative");
    if (stop < 0) place.Child("stop").Fail("must not be negative");
    return std::make_unique<StripDecoder>(RequireChar(node, "content", place), static_cast<size_t>(start),
                                          static_cast<size_t>(stop));
  }
  if (type == "Sequence") {
    const Json& list = RequireArray(node, "decoders", place);
    std::vector<std::unique_ptr<Decoder>> steps;
    for (size_t i = 0; i < list.size(); ++i) {
      auto step = BuildDecoder(list[i], place.Child("decoders").Index(i), depth + 1, state);
      if (step) steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  Unsupported(place, type, "ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence");
}

std::unique_ptr<PostProcessor> BuildPostProcessor(const Json& node, const JsonPlace& place,
                                                  const IdCheck& id_exists, int depth,
                                                  BuildState* state) {
  if (node.is_null()) return nullptr;
  CheckLimits(place, depth, state);
  const std::string type = TypeOf(node, place);
  if (type == "TemplateProcessing") return MakeTemplate(node, place, id_exists);
  // ByteLevel only trims offsets, which epwa does not track.
  if (type == "ByteLevel") return std::make_unique<NoOpPostProcessor>();
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    return std::make_unique<TemplatePostProcessor>(
        std::vector<int32_t>{TokenPairId(node, "cls", place, id_exists)},
        std::vector<int32_t>{TokenPairId(node, "sep", place, id_exists)});
  }
  if (type == "Sequence") {
    const Json& list = RequireArray(node, "processors", place);
    std::vector<std::unique_ptr<PostProcessor>> steps;
    for (size_t i = 0; i < list.size(); ++i) {
      auto step = BuildPostProcessor(list[i], place.Child("processors").Index(i), id_exists, depth + 1,
                                     state);
      if (step) steps.push_back(std::move(step));
    }
    return std::make_unique<SequencePostProcessor>(std::move(steps));
  }
  Unsupported(place, type, "TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence");
}

}  // namespace

std::unique_ptr<Normalizer> MakeNormalizer(const Json& node, const JsonPlace& place) {
  BuildState state{"normalizer"};
  return BuildNormalizer(node, place, 0, &state);
}

std::unique_ptr<PreTokenizer> MakePreTokenizer(const Json& node, const JsonPlace& place) {
  BuildState state{"pre_tokenizer"};
  return BuildPreTokenizer(node, place, 0, &state);
}

std::unique_ptr<Decoder> MakeDecoder(const Json& node, const JsonPlace& place) {
  BuildState state{"decoder"};
  return BuildDecoder(node, place, 0, &state);
}

std::unique_ptr<PostProcessor> MakePostProcessor(const Json& node, const JsonPlace& place,
                                                 const IdCheck& id_exists) {
  BuildState state{"post_processor"};
  return BuildPostProcessor(node, place, id_exists, 0, &state);
}

}  // namespace epwa::tokenizer_internal
