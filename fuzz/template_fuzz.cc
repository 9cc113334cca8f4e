// libFuzzer target for the Jinja interpreter (src/template): a chat template
// is untrusted input (it comes with a downloaded model), and so are the
// messages it renders. The input is split at its first NUL byte: the part
// before it is the template, the part after it a JSON object of variables
// (ignored when it is not valid JSON). The contract under test: parsing and
// rendering either succeed or throw epwa::Error (jinja::TemplateError);
// anything else (another exception, an ASan/UBSan report, a stack overflow,
// a hang, runaway memory) is a crash.
//
// Run: ./build-fuzz/template_fuzz -max_total_time=300 -rss_limit_mb=4096 \
//        -dict=fuzz/template.dict /tmp/template-corpus fuzz/corpus/template

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "template/jinja.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find('\0');
  const std::string_view source = input.substr(0, split);
  nlohmann::ordered_json context = nlohmann::ordered_json::object();
  if (split != std::string_view::npos) {
    nlohmann::ordered_json parsed =
        nlohmann::ordered_json::parse(input.substr(split + 1), nullptr, /*allow_exceptions=*/false);
    if (parsed.is_object()) context = std::move(parsed);
  }
  // Tighter bounds than the defaults keep each run fast; the code paths that
  // enforce them are the same.
  epwa::jinja::RenderOptions options;
  options.limits.max_steps = 300000;
  options.limits.max_output_bytes = 1 << 20;
  options.limits.max_nesting = 128;
  std::tm now{};
  now.tm_year = 125;
  now.tm_mday = 1;
  options.now = now;
  try {
    const epwa::jinja::Template t = epwa::jinja::Template::Parse(source, "fuzz", options.limits);
    const std::string out = t.Render(context, options);
    if (out.size() > options.limits.max_output_bytes) __builtin_trap();
  } catch (const epwa::Error&) {
    // A template refused with a message is the expected outcome.
  }
  return 0;
}
