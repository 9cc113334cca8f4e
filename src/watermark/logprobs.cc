#include "watermark/logprobs.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "base/error.h"

namespace epwa::wm {

LogprobsFile ParseLogprobs(const nlohmann::json& root, const std::string& origin, int64_t expected_vocab) {
  const nlohmann::json& j = root.is_object() && root.contains("logprobs") ? root["logprobs"] : root;
  Require(j.is_object() && j.value("format", "") == "epwa-logprobs-v1",
          origin + " is not an epwa-logprobs-v1 object (run --json --logprobs K writes one)");
  LogprobsFile out;
  Require(j.contains("vocab_size") && j["vocab_size"].is_number_integer(),
          origin + ": \"vocab_size\" is missing");
  out.vocab_size = j["vocab_size"].get<int64_t>();
  Require(out.vocab_size == expected_vocab,
          origin + " has a vocabulary of " + std::to_string(out.vocab_size) + " ids, but the oracle was trained on " +
              std::to_string(expected_vocab) + " (another model or tokenizer?)");
  Require(j.contains("tokens") && j["tokens"].is_array(), origin + ": \"tokens\" must be an array");
  out.tokens.reserve(j["tokens"].size());
  for (size_t i = 0; i < j["tokens"].size(); ++i) {
    const nlohmann::json& e = j["tokens"][i];
    const std::string where = origin + ": token " + std::to_string(i);
    Require(e.is_object() && e.contains("id") && e["id"].is_number_integer() && e.contains("top_ids") &&
                e["top_ids"].is_array() && e.contains("top_logprobs") && e["top_logprobs"].is_array() &&
                e["top_ids"].size() == e["top_logprobs"].size(),
            where + " needs \"id\" and equally long \"top_ids\" and \"top_logprobs\" arrays");
    LogprobsEntry entry;
    const int64_t id = e["id"].get<int64_t>();
    Require(id >= 0 && id < out.vocab_size, where + ": id " + std::to_string(id) + " is outside the vocabulary");
    entry.id = static_cast<int32_t>(id);
    for (size_t k = 0; k < e["top_ids"].size(); ++k) {
      const nlohmann::json& tid = e["top_ids"][k];
      const nlohmann::json& lp = e["top_logprobs"][k];
      Require(tid.is_number_integer() && tid.get<int64_t>() >= 0 && tid.get<int64_t>() < out.vocab_size,
              where + ": top_ids must be ids inside the vocabulary");
      Require(lp.is_number() && std::isfinite(lp.get<double>()) && lp.get<double>() <= 1e-4,
              where + ": top_logprobs must be finite log-probabilities (<= 0)");
      entry.top.ids.push_back(tid.get<int32_t>());
      entry.top.logprobs.push_back(std::min(0.0f, lp.get<float>()));
    }
    out.tokens.push_back(std::move(entry));
  }
  Require(!out.tokens.empty(), origin + " lists no tokens");
  return out;
}

LogprobsFile ReadLogprobsFile(const std::string& path, int64_t expected_vocab) {
  std::ifstream in(path, std::ios::binary);
  Require(in.good(), "cannot open the logprobs file '" + path + "'");
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  Require(!j.is_discarded(), "the logprobs file '" + path + "' is not valid JSON");
  return ParseLogprobs(j, "the logprobs file '" + path + "'", expected_vocab);
}

nlohmann::json LogprobsJson(const LogprobsFile& file) {
  nlohmann::json tokens = nlohmann::json::array();
  for (const LogprobsEntry& e : file.tokens)
    tokens.push_back({{"id", e.id}, {"top_ids", e.top.ids}, {"top_logprobs", e.top.logprobs}});
  return {{"format", "epwa-logprobs-v1"}, {"vocab_size", file.vocab_size}, {"tokens", std::move(tokens)}};
}

}  // namespace epwa::wm
