// A multi-turn chat over one Engine: the conversation so far, rendered with
// the model's chat template each turn, and the assistant's reply generated
// until the template's end-of-turn token. `epwa chat` is its interactive
// front end; `run --messages` and the server's chat route use the same stop
// rule (ChatStopTokenIds).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/engine.h"
#include "template/chat_template.h"

namespace epwa {

// The tokens that end an assistant turn and are not already an EOS of the
// model: the template's end-of-turn text (ChatTemplate::AssistantTurnEnd)
// when the vocabulary holds it as one special token. Qwen's ChatML templates
// end turns with <|im_end|> while generation_config.json of a base model
// lists only <|endoftext|>; without this a chat would run on into a made-up
// next turn.
std::vector<int32_t> ChatStopTokenIds(const ChatTemplate& chat, const Engine& engine);

struct ChatReply {
  std::string text;            // the assistant's reply as recorded in the conversation
  std::vector<int32_t> prompt;  // the rendered conversation this turn was generated from
  GenerateResult result;        // tokens (the end-of-turn token included) and stats
};

class ChatSession {
 public:
  // `render` carries the template options of every turn (kwargs such as
  // enable_thinking, tools); add_generation_prompt is always set.
  ChatSession(Engine& engine, ChatTemplate chat, ChatRenderOptions render = {});

  // The system message that opens the conversation; empty for none.
  void SetSystem(const std::string& text);
  // Forgets every turn (the system message stays).
  void Reset();
  // The messages so far, system first: what the next turn renders.
  nlohmann::ordered_json Messages() const;
  int Turns() const { return static_cast<int>(turns_.size() / 2); }

  // Generates the assistant's answer to `user`. `on_text` receives the reply
  // as it is decoded (complete UTF-8 characters); `options.stop_token_ids`
  // gains the end-of-turn tokens. The user message and the reply join the
  // conversation when generation ends, also when on_token stops it early.
  // Throws epwa::Error, with the conversation unchanged, when the template
  // refuses the messages or the conversation no longer fits the context.
  ChatReply Reply(const std::string& user, GenerateOptions options,
                  const std::function<void(const std::string&)>& on_text = {});

  const std::vector<int32_t>& stop_token_ids() const { return stop_ids_; }

 private:
  nlohmann::ordered_json MessagesWith(const std::string& user) const;

  Engine& engine_;
  ChatTemplate chat_;
  ChatRenderOptions render_;
  std::vector<int32_t> stop_ids_;
  std::string system_;
  std::vector<std::string> turns_;  // user, assistant, user, assistant, ...
};

}  // namespace epwa
