// Test helper: forces an instruction-set path and restores the previous one.
#pragma once

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

}  // namespace epwa::kernels
