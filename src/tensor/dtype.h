// Element types of weights and the views that kernels read them through.
//
// Every kernel dispatches on WeightView::dtype, so a new type is a new case in
// the kernel tables, not a change to the model code. The quantized types
// (kQ8, kQ4, kNF4) are made at load time by kernels::Quantize from F32/F16/BF16
// weights; they never appear in a checkpoint, so ParseDType rejects them.
// kMXFP4 does come from checkpoints (gpt-oss experts), but as a pair of U8
// tensors (blocks and scales) that the model code pairs up into one view, so
// ParseDType rejects its name too.
#pragma once

#include <cstdint>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>

namespace epwa {

// New types go at the end: benchmarks and caches keep the numeric values.
enum class DType : uint8_t { kF32, kF16, kBF16, kQ8, kQ4, kNF4, kMXFP4, kU8, kF8E4M3 };

// kF8E4M3 is FP8 as DeepSeek-V3 checkpoints store their linears ("F8_E4M3"),
// always with a float32 scale per 128 x 128 block in a sibling tensor: the
// loader converts such a matrix to float32 (F8E4M3ToF32 times its block's
// scale), so no kernel sees it either.
// kU8 is raw bytes as a checkpoint stores them ("U8" in safetensors): the
// blocks and scales of MXFP4 tensors, which the loader pairs into one kMXFP4
// view. No kernel computes with it, and a float tensor (a weight, a norm, a
// bias) stored as U8 is refused at load (IsFloatDType).
inline bool IsFloatDType(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }

// ---------------------------------------------------------------------------
// Group-wise quantized weights: byte layout and rounding rules.
//
// A quantized [rows, cols] matrix needs cols % kQuantGroup == 0. Every row is
// cut into groups of 32 consecutive elements; group g of row r covers columns
// [32 g, 32 g + 32) and has one scale. A matrix is two arrays:
//
//   codes   row-major, RowBytes() bytes per row, no padding between rows:
//           kQ8   one int8 per element (cols bytes per row);
//           kQ4, kNF4
//                 16 bytes per group (cols / 2 bytes per row); byte j
//                 (0 <= j < 16) of a group holds element j of the group in
//                 its low nibble and element j + 16 in its high nibble.
//   scales  IEEE fp16 bit patterns, one per group, row-major [rows, cols / 32]
//           (the scale of group g of row r is scales[r * cols / 32 + g]).
// The model keeps them in one buffer instead, each row's scales right after
// its codes (WeightView::scales_in_rows, below); the bytes are the same.
//
// Values (s = the group's scale as float, n = the code or nibble):
//   kQ8   n * s,               n in [-127, 127] (-128 is never written);
//   kQ4   (n - 8) * s,         n in [0, 15], i.e. levels [-8, 7];
//   kNF4  kNF4Codebook[n] * s, n in [0, 15].
// Each product is one float multiplication, so every reader (WeightView::At,
// kernels::DequantizeRow, the prefill kernels) reconstructs identical floats.
//
// kernels::Quantize computes, per group of source values x (converted to
// float exactly), in float arithmetic:
//   kQ8   d = amax / 127, amax = max |x|;
//   kQ4   d = m / -8, where m = max(x) if max(x) >= -min(x), else min(x): the
//         element of largest magnitude maps to level -8 exactly (llama.cpp's
//         Q4_0 rule; the scale is negative when m > 0). Against d = amax / 7
//         this has 11% lower RMS error on Gaussian data (8.6% vs 9.7% of the
//         RMS value), because the step is 7/8 as large; the price is that a
//         value equal to -m clips to level 7 (an error of up to |s|);
//   kNF4  d = amax (QLoRA's absmax scaling into [-1, 1]).
// The stored scale s is d rounded to fp16 away from zero: the fp16 value of
// smallest magnitude with |s| >= |d| and the sign of d (at most 65504 in
// magnitude). Rounding up in magnitude means no code ever clips because the
// scale rounded down, also where |d| falls in fp16's subnormal range.
// With inv = (s != 0 ? 1 / s : 0) as a float and t = x * inv, the codes are
//   kQ8   n = clamp(rne(t), -127, 127);
//   kQ4   n = clamp(rne(t), -8, 7) + 8;
//   kNF4  n = the number of i in [0, 15) with t > (kNF4Codebook[i] +
//         kNF4Codebook[i + 1]) / 2 (the midpoint computed in float): the
//         nearest codebook value, ties going to the smaller one;
// where rne rounds to the nearest integer, ties to even. A scale of zero is
// stored as +0 whatever the sign of d, so an all-zero group gets scale 0 and
// codes that decode to 0. Non-finite inputs give unspecified codes.
inline constexpr int64_t kQuantGroup = 32;

// The 16 levels of the NormalFloat-4 data type of QLoRA (Dettmers et al.,
// 2023), as published in bitsandbytes: quantiles of N(0, 1) scaled to
// [-1, 1], with an exact zero.
inline constexpr float kNF4Codebook[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

// ---------------------------------------------------------------------------
// MXFP4: the OCP Microscaling format (MX v1.0) that gpt-oss checkpoints store
// their expert weights in, used in place from the mapped file.
//
// An MXFP4 [rows, cols] matrix needs cols % 32 == 0. Each row is cut into
// blocks of 32 consecutive elements with one shared scale. Two arrays:
//
//   codes   uint8 [rows, cols / 32, 16] (the checkpoint's `*_blocks` for one
//           expert), 16 bytes per block, no padding: byte j (0 <= j < 16) of
//           block g holds element 32 g + 2 j in its LOW nibble and element
//           32 g + 2 j + 1 in its high nibble. This differs from kQ4/kNF4,
//           whose byte j holds elements j and j + 16.
//   scales  uint8 [rows, cols / 32] (the checkpoint's `*_scales`), E8M0: a
//           biased exponent e, the block's scale being 2^(e - 127).
//
// A nibble n is an FP4 E2M1 number: bit 3 is the sign, bits 0-2 index the
// magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6} (kE2M1Values). The element's value
// is kE2M1Values[n] * E8M0ToF32(e), one float multiplication, which is exact:
// the scale is a power of two (2^-127 for e = 0 is a float subnormal, still
// exact) and the products need at most 2 significant bits, down to 2^-128.
// The one exception is overflow: 2^128 and above (e = 253 or 254 with the
// larger magnitudes) is beyond float and becomes +-infinity, as in any float
// conversion. E8M0 has no zero and no infinity; e = 255 is NaN in the OCP
// specification, and E8M0ToF32 returns NaN for it, so such a block decodes to
// NaN on every path. kernels::FirstNonFinite finds both cases, so that a
// loader can refuse such a matrix once (see kernels.h): a checkpoint holding
// either is damaged, since its weights would be infinite or NaN in any
// framework (transformers decodes e = 255 to +-inf or NaN).
//
// Checked against Hugging Face transformers' integrations/mxfp4.py
// (convert_moe_packed_tensors: lut[blk & 0x0F] to the even columns, lut[blk >>
// 4] to the odd ones, then ldexp by scales - 127).
inline constexpr float kE2M1Values[16] = {
    0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f,
};

// 2^(e - 127) as a float, exactly: e = 0 is the subnormal 2^-127 (the plain
// shift e << 23 would give zero), and e = 255 (NaN in the OCP specification)
// gives a quiet NaN.
inline float E8M0ToF32(uint8_t e) {
  const uint32_t bits = e == 0 ? 0x00400000u : e == 255 ? 0x7fc00000u : static_cast<uint32_t>(e) << 23;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// The load-time quantized types that kernels::Quantize makes (fp16 scales).
// kMXFP4 also has codes and group scales, but comes from a checkpoint and
// cannot be a Quantize target; HasGroupScales covers both.
inline bool IsQuantized(DType t) { return t == DType::kQ8 || t == DType::kQ4 || t == DType::kNF4; }

// How a type's per-group scales are stored: none (float types), IEEE fp16 bit
// patterns (the load-time quantized types) or E8M0 exponent bytes (kMXFP4).
enum class ScaleFormat : uint8_t { kNone, kF16, kE8M0 };

inline ScaleFormat ScaleFormatOf(DType t) {
  if (IsQuantized(t)) return ScaleFormat::kF16;
  if (t == DType::kMXFP4) return ScaleFormat::kE8M0;
  return ScaleFormat::kNone;
}

// Whether t is stored as codes plus one scale per group of kQuantGroup
// elements (so needs cols % 32 == 0 and WeightView::scales).
inline bool HasGroupScales(DType t) { return ScaleFormatOf(t) != ScaleFormat::kNone; }

// Bytes of one group's scale: 2 for fp16 scales, 1 for E8M0, 0 without.
inline size_t ScaleBytesPerGroup(DType t) {
  switch (ScaleFormatOf(t)) {
    case ScaleFormat::kF16: return 2;
    case ScaleFormat::kE8M0: return 1;
    case ScaleFormat::kNone: break;
  }
  return 0;
}

// Bytes per element of the float types. Quantized types have no whole-byte
// element size: kQ8 gives 1 (its codes), kQ4, kNF4 and kMXFP4 give 0; size
// them with WeightView::RowBytes/ScaleBytes or QuantizedBytes instead.
inline size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    case DType::kQ8: return 1;
    case DType::kU8: return 1;
    case DType::kF8E4M3: return 1;
    case DType::kQ4:
    case DType::kNF4:
    case DType::kMXFP4: return 0;
  }
  return 0;
}

// Names as they appear in safetensors headers (the quantized names never do).
inline const char* DTypeName(DType t) {
  switch (t) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kQ8: return "Q8";
    case DType::kQ4: return "Q4";
    case DType::kNF4: return "NF4";
    case DType::kMXFP4: return "MXFP4";
    case DType::kU8: return "U8";
    case DType::kF8E4M3: return "F8_E4M3";
  }
  return "?";
}

