// `epwa chat` and `run --messages` on the bundled tiny-qwen3-moe (a ChatML
// template): multi-turn conversations over a pipe, the commands, the
// agreement of a chat turn with the same conversation given to run
// --messages, a watermarked reply that detection finds, and clean errors.
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_util.h"

namespace epwa {
namespace {

const std::string kModel = "models/tiny-qwen3-moe";

nlohmann::json ReadJson(const std::string& path) { return nlohmann::json::parse(testing::ReadFile(path)); }

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

class ChatCli : public ::testing::Test {
 protected:
  void SetUp() override { setenv("EPWA_CACHE_DIR", (dir_.path() + "/cache").c_str(), 1); }
  testing::TempDir dir_;
};

// Two turns at temperature 0: the transcript holds both exchanges, stdout
// holds the two replies, and each reply is what run --messages generates for
// the conversation up to that turn (the chat re-renders the whole history
// with the template every turn).
TEST_F(ChatCli, TurnsAgreeWithRunMessages) {
  const std::string transcript = dir_.path() + "/chat.json";
  Result chat = RunEpwaWithInput("chat -m " + kModel + " --temp 0 -n 24 --transcript " + transcript,
                                 "What is a hacker?\nAnd a wizard?\n", dir_);
  ASSERT_EQ(chat.exit_code, 0) << chat.err;
  const nlohmann::json messages = ReadJson(transcript);
  ASSERT_EQ(messages.size(), 4u) << messages.dump(1);
  EXPECT_EQ(messages[0]["role"], "user");
  EXPECT_EQ(messages[0]["content"], "What is a hacker?");
  EXPECT_EQ(messages[1]["role"], "assistant");
  EXPECT_EQ(messages[2]["content"], "And a wizard?");
  EXPECT_EQ(messages[3]["role"], "assistant");
  EXPECT_EQ(chat.out, messages[1]["content"].get<std::string>() + "\n" +
                          messages[3]["content"].get<std::string>() + "\n");
  for (size_t turn : {1u, 3u}) {
    SCOPED_TRACE("turn " + std::to_string(turn));
    nlohmann::json upto = nlohmann::json::array();
    for (size_t i = 0; i < turn; ++i) upto.push_back(messages[i]);
    const std::string file = dir_.path() + "/upto.json";
    WriteText(file, upto.dump());
    Result run = RunEpwa("run -m " + kModel + " --temp 0 -n 24 --json --messages " + file, dir_);
    ASSERT_EQ(run.exit_code, 0) << run.err;
    const nlohmann::json out = nlohmann::json::parse(run.out);
    EXPECT_EQ(out["text"], messages[turn]["content"]);
    // The prompt is the template's rendering: ChatML turns and an open
    // assistant turn.
    const std::string prompt = out["prompt"];
    EXPECT_EQ(prompt.rfind("<|im_start|>user\nWhat is a hacker?<|im_end|>\n", 0), 0u) << prompt;
    EXPECT_EQ(prompt.substr(prompt.size() - 22), "<|im_start|>assistant\n") << prompt;
  }
}

// /reset forgets the conversation: the same question after it gets the same
// greedy answer as the first time. /system sets the system message (and
// starts over); /save writes the conversation; unknown-looking text is a
// message like any other.
TEST_F(ChatCli, Commands) {
  const std::string saved = dir_.path() + "/saved.json", transcript = dir_.path() + "/end.json";
  Result chat = RunEpwaWithInput("chat -m " + kModel + " --temp 0 -n 12 --transcript " + transcript,
                                 "Hello\n/reset\nHello\n/save " + saved +
                                     "\n/system You are terse.\nHi\n\n/save /nonexistent-dir/x.json\n/exit\nnot read\n",
                                 dir_);
  ASSERT_EQ(chat.exit_code, 0) << chat.err;
  const nlohmann::json at_save = ReadJson(saved);
  ASSERT_EQ(at_save.size(), 2u);
  EXPECT_EQ(at_save[0]["content"], "Hello");
  const nlohmann::json end = ReadJson(transcript);
  ASSERT_EQ(end.size(), 3u) << end.dump(1);
  EXPECT_EQ(end[0]["role"], "system");
  EXPECT_EQ(end[0]["content"], "You are terse.");
  EXPECT_EQ(end[1]["content"], "Hi");
  // stdout: three replies; the first two are the same answer to "Hello".
  const std::string first = at_save[1]["content"];
  EXPECT_EQ(chat.out.substr(0, 2 * (first.size() + 1)), first + "\n" + first + "\n");
  // A /save that fails is reported and the chat goes on.
  EXPECT_NE(chat.err.find("epwa: error:"), std::string::npos) << chat.err;
  EXPECT_NE(chat.err.find("/nonexistent-dir/x.json"), std::string::npos) << chat.err;
}

// A watermarked chat reply: the watermark line on stderr, and detection with
// the rendered conversation as the prompt finds the watermark.
TEST_F(ChatCli, WatermarkedReplyIsDetected) {
  const std::string key = PrepareWatermarkSuite(dir_, 11);
  const std::string transcript = dir_.path() + "/chat.json";
  Result chat = RunEpwaWithInput("chat -m " + kModel + " -n 80 --ignore-eos --seed 3 --watermark gsg --key-file " + key +
                                     " --transcript " + transcript,
                                 "Tell me about the history of Unix systems\n", dir_);
  ASSERT_EQ(chat.exit_code, 0) << chat.err;
  EXPECT_NE(chat.err.find("watermark: gsg"), std::string::npos) << chat.err;
  const nlohmann::json messages = ReadJson(transcript);
  ASSERT_EQ(messages.size(), 2u);
  const std::string first = dir_.path() + "/first.json", reply = dir_.path() + "/reply.txt";
  WriteText(first, nlohmann::json::array({messages[0]}).dump());
  WriteText(reply, messages[1]["content"].get<std::string>());
  Result prompt = RunEpwa("template -m " + kModel + " --messages " + first, dir_);
  ASSERT_EQ(prompt.exit_code, 0) << prompt.err;
  Result detect = RunEpwa("detect -m " + kModel + " --watermark gsg --key-file " + key + " --json --file " + reply +
                              " --prompt " + Quote(prompt.out),
                          dir_);
  ASSERT_EQ(detect.exit_code, 0) << detect.err;
  const nlohmann::json d = nlohmann::json::parse(detect.out);
  EXPECT_GT(d["z"].get<double>(), 4.0) << detect.out;
}

TEST_F(ChatCli, BadInputIsACleanError) {
  // tiny-moe is a base model without a chat template.
  ExpectCleanError(RunEpwaWithInput("chat -m models/tiny-moe", "Hi\n", dir_), 1, "no chat template");
  const std::string bad = dir_.path() + "/bad.json";
  WriteText(bad, "[{\"role\": \"user\", ");
  ExpectCleanError(RunEpwa("run -m " + kModel + " --messages " + bad, dir_), 1, "not valid JSON");
  WriteText(bad, "{\"conversation\": []}");
  ExpectCleanError(RunEpwa("run -m " + kModel + " --messages " + bad, dir_), 1, "without \"messages\"");
  WriteText(bad, "[{\"role\": \"user\", \"content\": \"Hi\"}]");
  ExpectCleanError(RunEpwa("run -m " + kModel + " --messages " + bad + " -p Hi", dir_), 2, "excludes");
  ExpectCleanError(RunEpwa("chat -m " + kModel + " --kwargs '[1]'", dir_), 1, "JSON object");
  // A conversation longer than the context: the turn fails, nothing is
  // printed for it.
  std::string long_message;
  for (int i = 0; i < 400; ++i) long_message += "word ";
  ExpectCleanError(RunEpwaWithInput("chat -m " + kModel + " --ctx 256", long_message + "\n", dir_), 1,
                   "no longer fits the context");
}

}  // namespace
}  // namespace epwa
