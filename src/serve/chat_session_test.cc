// ChatSession on the bundled tiny-qwen3-moe (ChatML template): the stop rule,
// the history a turn renders, and a failed turn leaving the conversation as
// it was.
#include "serve/chat_session.h"

#include <gtest/gtest.h>

#include "base/error.h"

namespace epwa {
namespace {

std::unique_ptr<Engine> LoadQwen(int64_t ctx = 0) {
  LoadOptions o("models/tiny-qwen3-moe", 2);
  o.use_cache = false;
  o.plan_ctx = ctx;
  return Engine::Load(o);
}

TEST(ChatStopTokenIds, TheTemplatesEndOfTurnWhenItIsNotAnEos) {
  auto engine = LoadQwen();
  const ChatTemplate chat = ChatTemplate::FromModelDir(engine->model_dir());
  // generation_config.json lists <|endoftext|> (6141); ChatML turns end with
  // <|im_end|> (6143).
  ASSERT_EQ(engine->defaults().eos_token_ids, std::vector<int32_t>{6141});
  EXPECT_EQ(ChatStopTokenIds(chat, *engine), std::vector<int32_t>{6143});
  // An end of turn that is already the EOS adds nothing; text that is not a
  // special token adds nothing.
  EXPECT_TRUE(ChatStopTokenIds(ChatTemplate::FromSource("{% for m in messages %}{{ m.content }}<|endoftext|>{% endfor %}"),
                               *engine)
                  .empty());
  EXPECT_TRUE(
      ChatStopTokenIds(ChatTemplate::FromSource("{% for m in messages %}{{ m.content }}END{% endfor %}"), *engine)
          .empty());
}

TEST(ChatSession, EachTurnRendersTheWholeConversation) {
  auto engine = LoadQwen();
  ChatSession chat(*engine, ChatTemplate::FromModelDir(engine->model_dir()));
  chat.SetSystem("Be brief.");
  GenerateOptions o;
  o.max_new_tokens = 10;
  o.sampler.temperature = 0;
  std::string streamed;
  const ChatReply first = chat.Reply("Hello", o, [&](const std::string& piece) { streamed += piece; });
  EXPECT_EQ(streamed, first.text);
  EXPECT_EQ(engine->tokenizer().Decode(first.prompt),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n");
  const ChatReply second = chat.Reply("More?", o);
  EXPECT_EQ(engine->tokenizer().Decode(second.prompt),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n" +
                first.text + "<|im_end|>\n<|im_start|>user\nMore?<|im_end|>\n<|im_start|>assistant\n");
  // The same prompt through Engine::Generate gives the same reply.
  GenerateOptions plain = o;
  plain.stop_token_ids = {6143};
  EXPECT_EQ(engine->Generate(second.prompt, plain).tokens, second.result.tokens);
  EXPECT_EQ(chat.Turns(), 2);
  EXPECT_EQ(chat.Messages().size(), 5u);
  chat.Reset();
  EXPECT_EQ(chat.Turns(), 0);
  EXPECT_EQ(chat.Messages().size(), 1u);  // the system message stays
}

TEST(ChatSession, ATurnThatDoesNotFitLeavesTheConversationUnchanged) {
  auto engine = LoadQwen(/*ctx=*/64);
  ChatSession chat(*engine, ChatTemplate::FromModelDir(engine->model_dir()));
  GenerateOptions o;
  o.max_new_tokens = 4;
  chat.Reply("Hi", o);
  std::string long_text;
  for (int i = 0; i < 80; ++i) long_text += "word ";
  EXPECT_THROW(chat.Reply(long_text, o), Error);
  EXPECT_EQ(chat.Turns(), 1);
  // A template that refuses the conversation is an Error too.
  ChatSession refusing(*engine, ChatTemplate::FromSource("{{ raise_exception('roles must alternate') }}"));
  try {
    refusing.Reply("Hi", o);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("roles must alternate"), std::string::npos) << e.what();
  }
  EXPECT_EQ(refusing.Turns(), 0);
}

}  // namespace
}  // namespace epwa
