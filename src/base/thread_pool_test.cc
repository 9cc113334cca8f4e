#include "base/thread_pool.h"

#include <gtest/gtest.h>

#include <sched.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

namespace epwa {
namespace {

TEST(ThreadPool, ParallelForCoversEveryIndexExactlyOnce) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    for (int64_t n : {1, 7, 64, 1000, 1001}) {
      for (int64_t grain : {1, 4, 16}) {
        std::vector<std::atomic<int>> hits(n);
        pool.ParallelFor(n, grain, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
        });
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " i=" << i;
      }
    }
  }
}

TEST(ThreadPool, ParallelForClaimedCoversEveryIndexOnceInGrainAlignedChunks) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    for (int64_t n : {1, 7, 64, 1000, 1001}) {
      for (int64_t grain : {1, 4, 16}) {
        for (int chunks_per_thread : {0, 1, 4}) {
          std::vector<std::atomic<int>> hits(n);
          std::atomic<int> calls{0};
          pool.ParallelForClaimed(n, grain, chunks_per_thread, [&](int64_t b, int64_t e) {
            calls.fetch_add(1);
            EXPECT_EQ(b % grain, 0) << "n=" << n;
            EXPECT_TRUE(e == n || e % grain == 0) << "n=" << n;
            for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
          });
          for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " i=" << i;
          const int64_t blocks = (n + grain - 1) / grain;
          EXPECT_LE(calls.load(), std::min<int64_t>(blocks, threads * std::max(chunks_per_thread, 1)));
        }
      }
    }
  }
}

// The point of claiming: while one thread is held up in its chunk, the
// others run the rest instead of waiting with a fixed share of their own.
TEST(ThreadPool, ParallelForClaimedLetsOtherThreadsTakeASlowThreadsShare) {
  ThreadPool pool(2);
  constexpr int kChunks = 16;
  std::mutex mutex;
  std::vector<std::thread::id> runner(kChunks);
  pool.ParallelForClaimed(kChunks, 1, kChunks / 2, [&](int64_t b, int64_t e) {
    ASSERT_EQ(e, b + 1);
    if (b == 0) std::this_thread::sleep_for(std::chrono::milliseconds(300));
    std::lock_guard<std::mutex> lock(mutex);
    runner[static_cast<size_t>(b)] = std::this_thread::get_id();
  });
  int with_slow = 0;
  for (int c = 1; c < kChunks; ++c) with_slow += runner[static_cast<size_t>(c)] == runner[0];
  // Equal shares would give the slow thread 7 more chunks; a worker that the
  // scheduler never ran in 300 ms would leave it all 15.
  EXPECT_LE(with_slow, 1) << "the thread that slept ran " << with_slow << " of the other chunks";
}

TEST(ThreadPool, RunOnAllRunsEachThreadIndexOnceManyTimes) {
  ThreadPool pool(4);
  std::vector<std::atomic<int>> hits(4);
  for (int round = 0; round < 2000; ++round) pool.RunOnAll([&](int t) { hits[t].fetch_add(1); });
  for (int t = 0; t < 4; ++t) EXPECT_EQ(hits[t].load(), 2000);
}


// F12: a pool with far more threads than cores used to need every worker
// scheduled once per region (spinning 20,000 pauses each before sleeping),
// so -t 1024 on two cores took a minute for four tokens. Indices are claimed
// now, so the caller finishes a region alone if no worker gets a core.
TEST(ThreadPool, OversubscribedPoolStaysFast) {
  const int threads = 16 * ThreadPool::HardwareThreads();
  ThreadPool pool(threads);
  std::vector<std::atomic<int>> hits(threads);
  const auto start = std::chrono::steady_clock::now();
  for (int round = 0; round < 5000; ++round) pool.RunOnAll([&](int t) { hits[t].fetch_add(1); });
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (int t = 0; t < threads; ++t) ASSERT_EQ(hits[t].load(), 5000) << t;
  // The old pool took minutes here; the new one takes milliseconds. The
  // bound leaves room for a loaded test machine.
  EXPECT_LT(seconds, 5.0);
}

// An index may run on any thread, but never on two at once, and the pool
// must survive idle gaps long enough for its workers to fall asleep.
TEST(ThreadPool, IndicesNeverRunTwiceAtOnceAndSleepingWorkersWake) {
  ThreadPool pool(4);
  std::vector<std::atomic<int>> running(4);
  std::atomic<int> overlaps{0}, total{0};
  for (int round = 0; round < 200; ++round) {
    pool.RunOnAll([&](int t) {
      if (running[t].fetch_add(1) != 0) overlaps.fetch_add(1);
      total.fetch_add(1);
      running[t].fetch_sub(1);
    });
    if (round % 50 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(overlaps.load(), 0);
  EXPECT_EQ(total.load(), 800);
}

TEST(ThreadPool, HardwareThreadsFollowsTheAffinityMask) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  const int hw = ThreadPool::HardwareThreads();
  EXPECT_GE(hw, 1);
  EXPECT_LE(hw, CPU_COUNT(&set));
  EXPECT_EQ(ThreadPool(0).size(), hw);
}

}  // namespace
}  // namespace epwa