// Bytes of codes in one row of `cols` elements.
inline uint64_t CodeRowBytes(DType t, int64_t cols) {
  const uint64_t n = static_cast<uint64_t>(cols);
  switch (t) {
    case DType::kQ8: return n;
    case DType::kQ4:
    case DType::kNF4:
    case DType::kMXFP4: return n / 2;
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kU8:
    case DType::kF8E4M3: break;
  }
  return n * DTypeSize(t);
}

// Storage of a [rows, cols] matrix: for types with group scales codes plus
// scales (fp16 or E8M0; cols must be a multiple of kQuantGroup), else rows *
// cols elements.
inline uint64_t QuantizedBytes(DType t, int64_t rows, int64_t cols) {
  const uint64_t codes = CodeRowBytes(t, cols) * static_cast<uint64_t>(rows);
  if (!HasGroupScales(t)) return codes;
  return codes + static_cast<uint64_t>(rows) * static_cast<uint64_t>(cols / kQuantGroup) * ScaleBytesPerGroup(t);
}

// Checkpoint dtypes only: returns false for dtypes epwa cannot read (I8,
// F64, ...), for the load-time quantized types and for MXFP4 (stored as U8
// blocks and scales, which parse as kU8).
inline bool ParseDType(std::string_view name, DType* out) {
  if (name == "F32") { *out = DType::kF32; return true; }
  if (name == "F16") { *out = DType::kF16; return true; }
  if (name == "BF16") { *out = DType::kBF16; return true; }
  if (name == "U8") { *out = DType::kU8; return true; }
  if (name == "F8_E4M3") { *out = DType::kF8E4M3; return true; }
  return false;
}

