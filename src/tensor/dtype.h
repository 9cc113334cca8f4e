// Element types of weights and the views that kernels read them through.
//
// Quantized types (Q8/Q4) join this enum in the quantization issue; every
// kernel dispatches on WeightView::dtype, so adding one is a new case in the
// kernel tables, not a change to the model code.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace epwa {

enum class DType : uint8_t { kF32, kF16, kBF16 };

inline size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
  }
  return 0;
}

// Names as they appear in safetensors headers.
inline const char* DTypeName(DType t) {
  switch (t) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
  }
  return "?";
}

// Returns false for dtypes epwa cannot compute with (I8, F64, ...).
inline bool ParseDType(std::string_view name, DType* out) {
  if (name == "F32") { *out = DType::kF32; return true; }
  if (name == "F16") { *out = DType::kF16; return true; }
  if (name == "BF16") { *out = DType::kBF16; return true; }
  return false;
}

inline float BF16ToF32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round-to-nearest-even, NaN preserved (quiet), matching PyTorch's .bfloat16().
inline uint16_t F32ToBF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

// IEEE half <-> float, portable scalar versions (kernels use F16C when present).
inline float F16ToF32(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) { mant <<= 1; --exp; }
      mant &= 0x3ffu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t F32ToF16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t absx = x & 0x7fffffffu;
  if (absx > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (absx >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (absx < 0x38800000u) {
    // Subnormal or zero in half: the value in units of 2^-24, rounded to
    // nearest even. Scaling by a power of two is exact in float.
    float magnitude;
    std::memcpy(&magnitude, &absx, 4);
    const float units = magnitude * 16777216.0f;
    float whole = static_cast<float>(static_cast<uint32_t>(units));
    uint32_t half_mant = static_cast<uint32_t>(whole);
    const float frac = units - whole;
    if (frac > 0.5f || (frac == 0.5f && (half_mant & 1u))) ++half_mant;
    return static_cast<uint16_t>(sign | half_mant);
  }
  uint32_t half = ((absx >> 13) - ((127 - 15) << 10));
  const uint32_t rem = absx & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;
  return static_cast<uint16_t>(sign | half);
}

// A read-only, row-major 2-D weight matrix [rows, cols] in any DType. `rows`
// is the number of output features, `cols` the input features, as in a
// PyTorch nn.Linear weight. The memory usually lives in a memory-mapped
// safetensors file; the view never owns it.
struct WeightView {
  DType dtype = DType::kF32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;

  size_t RowBytes() const { return static_cast<size_t>(cols) * DTypeSize(dtype); }
  size_t Bytes() const { return RowBytes() * static_cast<size_t>(rows); }
  const uint8_t* Row(int64_t r) const {
    return static_cast<const uint8_t*>(data) + static_cast<size_t>(r) * RowBytes();
  }
  // Element (r, c) as float; slow, for tests and one-off reads.
  float At(int64_t r, int64_t c) const {
    const uint8_t* p = Row(r) + static_cast<size_t>(c) * DTypeSize(dtype);
    switch (dtype) {
      case DType::kF32: { float f; std::memcpy(&f, p, 4); return f; }
      case DType::kF16: { uint16_t h; std::memcpy(&h, p, 2); return F16ToF32(h); }
      case DType::kBF16: { uint16_t h; std::memcpy(&h, p, 2); return BF16ToF32(h); }
    }
    return 0.f;
  }
};

}  // namespace epwa
