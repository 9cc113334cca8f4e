#include "watermark/logprobs.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>

#include <simdjson.h>

#include "base/error.h"
#include "base/file_read.h"
#include "base/timer.h"

namespace epwa::wm {
namespace {

namespace od = simdjson::ondemand;

// simdjson (a Debian library) parses at several GB/s; nlohmann's parser,
// even in SAX mode, managed ~50 MB/s, below the 100k tokens/s that
// black-box detection of API logs needs. On-Demand (rather than the DOM)
// keeps memory at the file plus the structural index: values are decoded
// straight into one reused entry.
//
// On-Demand checks what it reads (every field of the format below, and
// that nothing follows the root value); it does not fully validate values
// of fields the format does not use, which are skipped by structure only.
LogprobsScan Scan(simdjson::padded_string_view json, const std::string& origin, int64_t expected_vocab,
                  const LogprobsVisitor& visit) {
  auto bad_json = [&](simdjson::error_code e) {
    return Error(origin + " is not valid JSON (" + simdjson::error_message(e) + ")");
  };
  od::parser parser(kMaxLogprobsFileBytes);
  od::document doc;
  if (const auto e = parser.iterate(json).get(doc)) throw bad_json(e);
  od::object root;
  if (const auto e = doc.get_object().get(root)) {
    if (e == simdjson::INCORRECT_TYPE) throw Error(origin + " must hold a JSON object");
    throw bad_json(e);
  }
  // The format object is the root itself or its "logprobs" member (what
  // run --json writes). Looking up "logprobs" first and rewinding keeps
  // the key order free, as in any JSON object.
  od::object obj = root;
  {
    od::value nested;
    const auto e = root.find_field_unordered("logprobs").get(nested);
    if (!e) {
      od::object o;
      if (!nested.get_object().get(o)) obj = o;
    } else if (e != simdjson::NO_SUCH_FIELD) {
      throw bad_json(e);
    }
  }
  std::string_view format;
  {
    const auto e = obj.find_field_unordered("format").get_string().get(format);
    if (e && e != simdjson::NO_SUCH_FIELD && e != simdjson::INCORRECT_TYPE) throw bad_json(e);
    Require(!e && format == "epwa-logprobs-v1",
            origin + " is not an epwa-logprobs-v1 object (run --json --logprobs K writes one)");
  }
  int64_t vocab = 0;
  {
    const auto e = obj.find_field_unordered("vocab_size").get_int64().get(vocab);
    if (e && e != simdjson::NO_SUCH_FIELD && e != simdjson::INCORRECT_TYPE &&
        e != simdjson::NUMBER_OUT_OF_RANGE && e != simdjson::NUMBER_ERROR)
      throw bad_json(e);
    Require(!e, origin + ": \"vocab_size\" is missing or not an integer");
  }
  Require(vocab == expected_vocab,
          origin + " has a vocabulary of " + std::to_string(vocab) + " ids, but the oracle was trained on " +
              std::to_string(expected_vocab) + " (another model or tokenizer?)");
  od::array tokens;
  {
    const auto e = obj.find_field_unordered("tokens").get_array().get(tokens);
    if (e && e != simdjson::NO_SUCH_FIELD && e != simdjson::INCORRECT_TYPE) throw bad_json(e);
    Require(!e, origin + ": \"tokens\" must be an array");
  }

  LogprobsScan scan;
  scan.vocab_size = vocab;
  scan.min_listed = INT64_MAX;
  LogprobsEntry entry;  // reused: no allocation per entry once it has grown
  int64_t i = 0;
  std::function<std::string()> where = [&] { return origin + ": token " + std::to_string(i); };
  auto check = [&](simdjson::error_code e, const char* problem) {
    if (!e) return;
    // Structural damage is a JSON error; a value of the wrong type or range
    // is the format's error, named by `problem`.
    if (e == simdjson::INCORRECT_TYPE || e == simdjson::NO_SUCH_FIELD ||
        e == simdjson::NUMBER_OUT_OF_RANGE || e == simdjson::NUMBER_ERROR)
      throw Error(where() + problem);
    throw Error(where() + ": not valid JSON (" + simdjson::error_message(e) + ")");
  };
  // Messages in this loop are built only on failure (if/throw rather than
  // Require, which takes a built string): it runs once per listed value.
  for (auto element : tokens) {
    od::object e_obj;
    if (const auto e = element.get_object().get(e_obj)) {
      if (e == simdjson::INCORRECT_TYPE) throw Error(where() + " must be an object");
      throw bad_json(e);
    }
    // One pass over the entry's fields in whatever order they come (a
    // lookup per field would rewind the object three times per token).
    entry.top.ids.clear();
    entry.top.logprobs.clear();
    bool have_id = false, have_ids = false, have_lps = false;
    for (auto field : e_obj) {
      std::string_view key;
      if (const auto e = field.unescaped_key().get(key)) throw bad_json(e);
      if (key == "id") {
        if (have_id) throw Error(where() + " lists \"id\" twice");
        have_id = true;
        int64_t id = -1;
        check(field.value().get_int64().get(id), " needs an integer \"id\"");
        if (id < 0 || id >= vocab)
          throw Error(where() + ": id " + std::to_string(id) + " is outside the vocabulary");
        entry.id = static_cast<int32_t>(id);
      } else if (key == "top_ids") {
        if (have_ids) throw Error(where() + " lists \"top_ids\" twice");
        have_ids = true;
        od::array ids;
        check(field.value().get_array().get(ids),
              " needs \"id\" and equally long \"top_ids\" and \"top_logprobs\" arrays");
        for (auto v : ids) {
          int64_t tid = -1;
          check(v.get_int64().get(tid), ": top_ids must be ids inside the vocabulary");
          if (tid < 0 || tid >= vocab) throw Error(where() + ": top_ids must be ids inside the vocabulary");
          entry.top.ids.push_back(static_cast<int32_t>(tid));
        }
      } else if (key == "top_logprobs") {
        if (have_lps) throw Error(where() + " lists \"top_logprobs\" twice");
        have_lps = true;
        od::array lps;
        check(field.value().get_array().get(lps),
              " needs \"id\" and equally long \"top_ids\" and \"top_logprobs\" arrays");
        for (auto v : lps) {
          double lp = 0;
          check(v.get_double().get(lp), ": top_logprobs must be finite log-probabilities (<= 0)");
          const std::optional<float> stored = StoredLogprob(lp);
          if (!stored) throw Error(where() + ": top_logprobs must be finite log-probabilities (<= 0)");
          entry.top.logprobs.push_back(*stored);
        }
      }
      // Other fields (an API's "token" text, "bytes", ...) are skipped.
    }
    if (!have_id) throw Error(where() + " needs an integer \"id\"");
    if (!have_ids || !have_lps || entry.top.ids.size() != entry.top.logprobs.size())
      throw Error(where() + " needs \"id\" and equally long \"top_ids\" and \"top_logprobs\" arrays");
    const int64_t listed = static_cast<int64_t>(entry.top.ids.size());
    scan.max_listed = std::max(scan.max_listed, listed);
    scan.min_listed = std::min(scan.min_listed, listed);
    visit(i, entry, where);
    ++i;
  }
  // Walk the root object to its end (skipping the fields not used), so that
  // structural damage after the tokens and anything after the root object
  // is seen: On-Demand only notices what it walks over.
  {
    bool has_fields = false;
    if (const auto e = root.reset().get(has_fields)) throw bad_json(e);
    for (auto field : root)
      if (const auto e = field.error()) throw bad_json(e);
  }
  // current_location() fails with OUT_OF_BOUNDS exactly when nothing is left.
  const char* rest = nullptr;
  Require(doc.current_location().get(rest) != simdjson::SUCCESS,
          origin + " is not valid JSON (something follows its root object)");
  scan.tokens = i;
  Require(scan.tokens > 0, origin + " lists no tokens");
  // Entries may list fewer log-probabilities than the oracle uses (an API's
  // k, masked tokens), but a file that lists none at all gives the oracle
  // nothing to predict from: every "prediction" would be its constant guess.
  Require(scan.max_listed > 0, origin + " lists no log-probabilities at all (every top_ids list is "
                                        "empty): PEPI needs the top-k of each token "
                                        "(run --json --logprobs K writes them)");
  return scan;
}

}  // namespace

std::optional<float> StoredLogprob(double lp) {
  if (!(std::isfinite(lp) && lp <= 1e-4)) return std::nullopt;
  return static_cast<float>(std::clamp(lp, -1e30, 0.0));
}

LogprobsFile LogprobsFromOpenAi(const nlohmann::json& logprobs, int64_t vocab_size) {
  using nlohmann::json;
  const json& content =
      logprobs.is_object() && logprobs.contains("content") ? logprobs["content"] : logprobs;
  Require(content.is_array() && !content.empty(), "'logprobs' must hold a non-empty content array");
  // An integer id inside the vocabulary. get<int64_t>() of an unsigned value
  // above INT64_MAX is negative, so it is refused with the rest.
  auto id_of = [&](const json& v) -> std::optional<int32_t> {
    if (!v.is_number_integer()) return std::nullopt;
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id >= vocab_size) return std::nullopt;
    return static_cast<int32_t>(id);
  };
  LogprobsFile file;
  file.vocab_size = vocab_size;
  bool listed_any = false;
  // Messages are built only on the way out (if/throw, not Require, whose
  // message would be built for every entry).
  const std::string vocab_text = "(vocab_size " + std::to_string(vocab_size) + ")";
  for (size_t i = 0; i < content.size(); ++i) {
    const json& e = content[i];
    auto where = [i] { return "logprobs entry " + std::to_string(i); };
    if (!(e.is_object() && e.contains("id") && e["id"].is_number_integer() && e.contains("top_logprobs") &&
          e["top_logprobs"].is_array()))
      throw Error(where() + " needs an integer 'id' and a 'top_logprobs' array (epwa's responses include ids)");
    LogprobsEntry entry;
    const std::optional<int32_t> id = id_of(e["id"]);
    if (!id) throw Error(where() + ": its id " + e["id"].dump() + " is outside the vocabulary " + vocab_text);
    entry.id = *id;
    for (const json& t : e["top_logprobs"]) {
      if (!(t.is_object() && t.contains("id") && t["id"].is_number_integer() && t.contains("logprob") &&
            t["logprob"].is_number()))
        throw Error(where() + ": every top_logprobs entry needs an integer 'id' and a numeric 'logprob'");
      const std::optional<int32_t> tid = id_of(t["id"]);
      if (!tid) throw Error(where() + ": top_logprobs id " + t["id"].dump() + " is outside the vocabulary " + vocab_text);
      const std::optional<float> logprob = StoredLogprob(t["logprob"].get<double>());
      if (!logprob)
        throw Error(where() + ": 'logprob' " + t["logprob"].dump() + " is not a finite log-probability (<= 0)");
      entry.top.ids.push_back(*tid);
      entry.top.logprobs.push_back(*logprob);
    }
    listed_any = listed_any || !entry.top.ids.empty();
    file.tokens.push_back(std::move(entry));
  }
  Require(listed_any, "'logprobs' lists no top_logprobs at all: PEPI needs the top-k of each token");
  return file;
}

