#include "plan/quant_level.h"

#include "base/env_flags.h"
#include "base/error.h"

namespace epwa {

const char* QuantLevelName(QuantLevel level) {
  switch (level) {
    case QuantLevel::kAuto: return "auto";
    case QuantLevel::kNone: return "none";
    case QuantLevel::kFp16: return "fp16";
    case QuantLevel::kInt8: return "int8";
    case QuantLevel::kMixed: return "mixed";
    case QuantLevel::kInt4: return "int4";
  }
  return "?";
}

QuantLevel ParseQuantLevel(const std::string& text) {
  for (QuantLevel l : {QuantLevel::kAuto, QuantLevel::kNone, QuantLevel::kFp16, QuantLevel::kInt8,
                       QuantLevel::kMixed, QuantLevel::kInt4})
    if (text == QuantLevelName(l)) return l;
  if (text == "bf16" || text == "16bit") return QuantLevel::kFp16;
  throw Error("unknown quantization level '" + text +
              "' (use auto, none, fp16, int8, int4 or mixed)");
}

std::vector<QuantLevel> ConcreteLevels() {
  return {QuantLevel::kNone, QuantLevel::kFp16, QuantLevel::kInt8, QuantLevel::kMixed,
          QuantLevel::kInt4};
}

LevelRequest ResolveLevel(const std::optional<std::string>& flag,
                          const std::function<const char*(const char*)>& getenv) {
  const std::optional<bool> in4 = ParseEnvBool("EPW_LOAD_IN_4BIT", getenv("EPW_LOAD_IN_4BIT"));
  const std::optional<bool> in8 = ParseEnvBool("EPW_LOAD_IN_8BIT", getenv("EPW_LOAD_IN_8BIT"));
  const std::optional<bool> fast = ParseEnvBool("EPW_FAST_LOADING", getenv("EPW_FAST_LOADING"));
  LevelRequest r;
  r.fast_loading = fast.value_or(false);
  if (flag && !flag->empty()) {
    r.level = ParseQuantLevel(*flag);
    r.source = "--quant " + *flag;
  } else if (in4.value_or(false)) {
    r.level = QuantLevel::kInt4;
    r.source = "EPW_LOAD_IN_4BIT=true";
  } else if (in8.value_or(false)) {
    r.level = QuantLevel::kInt8;
    r.source = "EPW_LOAD_IN_8BIT=true";
  } else if (r.fast_loading) {
    r.level = QuantLevel::kInt4;
    r.source = "EPW_FAST_LOADING=true (4-bit fast path)";
  }
  return r;
}

bool EnvForcesCpu(const std::function<const char*(const char*)>& getenv) {
  return ParseEnvBool("EPW_USE_CPU", getenv("EPW_USE_CPU")).value_or(false);
}

bool CopyWeightsRequested(bool no_mmap_flag, const std::function<const char*(const char*)>& getenv) {
  const std::optional<bool> env = ParseEnvBool("EPW_NO_MMAP", getenv("EPW_NO_MMAP"));
  return no_mmap_flag || env.value_or(false);
}

}  // namespace epwa
