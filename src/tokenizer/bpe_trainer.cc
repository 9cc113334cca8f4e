// A small deterministic BPE trainer producing SentencePiece-style
// (Mistral-like) tokenizer.json files for epwa's seeded random test models.

#include <algorithm>
#include <cstdio>
#include <queue>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace epwa {
namespace {

using OrderedJson = nlohmann::ordered_json;

constexpr const char* kMetaspace = "\xE2\x96\x81";  // "▁"
constexpr int32_t kNumSpecial = 3;                  // <unk>, <s>, </s>
constexpr int32_t kFirstPieceId = kNumSpecial + 256;
constexpr int32_t kMaxVocabSize = 1 << 20;
const char* const kSpecialTokens[kNumSpecial] = {"<unk>", "<s>", "</s>"};

std::string ByteTokenName(int byte) {
  char name[8];
  std::snprintf(name, sizeof(name), "<0x%02X>", byte);
  return name;
}

// Splits text into the words the trained tokenizer will see: special tokens
// are cut out (they are matched before BPE), spaces become "▁", the piece at
// the very start gets a leading "▁" (prepend_scheme "first"), and every "▁"
// starts a new word (Metaspace split).
std::vector<std::string> PreTokenize(std::string_view text) {
  std::vector<std::string> words;
  const auto add_stretch = [&](std::string_view stretch, bool at_origin) {
    if (stretch.empty()) return;
    std::string replaced;
    if (at_origin && stretch[0] != ' ' && stretch.substr(0, 3) != kMetaspace) replaced = kMetaspace;
    for (char c : stretch) {
      if (c == ' ') {
        replaced.append(kMetaspace);
      } else {
        replaced.push_back(c);
      }
    }
    size_t begin = 0;
    size_t found = replaced.find(kMetaspace, 1);
    while (found != std::string::npos) {
      words.push_back(replaced.substr(begin, found - begin));
      begin = found;
      found = replaced.find(kMetaspace, found + 3);
    }
    words.push_back(replaced.substr(begin));
  };
  size_t start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t matched = 0;
    for (const char* special : kSpecialTokens) {
      const std::string_view name(special);
      if (text.substr(pos, name.size()) == name) {
        matched = name.size();
        break;
      }
    }
    if (matched == 0) {
      ++pos;
      continue;
    }
    add_stretch(text.substr(start, pos - start), start == 0);
    pos += matched;
    start = pos;
  }
  add_stretch(text.substr(start), start == 0);
  return words;
}

class Trainer {
 public:
  Trainer(std::string_view text, int32_t vocab_size) : budget_(vocab_size - kFirstPieceId) {
    for (int b = 0; b < 256; ++b) reserved_names_.insert(ByteTokenName(b));
    for (const char* special : kSpecialTokens) reserved_names_.insert(special);
    CountWords(text);
    ChooseAlphabet();
  }

  void Run() {
    CountAllPairs();
    while (static_cast<int32_t>(pieces_.size()) < budget_ && !heap_.empty()) {
      const HeapEntry top = heap_.top();
      heap_.pop();
      const uint64_t key = Key(top.left, top.right);
      const auto it = pair_counts_.find(key);
      if (it == pair_counts_.end() || it->second != top.count) continue;  // Stale entry.
      if (top.count < 2) break;
      std::string merged = pieces_[top.left] + pieces_[top.right];
      if (reserved_names_.count(merged) != 0) {
        // A learned piece must not collide with a special or byte token.
        banned_.insert(key);
        pair_counts_.erase(it);
        continue;
      }
      const int32_t merged_id = PieceId(merged);
      merges_.emplace_back(top.left, top.right);
      ApplyMerge(key, top.left, top.right, merged_id);
    }
  }

