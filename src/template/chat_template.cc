#include "template/chat_template.h"

#include <algorithm>
#include <cctype>
#include <system_error>

#include "base/error.h"
#include "base/file_read.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

// Template files are text of a few KB; the limit only stops absurd inputs.
constexpr uint64_t kMaxTemplateBytes = kMaxTextInputBytes;

bool IsFile(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

Json ReadJsonFile(const fs::path& path, const std::string& what) {
  const std::string text = ReadRegularFile(path.string(), kMaxTokenizerFileBytes, what);
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  Require(!j.is_discarded(), what + " " + path.string() + " is not valid JSON");
  Require(j.is_object(), what + " " + path.string() + " is not a JSON object");
  return j;
}

// A special token's text: a string, or an AddedToken object's "content".
std::optional<std::string> TokenText(const Json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object()) {
    const auto it = v.find("content");
    if (it != v.end() && it->is_string()) return it->get<std::string>();
  }
  return std::nullopt;
}

// transformers' special_tokens_map: each attribute that is set (and not
// empty), as the string the template sees.
Json SpecialTokens(const Json& config) {
  static const char* kNames[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                 "pad_token", "cls_token", "mask_token"};
  Json out = Json::object();
  for (const char* name : kNames) {
    const auto it = config.find(name);
    if (it == config.end()) continue;
    if (auto text = TokenText(*it); text && !text->empty()) out[name] = *text;
  }
  if (const auto it = config.find("additional_special_tokens"); it != config.end() && it->is_array()) {
    Json list = Json::array();
    for (const Json& t : *it)
      if (auto text = TokenText(t)) list.push_back(*text);
    if (!list.empty()) out["additional_special_tokens"] = list;
  }
  return out;
}

}  // namespace

ChatTemplate ChatTemplate::FromModelDir(const fs::path& dir) {
  ChatTemplate ct;
  const fs::path config_path = dir / "tokenizer_config.json";
  Json config = Json::object();
  if (IsFile(config_path)) config = ReadJsonFile(config_path, "the tokenizer configuration");

  // Special tokens: tokenizer_config.json; configurations without
  // added_tokens_decoder are read the legacy way, where
  // special_tokens_map.json overrides them.
  Json token_source = config;
  const fs::path map_path = dir / "special_tokens_map.json";
  if (!config.contains("added_tokens_decoder") && IsFile(map_path)) {
    const Json map = ReadJsonFile(map_path, "the special tokens map");
    for (const auto& [key, value] : map.items()) token_source[key] = value;
  }
  ct.special_tokens_ = SpecialTokens(token_source);

  auto add = [&](const std::string& name, const std::string& source, const std::string& origin) {
    ct.templates_.push_back({name, source, jinja::Template::Parse(source, origin)});
  };
  const fs::path jinja_path = dir / "chat_template.jinja";
  if (IsFile(jinja_path)) {
    add("default", ReadRegularFile(jinja_path.string(), kMaxTemplateBytes, "the chat template"), jinja_path.string());
    const fs::path extra = dir / "additional_chat_templates";
    std::error_code ec;
    if (fs::is_directory(extra, ec)) {
      std::vector<fs::path> files;
      for (const auto& entry : fs::directory_iterator(extra, ec))
        if (entry.path().extension() == ".jinja") files.push_back(entry.path());
      std::sort(files.begin(), files.end());
      for (const fs::path& f : files)
        add(f.stem().string(), ReadRegularFile(f.string(), kMaxTemplateBytes, "the chat template"), f.string());
    }
    return ct;
  }
  const auto it = config.find("chat_template");
  Require(it != config.end() && !it->is_null(),
          dir.string() + " has no chat template (neither chat_template.jinja nor a \"chat_template\" in "
                         "tokenizer_config.json)");
  const std::string origin = config_path.string();
  if (it->is_string()) {
    add("default", it->get<std::string>(), origin);
  } else if (it->is_array()) {
    for (const Json& entry : *it) {
      Require(entry.is_object() && entry.contains("name") && entry["name"].is_string() && entry.contains("template") &&
                  entry["template"].is_string(),
              origin + ": each entry of the \"chat_template\" list must be an object with string \"name\" and "
                       "\"template\"");
      const std::string name = entry["name"].get<std::string>();
      add(name, entry["template"].get<std::string>(), origin + " (template '" + name + "')");
    }
    Require(!ct.templates_.empty(), origin + ": the \"chat_template\" list is empty");
  } else {
    throw Error(origin + ": \"chat_template\" must be a string or a list of {\"name\", \"template\"} objects");
  }
  return ct;
}

