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
//
// Reading streams: the file's bytes are held once, parsed with simdjson's
// On-Demand API (no DOM, no per-entry vectors), and each entry is handed to
// a callback in a buffer that is reused, so a detector scores an API log of
// millions of tokens in about the file's size plus simdjson's structural
// index. Measured on a 1.25 GB file (2.4 M tokens, k = 20): peak RSS 2.3 GB
// and 10 s, where the DOM reader that kept every entry needed 4.5 GB and 15 s.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
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

// What a scan saw.
struct LogprobsScan {
  int64_t vocab_size = 0;
  int64_t tokens = 0;      // entries visited
  int64_t max_listed = 0;  // longest top_ids list
  int64_t min_listed = 0;  // shortest top_ids list
  double read_ms = 0;      // reading the bytes (ScanLogprobsFile only)
};

// Called once per entry in file order: `index` counts from 0, `where` names
// the entry for messages ("the logprobs file 'x': token 7"; built only when
// called). The entry is reused between calls.
using LogprobsVisitor =
    std::function<void(int64_t index, const LogprobsEntry& entry, const std::function<std::string()>& where)>;

// Reads the file `path` (a regular file of at most kMaxLogprobsFileBytes,
// opened without blocking) and visits every entry. Throws epwa::Error naming
// the file and the entry for anything malformed, when the file's vocabulary
// differs from `expected_vocab`, when it lists no tokens, and when no entry
// lists any log-probability (nothing to predict an expert from).
LogprobsScan ScanLogprobsFile(const std::string& path, int64_t expected_vocab, const LogprobsVisitor& visit);
// The same on a file's bytes; `origin` names them in messages.
LogprobsScan ScanLogprobsBytes(std::string_view bytes, const std::string& origin, int64_t expected_vocab,
                               const LogprobsVisitor& visit);

// One listed log-probability as the oracle stores it, or nothing when `lp` is
// not one (infinite, NaN, or above 1e-4: a probability above 1 past rounding).
// Stored as float: a finite double below float's range (-1e50, a
// "probability 0") would become -inf, which the oracle refuses, and the
// conversion itself is undefined. Every value below -1e30 means the same to
// the oracle, which floors log-probabilities at -30. Both readers (the file
// and the server's OpenAI-format body) go through it.
std::optional<float> StoredLogprob(double lp);

// The per-token log-probabilities of an OpenAI-format response, as a
// server's detection endpoint receives them: either the response's
// "logprobs" object ({"content": [...]}) or its content array, each entry
// {"id": token, "top_logprobs": [{"id": token, "logprob": lp}, ...]} (epwa's
// responses carry the ids; other fields, such as "token" and "bytes", are
// ignored). The same rules as the file reader: every id an integer inside
// [0, vocab_size), judged before any narrowing (2^32 + 5 is not id 5); every
// logprob as StoredLogprob takes it; at least one entry; and some top-k
// somewhere, since with none the oracle has nothing to predict from. Throws
// epwa::Error saying what is wrong and in which entry.
LogprobsFile LogprobsFromOpenAi(const nlohmann::json& logprobs, int64_t vocab_size);

// The whole file in memory (for small files and tests).
LogprobsFile ReadLogprobsFile(const std::string& path, int64_t expected_vocab);
nlohmann::json LogprobsJson(const LogprobsFile& file);

}  // namespace epwa::wm
