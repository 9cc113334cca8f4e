#include "base/aligned.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "base/sysinfo.h"

namespace epwa {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

// The VmFlags line of the mapping of /proc/self/smaps that holds address p
// ("" if none does).
std::string VmFlagsOf(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    uintptr_t begin = 0, end = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> begin >> dash >> end && dash == '-') {
      inside = begin <= address && address < end;
      continue;
    }
    if (inside && line.rfind("VmFlags:", 0) == 0) return line;
  }
  return "";
}

TEST(HugePageVector, LargeArraysAreHugePageAlignedAndAdvised) {
  HugePageVector<float> v(3 * kMiB / sizeof(float));  // 3 MiB: two huge pages
  EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data()) % HugePageAllocator<float>::kHugePage, 0u);
  for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(v[i], 0.f) << i;  // resize value-initialises
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 1000);
  // Growing moves the contents into a new block; they survive.
  v.resize(5 * kMiB / sizeof(float));
  EXPECT_EQ(v[123456], 456.f);
  EXPECT_EQ(v[3 * kMiB / sizeof(float) - 1], static_cast<float>((3 * kMiB / sizeof(float) - 1) % 1000));
  EXPECT_EQ(v.back(), 0.f);
  // madvise(MADV_HUGEPAGE) shows as "hg" in the mapping's flags wherever the
  // kernel has transparent huge pages (the pages themselves depend on its
  // mode and on free memory, so they are not checked).
  if (!std::filesystem::exists("/sys/kernel/mm/transparent_hugepage/enabled"))
    GTEST_SKIP() << "this kernel has no transparent huge pages";
  const std::string flags = VmFlagsOf(v.data());
  ASSERT_FALSE(flags.empty()) << "no mapping in /proc/self/smaps holds the array";
  EXPECT_NE(flags.find(" hg"), std::string::npos) << flags;
}

// What the memory planner counts for an array: whole huge pages from 2 MiB
// on, the bytes asked for below.
TEST(HugePageVector, HugePageBytesRoundsLargeBlocksToWholePages) {
  constexpr size_t kPage = size_t{2} << 20;
  static_assert(HugePageBytes(0) == 0);
  static_assert(HugePageBytes(kPage - 1) == kPage - 1);
  static_assert(HugePageBytes(kPage) == kPage);
  static_assert(HugePageBytes(kPage + 1) == 2 * kPage);
  static_assert(HugePageBytes(100 * kPage + 4096) == 101 * kPage);
  EXPECT_EQ(HugePageAllocator<float>::kHugePage, kPage);
}

TEST(HugePageVector, SmallArraysUseOrdinaryAllocations) {
  HugePageVector<double> v(1000, 2.5);
  EXPECT_EQ(v[999], 2.5);
  v.clear();
  v.shrink_to_fit();
  v.push_back(1.0);
  EXPECT_EQ(v.size(), 1u);
  HugePageVector<int> copy(100, 7);
  HugePageVector<int> moved = std::move(copy);
  EXPECT_EQ(moved[99], 7);
}

TEST(ZeroedBytes, ReadsZeroAndBecomesResidentOnlyWhereWritten) {
  const uint64_t before = CurrentRssBytes();
  ZeroedBytes bytes(256 * kMiB);
  ASSERT_EQ(bytes.size(), 256 * kMiB);
  const uint64_t allocated = CurrentRssBytes();
  // A zero-filled vector of this size would be resident whole already.
  EXPECT_LT(allocated, before + 16 * kMiB) << "before " << before << ", after " << allocated;
  for (size_t i = 0; i < bytes.size(); i += 4096) ASSERT_EQ(bytes.data()[i], 0) << i;
  for (size_t i = 0; i < 32 * kMiB; ++i) bytes.data()[i] = static_cast<uint8_t>(i);
  EXPECT_EQ(bytes.data()[32 * kMiB - 1], static_cast<uint8_t>(32 * kMiB - 1));
  EXPECT_EQ(bytes.data()[32 * kMiB], 0);
  EXPECT_GE(CurrentRssBytes(), before + 32 * kMiB);
  ZeroedBytes empty(0);
  EXPECT_EQ(empty.size(), 0u);
  EXPECT_NE(empty.data(), nullptr);
}

}  // namespace
}  // namespace epwa
