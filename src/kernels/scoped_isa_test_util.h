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