  std::string ToJson(int32_t vocab_size) const {
    // Entries are appended to the ordered map's vector directly: its
    // operator[] searches linearly, which is quadratic for a whole vocabulary.
    // All names are distinct by construction (see reserved_names_).
    OrderedJson vocab = OrderedJson::object();
    auto& entries = vocab.get_ref<OrderedJson::object_t&>();
    entries.reserve(static_cast<size_t>(vocab_size));
    for (int32_t i = 0; i < kNumSpecial; ++i) entries.emplace_back(kSpecialTokens[i], i);
    for (int b = 0; b < 256; ++b) entries.emplace_back(ByteTokenName(b), kNumSpecial + b);
    for (size_t i = 0; i < pieces_.size(); ++i) {
      entries.emplace_back(pieces_[i], kFirstPieceId + static_cast<int32_t>(i));
    }
    int32_t next_id = kFirstPieceId + static_cast<int32_t>(pieces_.size());
    for (int32_t n = 0; next_id < vocab_size; ++n) {
      std::string name = "<reserved_" + std::to_string(n) + ">";
      if (piece_ids_.count(name) != 0) continue;
      entries.emplace_back(std::move(name), next_id++);
    }
    OrderedJson merges = OrderedJson::array();
    for (const auto& [left, right] : merges_) merges.push_back({pieces_[left], pieces_[right]});

    OrderedJson added = OrderedJson::array();
    for (int32_t i = 0; i < kNumSpecial; ++i) {
      added.push_back({{"id", i},
                       {"content", kSpecialTokens[i]},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", false},
                       {"special", true}});
    }
    const OrderedJson bos = {{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}};
    OrderedJson root;
    root["version"] = "1.0";
    root["truncation"] = nullptr;
    root["padding"] = nullptr;
    root["added_tokens"] = std::move(added);
    root["normalizer"] = nullptr;
    root["pre_tokenizer"] = {{"type", "Metaspace"},
                             {"replacement", kMetaspace},
                             {"prepend_scheme", "first"},
                             {"split", true}};
    root["post_processor"] = {
        {"type", "TemplateProcessing"},
        {"single", {bos, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"pair",
         {bos,
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
          {{"SpecialToken", {{"id", "<s>"}, {"type_id", 1}}}},
          {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}};
    root["decoder"] = {
        {"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", kMetaspace}}}, {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}},
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
    root["model"] = {{"type", "BPE"},
                     {"dropout", nullptr},
                     {"unk_token", "<unk>"},
                     {"continuing_subword_prefix", nullptr},
                     {"end_of_word_suffix", nullptr},
                     {"fuse_unk", true},
                     {"byte_fallback", true},
                     {"ignore_merges", false},
                     {"vocab", std::move(vocab)},
                     {"merges", std::move(merges)}};
    return root.dump(1);
  }

 private:
  struct Word {
    std::vector<int32_t> symbols;  // Piece indices; -1 for a character left to byte fallback.
    int64_t count = 0;
  };
  struct HeapEntry {
    int64_t count;
    int32_t left;
    int32_t right;
  };
  // Orders the heap: highest count first, then the lexicographically
  // smallest (left, right) pair, so that training is deterministic.
  struct HeapOrder {
    const std::vector<std::string>* pieces;
    bool operator()(const HeapEntry& a, const HeapEntry& b) const {
      if (a.count != b.count) return a.count < b.count;
      const std::string& a_left = (*pieces)[a.left];
      const std::string& b_left = (*pieces)[b.left];
      if (a_left != b_left) return a_left > b_left;
      return (*pieces)[a.right] > (*pieces)[b.right];
    }
  };

  static uint64_t Key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }

  void CountWords(std::string_view text) {
    std::unordered_map<std::string, int64_t> counts;
    for (std::string& word : PreTokenize(text)) ++counts[std::move(word)];
    // Sorted so that word order, and hence everything after, is deterministic.
    word_texts_.reserve(counts.size());
    for (auto& [word, count] : counts) word_texts_.emplace_back(word, count);
    std::sort(word_texts_.begin(), word_texts_.end());
  }

  // The initial pieces are the characters of the text, most frequent first,
  // as many as the budget allows; "▁" always comes first. The others are
  // left to byte fallback.
  void ChooseAlphabet() {
    std::unordered_map<std::string, int64_t> char_counts;
    for (const auto& [word, count] : word_texts_) {
      for (size_t pos = 0; pos < word.size();) {
        const size_t length = tokenizer_internal::CharLength(word, pos);
        char_counts[word.substr(pos, length)] += count;
        pos += length;
      }
    }
    char_counts.erase(kMetaspace);
    std::vector<std::pair<std::string, int64_t>> ordered(char_counts.begin(), char_counts.end());
    std::sort(ordered.begin(), ordered.end(), [](const auto& a, const auto& b) {
      return a.second != b.second ? a.second > b.second : a.first < b.first;
    });
    PieceId(kMetaspace);
    for (const auto& [character, count] : ordered) {
      if (static_cast<int32_t>(pieces_.size()) >= budget_) break;
      PieceId(character);
    }
    words_.reserve(word_texts_.size());
    for (const auto& [word, count] : word_texts_) {
      Word entry;
      entry.count = count;
      for (size_t pos = 0; pos < word.size();) {
        const size_t length = tokenizer_internal::CharLength(word, pos);
        const auto it = piece_ids_.find(word.substr(pos, length));
        entry.symbols.push_back(it == piece_ids_.end() ? -1 : it->second);
        pos += length;
      }
      words_.push_back(std::move(entry));
    }
  }

  int32_t PieceId(const std::string& piece) {
    const auto [it, inserted] = piece_ids_.emplace(piece, static_cast<int32_t>(pieces_.size()));
    if (inserted) pieces_.push_back(piece);
    return it->second;
  }

  void AddPairs(int32_t word_index, int64_t sign, std::vector<uint64_t>* touched) {
    const Word& word = words_[word_index];
    for (size_t i = 0; i + 1 < word.symbols.size(); ++i) {
      const int32_t left = word.symbols[i];
      const int32_t right = word.symbols[i + 1];
      if (left < 0 || right < 0) continue;
      const uint64_t key = Key(left, right);
      if (banned_.count(key) != 0) continue;
      pair_counts_[key] += sign * word.count;
      if (sign > 0) where_[key].push_back(word_index);
      touched->push_back(key);
    }
  }

