// Fast loading of tokenizer.json.
//
// A tokenizer.json is dominated by model.vocab (tens of thousands of
// "piece": id members) and model.merges. Building a full nlohmann DOM for
// them costs tens of milliseconds, so a SAX handler streams those two
// sections straight into flat vectors and builds an ordinary DOM only for the
// small remaining configuration (normalizer, pre_tokenizer, decoder, ...).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace epwa::tokenizer_internal {

struct TokenizerJsonDocument {
  // The whole document, except that model.vocab (when it is an object) and
  // model.merges (when it is an array) are replaced by empty containers.
  nlohmann::json root;
  bool has_vocab = false;
  // model.vocab members in document order.
  std::vector<std::pair<std::string, int64_t>> vocab;
  bool has_merges = false;
  // model.merges, from either "a b" strings or ["a", "b"] pairs.
  std::vector<std::pair<std::string, std::string>> merges;
};

// Parses `json`. Throws epwa::Error naming `origin` for invalid JSON and for
// vocab or merges entries of the wrong shape.
TokenizerJsonDocument ParseTokenizerJson(std::string_view json, const std::string& origin);

}  // namespace epwa::tokenizer_internal
