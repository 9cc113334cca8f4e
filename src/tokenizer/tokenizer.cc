#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <limits>
#include <unordered_map>
#include <unordered_set>

#include "base/error.h"
#include "base/file_read.h"
#include "tokenizer/bpe_model.h"
#include "tokenizer/components.h"
#include "tokenizer/json_document.h"
#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace epwa {
namespace {

using tokenizer_internal::BpeModel;
using tokenizer_internal::JsonPlace;
using tokenizer_internal::TextSplit;
using Json = nlohmann::json;

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

// A piece of input: either plain text [begin, end) or an added token.
struct Piece {
  size_t begin;
  size_t end;
  const AddedToken* token;  // nullptr for plain text.
};

// Finds added tokens in text with leftmost-longest semantics, like the
// Aho-Corasick automaton (MatchKind::LeftmostLongest) of the reference, and
// applies the single_word, lstrip and rstrip rules of its find_matches.
// Tokenizers have at most a few thousand added tokens, so bucketing the
// patterns by first byte is fast enough and much simpler than an automaton.
class AddedTokenMatcher {
 public:
  void Add(std::string pattern, const AddedToken* token) {
    if (pattern.empty()) {
      // A normalized token can normalize to nothing (e.g. a run of spaces
      // under a Strip normalizer). The reference's automaton then matches
      // the empty string everywhere, splitting the text into characters.
      if (empty_pattern_token_ == nullptr) empty_pattern_token_ = token;
      return;
    }
    const auto first = static_cast<uint8_t>(pattern[0]);
    patterns_.push_back({std::move(pattern), token});
    buckets_[first].push_back(patterns_.size() - 1);
  }

  // Sorts each bucket longest first so that the first hit is the longest;
  // equal patterns keep their insertion order (the first one wins).
  void Finish() {
    for (auto& bucket : buckets_) {
      std::stable_sort(bucket.begin(), bucket.end(), [this](size_t a, size_t b) {
        return patterns_[a].text.size() > patterns_[b].text.size();
      });
    }
  }

  bool empty() const { return patterns_.empty() && empty_pattern_token_ == nullptr; }

  std::vector<Piece> Split(std::string_view text) const {
    std::vector<Piece> pieces;
    size_t start_offset = 0;
    size_t search_from = 0;
    while (true) {
      size_t start = 0;
      size_t stop = 0;
      const AddedToken* token = FindFrom(text, search_from, &start, &stop);
      if (token == nullptr) break;
      // The automaton resumes after the match even when the match is then
      // discarded or its bounds extended below; after an empty match it
      // moves on by one character.
      search_from = stop > start ? stop : stop + tokenizer_internal::CharLength(text, stop);
      if (token->single_word) {
        const bool start_space = start == 0 || !tokenizer_internal::IsWordChar(CharBefore(text, start));
        const bool stop_space = stop == text.size() || !tokenizer_internal::IsWordChar(CharAt(text, stop));
        if (!start_space || !stop_space) continue;
      }
      if (token->lstrip) {
        size_t new_start = start;
        while (new_start > 0 && tokenizer_internal::IsWhitespace(CharBefore(text, new_start))) {
          new_start = PreviousBoundary(text, new_start);
        }
        start = std::max(new_start, start_offset);
      }
      if (token->rstrip) {
        while (stop < text.size() && tokenizer_internal::IsWhitespace(CharAt(text, stop))) {
          stop += tokenizer_internal::CharLength(text, stop);
        }
      }
      if (start_offset < start) pieces.push_back({start_offset, start, nullptr});
      // Empty matches produce no token, as the reference drops empty slices.
      if (start < stop) pieces.push_back({start, stop, token});
      start_offset = stop;
    }
    if (start_offset < text.size()) pieces.push_back({start_offset, text.size(), nullptr});
    return pieces;
  }

 private:
  struct Pattern {
    std::string text;
    const AddedToken* token;
  };

  const AddedToken* FindFrom(std::string_view text, size_t from, size_t* start, size_t* stop) const {
    for (size_t pos = from; pos < text.size(); ++pos) {
      for (size_t index : buckets_[static_cast<uint8_t>(text[pos])]) {
        const Pattern& pattern = patterns_[index];
        if (text.compare(pos, pattern.text.size(), pattern.text) == 0) {
          *start = pos;
          *stop = pos + pattern.text.size();
          return pattern.token;
        }
      }
      if (empty_pattern_token_ != nullptr) {
        *start = pos;
        *stop = pos;
        return empty_pattern_token_;
      }
    }
    return nullptr;
  }

