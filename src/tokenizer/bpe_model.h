// The BPE model of a tokenizer.json: vocabulary, ranked merges, unknown-token
// and byte-fallback handling, and the merge loop of the reference library.
#pragma once

#include <cstdint>
#include <memory>
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

class BpeModel {
 public:
  // Builds the model from the "model" node (for its options) and the vocab
  // and merges streamed out of the document. Throws epwa::Error naming the
  // file and field for ids out of range, merges that use unknown tokens, and
  // options epwa does not implement.
  BpeModel(const nlohmann::json& model_node, const JsonPlace& place,
           std::vector<std::pair<std::string, int64_t>> vocab,
           std::vector<std::pair<std::string, std::string>> merges);

  // Appends the ids of one pre-tokenized word.
  void Tokenize(std::string_view word, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // nullptr when no vocabulary entry has this id.
  const std::string* IdToToken(int32_t id) const;
  // One more than the largest id in the vocabulary (0 when empty).
  int32_t IdBound() const { return static_cast<int32_t>(id_to_token_.size()); }

 private:
  struct MergeResult {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }

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
  std::unordered_map<uint64_t, MergeResult> merges_;
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
