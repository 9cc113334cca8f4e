// Test helper: forces an instruction-set path and restores the previous one.
#pragma once

#include <gtest/gtest.h>

#include <memory>

#include "kernels/kernels.h"

namespace epwa::kernels {

class ScopedIsa {
 public:
  explicit ScopedIsa(Isa isa) : saved_(ActiveIsa()) { SetActiveIsa(isa); }
  ~ScopedIsa() { SetActiveIsa(saved_); }
  ScopedIsa(const ScopedIsa&) = delete;
  ScopedIsa& operator=(const ScopedIsa&) = delete;

 private:
  Isa saved_;
};

// Makes MatMul use float32 activations with quantized and MXFP4 weights
// (SetFloatActivations) for a scope.
class ScopedFloatActivations {
 public:
  ScopedFloatActivations() : saved_(FloatActivations()) { SetFloatActivations(true); }
  ~ScopedFloatActivations() { SetFloatActivations(saved_); }
  ScopedFloatActivations(const ScopedFloatActivations&) = delete;
  ScopedFloatActivations& operator=(const ScopedFloatActivations&) = delete;

 private:
  bool saved_;
};

// Whether MatMul on `isa` multiplies quantized or MXFP4 weights with float32
// activations, and so equals the dequantized product: the scalar path
// always; AVX2 and AVX-512 never, since their decode and prefill both round x
// to int8 (AVX-512 without VNNI runs the AVX2 integer kernels); every path
// with float activations requested.
inline bool ExactQuantPath(Isa isa) { return FloatActivations() || isa == Isa::kScalar; }

// A test run once per instruction-set path: the path of GetParam() is active
// for the test's body and the previous one restored after it.
class PerIsaTest : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override { scoped_ = std::make_unique<ScopedIsa>(GetParam()); }
  void TearDown() override { scoped_.reset(); }

 private:
  std::unique_ptr<ScopedIsa> scoped_;
};

}  // namespace epwa::kernels