  static size_t PreviousBoundary(std::string_view text, size_t pos) {
    size_t start = pos - 1;
    while (start > 0 && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
    return start;
  }
  static char32_t CharBefore(std::string_view text, size_t pos) {
    const size_t start = PreviousBoundary(text, pos);
    return tokenizer_internal::DecodeAt(text, start, pos - start);
  }
  static char32_t CharAt(std::string_view text, size_t pos) {
    return tokenizer_internal::DecodeAt(text, pos, tokenizer_internal::CharLength(text, pos));
  }

  std::vector<Pattern> patterns_;
  std::array<std::vector<size_t>, 256> buckets_;
  const AddedToken* empty_pattern_token_ = nullptr;
};

}  // namespace

struct Tokenizer::Impl {
  std::string origin;
  std::unique_ptr<BpeModel> model;
  // Reserved up front and never resized, so matchers may point into it.
  std::vector<AddedToken> added_tokens;
  std::unordered_map<int32_t, const AddedToken*> added_by_id;
  std::unordered_map<std::string, int32_t> added_by_content;
  std::unordered_set<std::string> special_contents;
  AddedTokenMatcher raw_matcher;         // Tokens with normalized = false.
  AddedTokenMatcher normalized_matcher;  // Tokens with normalized = true.
  std::unique_ptr<tokenizer_internal::Normalizer> normalizer;
  std::unique_ptr<tokenizer_internal::PreTokenizer> pre_tokenizer;
  std::unique_ptr<tokenizer_internal::PostProcessor> post_processor;
  std::unique_ptr<tokenizer_internal::Decoder> decoder;
  int32_t vocab_size = 0;
  size_t max_token_bytes = 0;

