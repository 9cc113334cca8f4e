#include "serve/openai_api.h"

#include <string>

#include <gtest/gtest.h>

namespace epwa::serve {
namespace {

using json = serve::json;

SamplerParams Defaults() {
  SamplerParams p;
  p.temperature = 0.7f;
  p.top_p = 0.9f;
  p.top_k = 40;
  return p;
}

// The ApiError a body causes, or a failure when it parses.
ApiError ChatError(const std::string& body) {
  try {
    ParseChatRequest(body, Defaults(), RequestLimits{});
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "accepted: " << body;
  return ApiError(0, "", "");
}

TEST(OpenAiApi, ChatRequestFieldsReachTheStruct) {
  const ChatRequest r = ParseChatRequest(R"({
      "model": "tiny", "messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": [{"type": "text", "text": "Hi "},
                                                                 {"type": "text", "text": "there"}]}],
      "max_tokens": 12, "temperature": 0, "top_p": 0.5, "seed": -3, "stop": ["\n\n", "END"],
      "stream": true, "stream_options": {"include_usage": true}, "logprobs": true, "top_logprobs": 5,
      "chat_template_kwargs": {"enable_thinking": false}, "watermark": false, "user": "u1", "n": 1,
      "logit_bias": {"17": -100, "3": 2.5, "0": 100}})",
                                         Defaults(), RequestLimits{});
  EXPECT_EQ(r.sampling.model, "tiny");
  EXPECT_EQ(r.sampling.max_tokens, 12);
  EXPECT_EQ(r.sampling.sampler.temperature, 0.0f);
  EXPECT_FLOAT_EQ(r.sampling.sampler.top_p, 0.5f);
  EXPECT_EQ(r.sampling.sampler.top_k, 40);  // not in the request: the model's default
  EXPECT_EQ(r.sampling.sampler.seed, static_cast<uint64_t>(int64_t{-3}));
  EXPECT_TRUE(r.sampling.seed_given);
  EXPECT_EQ(r.sampling.stop, (std::vector<std::string>{"\n\n", "END"}));
  EXPECT_TRUE(r.sampling.stream);
  EXPECT_TRUE(r.sampling.include_usage);
  EXPECT_EQ(r.sampling.top_logprobs, 5);
  ASSERT_TRUE(r.sampling.watermark.has_value());
  EXPECT_FALSE(*r.sampling.watermark);
  EXPECT_EQ(r.messages[1]["content"], "Hi there");  // text parts joined
  EXPECT_EQ(r.template_kwargs["enable_thinking"], false);
  EXPECT_TRUE(r.add_generation_prompt);
  EXPECT_TRUE(r.tools.is_null());
  const std::vector<std::pair<int32_t, float>> bias{{0, 100.0f}, {3, 2.5f}, {17, -100.0f}};
  EXPECT_EQ(r.sampling.logit_bias, bias);
}

TEST(OpenAiApi, ChatDefaultsWhenFieldsAreAbsentOrNull) {
  RequestLimits limits;
  limits.default_max_tokens = 77;
  const ChatRequest r = ParseChatRequest(
      R"({"messages": [{"role": "user", "content": "x"}], "temperature": null, "seed": null})", Defaults(), limits);
  EXPECT_EQ(r.sampling.max_tokens, 77);
  EXPECT_FLOAT_EQ(r.sampling.sampler.temperature, 0.7f);
  EXPECT_FALSE(r.sampling.seed_given);
  EXPECT_EQ(r.sampling.top_logprobs, -1);
  EXPECT_FALSE(r.sampling.watermark.has_value());
  // logprobs without a count: OpenAI answers with empty top lists.
  const ChatRequest lp =
      ParseChatRequest(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true})", Defaults(), limits);
  EXPECT_EQ(lp.sampling.top_logprobs, 0);
}

TEST(OpenAiApi, ChatRefusalsNameTheField) {
  struct Case {
    const char* body;
    const char* param;
  };
  const Case cases[] = {
      {R"({"messages": []})", "messages"},
      {R"({"messages": "hi"})", "messages"},
      {R"({})", "messages"},
      {R"({"messages": [{"role": "wizard", "content": "x"}]})", "messages"},
      {R"({"messages": [{"role": "user"}]})", "messages"},
      {R"({"messages": [{"role": "user", "content": 3}]})", "messages"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]})", "messages"},
      {R"({"messages": [{"role": "user", "content": "x", "colour": 1}]})", "messages"},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0})", "max_tokens"},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1e9})", "max_tokens"},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 2.5})", "max_tokens"},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": "5"})", "max_tokens"},
      {R"({"messages": [{"role": "user", "content": "x"}], "temperature": 2.5})", "temperature"},
      {R"({"messages": [{"role": "user", "content": "x"}], "top_p": 0})", "top_p"},
      {R"({"messages": [{"role": "user", "content": "x"}], "n": 2})", "n"},
      {R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3})", "top_logprobs"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21})",
       "top_logprobs"},
      {R"({"messages": [{"role": "user", "content": "x"}], "stop": ["a","b","c","d","e"]})", "stop"},
      {R"({"messages": [{"role": "user", "content": "x"}], "stop": [""]})", "stop"},
      {R"({"messages": [{"role": "user", "content": "x"}], "stop": 5})", "stop"},
      {R"({"messages": [{"role": "user", "content": "x"}], "frequency_penalty": 0.5})", "frequency_penalty"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"5": 101}})", "logit_bias"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"05": 1}})", "logit_bias"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"-5": 1}})", "logit_bias"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"2147483648": 1}})", "logit_bias"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"5": "1"}})", "logit_bias"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logit_bias": [5]})", "logit_bias"},
      {R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}})",
       "response_format"},
      {R"({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"})", "tool_choice"},
      {R"({"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}})",
       "stream_options"},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_token": 5})", "max_token"},
      {R"({"messages": [{"role": "user", "content": "x"}], "watermark": "off"})", "watermark"},
      {R"({"messages": [{"role": "user", "content": "x"}], "seed": 1.5})", "seed"},
      {R"({"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": {"messages": 1}})",
       "chat_template_kwargs"},
  };
  for (const Case& c : cases) {
    const ApiError e = ChatError(c.body);
    EXPECT_EQ(e.status(), 400) << c.body;
    EXPECT_EQ(e.type(), "invalid_request_error") << c.body;
    EXPECT_EQ(e.param(), c.param) << c.body << " -> " << e.what();
  }
}

