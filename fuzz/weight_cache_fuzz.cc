// libFuzzer target for the quantized-weight cache reader (ParseWeightCache):
// any input must be accepted with every view inside the input, or refused
// with a reason; nothing else (an exception, a bad read, undefined
// behaviour) is allowed.
//
// The reader checks a file against the matrices the model's plan expects;
// here that is a fixed plan of three small matrices in all three quantized
// formats. Seed files for exactly that plan are written by
//   EPWA_FUZZ_WRITE_SEED=fuzz/corpus/weight_cache/valid ./build-fuzz/weight_cache_fuzz -runs=0
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "base/error.h"
#include "plan/weight_cache.h"

namespace {

const std::string kModelId = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

const std::vector<epwa::CachedMatrix>& Plan() {
  static const std::vector<epwa::CachedMatrix> plan = {
      {"model.layers.0.mlp.experts.0.w1.weight", epwa::DType::kQ8, 4, 64},
      {"model.layers.0.mlp.experts.0.w2.weight", epwa::DType::kQ4, 2, 32},
      {"lm_head.weight", epwa::DType::kNF4, 3, 96},
  };
  return plan;
}

void WriteSeed(const std::string& path) {
  std::vector<std::vector<uint8_t>> codes, scales;
  std::vector<std::pair<std::string, epwa::WeightView>> matrices;
  for (const epwa::CachedMatrix& m : Plan()) {
    epwa::WeightView v{m.dtype, nullptr, m.rows, m.cols};
    codes.emplace_back(v.Bytes());
    scales.emplace_back(v.ScaleBytes());
    for (size_t i = 0; i < codes.back().size(); ++i) codes.back()[i] = static_cast<uint8_t>(i * 7);
    for (size_t i = 0; i < scales.back().size(); ++i) scales.back()[i] = i % 2 ? 0x3c : 0x00;
  }
  for (size_t i = 0; i < Plan().size(); ++i) {
    const epwa::CachedMatrix& m = Plan()[i];
    epwa::WeightView v{m.dtype, codes[i].data(), m.rows, m.cols,
                       reinterpret_cast<const uint16_t*>(scales[i].data())};
    matrices.emplace_back(m.name, v);
  }
  epwa::WriteWeightCacheFile(path, kModelId, matrices);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* seed = std::getenv("EPWA_FUZZ_WRITE_SEED")) WriteSeed(seed);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<epwa::WeightView> views;
  std::string why;
  try {
    if (epwa::ParseWeightCache(data, size, kModelId, Plan(), &views, &why)) {
      // Every accepted view must lie inside the input: touching each byte
      // lets ASan prove it.
      if (views.size() != Plan().size()) __builtin_trap();
      uint8_t sum = 0;
      for (const epwa::WeightView& v : views) {
        const auto* codes = static_cast<const uint8_t*>(v.data);
        const auto* scale_bytes = reinterpret_cast<const uint8_t*>(v.scales);
        for (size_t i = 0; i < v.Bytes(); ++i) sum ^= codes[i];
        for (size_t i = 0; i < v.ScaleBytes(); ++i) sum ^= scale_bytes[i];
        if (codes < data || codes + v.Bytes() > data + size) __builtin_trap();
      }
      volatile uint8_t sink = sum;
      (void)sink;
    } else if (why.empty()) {
      __builtin_trap();  // a refusal must say why
    }
  } catch (const epwa::Error&) {
    __builtin_trap();  // the reader reports through `why`, never by throwing
  }
  return 0;
}
