// A model's chat template, applied the way Hugging Face transformers'
// tokenizer.apply_chat_template(messages, tools=..., documents=...,
// add_generation_prompt=..., **kwargs) applies it (tokenize=False), so that
// epwa builds byte for byte the prompt the model was trained on.
//
// Where the template comes from (as transformers loads it):
//   1. MODEL_DIR/chat_template.jinja, plus any
//      MODEL_DIR/additional_chat_templates/NAME.jinja as named templates;
//   2. otherwise tokenizer_config.json's "chat_template": a string, or a list
//      of {"name", "template"} objects. With several named templates,
//      "tool_use" is used when tools are given (and present), else
//      "default", as transformers' get_chat_template picks.
//
// What the template sees (transformers' render_jinja_template): `messages`,
// `tools` and `documents` (None when not given, so `tools is defined` is
// true even then), `add_generation_prompt`, the tokenizer's special tokens
// (`bos_token`, `eos_token`, `unk_token`, `sep_token`, `pad_token`,
// `cls_token`, `mask_token` as strings, `additional_special_tokens` as a
// list; each only when set), and the caller's extra keyword arguments
// (`enable_thinking`, `reasoning_effort`, ...), which override the tokens.
#pragma once

#include <ctime>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "template/jinja.h"

namespace epwa {

struct ChatRenderOptions {
  // Append the opening of an assistant turn. transformers defaults to false;
  // serving a chat wants true.
  bool add_generation_prompt = true;
  // Tool schemas (a JSON array of objects); null when none are given.
  nlohmann::ordered_json tools;
  // Documents for retrieval-augmented templates (an array of objects); null
  // when none.
  nlohmann::ordered_json documents;
  // Extra template variables (a JSON object), e.g. {"enable_thinking": false}.
  nlohmann::ordered_json kwargs = nlohmann::ordered_json::object();
  // The time strftime_now() sees; the current local time when unset.
  std::optional<std::tm> now;
  jinja::Limits limits;
};

class ChatTemplate {
 public:
  // Loads the template(s) and special tokens of a Hugging Face model folder.
  // Throws epwa::Error when the folder has no chat template or a file is
  // malformed, and jinja::TemplateError when a template does not parse.
  static ChatTemplate FromModelDir(const std::filesystem::path& dir);

  // A single template from its source. `special_tokens` is a JSON object of
  // template variables (bos_token, ...); `origin` names the source in errors.
  static ChatTemplate FromSource(const std::string& source,
                                 const nlohmann::ordered_json& special_tokens = nlohmann::ordered_json::object(),
                                 const std::string& origin = "chat template");

  // Renders `messages` (a JSON array of {"role", "content", ...} objects;
  // key order matters to templates that iterate over dicts, so pass
  // ordered_json). Throws epwa::Error for malformed arguments and
  // jinja::TemplateError when the template fails, e.g. raise_exception()
  // for a conversation it does not accept (message() is the text).
  std::string Render(const nlohmann::ordered_json& messages, const ChatRenderOptions& options = {}) const;

  // The text a template writes right after an assistant message's content,
  // up to the first whitespace ("<|im_end|>" for ChatML, "<|eot_id|>" for
  // Llama 3, "</s>" for Mistral), found by rendering a two-turn probe
  // conversation. It names the token that ends a turn, which a chat must
  // stop at even when generation_config.json does not list it as an EOS.
  // nullopt when the template refuses the probe or writes nothing there.
  std::optional<std::string> AssistantTurnEnd() const;

  // The template Render would use with (or without) tools, and its source.
  const std::string& Source(bool with_tools = false) const;
  // The special tokens passed to the template, as a JSON object.
  const nlohmann::ordered_json& special_tokens() const { return special_tokens_; }
  // Names of the templates: {"default"} for a single one.
  std::vector<std::string> Names() const;

 private:
  struct Named {
    std::string name;
    std::string source;
    jinja::Template compiled;
  };
  const Named& Pick(bool with_tools) const;

  std::vector<Named> templates_;
  nlohmann::ordered_json special_tokens_ = nlohmann::ordered_json::object();
};

}  // namespace epwa