TEST(OpenAiApi, MalformedAndHostileBodies) {
  for (const std::string& body : {std::string("not json"), std::string("[1,2]"), std::string("{\"messages\": [}"),
                                 std::string(""), std::string("\"x\""), std::string(100000, '['),
                                 std::string("{\"a\":") + std::string(5000, '{')}) {
    const ApiError e = ChatError(body);
    EXPECT_EQ(e.status(), 400);
  }
  // Nesting inside strings does not count.
  EXPECT_NO_THROW(ParseChatRequest(
      R"({"messages": [{"role": "user", "content": ")" + std::string(1000, '[') + R"("}]})", Defaults(),
      RequestLimits{}));
}

TEST(OpenAiApi, ErrorBodyHasOpenAiShape) {
  const ApiError e(429, "rate_limit_error", "queue full");
  const json b = e.Body();
  EXPECT_EQ(b["error"]["message"], "queue full");
  EXPECT_EQ(b["error"]["type"], "rate_limit_error");
  EXPECT_TRUE(b["error"]["param"].is_null());
  EXPECT_EQ(b["error"]["code"], 429);
}

TEST(OpenAiApi, CompletionPrompts) {
  const RequestLimits limits;
  const CompletionRequest text =
      ParseCompletionRequest(R"({"prompt": "Once", "logprobs": 2})", Defaults(), limits);
  EXPECT_EQ(text.prompt_text, "Once");
  EXPECT_EQ(text.sampling.max_tokens, 16);  // OpenAI's legacy default
  EXPECT_EQ(text.sampling.top_logprobs, 2);
  const CompletionRequest ids = ParseCompletionRequest(R"({"prompt": [1, 2, 3]})", Defaults(), limits);
  EXPECT_FALSE(ids.prompt_text.has_value());
  EXPECT_EQ(ids.prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  const CompletionRequest one = ParseCompletionRequest(R"({"prompt": ["Once"]})", Defaults(), limits);
  EXPECT_EQ(one.prompt_text, "Once");
  for (const char* body : {R"({"prompt": ["a", "b"]})", R"({"prompt": ""})", R"({"prompt": [-1]})",
                           R"({"prompt": "x", "echo": true})", R"({"prompt": "x", "logprobs": 6})",
                           R"({"prompt": "x", "best_of": 2})", R"({"prompt": "x", "suffix": "y"})",
                           R"({"prompt": "x", "messages": []})", R"({})"}) {
    EXPECT_THROW(ParseCompletionRequest(body, Defaults(), limits), ApiError) << body;
  }
}

TEST(OpenAiApi, LogprobJsonKeepsBytesAndReplacesInvalidUtf8) {
  TokenLogprob t;
  t.id = 7;
  t.text = "\xE2\x82";  // the first two bytes of a three-byte character
  t.logprob = -std::numeric_limits<float>::infinity();
  t.top = {{7, "\xE2\x82"}, {8, "ab"}};
  t.top_logprobs = {-0.5f, -1.5f};
  const json j = ChatLogprobJson(t);
  EXPECT_EQ(j["id"], 7);
  EXPECT_EQ(j["token"], "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(j["bytes"], json::array({0xE2, 0x82}));
  EXPECT_EQ(j["logprob"].get<float>(), std::numeric_limits<float>::lowest());
  EXPECT_EQ(j["top_logprobs"][1]["token"], "ab");
  EXPECT_EQ(j["top_logprobs"][1]["id"], 8);
  EXPECT_NO_THROW((void)j.dump());
}

TEST(OpenAiApi, ValidUtf8) {
  EXPECT_EQ(ValidUtf8("h\xC3\xA9llo"), "h\xC3\xA9llo");
  EXPECT_EQ(ValidUtf8("\xC0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");      // overlong NUL
  EXPECT_EQ(ValidUtf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // a surrogate
  EXPECT_EQ(ValidUtf8("\xF0\x9F\x98\x80"), "\xF0\x9F\x98\x80");
}

}  // namespace
}  // namespace epwa::serve
