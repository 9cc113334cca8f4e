// Plain scalar reference kernels: obviously correct, slow, used only by tests
// and as the portable fallback's specification.
#pragma once

#include <cstdint>

#include "tensor/dtype.h"

namespace epwa::kernels::reference {

// Same contracts as kernels.h; accumulates in double for a tight reference.
void MatMul(const float* x, int64_t M, const WeightView& w, float* y);
void RmsNorm(const float* x, const float* weight, int64_t n, float eps, float* out);
void Softmax(float* x, int64_t n);
void SiluMul(float* gate, const float* up, int64_t n);

}  // namespace epwa::kernels::reference
