#include "serve/chat_session.h"

#include <algorithm>
#include <utility>

#include "base/error.h"
#include "template/jinja.h"
#include "tokenizer/text_stream.h"

namespace epwa {

std::vector<int32_t> ChatStopTokenIds(const ChatTemplate& chat, const Engine& engine) {
  std::vector<int32_t> ids;
  const std::optional<std::string> end = chat.AssistantTurnEnd();
  if (!end) return ids;
  const Tokenizer& tok = engine.tokenizer();
  const std::optional<int32_t> id = tok.PieceToId(*end);
  if (!id || !tok.IsSpecial(*id)) return ids;
  const std::vector<int32_t>& eos = engine.defaults().eos_token_ids;
  if (std::find(eos.begin(), eos.end(), *id) == eos.end()) ids.push_back(*id);
  return ids;
}

ChatSession::ChatSession(Engine& engine, ChatTemplate chat, ChatRenderOptions render)
    : engine_(engine), chat_(std::move(chat)), render_(std::move(render)) {
  render_.add_generation_prompt = true;
  stop_ids_ = ChatStopTokenIds(chat_, engine_);
}

void ChatSession::SetSystem(const std::string& text) { system_ = text; }

void ChatSession::Reset() { turns_.clear(); }

nlohmann::ordered_json ChatSession::Messages() const {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  if (!system_.empty()) messages.push_back({{"role", "system"}, {"content", system_}});
  for (size_t i = 0; i < turns_.size(); ++i)
    messages.push_back({{"role", i % 2 == 0 ? "user" : "assistant"}, {"content", turns_[i]}});
  return messages;
}

nlohmann::ordered_json ChatSession::MessagesWith(const std::string& user) const {
  nlohmann::ordered_json messages = Messages();
  messages.push_back({{"role", "user"}, {"content", user}});
  return messages;
}

ChatReply ChatSession::Reply(const std::string& user, GenerateOptions options,
                             const std::function<void(const std::string&)>& on_text) {
  std::string prompt_text;
  try {
    prompt_text = chat_.Render(MessagesWith(user), render_);
  } catch (const jinja::TemplateError& e) {
    throw Error(std::string("the chat template refused the conversation: ") + e.what());
  }
  ChatReply reply;
  // The template writes BOS itself where the model wants one.
  reply.prompt = engine_.tokenizer().Encode(prompt_text, /*add_special_tokens=*/false);
  // A sequence holds the smaller of the model's context and the one memory
  // was planned for (--ctx).
  const int64_t context = std::min<int64_t>(engine_.max_context(), engine_.load_stats().plan_ctx);
  Require(static_cast<int64_t>(reply.prompt.size()) < context,
          "the conversation (" + std::to_string(reply.prompt.size()) + " tokens) no longer fits the context of " +
              std::to_string(context) + " tokens; start over (/reset in epwa chat) or raise --ctx");
  options.stop_token_ids.insert(options.stop_token_ids.end(), stop_ids_.begin(), stop_ids_.end());

  // Special tokens (the end of turn) decode to nothing in a TextStream.
  TextStream stream(engine_.tokenizer(), reply.prompt);
  std::string text;
  auto caller_on_token = options.on_token;
  options.on_token = [&](int32_t token) {
    const std::string piece = stream.Push(token);
    text += piece;
    if (on_text && !piece.empty()) on_text(piece);
    return caller_on_token ? caller_on_token(token) : true;
  };
  reply.result = engine_.Generate(reply.prompt, options);
  const std::string rest = stream.Flush();
  text += rest;
  if (on_text && !rest.empty()) on_text(rest);
  reply.text = text;
  turns_.push_back(user);
  turns_.push_back(std::move(text));
  return reply;
}

}  // namespace epwa
