#include "tokenizer/bpe_model.h"

#include <algorithm>
#include <cstdio>
#include <queue>

#include "base/error.h"
#include "tokenizer/utf8.h"

namespace epwa::tokenizer_internal {
namespace {

// Ids beyond the vocabulary size are legal (the reference allows holes), but
// a bound keeps a malformed file from making us allocate gigabytes.
constexpr int64_t kMaxIdSlack = int64_t{1} << 20;

// Words longer than this are rarely repeated (with Metaspace split=false a
// "word" can be a whole paragraph), so they are not worth caching.
constexpr size_t kMaxCachedWordBytes = 256;
constexpr size_t kMaxCacheEntries = 1 << 16;

}  // namespace

void MergeTable::Reserve(size_t count) {
  // At most half full, so that probe sequences stay short.
  size_t capacity = 16;
  int bits = 4;
  while (capacity < count * 2) {
    capacity *= 2;
    ++bits;
  }
  keys_.assign(capacity, kEmpty);
  values_.assign(capacity, Merge{0, 0});
  mask_ = capacity - 1;
  shift_ = 64 - bits;
}

void MergeTable::Assign(int32_t left, int32_t right, Merge merge) {
  const uint64_t key = Key(left, right);
  for (size_t slot = Slot(key);; slot = (slot + 1) & mask_) {
    if (keys_[slot] == key || keys_[slot] == kEmpty) {
      keys_[slot] = key;
      values_[slot] = merge;
      return;
    }
  }
}

BpeModel::BpeModel(const nlohmann::json& model_node, const JsonPlace& place,
                   std::vector<std::pair<std::string, int64_t>> vocab,
                   std::vector<std::pair<std::string, std::string>> merges)
    : origin_(place.origin) {
  unk_token_ = OptionalString(model_node, "unk_token", place, "");
  fuse_unk_ = OptionalBool(model_node, "fuse_unk", place, false);
  byte_fallback_ = OptionalBool(model_node, "byte_fallback", place, false);
  ignore_merges_ = OptionalBool(model_node, "ignore_merges", place, false);
  continuing_subword_prefix_ = OptionalString(model_node, "continuing_subword_prefix", place, "");
  end_of_word_suffix_ = OptionalString(model_node, "end_of_word_suffix", place, "");
  // "dropout" randomises merges for training-time regularisation; inference
  // wants the deterministic segmentation, so it is ignored.

  // Vocabulary. Later duplicates of a string win, as with the reference's
  // HashMap deserialization.
  entries_.resize(vocab.size());
  token_to_id_.reserve(vocab.size() * 2);
  int64_t max_id = -1;
  for (size_t i = 0; i < vocab.size(); ++i) {
    const int64_t id = vocab[i].second;
    if (id < 0 || id >= static_cast<int64_t>(vocab.size()) + kMaxIdSlack) {
      place.Child("vocab").Fail("gives \"" + vocab[i].first + "\" the id " + std::to_string(id) +
                                ", which is out of range for a vocabulary of " +
                                std::to_string(vocab.size()) + " entries");
    }
    entries_[i] = std::move(vocab[i].first);
    token_to_id_.insert_or_assign(std::string_view(entries_[i]), static_cast<int32_t>(id));
    max_id = std::max(max_id, id);
  }
  id_to_token_.assign(static_cast<size_t>(max_id + 1), nullptr);
  for (const std::string& entry : entries_) {
    const auto it = token_to_id_.find(entry);
    // Only the entry the map settled on is the id's string.
    if (it->first.data() == entry.data()) id_to_token_[it->second] = &entry;
  }

  if (!unk_token_.empty()) {
    if (const auto id = TokenToId(unk_token_)) unk_id_ = *id;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    const auto id = TokenToId(name);
    byte_ids_[b] = id ? *id : -1;
  }

  // Merges: rank is the position in the list; a later duplicate pair wins.
  merges_.Reserve(merges.size());
  std::string merged;
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto& [left, right] = merges[i];
    const auto left_id = TokenToId(left);
    const auto right_id = TokenToId(right);
    const JsonPlace merge_place = place.Child("merges").Index(i);
    if (!left_id) merge_place.Fail("uses the token \"" + left + "\", which is not in model.vocab");
    if (!right_id) merge_place.Fail("uses the token \"" + right + "\", which is not in model.vocab");
    merged.assign(left);
    merged.append(right, std::min(continuing_subword_prefix_.size(), right.size()), std::string::npos);
    const auto merged_id = TokenToId(merged);
    if (!merged_id) {
      merge_place.Fail("produces the token \"" + merged + "\", which is not in model.vocab");
    }
    if (i > static_cast<size_t>(INT32_MAX)) merge_place.Fail("is beyond the supported number of merges");
    merges_.Assign(*left_id, *right_id, {static_cast<int32_t>(i), *merged_id});
  }
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  const auto it = token_to_id_.find(token);
  if (it == token_to_id_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size()) return nullptr;
  return id_to_token_[id];
}

