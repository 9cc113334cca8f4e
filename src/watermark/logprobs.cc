#include "watermark/logprobs.h"

#include <cmath>
#include <cstdint>
#include <fstream>
#include <optional>

#include <simdjson.h>

#include "base/error.h"

namespace epwa::wm {

LogprobsFile ReadLogprobsFile(const std::string& path, int64_t expected_vocab) {
  // simdjson (a Debian library) parses at several GB/s; nlohmann's parser,
  // even in SAX mode, managed ~50 MB/s, below the 100k tokens/s that
  // black-box detection of API logs needs.
  const std::string origin = "the logprobs file '" + path + "'";
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (const auto error = parser.load(path).get(doc); error) {
    Require(error != simdjson::IO_ERROR, "cannot open the logprobs file '" + path + "'");
    throw Error(origin + " is not valid JSON (" + simdjson::error_message(error) + ")");
  }
  simdjson::dom::object root;
  Require(!doc.get_object().get(root), origin + " must hold a JSON object");
  simdjson::dom::object obj = root;
  simdjson::dom::object nested;
  if (!root["logprobs"].get_object().get(nested)) obj = nested;
  std::string_view format;
  Require(!obj["format"].get_string().get(format) && format == "epwa-logprobs-v1",
          origin + " is not an epwa-logprobs-v1 object (run --json --logprobs K writes one)");
  int64_t vocab = 0;
  Require(!obj["vocab_size"].get_int64().get(vocab), origin + ": \"vocab_size\" is missing");
  Require(vocab == expected_vocab,
          origin + " has a vocabulary of " + std::to_string(vocab) + " ids, but the oracle was trained on " +
              std::to_string(expected_vocab) + " (another model or tokenizer?)");
  simdjson::dom::array tokens;
  Require(!obj["tokens"].get_array().get(tokens), origin + ": \"tokens\" must be an array");
  LogprobsFile out;
  out.vocab_size = vocab;
  out.tokens.reserve(tokens.size());
  size_t i = 0;
  for (simdjson::dom::element e : tokens) {
    const std::string where = origin + ": token " + std::to_string(i++);
    simdjson::dom::array ids, lps;
    int64_t id = -1;
    Require(!e["id"].get_int64().get(id) && !e["top_ids"].get_array().get(ids) &&
                !e["top_logprobs"].get_array().get(lps) && ids.size() == lps.size(),
            where + " needs \"id\" and equally long \"top_ids\" and \"top_logprobs\" arrays");
    Require(id >= 0 && id < vocab, where + ": id " + std::to_string(id) + " is outside the vocabulary");
    LogprobsEntry entry;
    entry.id = static_cast<int32_t>(id);
    entry.top.ids.reserve(ids.size());
    entry.top.logprobs.reserve(lps.size());
    for (simdjson::dom::element v : ids) {
      int64_t tid = -1;
      Require(!v.get_int64().get(tid) && tid >= 0 && tid < vocab,
              where + ": top_ids must be ids inside the vocabulary");
      entry.top.ids.push_back(static_cast<int32_t>(tid));
    }
    for (simdjson::dom::element v : lps) {
      double lp = 0;
      Require(!v.get_double().get(lp) && std::isfinite(lp) && lp <= 1e-4,
              where + ": top_logprobs must be finite log-probabilities (<= 0)");
      entry.top.logprobs.push_back(std::min(0.0f, static_cast<float>(lp)));
    }
    out.tokens.push_back(std::move(entry));
  }
  Require(!out.tokens.empty(), origin + " lists no tokens");
  return out;
}

nlohmann::json LogprobsJson(const LogprobsFile& file) {
  nlohmann::json tokens = nlohmann::json::array();
  for (const LogprobsEntry& e : file.tokens)
    tokens.push_back({{"id", e.id}, {"top_ids", e.top.ids}, {"top_logprobs", e.top.logprobs}});
  return {{"format", "epwa-logprobs-v1"}, {"vocab_size", file.vocab_size}, {"tokens", std::move(tokens)}};
}

}  // namespace epwa::wm