  void CountAllPairs() {
    std::vector<uint64_t> touched;
    for (int32_t w = 0; w < static_cast<int32_t>(words_.size()); ++w) AddPairs(w, +1, &touched);
    PushTouched(&touched);
  }

  void PushTouched(std::vector<uint64_t>* touched) {
    std::sort(touched->begin(), touched->end());
    touched->erase(std::unique(touched->begin(), touched->end()), touched->end());
    for (const uint64_t key : *touched) {
      const auto it = pair_counts_.find(key);
      if (it == pair_counts_.end()) continue;
      if (it->second <= 0) {
        pair_counts_.erase(it);
        continue;
      }
      heap_.push({it->second, static_cast<int32_t>(key >> 32), static_cast<int32_t>(key & 0xFFFFFFFF)});
    }
    touched->clear();
  }

  void ApplyMerge(uint64_t key, int32_t left, int32_t right, int32_t merged_id) {
    std::vector<int32_t> word_list = std::move(where_[key]);
    where_.erase(key);
    std::sort(word_list.begin(), word_list.end());
    word_list.erase(std::unique(word_list.begin(), word_list.end()), word_list.end());
    std::vector<uint64_t> touched;
    for (const int32_t w : word_list) {
      Word& word = words_[w];
      bool present = false;
      for (size_t i = 0; i + 1 < word.symbols.size() && !present; ++i) {
        present = word.symbols[i] == left && word.symbols[i + 1] == right;
      }
      if (!present) continue;
      AddPairs(w, -1, &touched);
      std::vector<int32_t> merged;
      merged.reserve(word.symbols.size());
      for (size_t i = 0; i < word.symbols.size(); ++i) {
        if (i + 1 < word.symbols.size() && word.symbols[i] == left && word.symbols[i + 1] == right) {
          merged.push_back(merged_id);
          ++i;
        } else {
          merged.push_back(word.symbols[i]);
        }
      }
      word.symbols = std::move(merged);
      AddPairs(w, +1, &touched);
    }
    PushTouched(&touched);
  }

  int32_t budget_;
  std::unordered_set<std::string> reserved_names_;
  std::vector<std::pair<std::string, int64_t>> word_texts_;
  std::vector<Word> words_;
  std::vector<std::string> pieces_;
  std::unordered_map<std::string, int32_t> piece_ids_;
  std::vector<std::pair<int32_t, int32_t>> merges_;
  std::unordered_map<uint64_t, int64_t> pair_counts_;
  std::unordered_map<uint64_t, std::vector<int32_t>> where_;
  std::unordered_set<uint64_t> banned_;
  std::priority_queue<HeapEntry, std::vector<HeapEntry>, HeapOrder> heap_{HeapOrder{&pieces_}};
};

}  // namespace

std::string TrainByteFallbackBpeJson(std::string_view text, int32_t vocab_size) {
  if (vocab_size < kFirstPieceId + 1 || vocab_size > kMaxVocabSize) {
    throw Error("TrainByteFallbackBpeJson: vocab_size " + std::to_string(vocab_size) +
                " is out of range; it must be between " + std::to_string(kFirstPieceId + 1) +
                " (special, byte and \"▁\" tokens) and " + std::to_string(kMaxVocabSize) + ".");
  }
  std::string repaired;
  if (!tokenizer_internal::IsValidUtf8(text)) {
    repaired = tokenizer_internal::LossyUtf8(text);
    text = repaired;
  }
  Trainer trainer(text, vocab_size);
  trainer.Run();
  return trainer.ToJson(vocab_size);
}

std::string TokenizerConfigJson() {
  OrderedJson decoder = OrderedJson::object();
  for (int32_t i = 0; i < kNumSpecial; ++i) {
    decoder[std::to_string(i)] = {{"content", kSpecialTokens[i]},
                                  {"lstrip", false},
                                  {"normalized", false},
                                  {"rstrip", false},
                                  {"single_word", false},
                                  {"special", true}};
  }
  OrderedJson config;
  config["add_bos_token"] = true;
  config["add_eos_token"] = false;
  config["added_tokens_decoder"] = std::move(decoder);
  config["additional_special_tokens"] = OrderedJson::array();
  config["bos_token"] = "<s>";
  config["clean_up_tokenization_spaces"] = false;
  config["eos_token"] = "</s>";
  config["legacy"] = true;
  config["model_max_length"] = 32768;
  config["pad_token"] = nullptr;
  config["sp_model_kwargs"] = OrderedJson::object();
  config["spaces_between_special_tokens"] = false;
  config["tokenizer_class"] = "LlamaTokenizer";
  config["unk_token"] = "<unk>";
  config["use_default_system_prompt"] = false;
  return config.dump(2);
}

}  // namespace epwa
