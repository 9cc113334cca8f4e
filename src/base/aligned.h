// Cache-line aligned float buffers for activations and scratch space.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

namespace epwa {

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};

// A fixed-size, 64-byte aligned, zero-initialised array of T. 64 bytes is one
// cache line and one AVX-512 register, so vector loads never split lines.
// Passed to skip the zero fill, for a buffer that is overwritten whole right
// away (a copy of mapped weights): filling it first would touch every page
// twice.
struct Uninitialized {};

template <typename T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t count) { Resize(count); }
  AlignedBuffer(size_t count, Uninitialized) { Resize(count, /*zero=*/false); }

  void Resize(size_t count, bool zero = true) {
    size_t bytes = ((count * sizeof(T) + 63) / 64) * 64;
    if (bytes == 0) bytes = 64;
    void* p = std::aligned_alloc(64, bytes);
    if (!p) throw std::bad_alloc();
    // Without the fill, the padding past `count` is still zeroed: readers
    // never see indeterminate bytes.
    const size_t used = zero ? 0 : count * sizeof(T);
    std::memset(static_cast<char*>(p) + used, 0, bytes - used);
    data_.reset(static_cast<T*>(p));
    size_ = count;
  }
  T* data() { return data_.get(); }
  const T* data() const { return data_.get(); }
  size_t size() const { return size_; }
  T& operator[](size_t i) { return data_.get()[i]; }
  const T& operator[](size_t i) const { return data_.get()[i]; }

 private:
  std::unique_ptr<T, AlignedFree> data_;
  size_t size_ = 0;
};

}  // namespace epwa
