// The BPE model of a tokenizer.json: vocabulary, ranked merges, unknown-token
// and byte-fallback handling, and the merge loop of the reference library.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/components.h"

namespace epwa::tokenizer_internal {

// An open-addressing hash map from a token-id pair to its merge. Merge
// lookups are the inner loop of BPE, and a flat table avoids the pointer
// chasing of std::unordered_map.
class MergeTable {
 public:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };

  void Reserve(size_t count);
  // Later assignments to the same pair replace earlier ones.
  void Assign(int32_t left, int32_t right, Merge merge);
  const Merge* Find(int32_t left, int32_t right) const {
    if (keys_.empty()) return nullptr;
    const uint64_t key = Key(left, right);
    for (size_t slot = Slot(key);; slot = (slot + 1) & mask_) {
      if (keys_[slot] == key) return &values_[slot];
      if (keys_[slot] == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // Ids are below 2^31, so no pair maps here.
  static uint64_t Key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  size_t Slot(uint64_t key) const {
    return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_) & mask_;
  }

  std::vector<uint64_t> keys_;
  std::vector<Merge> values_;
  size_t mask_ = 0;
  int shift_ = 64;
};

class BpeModel {
 public:
  // Builds the model from the "model" node (for its options) and the vocab
  // and merges streamed out of the document. Throws epwa::Error naming the
  // file and field for ids out of range, mistyped options, and merges that
  // use or produce tokens missing from the vocabulary.
  BpeModel(const nlohmann::json& model_node, const JsonPlace& place,
           std::vector<std::pair<std::string, int64_t>> vocab,
           std::vector<std::pair<std::string, std::string>> merges);

  // Appends the ids of one pre-tokenized word.
  void Tokenize(std::string_view word, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // nullptr when no vocabulary entry has this id.
  const std::string* IdToToken(int32_t id) const;
  // True when byte_fallback is on and all 256 "<0xNN>" tokens exist, so that
  // every character can be spelled.
  bool HasCompleteByteFallback() const;
  bool HasUnknownToken() const { return unk_id_.has_value(); }
  bool FusesUnknown() const { return fuse_unk_; }
  // One more than the largest id in the vocabulary (0 when empty).
  int32_t IdBound() const { return static_cast<int32_t>(id_to_token_.size()); }

 private:
  // Splits `word` into initial symbols (characters, byte-fallback tokens,
  // unknown tokens) and applies the merges, as merge_word/merge_all do in
  // the reference.
  void MergeWord(std::string_view word, std::vector<int32_t>* ids) const;

  std::string origin_;
  // Every vocabulary string, in document order; never resized after
  // loading, so the string_views and pointers below stay valid.
  std::vector<std::string> entries_;
  std::unordered_map<std::string_view, int32_t> token_to_id_;
  std::vector<const std::string*> id_to_token_;  // nullptr for unused ids.
  MergeTable merges_;
  std::string unk_token_;          // Empty when the model has none.
  std::optional<int32_t> unk_id_;  // Unset when unk_token_ is not in vocab.
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  int32_t byte_ids_[256];  // Id of "<0xNN>" for each byte, or -1.

  // Results per word, since natural text repeats words constantly.
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace epwa::tokenizer_internal
