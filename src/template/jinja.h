// A Jinja2 interpreter for Hugging Face chat templates.
//
// Why hand-written: a model's chat template is a Jinja2 program, and epwa must
// run it to turn messages into the exact prompt the model was trained on.
// Debian 12 ships no C++ Jinja engine (apt has only Python, Emacs, R and Rust
// packages; libinja-dev does not exist in bookworm) and the C++ options
// elsewhere (google/minja, inja) are not packaged, so vendoring one would mean
// carrying an unreviewed third-party copy. The subset chat templates use is
// small and well specified by Jinja2's own lexer, parser and runtime, which
// this file set follows closely: the goal is byte-for-byte the output of
// transformers' apply_chat_template, which renders with
//   jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True,
//       lstrip_blocks=True, extensions=[loopcontrols, AssistantTracker])
// plus its own `tojson` filter and the globals `raise_exception` and
// `strftime_now`. That environment is the only dialect implemented here.
//
// What is supported: {{ }}, {% %}, {# #}, whitespace control (-, +, trim_blocks,
// lstrip_blocks), raw blocks; if/elif/else, for (else, filtering, unpacking,
// the loop object, break/continue), set (incl. namespace attributes and block
// set), macro (defaults, keyword arguments, varargs/kwargs), filter blocks,
// with, print and generation blocks; Python expressions with Python's value
// semantics (see jinja_value.h); Jinja2's filters and tests that templates use;
// str, dict and list methods the sandbox allows. Not supported, and refused
// with a message naming the line: template inheritance and inclusion
// (extends, block, include, import: chat templates come as one string),
// call blocks, recursive loops, and the few filters listed in
// jinja_builtins.cc as unsupported.
//
// Untrusted templates are safe to run: every input either renders or fails
// with a TemplateError, within bounds on nesting, output size and work.
#pragma once

#include <cstdint>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "base/error.h"

namespace epwa::jinja {

// A template that failed to parse or to render. what() is one line:
// "[NAME: ]template line N: MESSAGE". message() is the bare text, which for
// runtime errors is what Python's jinja2 says (e.g. raise_exception's
// argument, or "'dict object' has no attribute 'content'"); type() is the
// Python exception type it corresponds to ("TemplateSyntaxError",
// "TemplateError" for raise_exception, "UndefinedError", "TypeError", ...),
// or "LimitError" when a bound below was reached.
class TemplateError : public Error {
 public:
  TemplateError(int line, std::string type, std::string message, const std::string& name = "");
  int line() const { return line_; }
  const std::string& type() const { return type_; }
  const std::string& message() const { return message_; }
  // The same error, its what() prefixed with `name` (the template's origin).
  TemplateError WithName(const std::string& name) const;

 private:
  int line_;
  std::string type_, message_;
};

// Bounds that keep a hostile template from exhausting the stack, memory or
// time. Reaching one is a TemplateError of type "LimitError".
struct Limits {
  int max_nesting = 256;                    // nested blocks, expression depth, macro calls
  uint64_t max_output_bytes = 64ull << 20;  // the rendered text, and any one string built on the way
  uint64_t max_steps = 50'000'000;          // evaluation steps (plus one per 64 bytes built)
};

struct RenderOptions {
  Limits limits;
  // The local time strftime_now() formats; the current time when unset.
  std::optional<std::tm> now;
};

namespace internal {
struct Program;
}

// A parsed template. Copies share the parsed program; Render() keeps all its
// state in the call, so one Template may render from several threads at once.
class Template {
 public:
  // Parses `source` (UTF-8). `name` prefixes error messages, e.g. the file the
  // template came from. Throws TemplateError (type "TemplateSyntaxError")
  // naming the line of the first problem.
  static Template Parse(std::string_view source, const std::string& name = "",
                        const Limits& limits = Limits());

  // Renders with the variables of the JSON object `context` (key order is
  // kept, as Python's json.load keeps it; pass nlohmann::ordered_json to keep
  // it). Throws TemplateError.
  std::string Render(const nlohmann::ordered_json& context, const RenderOptions& options = {}) const;

  const std::string& name() const;

 private:
  std::shared_ptr<const internal::Program> program_;
};

}  // namespace epwa::jinja
