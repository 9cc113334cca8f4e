// Tests of ChatTemplate:
//  1. the real templates of ../shared/data/models (Mixtral, Qwen3-Coder,
//     gpt-oss, DeepSeek-R1, Granite 3.0/3.1) on every conversation of
//     tests/data/templates/conversations, byte for byte against what
//     transformers' environment renders with jinja2
//     (tests/data/templates/expected, written by make_expected.py); skipped,
//     saying so, when the shared folder is absent;
//  2. loading rules that need no shared data: which file wins, named
//     templates, special tokens, argument checks.
#include "template/chat_template.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include "base/error.h"
#include "base/test_paths.h"
#include "io/test_temp_dir.h"
#include "template/test_fixed_now.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;
using testing::RepoRoot;
using testing::SharedDir;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}



const char* kModels[] = {
    "mixtral-8x7b-instruct-v0.1",    "qwen3-coder-30b-a3b-instruct",  "gpt-oss-20b",
    "deepseek-r1",                   "granite-3.0-1b-a400m-instruct", "granite-3.1-1b-a400m-instruct",
};

class SharedModelTemplates : public ::testing::TestWithParam<const char*> {};

TEST_P(SharedModelTemplates, MatchTransformersByteForByte) {
  const auto shared = SharedDir();
  if (!shared) {
    GTEST_SKIP() << "The shared data folder is absent (looked for ../shared/data beside the repository and "
                    "$EPWA_SHARED_DIR); the real chat templates are not checked.";
  }
  const std::string model = GetParam();
  const fs::path folder = *shared / "data" / "models" / model;
  if (!fs::exists(folder)) GTEST_SKIP() << folder << " is absent.";
  const fs::path data = RepoRoot() / "tests" / "data" / "templates";
  const ChatTemplate chat = ChatTemplate::FromModelDir(folder);
  int compared = 0;
  for (const auto& entry : fs::directory_iterator(data / "conversations")) {
    const std::string conversation = entry.path().stem().string();
    const Json conv = Json::parse(ReadFile(entry.path()));
    for (const Json& variant : conv["variants"]) {
      const std::string variant_name = variant["name"].get<std::string>();
      const std::string stem = conversation + (variant_name.empty() ? "" : "__" + variant_name);
      SCOPED_TRACE(model + " / " + stem);
      ChatRenderOptions options;
      options.add_generation_prompt = variant.value("add_generation_prompt", true);
      if (conv.contains("tools")) options.tools = conv["tools"];
      if (conv.contains("documents")) options.documents = conv["documents"];
      if (variant.contains("kwargs")) options.kwargs = variant["kwargs"];
      options.now = FixedNow();
      const fs::path ok_file = data / "expected" / model / (stem + ".txt");
      const fs::path error_file = data / "expected" / model / (stem + ".error.txt");
      std::string output, error;
      bool failed = false;
      try {
        output = chat.Render(conv["messages"], options);
      } catch (const jinja::TemplateError& e) {
        failed = true;
        error = e.message();
      }
      if (fs::exists(ok_file)) {
        EXPECT_FALSE(failed) << error;
        EXPECT_EQ(output, ReadFile(ok_file));
      } else {
        ASSERT_TRUE(fs::exists(error_file)) << "run tests/data/templates/make_expected.py";
        EXPECT_TRUE(failed) << output;
        EXPECT_EQ(error, ReadFile(error_file));
      }
      ++compared;
    }
  }
  EXPECT_GT(compared, 20);
}

INSTANTIATE_TEST_SUITE_P(Models, SharedModelTemplates, ::testing::ValuesIn(kModels),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           std::string name = info.param;
                           for (char& c : name)
                             if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           return name;
                         });

TEST(ChatTemplate, JinjaFileWinsOverTokenizerConfig) {
  testing::TempDir dir;
  WriteFile(dir.File("tokenizer_config.json"),
            R"({"chat_template": "from config", "bos_token": {"__type": "AddedToken", "content": "<s>"},
                "eos_token": "</s>", "pad_token": null, "added_tokens_decoder": {}})");
  WriteFile(dir.File("chat_template.jinja"), "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}|{{ pad_token is defined }}\n");
  const ChatTemplate chat = ChatTemplate::FromModelDir(dir.path());
  EXPECT_EQ(chat.Render(Json::parse(R"([{"role": "user", "content": "hi"}])")), "<s>hi</s>|False");
  EXPECT_EQ(chat.special_tokens().dump(), R"({"bos_token":"<s>","eos_token":"</s>"})");
}

