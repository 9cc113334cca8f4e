// The logprobs-file reader (black-box PEPI's input): what it accepts, what it
// refuses, and that it names the file and the entry when it refuses.
#include "watermark/logprobs.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/error.h"

namespace epwa::wm {
namespace {

struct Seen {
  std::vector<int32_t> ids;
  std::vector<size_t> listed;
};

LogprobsScan Scan(const std::string& text, Seen* seen = nullptr, int64_t vocab = 16) {
  return ScanLogprobsBytes(text, "the logprobs file 'x.json'", vocab,
                           [&](int64_t i, const LogprobsEntry& e, const auto&) {
                             if (seen == nullptr) return;
                             EXPECT_EQ(i, static_cast<int64_t>(seen->ids.size()));
                             seen->ids.push_back(e.id);
                             seen->listed.push_back(e.top.ids.size());
                           });
}

// The message of the Error that scanning `text` throws ("" if none).
std::string ErrorOf(const std::string& text, int64_t vocab = 16) {
  try {
    Scan(text, nullptr, vocab);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

const std::string kEntry = R"({"id":3,"top_ids":[3,5],"top_logprobs":[-0.1,-2.5]})";

TEST(LogprobsFile, ReadsTheFormatInAnyKeyOrderAndUnderLogprobs) {
  Seen a;
  // nlohmann writes keys sorted: "tokens" before "vocab_size".
  const LogprobsScan s = Scan(R"({"format":"epwa-logprobs-v1","tokens":[)" + kEntry + "," +
                                  R"({"id":7,"top_ids":[],"top_logprobs":[]}],"vocab_size":16})",
                              &a);
  EXPECT_EQ(s.tokens, 2);
  EXPECT_EQ(s.vocab_size, 16);
  EXPECT_EQ(s.max_listed, 2);
  EXPECT_EQ(s.min_listed, 0);
  EXPECT_EQ(a.ids, (std::vector<int32_t>{3, 7}));
  EXPECT_EQ(a.listed, (std::vector<size_t>{2, 0}));
  // run --json output: the object under "logprobs", among other fields.
  Seen b;
  Scan(R"({"ids":[1,2],"logprobs":{"vocab_size":16,"tokens":[)" + kEntry +
           R"(],"format":"epwa-logprobs-v1"},"text":"hi"})",
       &b);
  EXPECT_EQ(b.ids, (std::vector<int32_t>{3}));
}

TEST(LogprobsFile, RefusesMalformedFilesNamingTheFileAndEntry) {
  const std::string head = R"({"format":"epwa-logprobs-v1","vocab_size":16,"tokens":[)";
  struct Case {
    std::string text, needle;
  };
  const std::vector<Case> cases = {
      {"", "not valid JSON"},
      {"[1,2]", "must hold a JSON object"},
      {head + kEntry, "not valid JSON"},                     // truncated
      {head + kEntry + "]}}", "not valid JSON"},             // extra brace
      {head + kEntry + "]} trailing", "not valid JSON"},     // garbage after the root
      {head + kEntry + "]} {}", "not valid JSON"},           // a second document
      {R"({"format":"other","vocab_size":16,"tokens":[]})", "not an epwa-logprobs-v1"},
      {R"({"format":"epwa-logprobs-v1","tokens":[]})", "vocab_size"},
      {R"({"format":"epwa-logprobs-v1","vocab_size":"16","tokens":[]})", "vocab_size"},
      {R"({"format":"epwa-logprobs-v1","vocab_size":32,"tokens":[]})", "vocabulary of 32"},
      {R"({"format":"epwa-logprobs-v1","vocab_size":16,"tokens":{}})", "\"tokens\" must be an array"},
      {head + "]}", "lists no tokens"},
      {head + "5]}", "token 0 must be an object"},
      {head + R"({"id":16,"top_ids":[1],"top_logprobs":[-1]}]})", "token 0: id 16 is outside"},
      {head + R"({"id":-1,"top_ids":[1],"top_logprobs":[-1]}]})", "token 0: id -1 is outside"},
      {head + R"({"id":1.5,"top_ids":[1],"top_logprobs":[-1]}]})", "token 0 needs an integer"},
      {head + kEntry + R"(,{"id":1,"top_ids":[1,2],"top_logprobs":[-1]}]})", "token 1 needs"},
      {head + R"({"id":1,"top_ids":[99],"top_logprobs":[-1]}]})", "top_ids must be ids inside"},
      {head + R"({"id":1,"top_ids":[1],"top_logprobs":[0.5]}]})", "finite log-probabilities"},
      {head + R"({"id":1,"top_ids":[1],"top_logprobs":["x"]}]})", "finite log-probabilities"},
      {head + R"({"id":1,"top_ids":[1],"top_logprobs":[1e999]}]})", "token 0"},
      // Hostile-input sweep F16: lists that are all empty give the oracle
      // nothing to predict from; they used to be scored anyway.
      {head + R"({"id":1,"top_ids":[],"top_logprobs":[]},{"id":2,"top_ids":[],"top_logprobs":[]}]})",
       "lists no log-probabilities at all"},
  };
  for (const Case& c : cases) {
    const std::string msg = ErrorOf(c.text);
    EXPECT_NE(msg.find(c.needle), std::string::npos) << c.text << "\n -> " << msg;
    EXPECT_NE(msg.find("'x.json'"), std::string::npos) << c.text << "\n -> " << msg;
  }
}

// Found by fuzz/logprobs_fuzz: a finite logprob below float's range (-7e50)
// became -inf when stored as float, so a valid file failed later in the
// oracle. Such values are read as a very small finite logprob.
TEST(LogprobsFile, LogprobsBelowFloatRangeStayFinite) {
  std::vector<float> got;
  ScanLogprobsBytes(R"({"format":"epwa-logprobs-v1","vocab_size":16,"tokens":[)"
                    R"({"id":1,"top_ids":[1,2,3],"top_logprobs":[1e-5,-7e50,-1e300]}]})",
                    "x", 16, [&](int64_t, const LogprobsEntry& e, const auto&) { got = e.top.logprobs; });
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0], 0.0f);  // rounding noise above 0 is read as 0
  EXPECT_EQ(got[1], -1e30f);
  EXPECT_EQ(got[2], -1e30f);
}

TEST(LogprobsFile, FilesThatAreNotRegularFilesAreRefused) {
  EXPECT_THROW(ScanLogprobsFile("/dev/zero", 16, [](int64_t, const LogprobsEntry&, const auto&) {}), Error);
  EXPECT_THROW(ScanLogprobsFile("/", 16, [](int64_t, const LogprobsEntry&, const auto&) {}), Error);
  EXPECT_THROW(ScanLogprobsFile("/nonexistent/x.json", 16, [](int64_t, const LogprobsEntry&, const auto&) {}),
               Error);
}

// An OpenAI-format response's logprobs, as the server's detection endpoint
// receives them.
const char* const kOpenAi = R"({"content": [
  {"token": "a", "id": 3, "logprob": -0.1, "bytes": [97],
   "top_logprobs": [{"token": "a", "id": 3, "logprob": -0.1}, {"id": 5, "logprob": -2.5}]},
  {"id": 7, "top_logprobs": []}]})";

