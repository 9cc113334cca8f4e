// `epwa template`: the rendered prompt exactly on stdout (no newline added),
// the options reaching the template, and one-line errors for bad input.
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "cli_util.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;

void Write(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

class TemplateCli : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = dir_.path() + "/model";
    fs::create_directories(model_);
    Write(model_ + "/tokenizer_config.json",
          R"({"bos_token": "<s>", "eos_token": "</s>", "added_tokens_decoder": {},
              "chat_template": "{{ bos_token }}{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}{{ raise_exception('Unknown role ' + m.role) }}{% endif %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if tools %}{{ tools|map(attribute='function.name')|join(',') }}\n{% endif %}{% if enable_thinking is defined %}thinking={{ enable_thinking }}\n{% endif %}{% if add_generation_prompt %}<assistant>{% endif %}"})");
    messages_ = dir_.path() + "/messages.json";
    Write(messages_, R"([{"role": "user", "content": "Héllo {{ x }}"}, {"role": "assistant", "content": "Hi"}])");
  }

  testing::TempDir dir_;
  std::string model_, messages_;
};

TEST_F(TemplateCli, PrintsThePromptExactly) {
  Result r = RunEpwa("template -m " + model_ + " --messages " + messages_, dir_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "<s><user>Héllo {{ x }}\n<assistant>Hi\n<assistant>");
  EXPECT_EQ(r.err, "");
}

TEST_F(TemplateCli, OptionsReachTheTemplate) {
  const std::string tools = dir_.path() + "/tools.json";
  Write(tools, R"([{"type": "function", "function": {"name": "get_weather"}}, {"type": "function", "function": {"name": "f2"}}])");
  const std::string wrapped = dir_.path() + "/wrapped.json";
  Write(wrapped, R"({"messages": [{"role": "user", "content": "q"}]})");
  Result r = RunEpwa("template -m " + model_ + " --messages " + wrapped + " --no-generation-prompt --tools " + tools +
                         " --kwargs '{\"enable_thinking\": false}'",
                     dir_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "<s><user>q\nget_weather,f2\nthinking=False\n");
  const std::string kwargs = dir_.path() + "/kwargs.json";
  Write(kwargs, R"({"enable_thinking": true})");
  r = RunEpwa("template -m " + model_ + " --messages " + wrapped + " --kwargs " + kwargs, dir_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "<s><user>q\nthinking=True\n<assistant>");
}

TEST_F(TemplateCli, BadInputIsOneLineError) {
  const std::string bad = dir_.path() + "/bad.json";
  Write(bad, "[{\"role\": \"user\", ");
  ExpectCleanError(RunEpwa("template -m " + model_ + " --messages " + bad, dir_), 1, "is not valid JSON");
  ExpectCleanError(RunEpwa("template -m " + model_ + " --messages " + dir_.path() + "/absent.json", dir_), 1,
                   "absent.json");
  ExpectCleanError(RunEpwa("template -m " + model_ + " --messages " + messages_ + " --kwargs '{\"a\": '", dir_), 1,
                   "--kwargs is not valid JSON");
  ExpectCleanError(RunEpwa("template -m " + model_ + " --messages " + messages_ + " --kwargs '[1]'", dir_), 1,
                   "--kwargs");
  const std::string empty_model = dir_.path() + "/empty-model";
  fs::create_directories(empty_model);
  Write(empty_model + "/tokenizer_config.json", R"({"bos_token": "<s>"})");
  ExpectCleanError(RunEpwa("template -m " + empty_model + " --messages " + messages_, dir_), 1, "has no chat template");
  const std::string system = dir_.path() + "/system.json";
  Write(system, R"([{"role": "system", "content": "s"}])");
  ExpectCleanError(RunEpwa("template -m " + model_ + " --messages " + system, dir_), 1,
                   "tokenizer_config.json: template line 1: Unknown role system");
  Write(model_ + "/chat_template.jinja", "line 1\n{{ messages | nosuchfilter }}\n");
  ExpectCleanError(RunEpwa("template -m " + model_ + " --messages " + messages_, dir_), 1,
                   "chat_template.jinja: template line 2: unknown filter 'nosuchfilter'");
}

// The real Mixtral template, when the shared data is there.
TEST_F(TemplateCli, RealTemplateMatchesTheCommittedExpectation) {
  const fs::path shared = fs::path("..") / "shared" / "data" / "models" / "mixtral-8x7b-instruct-v0.1";
  if (!fs::exists(shared)) GTEST_SKIP() << shared << " is absent; the real template is not run";
  const fs::path conv = fs::path("tests") / "data" / "templates" / "conversations" / "multi_turn.json";
  Result r = RunEpwa("template -m " + shared.string() + " --messages " + conv.string(), dir_);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, testing::ReadFile("tests/data/templates/expected/mixtral-8x7b-instruct-v0.1/multi_turn.txt"));
}

}  // namespace
}  // namespace epwa
