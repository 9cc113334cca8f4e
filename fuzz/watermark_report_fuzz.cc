// libFuzzer target for the watermark report's reading of an evaluation JSON
// (`epwa eval report FILE...`): any bytes either render a report or throw
// epwa::Error; never a crash, a hang or an out-of-bounds read. Rendering
// happens in memory (RenderWatermarkReport), so the fuzzer writes no files.
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "watermark/report.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > (1u << 20)) return 0;
  const std::string text(reinterpret_cast<const char*>(data), size);
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  try {
    const auto files = epwa::wm::RenderWatermarkReport({j});
    // Every rendered file is whole: report.md and complete SVG documents.
    for (const auto& [name, body] : files) {
      if (name.size() > 4 && name.substr(name.size() - 4) == ".svg" &&
          (body.rfind("<svg", 0) != 0 || body.find("</svg>") == std::string::npos))
        __builtin_trap();
    }
  } catch (const epwa::Error&) {
  }
  return 0;
}
