#include "base/meminfo.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace epwa {
namespace {

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kGiB = 1024 * kMiB;

// MemTotal 16 GiB, MemAvailable 8 GiB.
const char* kMeminfo =
    "MemTotal:       16777216 kB\n"
    "MemFree:         1048576 kB\n"
    "MemAvailable:    8388608 kB\n"
    "Buffers:          123456 kB\n"
    "HugePages_Total:       0\n";

using Files = std::map<std::string, std::string>;

HostMemory FromFixture(const char* meminfo, const char* cgroup, const Files& files) {
  return HostMemoryFromFiles(meminfo, cgroup,
                             [&files](const std::string& path) -> std::optional<std::string> {
                               auto it = files.find(path);
                               if (it == files.end()) return std::nullopt;
                               return it->second;
                             });
}

TEST(HostMemory, MeminfoOnlyWhenNoCgroup) {
  HostMemory m = FromFixture(kMeminfo, "", {});
  EXPECT_EQ(m.total_bytes, 16 * kGiB);
  EXPECT_EQ(m.available_bytes, 8 * kGiB);
  EXPECT_EQ(m.free_bytes, 8 * kGiB);
  EXPECT_EQ(m.source, "MemAvailable");
  EXPECT_FALSE(m.cgroup_limit_bytes);
  EXPECT_FALSE(m.cgroup_usage_bytes);
  EXPECT_EQ(m.cgroup_path, "");
}

TEST(HostMemory, V2Limited) {
  HostMemory m = FromFixture(kMeminfo, "0::/user.slice/app.service\n",
                             {{"/sys/fs/cgroup/user.slice/app.service/memory.max", "1073741824\n"},
                              {"/sys/fs/cgroup/user.slice/app.service/memory.current", "268435456\n"}});
  EXPECT_EQ(m.cgroup_limit_bytes, std::optional<uint64_t>(1 * kGiB));
  EXPECT_EQ(m.cgroup_usage_bytes, std::optional<uint64_t>(256 * kMiB));
  EXPECT_EQ(m.cgroup_path, "/sys/fs/cgroup/user.slice/app.service");
  EXPECT_EQ(m.free_bytes, 768 * kMiB);
  EXPECT_EQ(m.source, "cgroup v2 limit");
  EXPECT_EQ(m.available_bytes, 8 * kGiB);
}

TEST(HostMemory, V2MaxIsUnlimited) {
  HostMemory m = FromFixture(kMeminfo, "0::/a\n",
                             {{"/sys/fs/cgroup/a/memory.max", "max\n"},
                              {"/sys/fs/cgroup/a/memory.current", "1000\n"}});
  EXPECT_FALSE(m.cgroup_limit_bytes);
  EXPECT_EQ(m.cgroup_usage_bytes, std::optional<uint64_t>(1000));
  EXPECT_EQ(m.cgroup_path, "/sys/fs/cgroup/a");
  EXPECT_EQ(m.free_bytes, 8 * kGiB);
  EXPECT_EQ(m.source, "MemAvailable");
}

TEST(HostMemory, V2NestedParentTighter) {
  HostMemory m = FromFixture(kMeminfo, "0::/parent/child\n",
                             {{"/sys/fs/cgroup/parent/child/memory.max", "max\n"},
                              {"/sys/fs/cgroup/parent/child/memory.current", "104857600\n"},
                              {"/sys/fs/cgroup/parent/memory.max", "2147483648\n"},
                              {"/sys/fs/cgroup/parent/memory.current", "1610612736\n"}});
  EXPECT_EQ(m.cgroup_limit_bytes, std::optional<uint64_t>(2 * kGiB));
  EXPECT_EQ(m.cgroup_usage_bytes, std::optional<uint64_t>(1536 * kMiB));
  EXPECT_EQ(m.cgroup_path, "/sys/fs/cgroup/parent");
  EXPECT_EQ(m.free_bytes, 512 * kMiB);
  EXPECT_EQ(m.source, "cgroup v2 limit");
}

TEST(HostMemory, V2NestedChildTighter) {
  HostMemory m = FromFixture(kMeminfo, "0::/parent/child\n",
                             {{"/sys/fs/cgroup/parent/child/memory.max", "1073741824\n"},
                              {"/sys/fs/cgroup/parent/child/memory.current", "0\n"},
                              {"/sys/fs/cgroup/parent/memory.max", "4294967296\n"},
                              {"/sys/fs/cgroup/parent/memory.current", "0\n"}});
  EXPECT_EQ(m.cgroup_limit_bytes, std::optional<uint64_t>(1 * kGiB));
  EXPECT_EQ(m.cgroup_path, "/sys/fs/cgroup/parent/child");
  EXPECT_EQ(m.free_bytes, 1 * kGiB);
}

TEST(HostMemory, V2LeastHeadroomDecidesNotSmallestLimit) {
  // The child has the smaller limit, but siblings have filled the parent.
  HostMemory m = FromFixture(kMeminfo, "0::/p/c\n",
                             {{"/sys/fs/cgroup/p/c/memory.max", "1073741824\n"},
                              {"/sys/fs/cgroup/p/c/memory.current", "536870912\n"},
                              {"/sys/fs/cgroup/p/memory.max", "2147483648\n"},
                              {"/sys/fs/cgroup/p/memory.current", "2042626048\n"}});
  EXPECT_EQ(m.cgroup_path, "/sys/fs/cgroup/p");
  EXPECT_EQ(m.free_bytes, 100 * kMiB);
}

TEST(HostMemory, AvailableTighterThanCgroup) {
  HostMemory m = FromFixture("MemTotal: 1048576 kB\nMemAvailable: 102400 kB\n", "0::/a\n",
                             {{"/sys/fs/cgroup/a/memory.max", "1073741824\n"},
                              {"/sys/fs/cgroup/a/memory.current", "0\n"}});
  EXPECT_EQ(m.free_bytes, 100 * kMiB);
  EXPECT_EQ(m.source, "MemAvailable");
  EXPECT_EQ(m.cgroup_limit_bytes, std::optional<uint64_t>(1 * kGiB));
}

TEST(HostMemory, UsageAboveLimitSaturatesAtZero) {
  HostMemory m = FromFixture(kMeminfo, "0::/a\n",
                             {{"/sys/fs/cgroup/a/memory.max", "1000\n"},
                              {"/sys/fs/cgroup/a/memory.current", "5000\n"}});
  EXPECT_EQ(m.free_bytes, 0u);
  EXPECT_EQ(m.source, "cgroup v2 limit");
}

TEST(HostMemory, V1Limited) {
  HostMemory m = FromFixture(kMeminfo,
                             "12:pids:/docker/abc\n"
                             "4:memory:/docker/abc\n"
                             "1:name=systemd:/docker/abc\n"
                             "0::/docker/abc\n",
                             {{"/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", "2147483648\n"},
                              {"/sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes", "1073741824\n"}});
  EXPECT_EQ(m.cgroup_limit_bytes, std::optional<uint64_t>(2 * kGiB));
  EXPECT_EQ(m.cgroup_usage_bytes, std::optional<uint64_t>(1 * kGiB));
  EXPECT_EQ(m.cgroup_path, "/sys/fs/cgroup/memory/docker/abc");
  EXPECT_EQ(m.free_bytes, 1 * kGiB);
  EXPECT_EQ(m.source, "cgroup v1 limit");
}

TEST(HostMemory, V1CommaJoinedControllers) {
  HostMemory m = FromFixture(kMeminfo, "3:cpuacct,memory,cpu:/job\n",
                             {{"/sys/fs/cgroup/memory/job/memory.limit_in_bytes", "1073741824"},
                              {"/sys/fs/cgroup/memory/job/memory.usage_in_bytes", "0"}});
  EXPECT_EQ(m.free_bytes, 1 * kGiB);
  EXPECT_EQ(m.source, "cgroup v1 limit");
}

TEST(HostMemory, V1UnlimitedSentinel) {
  HostMemory m = FromFixture(kMeminfo, "4:memory:/x\n",
                             {{"/sys/fs/cgroup/memory/x/memory.limit_in_bytes", "9223372036854771712\n"},
                              {"/sys/fs/cgroup/memory/x/memory.usage_in_bytes", "4407296\n"},
                              {"/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n"},
                              {"/sys/fs/cgroup/memory/memory.usage_in_bytes", "2269675520\n"}});
  EXPECT_FALSE(m.cgroup_limit_bytes);
  EXPECT_EQ(m.cgroup_usage_bytes, std::optional<uint64_t>(4407296));
  EXPECT_EQ(m.cgroup_path, "/sys/fs/cgroup/memory/x");
  EXPECT_EQ(m.free_bytes, 8 * kGiB);
  EXPECT_EQ(m.source, "MemAvailable");
}

TEST(HostMemory, V1SentinelThresholdIsTwoToThe62) {
  HostMemory at = FromFixture(kMeminfo, "4:memory:/\n",
                              {{"/sys/fs/cgroup/memory/memory.limit_in_bytes", "4611686018427387904"}});
  EXPECT_FALSE(at.cgroup_limit_bytes);
  HostMemory below = FromFixture(kMeminfo, "4:memory:/\n",
                                 {{"/sys/fs/cgroup/memory/memory.limit_in_bytes", "4611686018427387903"}});
  EXPECT_EQ(below.cgroup_limit_bytes, std::optional<uint64_t>(4611686018427387903ull));
  EXPECT_EQ(below.source, "MemAvailable");  // usage unknown: headroom = the limit, huge
}

TEST(HostMemory, V1NestedParentTighter) {
  HostMemory m = FromFixture(kMeminfo, "4:memory:/a/b\n",
                             {{"/sys/fs/cgroup/memory/a/b/memory.limit_in_bytes", "9223372036854771712"},
                              {"/sys/fs/cgroup/memory/a/b/memory.usage_in_bytes", "10"},
                              {"/sys/fs/cgroup/memory/a/memory.limit_in_bytes", "1073741824"},
                              {"/sys/fs/cgroup/memory/a/memory.usage_in_bytes", "536870912"}});
  EXPECT_EQ(m.cgroup_path, "/sys/fs/cgroup/memory/a");
  EXPECT_EQ(m.free_bytes, 512 * kMiB);
  EXPECT_EQ(m.source, "cgroup v1 limit");
}

TEST(HostMemory, HybridPrefersV1MemoryController) {
  const char* cgroup = "4:memory:/m\n0::/u\n";
  HostMemory m = FromFixture(kMeminfo, cgroup,
                             {{"/sys/fs/cgroup/memory/m/memory.limit_in_bytes", "1073741824"},
                              {"/sys/fs/cgroup/u/memory.max", "536870912"}});
  EXPECT_EQ(m.source, "cgroup v1 limit");
  EXPECT_EQ(m.free_bytes, 1 * kGiB);
  // When no v1 file is readable the v2 line is used.
  HostMemory v2 = FromFixture(kMeminfo, cgroup, {{"/sys/fs/cgroup/u/memory.max", "536870912"}});
  EXPECT_EQ(v2.source, "cgroup v2 limit");
  EXPECT_EQ(v2.free_bytes, 512 * kMiB);
}

TEST(HostMemory, NamespacedV2FallsBackToRoot) {
  HostMemory m = FromFixture(kMeminfo, "0::/kubepods/burstable/pod1/ctr\n",
                             {{"/sys/fs/cgroup/memory.max", "536870912\n"},
                              {"/sys/fs/cgroup/memory.current", "0\n"}});
  EXPECT_EQ(m.cgroup_path, "/sys/fs/cgroup");
  EXPECT_EQ(m.free_bytes, 512 * kMiB);
  EXPECT_EQ(m.source, "cgroup v2 limit");
}

TEST(HostMemory, NamespacedV1FallsBackToRoot) {
  HostMemory m = FromFixture(kMeminfo, "7:memory:/docker/0123456789abcdef\n",
                             {{"/sys/fs/cgroup/memory/memory.limit_in_bytes", "268435456\n"},
                              {"/sys/fs/cgroup/memory/memory.usage_in_bytes", "0\n"}});
  EXPECT_EQ(m.cgroup_path, "/sys/fs/cgroup/memory");
  EXPECT_EQ(m.free_bytes, 256 * kMiB);
  EXPECT_EQ(m.source, "cgroup v1 limit");
}

TEST(HostMemory, PathOutsideNamespaceReadsRootOnly) {
  HostMemory m = FromFixture(kMeminfo, "0::/../../other\n",
                             {{"/sys/fs/cgroup/other/memory.max", "1"},
                              {"/sys/fs/cgroup/memory.max", "536870912"}});
  EXPECT_EQ(m.cgroup_path, "/sys/fs/cgroup");
  EXPECT_EQ(m.free_bytes, 512 * kMiB);
}

TEST(HostMemory, MalformedNumbersAreIgnored) {
  // Malformed limit: bound left out, usage still reported.
  HostMemory a = FromFixture(kMeminfo, "0::/a\n",
                             {{"/sys/fs/cgroup/a/memory.max", "12abc\n"},
                              {"/sys/fs/cgroup/a/memory.current", "100\n"}});
  EXPECT_FALSE(a.cgroup_limit_bytes);
  EXPECT_EQ(a.cgroup_usage_bytes, std::optional<uint64_t>(100));
  EXPECT_EQ(a.free_bytes, 8 * kGiB);
  EXPECT_EQ(a.source, "MemAvailable");
  // Malformed usage: the limit alone bounds.
  HostMemory b = FromFixture(kMeminfo, "0::/a\n",
                             {{"/sys/fs/cgroup/a/memory.max", "1073741824"},
                              {"/sys/fs/cgroup/a/memory.current", "-5"}});
  EXPECT_EQ(b.cgroup_limit_bytes, std::optional<uint64_t>(1 * kGiB));
  EXPECT_FALSE(b.cgroup_usage_bytes);
  EXPECT_EQ(b.free_bytes, 1 * kGiB);
  // Overflowing numbers, empty files, negative, hex, v1 "max".
  for (const char* bad : {"99999999999999999999999", "", "   ", "-1", "0x1000", "1e9", "max"}) {
    HostMemory c = FromFixture(kMeminfo, "4:memory:/a\n",
                               {{"/sys/fs/cgroup/memory/a/memory.limit_in_bytes", bad},
                                {"/sys/fs/cgroup/memory/a/memory.usage_in_bytes", bad}});
    EXPECT_FALSE(c.cgroup_limit_bytes) << bad;
    EXPECT_FALSE(c.cgroup_usage_bytes) << bad;
    EXPECT_EQ(c.free_bytes, 8 * kGiB) << bad;
  }
  // Malformed /proc/meminfo values.
  HostMemory d = FromFixture("MemTotal: lots kB\nMemAvailable: 12x kB\n", "", {});
  EXPECT_EQ(d.total_bytes, 0u);
  EXPECT_EQ(d.available_bytes, 0u);
  EXPECT_EQ(d.free_bytes, 0u);
  EXPECT_EQ(d.source, "");
  HostMemory e = FromFixture("MemTotal: 99999999999999999999 kB\nMemAvailable: 18014398509481984 kB\n",
                             "", {});
  EXPECT_EQ(e.total_bytes, 0u);      // does not fit in 64 bits
  EXPECT_EQ(e.available_bytes, 0u);  // 2^54 kB overflows when scaled to bytes
}

TEST(HostMemory, MalformedCgroupLinesAreIgnored) {
  HostMemory m = FromFixture(kMeminfo, "garbage\n1:memory\n::\n2:memory:relative\n\n:::/x\n",
                             {{"/sys/fs/cgroup/memory/memory.limit_in_bytes", "1"},
                              {"/sys/fs/cgroup/memory.max", "1"}});
  EXPECT_EQ(m.cgroup_path, "");
  EXPECT_EQ(m.free_bytes, 8 * kGiB);
  EXPECT_EQ(m.source, "MemAvailable");
}

TEST(HostMemory, MissingFiles) {
  HostMemory m = FromFixture(kMeminfo, "0::/a/b\n4:memory:/a/b\n", {});
  EXPECT_FALSE(m.cgroup_limit_bytes);
  EXPECT_FALSE(m.cgroup_usage_bytes);
  EXPECT_EQ(m.cgroup_path, "");
  EXPECT_EQ(m.free_bytes, 8 * kGiB);
  EXPECT_EQ(m.source, "MemAvailable");

  HostMemory empty = FromFixture("", "", {});
  EXPECT_EQ(empty.total_bytes, 0u);
  EXPECT_EQ(empty.free_bytes, 0u);
  EXPECT_EQ(empty.source, "");

  // No /proc/meminfo but a cgroup limit: the cgroup alone bounds.
  HostMemory only_cgroup = FromFixture("", "0::/\n", {{"/sys/fs/cgroup/memory.max", "4096"}});
  EXPECT_EQ(only_cgroup.free_bytes, 4096u);
  EXPECT_EQ(only_cgroup.source, "cgroup v2 limit");
}

TEST(HostMemory, OldKernelWithoutMemAvailableUsesMemFree) {
  HostMemory m = FromFixture("MemTotal: 2048 kB\nMemFree: 1024 kB\n", "", {});
  EXPECT_EQ(m.available_bytes, 1024 * kKiB);
  EXPECT_EQ(m.free_bytes, 1024 * kKiB);
  EXPECT_EQ(m.source, "MemFree");
}

TEST(HostMemory, ThrowingReaderCountsAsMissing) {
  HostMemory m = HostMemoryFromFiles(kMeminfo, "0::/a\n",
                                     [](const std::string&) -> std::optional<std::string> {
                                       throw std::runtime_error("EACCES");
                                     });
  EXPECT_EQ(m.cgroup_path, "");
  EXPECT_EQ(m.free_bytes, 8 * kGiB);
}

TEST(HostMemoryLive, ProbeHostMemoryOnThisMachine) {
  HostMemory m = ProbeHostMemory();
  std::printf("host: total=%llu available=%llu free=%llu source=\"%s\" cgroup_path=\"%s\"",
              static_cast<unsigned long long>(m.total_bytes),
              static_cast<unsigned long long>(m.available_bytes),
              static_cast<unsigned long long>(m.free_bytes), m.source.c_str(),
              m.cgroup_path.c_str());
  if (m.cgroup_limit_bytes) {
    std::printf(" limit=%llu", static_cast<unsigned long long>(*m.cgroup_limit_bytes));
  } else {
    std::printf(" limit=none");
  }
  if (m.cgroup_usage_bytes) {
    std::printf(" usage=%llu", static_cast<unsigned long long>(*m.cgroup_usage_bytes));
  }
  std::printf("\n");
  EXPECT_GT(m.total_bytes, 0u);
  EXPECT_LE(m.available_bytes, m.total_bytes);
  EXPECT_GT(m.free_bytes, 0u);
  EXPECT_LE(m.free_bytes, m.available_bytes);
  EXPECT_FALSE(m.source.empty());
}

// A cpu0 cache folder of sysfs: index i holds (level, type, size).
Files CacheFiles(const std::vector<std::array<std::string, 3>>& entries) {
  Files files;
  for (size_t i = 0; i < entries.size(); ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    files[dir + "level"] = entries[i][0];
    files[dir + "type"] = entries[i][1];
    files[dir + "size"] = entries[i][2];
  }
  return files;
}

uint64_t CacheFromFixture(const Files& files) {
  return LastLevelCacheBytesFromFiles([&files](const std::string& path) -> std::optional<std::string> {
    auto it = files.find(path);
    if (it == files.end()) return std::nullopt;
    return it->second;
  });
}

TEST(LastLevelCache, TheLargestCacheOfTheHighestLevel) {
  // As this Emerald Rapids VM lists them (sysfs ends each value in a newline).
  EXPECT_EQ(CacheFromFixture(CacheFiles({{"1\n", "Data\n", "48K\n"},
                                         {"1\n", "Instruction\n", "32K\n"},
                                         {"2\n", "Unified\n", "2048K\n"},
                                         {"3\n", "Unified\n", "307200K\n"}})),
            307200 * kKiB);
  // No L3: the L2. Suffixes M and G, and plain bytes.
  EXPECT_EQ(CacheFromFixture(CacheFiles({{"1", "Data", "32K"}, {"2", "Unified", "4M"}})), 4 * kMiB);
  EXPECT_EQ(CacheFromFixture(CacheFiles({{"4", "Unified", "1G"}, {"3", "Unified", "96M"}})), kGiB);
  EXPECT_EQ(CacheFromFixture(CacheFiles({{"2", "Unified", "1048576"}})), kMiB);
  // The level decides, not the size: the highest one wins even where a lower
  // one lists more bytes.
  EXPECT_EQ(CacheFromFixture(CacheFiles({{"2", "Unified", "8M"}, {"3", "Unified", "6M"}})), 6 * kMiB);
  // An instruction cache never counts, whatever its level.
  EXPECT_EQ(CacheFromFixture(CacheFiles({{"2", "Unified", "1M"}, {"3", "Instruction", "64M"}})), kMiB);
}

TEST(LastLevelCache, MalformedOrMissingEntriesAreSkipped) {
  EXPECT_EQ(CacheFromFixture({}), 0u);
  EXPECT_EQ(CacheFromFixture(CacheFiles({{"3", "Unified", "lots"},
                                         {"x", "Unified", "64M"},
                                         {"3", "Unified", "-5K"},
                                         {"3", "Unified", "99999999999999999999K"},
                                         {"3", "Unified", "18014398509481984K"},  // 2^54 K overflows
                                         {"3", "Unified", "0K"},
                                         {"3", "Unified", "K"},
                                         {"2", "Unified", "2048K"}})),
            2048 * kKiB);
  // A missing file (here index1's type) drops that entry only; a gap in the
  // numbering does not end the walk.
  Files files = CacheFiles({{"1", "Data", "48K"}, {"3", "Unified", "32M"}});
  files.erase("/sys/devices/system/cpu/cpu0/cache/index1/type");
  files["/sys/devices/system/cpu/cpu0/cache/index5/level"] = "2";
  files["/sys/devices/system/cpu/cpu0/cache/index5/type"] = "Unified";
  files["/sys/devices/system/cpu/cpu0/cache/index5/size"] = "2M";
  EXPECT_EQ(CacheFromFixture(files), 2 * kMiB);
  // A reader that throws is an unreadable file.
  EXPECT_EQ(LastLevelCacheBytesFromFiles([](const std::string&) -> std::optional<std::string> {
              throw std::runtime_error("no");
            }),
            0u);
}

TEST(LastLevelCacheLive, ProbeReturns) {
  const uint64_t bytes = ProbeLastLevelCacheBytes();
  std::printf("last-level cache: %llu bytes\n", static_cast<unsigned long long>(bytes));
  // Linux on x86 lists its caches; any CPU this runs on has at least 256 KiB
  // of last-level cache, and none has more than 64 GiB.
  if (bytes != 0) {
    EXPECT_GE(bytes, 256 * kKiB);
    EXPECT_LE(bytes, 64 * kGiB);
  }
}

TEST(GpuMemoryLive, ProbeGpuMemoryReturns) {
  GpuMemory g = ProbeGpuMemory();
  std::printf("gpu: usable=%d runtime_library=\"%s\" name=\"%s\" free=%llu total=%llu reason=\"%s\"\n",
              g.usable ? 1 : 0, g.runtime_library.c_str(), g.name.c_str(),
              static_cast<unsigned long long>(g.free_bytes),
              static_cast<unsigned long long>(g.total_bytes), g.reason.c_str());
  if (g.usable) {
    EXPECT_GT(g.total_bytes, 0u);
    EXPECT_LE(g.free_bytes, g.total_bytes);
    EXPECT_TRUE(g.reason.empty());
    EXPECT_FALSE(g.runtime_library.empty());
  } else {
    EXPECT_FALSE(g.reason.empty());
  }
  // A second probe gives the same answer (the library stays loaded).
  GpuMemory again = ProbeGpuMemory();
  EXPECT_EQ(again.usable, g.usable);
  EXPECT_EQ(again.runtime_library, g.runtime_library);
}

}  // namespace
}  // namespace epwa
