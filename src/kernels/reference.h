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

// kernels::Quantize written out literally from the rules in tensor/dtype.h,
// one element at a time (codes: src.rows * CodeRowBytes(target, cols) bytes,
// scales: src.rows * cols / 32). MatMul above also accepts quantized weights:
// it dequantizes them with WeightView::At.
void Quantize(const WeightView& src, DType target, uint8_t* codes, uint16_t* scales);

}  // namespace epwa::kernels::reference