// FP8 E4M3 ("fn": no infinities): sign, 4 exponent bits (bias 7), 3
// mantissa bits; exponent 0 is subnormal (m / 8 * 2^-6); S.1111.111 is NaN.
// Every value is exact in float32.
inline float F8E4M3ToF32(uint8_t b) {
  const int sign = b >> 7, exponent = (b >> 3) & 15, mantissa = b & 7;
  float v;
  if (exponent == 15 && mantissa == 7) return std::numeric_limits<float>::quiet_NaN();
  if (exponent == 0)
    v = std::ldexp(static_cast<float>(mantissa) / 8.0f, -6);
  else
    v = std::ldexp(1.0f + static_cast<float>(mantissa) / 8.0f, exponent - 7);
  return sign ? -v : v;
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
// safetensors file (or, for quantized types, in buffers filled at load time);
// the view never owns it. For types with group scales (HasGroupScales)
// `data` holds the codes and `scales` the group scales, laid out as described
// above, in the type's ScaleFormat: fp16 bit patterns for the load-time
// quantized types, E8M0 bytes for kMXFP4 (which may sit at any address in the
// mapping). `scales` is untyped so that one field serves both; read it through
// F16ScaleRow/E8M0ScaleRow or GroupScale.
//
// The scales may sit either in an array of their own (the layout above, as
// checkpoints store MXFP4) or, with scales_in_rows, right after the codes of
// their row: row r is then RowBytes() code bytes followed by ScaleRowBytes()
// scale bytes, `scales` points at row 0's scales (data + RowBytes()) and both
// codes and scales step by RowStride() from row to row. epwa quantizes into
// that layout at load time because a decode kernel then reads one stream per
// row instead of two: streaming 8 OLMoE experts from DRAM at 2 threads went
// from 40 to 50 GB/s at Q4 and from 42 to 53 GB/s at Q8 (kernels_bench
// BM_ExpertStep, three alternating rounds), and full-depth OLMoE-1B-7B
// decoded 63-65 instead of 48-49 tokens/s at int4 (docs/speed-log.md).
struct WeightView {
  DType dtype = DType::kF32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* scales = nullptr;  // [rows, cols / 32] in ScaleFormatOf(dtype), only if HasGroupScales(dtype)
  bool scales_in_rows = false;   // each row's scales follow its codes (see above)

  // A quantized matrix whose scales follow the codes of each row, in
  // QuantizedBytes(dtype, rows, cols) bytes at `data` (null for a view that
  // only describes the shape: its `scales` stay null too).
  static WeightView WithScalesInRows(DType dtype, const void* data, int64_t rows, int64_t cols) {
    WeightView v{dtype, data, rows, cols, nullptr, true};
    if (data != nullptr) v.scales = static_cast<const uint8_t*>(data) + v.RowBytes();
    return v;
  }

  // Bytes of the codes of one row (the codes only, for types with group scales).
  size_t RowBytes() const { return static_cast<size_t>(CodeRowBytes(dtype, cols)); }
  // Bytes of the scales of one row (0 for float types).
  size_t ScaleRowBytes() const { return static_cast<size_t>(cols / kQuantGroup) * ScaleBytesPerGroup(dtype); }
  // Bytes from one row's codes to the next row's.
  size_t RowStride() const { return RowBytes() + (scales_in_rows ? ScaleRowBytes() : 0); }
  // Bytes from one row's scales to the next row's.
  size_t ScaleStride() const { return scales_in_rows ? RowStride() : ScaleRowBytes(); }
  // Bytes at `data`: the codes, and the scales too when they are in the rows.
  size_t Bytes() const { return RowStride() * static_cast<size_t>(rows); }
  // Bytes of the separate scale array (0 for float types and when the scales
  // are in the rows).
  size_t ScaleBytes() const { return scales_in_rows ? 0 : ScaleRowBytes() * static_cast<size_t>(rows); }
  const uint8_t* Row(int64_t r) const {
    return static_cast<const uint8_t*>(data) + static_cast<size_t>(r) * RowStride();
  }
  // The scales of row r as their stored type: fp16 bits (cols / 32 of them,
  // for ScaleFormat::kF16) or E8M0 bytes (ScaleFormat::kE8M0).
  const uint16_t* F16ScaleRow(int64_t r) const {
    return reinterpret_cast<const uint16_t*>(static_cast<const uint8_t*>(scales) + static_cast<size_t>(r) * ScaleStride());
  }
  const uint8_t* E8M0ScaleRow(int64_t r) const {
    return static_cast<const uint8_t*>(scales) + static_cast<size_t>(r) * ScaleStride();
  }
  // The scale of group g of row r as float, exactly as every kernel uses it.
  float GroupScale(int64_t r, int64_t g) const {
    return ScaleFormatOf(dtype) == ScaleFormat::kE8M0 ? E8M0ToF32(E8M0ScaleRow(r)[g]) : F16ToF32(F16ScaleRow(r)[g]);
  }
  // Element (r, c) as float; slow, for tests and one-off reads.
  float At(int64_t r, int64_t c) const {
    const uint8_t* row = Row(r);
    if (dtype == DType::kMXFP4) {
      const uint8_t byte = row[c / 2];
      return kE2M1Values[c % 2 == 0 ? byte & 0x0f : byte >> 4] * GroupScale(r, c / kQuantGroup);
    }
    if (IsQuantized(dtype)) {
      const float s = GroupScale(r, c / kQuantGroup);
      if (dtype == DType::kQ8) return static_cast<float>(static_cast<int8_t>(row[c])) * s;
      const int64_t j = c % kQuantGroup;
      const uint8_t byte = row[c / kQuantGroup * 16 + j % 16];
      const int n = j < 16 ? byte & 0x0f : byte >> 4;
      return dtype == DType::kQ4 ? static_cast<float>(n - 8) * s : kNF4Codebook[n] * s;
    }
    const uint8_t* p = row + static_cast<size_t>(c) * DTypeSize(dtype);
    switch (dtype) {
      case DType::kF32: { float f; std::memcpy(&f, p, 4); return f; }
      case DType::kF16: { uint16_t h; std::memcpy(&h, p, 2); return F16ToF32(h); }
      case DType::kBF16: { uint16_t h; std::memcpy(&h, p, 2); return BF16ToF32(h); }
      case DType::kQ8:
      case DType::kQ4:
      case DType::kNF4:
      case DType::kMXFP4:
      case DType::kU8:
      case DType::kF8E4M3: break;
    }
    return 0.f;
  }
};

}  // namespace epwa
