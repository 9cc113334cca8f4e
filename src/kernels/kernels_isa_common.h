// Helpers shared by the instruction-set files (kernels_avx2.cc and
// kernels_avx512.cc), which include this header first.
//
// Those files are compiled with different -m flags, so nothing they share may
// have external or vague linkage: the linker keeps a single copy of an inline
// function, template instantiation or in-class member function for the whole
// program, and if it kept the one compiled with -mavx512f, the AVX2 path would
// fault on CPUs without AVX-512 (see kernels_internal.h). Everything below
// therefore lives in an anonymous namespace: each file that includes this
// header gets its own private copy, compiled with that file's own flags, and
// no symbol of it is visible to the linker. Only code without ISA-specific
// intrinsics belongs here; the SSE intrinsics in Sqrt exist on every x86-64
// CPU.
#pragma once

#if !defined(__x86_64__) && !defined(__i386__)
#error "kernels_isa_common.h is for the x86 instruction-set files only."
#endif

// GCC 12 reports the deliberately undefined pass-through operands inside its
// own intrinsic headers as uninitialised (GCC bug 105593); the headers' code
// is correct, so the warning is silenced for them only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#include <cstdint>
#include <type_traits>

#include "kernels/kernels_internal.h"

namespace epwa::kernels {
namespace {

// Local stand-ins for std::min, std::clamp, DTypeSize and WeightView::Row,
// so that the instruction-set files emit no shared inline code.
constexpr int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }
constexpr int64_t Max(int64_t a, int64_t b) { return a > b ? a : b; }
constexpr int64_t Clamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }
inline int64_t ElemBytes(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }
inline int64_t RowBytes(const WeightView& w) { return w.cols * ElemBytes(w.dtype); }
inline const uint8_t* RowAt(const WeightView& w, int64_t r) {
  return static_cast<const uint8_t*>(w.data) + r * RowBytes(w);
}
inline float Sqrt(float v) { return _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(v))); }

// pool.ParallelFor over a lambda, without instantiating std::function here.
template <typename F>
void ParallelRange(ThreadPool& pool, int64_t n, int64_t grain, F&& fn) {
  using Fn = std::remove_reference_t<F>;
  internal::ParallelFor(
      pool, n, grain, [](void* c, int64_t b, int64_t e) { (*static_cast<Fn*>(c))(b, e); }, &fn);
}

// Asks for the cache line holding p to be brought into L2. An asm statement,
// because GCC deletes loops that contain nothing but __builtin_prefetch.
// Prefetches never fault, so the address may lie past the end of a row or of
// the mapping.
inline void PrefetchL2(const void* p) {
  asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p)));
}

}  // namespace
}  // namespace epwa::kernels
