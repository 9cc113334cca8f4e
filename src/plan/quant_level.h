// Quantization levels a model can be loaded at, and how the level for a run
// is decided from the command line and the EPW_* environment variables.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace epwa {

// Ordered from least to most lossy (kMixed sits between int8 and int4).
enum class QuantLevel { kAuto, kNone, kFp16, kInt8, kMixed, kInt4 };

const char* QuantLevelName(QuantLevel level);  // "auto", "none", "fp16", ...
// Parses a --quant value; throws epwa::Error listing the accepted values.
QuantLevel ParseQuantLevel(const std::string& text);
// The concrete levels in the order `auto` considers them.
std::vector<QuantLevel> ConcreteLevels();

// The level asked for and what asked for it, e.g. {kInt4, "EPW_LOAD_IN_4BIT=true"}.
struct LevelRequest {
  QuantLevel level = QuantLevel::kAuto;
  std::string source = "default";
  bool fast_loading = false;  // EPW_FAST_LOADING=true was set
};

// Decides the level with the original tool's priority: an explicit --quant
// flag > EPW_LOAD_IN_4BIT=true > EPW_LOAD_IN_8BIT=true > EPW_FAST_LOADING=true
// (4-bit) > auto. Every EPW_* variable is validated even when a higher one
// decides, so a typo is never silently ignored. `getenv` is injectable for
// tests. Throws epwa::Error for values that are not booleans.
LevelRequest ResolveLevel(const std::optional<std::string>& flag,
                          const std::function<const char*(const char*)>& getenv);

// EPW_USE_CPU=true forces the CPU; returns false when unset. Throws for bad values.
bool EnvForcesCpu(const std::function<const char*(const char*)>& getenv);

// Whether to copy mapped weights into process memory (LoadOptions::
// copy_weights): the --no-mmap flag, else EPW_NO_MMAP (validated even when
// the flag is given, so a typo never passes silently).
bool CopyWeightsRequested(bool no_mmap_flag, const std::function<const char*(const char*)>& getenv);

}  // namespace epwa