  void Load(std::string_view json);
  size_t ComputeMaxTokenBytes() const;
  void LoadAddedTokens(const Json& list, const JsonPlace& place);
  void EncodePlain(std::string_view text, bool at_origin, std::vector<int32_t>* ids) const;
  const std::string* Lookup(int32_t id) const;
};

void Tokenizer::Impl::Load(std::string_view json) {
  tokenizer_internal::TokenizerJsonDocument doc = tokenizer_internal::ParseTokenizerJson(json, origin);
  const JsonPlace root_place{origin, ""};
  const Json& root = doc.root;
  if (!root.is_object()) throw Error(origin + ": the top level is not a JSON object.");
  const auto field = [&](const char* key) -> const Json& {
    static const Json null_value;
    const auto it = root.find(key);
    return it == root.end() ? null_value : *it;
  };
  const auto place = [&](const char* key) { return JsonPlace{origin, key}; };

  const Json& model_node = field("model");
  const JsonPlace model_place = place("model");
  if (model_node.is_null()) model_place.Fail("is missing");
  if (!model_node.is_object()) model_place.Fail("must be a JSON object");
  // Old files omit the type of a BPE model; the reference then recognises it
  // by its fields.
  std::string type = "BPE";
  if (model_node.contains("type")) {
    type = tokenizer_internal::RequireString(model_node, "type", model_place);
  } else if (!doc.has_vocab || !doc.has_merges) {
    model_place.Child("type").Fail("is missing");
  }
  if (type != "BPE") {
    model_place.Child("type").Fail("is \"" + type + "\", which epwa does not support (only \"BPE\" models are)");
  }
  if (!doc.has_vocab) model_place.Child("vocab").Fail("is missing or is not an object of token ids");
  if (!doc.has_merges && model_node.contains("merges") && !model_node["merges"].is_null()) {
    model_place.Child("merges").Fail("must be an array");
  }
  model = std::make_unique<BpeModel>(model_node, model_place, std::move(doc.vocab), std::move(doc.merges));
  vocab_size = model->IdBound();

  normalizer = tokenizer_internal::MakeNormalizer(field("normalizer"), place("normalizer"));
  pre_tokenizer = tokenizer_internal::MakePreTokenizer(field("pre_tokenizer"), place("pre_tokenizer"));
  decoder = tokenizer_internal::MakeDecoder(field("decoder"), place("decoder"));
  // "truncation" and "padding" shape batches for training; epwa's callers
  // decide lengths themselves, so both are ignored.
  if (!field("added_tokens").is_null()) LoadAddedTokens(field("added_tokens"), place("added_tokens"));
  // Built last so that its special-token ids can be checked against the
  // whole vocabulary, added tokens included.
  post_processor = tokenizer_internal::MakePostProcessor(
      field("post_processor"), place("post_processor"),
      [this](int32_t id) { return Lookup(id) != nullptr; });
  max_token_bytes = ComputeMaxTokenBytes();
}

// See Tokenizer::MaxTokenBytes. Every bound below errs on the large side.
size_t Tokenizer::Impl::ComputeMaxTokenBytes() const {
  constexpr size_t kUnbounded = std::numeric_limits<size_t>::max();
  tokenizer_internal::Coverage coverage;
  if (normalizer) normalizer->DescribeCoverage(&coverage);
  if (pre_tokenizer) pre_tokenizer->DescribeCoverage(&coverage);
  if (coverage.unbounded) return kUnbounded;
  const auto& byte_table = tokenizer_internal::ByteToUnicode();
  // Input bytes that the text of one vocabulary entry can stand for. After a
  // ByteLevel pre-tokenizer every character of the byte alphabet is one input
  // byte; otherwise a piece's own bytes are an upper bound (a "▁" is one space
  // or a literal "▁", a "<0xNN>" one byte or itself).
  const auto piece_bytes = [&](const std::string& piece) -> size_t {
    if (!coverage.byte_level) return piece.size();
    size_t bytes = 0;
    for (size_t pos = 0; pos < piece.size();) {
      const size_t length = tokenizer_internal::CharLength(piece, pos);
      const char32_t c = tokenizer_internal::DecodeAt(piece, pos, length);
      bytes += tokenizer_internal::UnicodeToByte(c) >= 0 ? 1 : length;
      pos += length;
    }
    return bytes;
  };
  size_t longest = 0;
  // A character that no vocabulary entry or byte token spells becomes the
  // unknown token (one character, at most 4 bytes), a run of them with
  // fuse_unk (unbounded), or nothing at all without an unknown token.
  bool every_char_spelled = model->HasCompleteByteFallback();
  if (coverage.byte_level && !every_char_spelled) {
    every_char_spelled = true;
    for (const std::string& c : byte_table) every_char_spelled = every_char_spelled && model->TokenToId(c);
  }
  if (!every_char_spelled) {
    if (!model->HasUnknownToken() || model->FusesUnknown()) return kUnbounded;
    longest = 4;
  }
  for (int32_t id = 0; id < model->IdBound(); ++id) {
    if (const std::string* piece = model->IdToToken(id)) longest = std::max(longest, piece_bytes(*piece));
  }
  for (const AddedToken& token : added_tokens) {
    // lstrip and rstrip swallow any amount of whitespace around the token.
    if (token.lstrip || token.rstrip) return kUnbounded;
    longest = std::max(longest, token.content.size());
  }
  if (longest > kUnbounded / coverage.shrink) return kUnbounded;
  return longest * coverage.shrink;
}

void Tokenizer::Impl::LoadAddedTokens(const Json& list, const JsonPlace& place) {
  if (!list.is_array()) place.Fail("must be an array");
  added_tokens.reserve(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    const JsonPlace token_place = place.Index(i);
    const Json& node = list[i];
    AddedToken token;
    token.content = tokenizer_internal::RequireString(node, "content", token_place);
    const int64_t id = tokenizer_internal::RequireInt(node, "id", token_place);
    if (id < 0 || id >= INT32_MAX) token_place.Child("id").Fail("is out of range");
    token.id = static_cast<int32_t>(id);
    // A token already in the model vocabulary keeps its vocabulary id, as in
    // the reference.
    if (const auto model_id = model->TokenToId(token.content)) token.id = *model_id;
    token.special = tokenizer_internal::OptionalBool(node, "special", token_place, false);
    token.single_word = tokenizer_internal::OptionalBool(node, "single_word", token_place, false);
    token.lstrip = tokenizer_internal::OptionalBool(node, "lstrip", token_place, false);
    token.rstrip = tokenizer_internal::OptionalBool(node, "rstrip", token_place, false);
    token.normalized = tokenizer_internal::OptionalBool(node, "normalized", token_place, !token.special);
    added_tokens.push_back(std::move(token));
  }
  for (const AddedToken& token : added_tokens) {
    added_by_id[token.id] = &token;
    added_by_content.emplace(token.content, token.id);
    if (token.special) special_contents.insert(token.content);
    vocab_size = std::max(vocab_size, token.id + 1);
  }
  // The reference builds its automata from the special tokens first, then
  // the others; with equal patterns the earlier one wins.
  for (const bool special_pass : {true, false}) {
    for (const AddedToken& token : added_tokens) {
      if (token.special != special_pass) continue;
      if (!token.normalized) {
        raw_matcher.Add(token.content, &token);
        continue;
      }
      std::string pattern = token.content;
      if (normalizer) {
        // The same bounds as for any input apply to the token's own text.
        tokenizer_internal::RegexWorkScope scope(pattern.size(), origin);
        normalizer->Normalize(&pattern);
      }
      normalized_matcher.Add(std::move(pattern), &token);
    }
  }
  raw_matcher.Finish();
  normalized_matcher.Finish();
}

// Normalizes, splits on normalized added tokens, pre-tokenizes and runs BPE
// on a stretch of input that contains no raw added token.
void Tokenizer::Impl::EncodePlain(std::string_view text, bool at_origin,
                                  std::vector<int32_t>* ids) const {
  std::string normalized(text);
  if (normalizer) normalizer->Normalize(&normalized);
  std::vector<Piece> pieces;
  if (normalized_matcher.empty()) {
    pieces.push_back({0, normalized.size(), nullptr});
  } else {
    pieces = normalized_matcher.Split(normalized);
  }
  for (const Piece& piece : pieces) {
    if (piece.token != nullptr) {
      ids->push_back(piece.token->id);
      continue;
    }
    if (piece.begin >= piece.end) continue;
    std::vector<TextSplit> splits;
    splits.push_back({normalized.substr(piece.begin, piece.end - piece.begin), at_origin && piece.begin == 0});
    if (pre_tokenizer) pre_tokenizer->PreTokenize(&splits);
    for (const TextSplit& split : splits) model->Tokenize(split.text, ids);
  }
}

const std::string* Tokenizer::Impl::Lookup(int32_t id) const {
  const auto it = added_by_id.find(id);
  if (it != added_by_id.end()) return &it->second->content;
  return model->IdToToken(id);
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::FromFile(const std::string& path) {
  // ReadRegularFile refuses folders, FIFOs (without blocking on them) and
  // devices with a message that says what the path is, and files past the
  // size limit before reading them.
  const std::string json = ReadRegularFile(path, kMaxTokenizerFileBytes, "the tokenizer file");
  return FromJson(json, path);
}

std::unique_ptr<Tokenizer> Tokenizer::FromJson(std::string_view json, const std::string& origin) {
  auto impl = std::make_unique<Impl>();
  impl->origin = origin;
  impl->Load(json);
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  // Rust strings are valid UTF-8 by construction; invalid input bytes are
  // repaired to U+FFFD here so that every later stage can rely on it.
  std::string repaired;
  if (!tokenizer_internal::IsValidUtf8(text)) {
    repaired = tokenizer_internal::LossyUtf8(text);
    text = repaired;
  }
  // Bounds the regex work and text growth of every stage for this input.
  tokenizer_internal::RegexWorkScope scope(text.size(), impl_->origin);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (impl_->raw_matcher.empty()) {
    impl_->EncodePlain(text, /*at_origin=*/true, &ids);
  } else {
    for (const Piece& piece : impl_->raw_matcher.Split(text)) {
      if (piece.token != nullptr) {
        ids.push_back(piece.token->id);
      } else if (piece.begin < piece.end) {
        impl_->EncodePlain(text.substr(piece.begin, piece.end - piece.begin), piece.begin == 0, &ids);
      }
    }
  }
  if (add_special_tokens && impl_->post_processor) impl_->post_processor->AddSpecialTokens(&ids);
  return ids;
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    const std::string& piece = IdToPiece(id);
    if (skip_special_tokens && impl_->special_contents.count(piece) != 0) continue;
    tokens.push_back(piece);
  }
  if (!impl_->decoder) {
    // Without a decoder the reference joins the tokens with spaces.
    std::string joined;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) joined.push_back(' ');
      joined.append(tokens[i]);
    }
    return joined;
  }
  size_t token_bytes = 0;
  for (const std::string& token : tokens) token_bytes += token.size();
  tokenizer_internal::RegexWorkScope scope(token_bytes, impl_->origin);
  impl_->decoder->DecodeChain(&tokens);
  std::string text;
  for (const std::string& token : tokens) text.append(token);
  return text;
}

int32_t Tokenizer::VocabSize() const { return impl_->vocab_size; }

size_t Tokenizer::MaxTokenBytes() const { return impl_->max_token_bytes; }

const std::string& Tokenizer::IdToPiece(int32_t id) const {
  const std::string* piece = impl_->Lookup(id);
  if (piece == nullptr) {
    throw Error(impl_->origin + ": token id " + std::to_string(id) +
                " has no entry in the vocabulary (whose ids go up to " +
                std::to_string(impl_->vocab_size - 1) + ").");
  }
  return *piece;
}

std::optional<int32_t> Tokenizer::PieceToId(std::string_view piece) const {
  const auto it = impl_->added_by_content.find(std::string(piece));
  if (it != impl_->added_by_content.end()) return it->second;
  return impl_->model->TokenToId(piece);
}

bool Tokenizer::IsSpecial(int32_t id) const {
  const auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && it->second->special;
}

}  // namespace epwa