TEST(ChatTemplate, NamedTemplatesPickToolUseWhenToolsAreGiven) {
  testing::TempDir dir;
  WriteFile(dir.File("tokenizer_config.json"),
            R"({"chat_template": [{"name": "default", "template": "plain{{ tools }}"},
                                  {"name": "tool_use", "template": "tools:{{ tools|length }}"}]})");
  const ChatTemplate chat = ChatTemplate::FromModelDir(dir.path());
  EXPECT_EQ(chat.Render(Json::array()), "plainNone");
  ChatRenderOptions options;
  options.tools = Json::parse(R"([{"type": "function", "function": {"name": "f"}}])");
  EXPECT_EQ(chat.Render(Json::array(), options), "tools:1");
  EXPECT_EQ(chat.Names(), (std::vector<std::string>{"default", "tool_use"}));
}

TEST(ChatTemplate, LegacySpecialTokensMapOverridesTheConfig) {
  testing::TempDir dir;
  WriteFile(dir.File("tokenizer_config.json"), R"({"chat_template": "{{ bos_token }}", "bos_token": "<old>"})");
  WriteFile(dir.File("special_tokens_map.json"), R"({"bos_token": {"content": "<new>"}})");
  EXPECT_EQ(ChatTemplate::FromModelDir(dir.path()).Render(Json::array()), "<new>");
}

TEST(ChatTemplate, ContextIsWhatTransformersPasses) {
  const ChatTemplate chat = ChatTemplate::FromSource(
      "{{ tools is defined }}{{ tools is none }}{{ documents is none }}{{ add_generation_prompt }}"
      "{{ enable_thinking }}{{ bos_token }}",
      Json{{"bos_token", "<s>"}});
  ChatRenderOptions options;
  options.add_generation_prompt = false;
  options.kwargs = Json{{"enable_thinking", false}, {"bos_token", "<override>"}};
  EXPECT_EQ(chat.Render(Json::array(), options), "TrueTrueTrueFalseFalse<override>");
}

TEST(ChatTemplate, BadArgumentsAreErrors) {
  const ChatTemplate chat = ChatTemplate::FromSource("x");
  EXPECT_THROW(chat.Render(Json::object()), Error);
  ChatRenderOptions options;
  options.tools = Json::parse(R"(["not an object"])");
  EXPECT_THROW(chat.Render(Json::array(), options), Error);
  ChatRenderOptions reserved;
  reserved.kwargs = Json{{"messages", Json::array()}};
  EXPECT_THROW(chat.Render(Json::array(), reserved), Error);
}

TEST(ChatTemplate, MissingTemplateIsAnError) {
  testing::TempDir dir;
  WriteFile(dir.File("tokenizer_config.json"), R"({"bos_token": "<s>"})");
  try {
    ChatTemplate::FromModelDir(dir.path());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has no chat template"), std::string::npos) << e.what();
  }
  WriteFile(dir.File("tokenizer_config.json"), R"({"chat_template": "{% if %}"})");
  try {
    ChatTemplate::FromModelDir(dir.path());
    FAIL() << "no error";
  } catch (const jinja::TemplateError& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json: template line 1:"), std::string::npos) << e.what();
  }
}


// The end-of-turn text of each real template, as Python's jinja2 renders the
// same probe conversation (checked with tests/data/templates/make_expected.py's
// environment when this test was written).
TEST(ChatTemplate, AssistantTurnEndOfTheRealTemplates) {
  const auto shared = SharedDir();
  if (!shared) GTEST_SKIP() << "The shared data folder is absent; the real chat templates are not checked.";
  const std::pair<const char*, const char*> expected[] = {
      {"mixtral-8x7b-instruct-v0.1", "</s>"},
      {"qwen3-coder-30b-a3b-instruct", "<|im_end|>"},
      {"gpt-oss-20b", "<|return|>"},
      {"deepseek-r1", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"},
      {"granite-3.0-1b-a400m-instruct", "<|end_of_text|>"},
      {"granite-3.1-1b-a400m-instruct", "<|end_of_text|>"},
  };
  for (const auto& [model, end] : expected) {
    const fs::path folder = *shared / "data" / "models" / model;
    if (!fs::exists(folder)) continue;
    SCOPED_TRACE(model);
    const std::optional<std::string> found = ChatTemplate::FromModelDir(folder).AssistantTurnEnd();
    ASSERT_TRUE(found.has_value());
    EXPECT_EQ(*found, end);
  }
}

TEST(ChatTemplate, AssistantTurnEndIsAbsentWhenTheTemplateWritesNoneOrRefuses) {
  EXPECT_EQ(ChatTemplate::FromSource("{% for m in messages %}{{ m.content }}\n{% endfor %}").AssistantTurnEnd(),
            std::nullopt);
  EXPECT_EQ(ChatTemplate::FromSource("{{ raise_exception('a system message is required') }}").AssistantTurnEnd(),
            std::nullopt);
  EXPECT_EQ(ChatTemplate::FromSource("{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}")
                .AssistantTurnEnd(),
            "</assistant>");
}

}  // namespace
}  // namespace epwa