void BpeModel::Tokenize(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (const auto id = TokenToId(word)) {
      ids->push_back(*id);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    const auto it = cache_.find(std::string(word));
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> word_ids;
  MergeWord(word, &word_ids);
  ids->insert(ids->end(), word_ids.begin(), word_ids.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.emplace(std::string(word), std::move(word_ids));
  }
}

void BpeModel::MergeWord(std::string_view word, std::vector<int32_t>* ids) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    int32_t len;  // Bytes covered; 0 marks a symbol merged into its left neighbour.
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  const auto add = [&symbols](int32_t id, int32_t len) {
    const auto index = static_cast<int32_t>(symbols.size());
    if (!symbols.empty()) symbols.back().next = index;
    symbols.push_back({id, index - 1, -1, len});
  };

  // Initial symbols, one per character, exactly as the reference's merge_word
  // (including its order of unknown-token and byte-fallback handling).
  bool have_unk = false;
  int32_t unk_len = 0;
  std::string decorated;
  size_t pos = 0;
  while (pos < word.size()) {
    const size_t length = CharLength(word, pos);
    const bool is_first = pos == 0;
    const bool is_last = pos + length == word.size();
    std::string_view piece = word.substr(pos, length);
    if ((!is_first && !continuing_subword_prefix_.empty()) || (is_last && !end_of_word_suffix_.empty())) {
      decorated.assign(is_first ? "" : continuing_subword_prefix_);
      decorated.append(piece);
      if (is_last) decorated.append(end_of_word_suffix_);
      piece = decorated;
    }
    pos += length;
    if (const auto id = TokenToId(piece)) {
      if (have_unk) {
        add(*unk_id_, unk_len);
        have_unk = false;
      }
      add(*id, static_cast<int32_t>(length));
      continue;
    }
    if (byte_fallback_) {
      bool all_bytes_known = true;
      for (char c : piece) all_bytes_known = all_bytes_known && byte_ids_[static_cast<uint8_t>(c)] >= 0;
      if (all_bytes_known) {
        for (char c : piece) add(byte_ids_[static_cast<uint8_t>(c)], 1);
        continue;
      }
    }
    if (unk_token_.empty()) continue;  // Without an unknown token the character is dropped.
    if (!unk_id_) {
      throw Error(origin_ + ": model.unk_token \"" + unk_token_ +
                  "\" is needed for this text but is not in model.vocab.");
    }
    if (have_unk && fuse_unk_) {
      unk_len += static_cast<int32_t>(length);
    } else {
      if (have_unk) add(*unk_id_, unk_len);
      have_unk = true;
      unk_len = static_cast<int32_t>(length);
    }
  }
  if (have_unk) add(*unk_id_, unk_len);

  // Merge loop: always apply the lowest-ranked merge, leftmost first.
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
  };
  const auto worse = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> queue(worse);
  const auto find_merge = [this](int32_t left, int32_t right) { return merges_.Find(left, right); };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const MergeTable::Merge* m = find_merge(symbols[i].id, symbols[i + 1].id)) {
      queue.push({m->rank, static_cast<int32_t>(i), m->new_id});
    }
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& current = symbols[top.pos];
    if (current.len == 0 || current.next == -1) continue;
    const int32_t next_pos = current.next;
    const Symbol right = symbols[next_pos];
    // Skip stale entries: the pair at this position has changed since.
    const MergeTable::Merge* still = find_merge(current.id, right.id);
    if (still == nullptr || still->new_id != top.new_id) continue;

    current.id = top.new_id;
    current.len += right.len;
    current.next = right.next;
    symbols[next_pos].len = 0;
    if (right.next >= 0) symbols[right.next].prev = top.pos;

    if (current.prev >= 0) {
      if (const MergeTable::Merge* m = find_merge(symbols[current.prev].id, current.id)) {
        queue.push({m->rank, current.prev, m->new_id});
      }
    }
    if (current.next >= 0) {
      if (const MergeTable::Merge* m = find_merge(current.id, symbols[current.next].id)) {
        queue.push({m->rank, top.pos, m->new_id});
      }
    }
  }
  for (const Symbol& symbol : symbols) {
    if (symbol.len != 0) ids->push_back(symbol.id);
  }
}

bool BpeModel::HasCompleteByteFallback() const {
  if (!byte_fallback_) return false;
  for (const int32_t id : byte_ids_) {
    if (id < 0) return false;
  }
  return true;
}

}  // namespace epwa::tokenizer_internal
