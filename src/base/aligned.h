// Cache-line aligned float buffers for activations and scratch space.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

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

// madvise(MADV_HUGEPAGE) over [p, p + bytes); advice only, so a kernel
// without THP (or with it off) leaves the pages as they are.
void AdviseHugePages(void* p, size_t bytes);

// The bytes HugePageAllocator reserves for a block of `bytes`: blocks of
// 2 MiB and more take whole huge pages, smaller ones what they ask. The
// memory planner counts the scratch with it (a 100 MiB array leaves up to
// 2 MiB of its last page unused).
constexpr size_t kHugePageBytes = size_t{2} << 20;
constexpr size_t HugePageBytes(size_t bytes) {
  return bytes < kHugePageBytes ? bytes : (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
}

// An allocator for large scratch arrays (a forward pass's activations over
// thousands of rows, 100 MiB and more each when detection batches a
// corpus) that asks Linux to back them with transparent huge pages. Debian
// runs THP in "madvise" mode: only memory that asks gets 2 MiB pages, and
// in 4 KiB pages first touching such arrays cost a page fault per 4 KiB,
// which took about a sixth of a detection batch (perf), and their reads a
// TLB miss per page. Arrays under 2 MiB, and any that madvise refuses,
// keep ordinary pages; the contents are whatever the container makes them.
template <typename T>
struct HugePageAllocator {
  using value_type = T;
  static constexpr size_t kHugePage = kHugePageBytes;

  HugePageAllocator() = default;
  template <typename U>
  HugePageAllocator(const HugePageAllocator<U>&) {}

  T* allocate(size_t n) {
    if (n > SIZE_MAX / sizeof(T) - kHugePage) throw std::bad_alloc();
    const size_t bytes = n * sizeof(T);
    if (bytes < kHugePage) return static_cast<T*>(::operator new(bytes));
    const size_t rounded = HugePageBytes(bytes);
    void* p = std::aligned_alloc(kHugePage, rounded);
    if (!p) throw std::bad_alloc();
    AdviseHugePages(p, rounded);
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t n) {
    if (n * sizeof(T) < kHugePage)
      ::operator delete(p);
    else
      std::free(p);
  }
  friend bool operator==(const HugePageAllocator&, const HugePageAllocator&) { return true; }
};

// A growable array for large scratch (HugePageAllocator).
template <typename T>
using HugePageVector = std::vector<T, HugePageAllocator<T>>;

// A fixed-size array of zero bytes from calloc. glibc serves a large block
// with fresh pages from the kernel, which are zero already and are neither
// written nor made resident until the program writes them: a KV cache sized
// for its whole context, or for every layer of a pass that stops early,
// costs memory (and page faults) only for the positions it stores, where
// zero-filling it up front touched every page. 16-byte aligned, as malloc.
class ZeroedBytes {
 public:
  ZeroedBytes() = default;
  explicit ZeroedBytes(size_t count) : data_(static_cast<uint8_t*>(std::calloc(count > 0 ? count : 1, 1))), size_(count) {
    if (!data_) throw std::bad_alloc();
  }
  uint8_t* data() { return data_.get(); }
  const uint8_t* data() const { return data_.get(); }
  size_t size() const { return size_; }

 private:
  std::unique_ptr<uint8_t, AlignedFree> data_;
  size_t size_ = 0;
};

}  // namespace epwa