LogprobsScan ScanLogprobsFile(const std::string& path, int64_t expected_vocab, const LogprobsVisitor& visit) {
  const std::string origin = "the logprobs file '" + path + "'";
  Stopwatch clock;
  // Read straight into simdjson's padded buffer: the file is held once.
  // OpenRegularFile refuses FIFOs (without blocking), folders and devices,
  // and files over the limit, before anything is allocated.
  const int fd = OpenRegularFile(path, kMaxLogprobsFileBytes, "the logprobs file");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error("cannot read " + origin + ": " + std::strerror(err));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  simdjson::padded_string buffer(size);
  if (buffer.data() == nullptr) {
    ::close(fd);
    throw Error("out of memory reading " + origin + " (" + std::to_string(size) + " bytes)");
  }
  size_t have = 0;
  while (have < size) {
    const ssize_t n = ::read(fd, buffer.data() + have, size - have);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      throw Error("reading " + origin + " failed: " + std::strerror(err));
    }
    if (n == 0) break;
    have += static_cast<size_t>(n);
  }
  char extra = 0;
  const ssize_t more = ::read(fd, &extra, 1);
  ::close(fd);
  Require(have == size && more == 0, origin + " changed size while it was read");
  const double read_ms = clock.Millis();
  LogprobsScan scan = Scan(buffer, origin, expected_vocab, visit);
  scan.read_ms = read_ms;
  return scan;
}

LogprobsScan ScanLogprobsBytes(std::string_view bytes, const std::string& origin, int64_t expected_vocab,
                               const LogprobsVisitor& visit) {
  const simdjson::padded_string buffer(bytes.data(), bytes.size());
  return Scan(buffer, origin, expected_vocab, visit);
}

LogprobsFile ReadLogprobsFile(const std::string& path, int64_t expected_vocab) {
  LogprobsFile out;
  const LogprobsScan scan =
      ScanLogprobsFile(path, expected_vocab, [&](int64_t, const LogprobsEntry& e, const auto&) {
        out.tokens.push_back(e);
      });
  out.vocab_size = scan.vocab_size;
  return out;
}

nlohmann::json LogprobsJson(const LogprobsFile& file) {
  nlohmann::json tokens = nlohmann::json::array();
  for (const LogprobsEntry& e : file.tokens)
    tokens.push_back({{"id", e.id}, {"top_ids", e.top.ids}, {"top_logprobs", e.top.logprobs}});
  return {{"format", "epwa-logprobs-v1"}, {"vocab_size", file.vocab_size}, {"tokens", std::move(tokens)}};
}

}  // namespace epwa::wm