ChatTemplate ChatTemplate::FromSource(const std::string& source, const Json& special_tokens,
                                      const std::string& origin) {
  Require(special_tokens.is_object(), "the special tokens of a chat template must be a JSON object");
  ChatTemplate ct;
  ct.templates_.push_back({"default", source, jinja::Template::Parse(source, origin)});
  ct.special_tokens_ = special_tokens;
  return ct;
}

const ChatTemplate::Named& ChatTemplate::Pick(bool with_tools) const {
  if (templates_.size() == 1) return templates_.front();
  auto find = [&](const char* name) -> const Named* {
    for (const Named& t : templates_)
      if (t.name == name) return &t;
    return nullptr;
  };
  if (with_tools) {
    if (const Named* t = find("tool_use")) return *t;
  }
  if (const Named* t = find("default")) return *t;
  std::string names;
  for (const Named& t : templates_) names += (names.empty() ? "" : ", ") + t.name;
  throw Error("this model has several chat templates (" + names + ") and none named \"default\"");
}

const std::string& ChatTemplate::Source(bool with_tools) const { return Pick(with_tools).source; }

std::vector<std::string> ChatTemplate::Names() const {
  std::vector<std::string> names;
  for (const Named& t : templates_) names.push_back(t.name);
  return names;
}

std::string ChatTemplate::Render(const Json& messages, const ChatRenderOptions& options) const {
  Require(messages.is_array(), "the chat messages must be a JSON array of message objects");
  Require(options.tools.is_null() || options.tools.is_array(), "the tools must be a JSON array of tool schemas");
  if (options.tools.is_array()) {
    for (const Json& tool : options.tools)
      Require(tool.is_object(),
              "each tool must be a JSON object (a JSON schema such as {\"type\": \"function\", \"function\": {...}})");
  }
  Require(options.documents.is_null() || options.documents.is_array(),
          "the documents must be a JSON array of objects with \"title\" and \"text\"");
  if (options.documents.is_array()) {
    for (const Json& doc : options.documents)
      Require(doc.is_object(), "each document must be a JSON object with \"title\" and \"text\"");
  }
  Require(options.kwargs.is_object(), "the extra template arguments must be a JSON object");
  static const char* kReserved[] = {"messages", "tools", "documents", "add_generation_prompt"};
  for (const char* name : kReserved)
    Require(!options.kwargs.contains(name), std::string("the extra template arguments must not set '") + name +
                                                "'; it has its own option");

  // The keyword arguments of transformers' compiled_template.render(...).
  Json context = special_tokens_;
  for (const auto& [key, value] : options.kwargs.items()) context[key] = value;
  context["messages"] = messages;
  context["tools"] = options.tools;
  context["documents"] = options.documents;
  context["add_generation_prompt"] = options.add_generation_prompt;

  jinja::RenderOptions render;
  render.limits = options.limits;
  render.now = options.now;
  return Pick(!options.tools.is_null()).compiled.Render(context, render);
}

std::optional<std::string> ChatTemplate::AssistantTurnEnd() const {
  static constexpr std::string_view kAnswer = "epwa-probe-answer";
  const Json probe = Json::parse(R"([{"role": "user", "content": "epwa-probe-question"},
                                     {"role": "assistant", "content": "epwa-probe-answer"}])");
  ChatRenderOptions options;
  options.add_generation_prompt = false;
  options.now = std::tm{};  // a fixed date: the probe must not depend on the clock
  options.now->tm_year = 100;
  options.now->tm_mday = 1;
  std::string text;
  try {
    text = Render(probe, options);
  } catch (const Error&) {
    return std::nullopt;  // e.g. a template that insists on a system message
  }
  const size_t at = text.rfind(kAnswer);
  if (at == std::string::npos) return std::nullopt;
  const size_t begin = at + kAnswer.size();
  size_t end = begin;
  while (end < text.size() && !std::isspace(static_cast<unsigned char>(text[end]))) ++end;
  if (end == begin) return std::nullopt;
  return text.substr(begin, end - begin);
}

}  // namespace epwa