// The message of the Error that LogprobsFromOpenAi throws ("" if none).
std::string OpenAiErrorOf(const nlohmann::json& logprobs) {
  try {
    LogprobsFromOpenAi(logprobs, 16);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(LogprobsOpenAi, ReadsTheResponseObjectOrItsContentArray) {
  const nlohmann::json response = nlohmann::json::parse(kOpenAi);
  for (const nlohmann::json& given : {response, response["content"]}) {
    const LogprobsFile file = LogprobsFromOpenAi(given, 16);
    EXPECT_EQ(file.vocab_size, 16);
    ASSERT_EQ(file.tokens.size(), 2u);
    EXPECT_EQ(file.tokens[0].id, 3);
    EXPECT_EQ(file.tokens[0].top.ids, (std::vector<int32_t>{3, 5}));
    EXPECT_EQ(file.tokens[0].top.logprobs, (std::vector<float>{-0.1f, -2.5f}));
    EXPECT_EQ(file.tokens[1].id, 7);
    EXPECT_TRUE(file.tokens[1].top.ids.empty());
  }
  // The same tokens written as an epwa-logprobs-v1 file read the same.
  const std::string as_file =
      R"({"format":"epwa-logprobs-v1","vocab_size":16,"tokens":[{"id":3,"top_ids":[3,5],"top_logprobs":[-0.1,-2.5]},)"
      R"({"id":7,"top_ids":[],"top_logprobs":[]}]})";
  std::vector<LogprobsEntry> from_file;
  ScanLogprobsBytes(as_file, "x", 16, [&](int64_t, const LogprobsEntry& e, const auto&) { from_file.push_back(e); });
  const LogprobsFile from_api = LogprobsFromOpenAi(response, 16);
  ASSERT_EQ(from_file.size(), from_api.tokens.size());
  for (size_t i = 0; i < from_file.size(); ++i) {
    EXPECT_EQ(from_file[i].id, from_api.tokens[i].id);
    EXPECT_EQ(from_file[i].top.ids, from_api.tokens[i].top.ids);
    EXPECT_EQ(from_file[i].top.logprobs, from_api.tokens[i].top.logprobs);
  }
}

// Ids are judged before narrowing: 2^32 + 3 was once read as id 3 by the
// server; 2^64 - 1 (unsigned in nlohmann) and -1 are refused too. A logprob
// of 1e300 was converted to float (undefined); above 0 is no log-probability.
TEST(LogprobsOpenAi, RefusesWhatTheFileReaderRefuses) {
  const nlohmann::json good = nlohmann::json::parse(kOpenAi);
  auto changed = [&](const std::function<void(nlohmann::json&)>& change) {
    nlohmann::json j = good;
    change(j);
    return OpenAiErrorOf(j);
  };
  for (const nlohmann::json& big : {nlohmann::json(uint64_t{1} << 32 | 3), nlohmann::json(UINT64_MAX),
                                   nlohmann::json(-1), nlohmann::json(16)}) {
    EXPECT_NE(changed([&](nlohmann::json& j) { j["content"][0]["id"] = big; }).find("entry 0: its id"),
              std::string::npos)
        << big;
    EXPECT_NE(changed([&](nlohmann::json& j) { j["content"][0]["top_logprobs"][1]["id"] = big; })
                  .find("entry 0: top_logprobs id"),
              std::string::npos)
        << big;
  }
  for (const double bad : {1e300, 0.5}) {
    EXPECT_NE(changed([&](nlohmann::json& j) { j["content"][0]["top_logprobs"][1]["logprob"] = bad; })
                  .find("is not a finite log-probability"),
              std::string::npos)
        << bad;
  }
  // Far below float's range is probability 0, kept finite as in a file.
  nlohmann::json tiny = good;
  tiny["content"][0]["top_logprobs"][1]["logprob"] = -1e300;
  EXPECT_EQ(LogprobsFromOpenAi(tiny, 16).tokens[0].top.logprobs[1], -1e30f);
  EXPECT_NE(changed([](nlohmann::json& j) { j["content"][0]["top_logprobs"] = nlohmann::json::array(); })
                .find("lists no top_logprobs at all"),
            std::string::npos);
  EXPECT_NE(changed([](nlohmann::json& j) { j["content"][1]["id"] = 2.0; }).find("entry 1 needs an integer 'id'"),
            std::string::npos);
  EXPECT_NE(changed([](nlohmann::json& j) { j["content"][1].erase("top_logprobs"); }).find("entry 1 needs"),
            std::string::npos);
  EXPECT_NE(changed([](nlohmann::json& j) { j["content"][0]["top_logprobs"][0] = 3; })
                .find("every top_logprobs entry needs"),
            std::string::npos);
  EXPECT_NE(changed([](nlohmann::json& j) { j["content"][0]["top_logprobs"][0]["logprob"] = "-1"; })
                .find("every top_logprobs entry needs"),
            std::string::npos);
  for (const char* not_content : {R"({"content": []})", "[]", R"({"content": 3})", "null", R"("text")"})
    EXPECT_NE(OpenAiErrorOf(nlohmann::json::parse(not_content)).find("non-empty content array"), std::string::npos)
        << not_content;
}

}  // namespace
}  // namespace epwa::wm
