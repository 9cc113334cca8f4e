// libFuzzer target for the PEPI expert-oracle file reader: binary header,
// JSON metadata, float tensors and a SHA-256 checksum. The contract under
// test: any input either loads or throws epwa::Error; anything else (another
// exception, an out-of-bounds read, undefined behaviour; the target is built
// with ASan and UBSan) is a crash.
//
// The checksum rejects almost every mutation before the tensors are read, so
// the fuzzer mostly exercises the header and metadata checks that run first;
// a loaded oracle is also asked for a prediction, which walks every tensor.
//
// Run: ./build-fuzz/oracle_fuzz -dict=fuzz/oracle.dict -max_total_time=120 \
//        /tmp/oracle-corpus fuzz/corpus/oracle

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "base/error.h"
#include "watermark/oracle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const std::string bytes(reinterpret_cast<const char*>(data), size);
    const epwa::wm::ExpertOracle o = epwa::wm::ExpertOracle::FromBytes(bytes, "fuzz.oracle");
    const epwa::wm::OracleInfo& info = o.info();
    epwa::wm::TopLogprobs x;
    for (int i = 0; i < info.top_k && i < info.vocab_size && i < 8; ++i) {
      x.ids.push_back(info.vocab_size - 1 - i);
      x.logprobs.push_back(-0.5f * static_cast<float>(i + 1));
    }
    std::vector<float> probs(static_cast<size_t>(info.num_experts));
    o.Predict(x, probs);
    double sum = 0;
    for (float p : probs) sum += p;
    if (!(sum > 0.99 && sum < 1.01)) __builtin_trap();
    const int32_t e = o.PredictExpert(x);
    if (e < 0 || e >= info.num_experts) __builtin_trap();
  } catch (const epwa::Error&) {
    // Refusing malformed input with a message is the expected outcome.
  }
  return 0;
}
