// Per-token log-probabilities as an API returns them: what black-box PEPI
// detection reads instead of model weights.
//
// Format "epwa-logprobs-v1" (JSON):
//   {"format": "epwa-logprobs-v1", "vocab_size": V,
//    "tokens": [{"id": 123, "top_ids": [5, 123, ...], "top_logprobs": [-0.4, -1.3, ...]}, ...]}
// Entry i describes generated token i: its id and the top-k of the
// distribution it was drawn from (natural-log probabilities, descending).
// `epwa run --json --logprobs K` writes this object under "logprobs"; the
// reader accepts it at the top level or under that key.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "watermark/oracle.h"

namespace epwa::wm {

struct LogprobsEntry {
  int32_t id = 0;
  TopLogprobs top;
};

struct LogprobsFile {
  int64_t vocab_size = 0;
  std::vector<LogprobsEntry> tokens;
};

// Throws epwa::Error naming the file and the entry for anything malformed,
// and when the file's vocabulary differs from `expected_vocab`.
LogprobsFile ReadLogprobsFile(const std::string& path, int64_t expected_vocab);
nlohmann::json LogprobsJson(const LogprobsFile& file);

}  // namespace epwa::wm
