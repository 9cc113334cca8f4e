// A small fork-join thread pool for data-parallel kernels.
//
// Kernels split their output rows into contiguous chunks and the calling
// thread works too, so a pool of N threads uses exactly N cores. Decode issues
// thousands of tiny parallel regions per token, so waiting is a bounded spin
// first (a futex wake-up per region would cost more than the work itself) and
// a sleep after that.
//
// The chunks of a region are claimed, not assigned: whichever threads are
// running take the next unclaimed index, so a region never waits for a worker
// that the scheduler has not run yet. That matters whenever the machine has
// more runnable threads than cores (another CPU-bound process, ctest -j, a
// second engine): with fixed assignment every region had to wait until every
// worker had been scheduled once, which made -t 2 beside one busy process
// several times slower than -t 1, and -t 1024 on two cores take a minute for
// four tokens. Spinning waiters also yield the core now and then, so that a
// thread of this pool that is runnable on the same core gets it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace epwa {

class ThreadPool {
 public:
  // num_threads <= 0 means one per hardware thread this process may use.
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return num_threads_; }

  // Runs fn(i) for every index i in 0..size()-1 exactly once and waits for
  // all. Indices are claimed dynamically: the same OS thread may run several
  // of them one after the other (never two at once), so fn must not wait for
  // another index (no barriers inside fn). Per-index scratch is safe.
  void RunOnAll(const std::function<void(int)>& fn);

  // Splits [0, n) into at most size() contiguous ranges (each a multiple of
  // `grain` except the last) and runs fn(begin, end) on each; waits for all.
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

  // Splits [0, n) into about size() * chunks_per_thread contiguous chunks
  // (each a multiple of `grain` except the last) that the threads claim one
  // at a time in order, and runs fn(begin, end) on each; waits for all. Where
  // ParallelFor's equal shares make the region wait for its slowest thread
  // (one the hypervisor or another process delays, one woken late from its
  // sleep), here the others take more chunks. Chunks cost locality, so this
  // suits regions that stream large independent rows (decode).
  void ParallelForClaimed(int64_t n, int64_t grain, int chunks_per_thread,
                          const std::function<void(int64_t, int64_t)>& fn);

  // The hardware threads this process may run on: the CPUs of its affinity
  // mask (taskset, cgroup cpusets), at most the cgroup's CPU quota (docker
  // --cpus), at least 1.
  static int HardwareThreads();

 private:
  void WorkerLoop();
  // Claims and runs indices of the current job until none is left.
  void RunClaims();

  int num_threads_;
  std::vector<std::thread> workers_;

  // The current job. Written by RunOnAll before generation_ is bumped; the
  // claim counter's acquire makes them visible to whoever claims an index.
  const std::function<void(int)>* job_ = nullptr;
  std::atomic<int> next_{0};   // next index to claim; >= size() when all are claimed
  std::atomic<int> done_{0};   // indices finished
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};

  // Sleeping: workers wait on wake_ for a new generation, the caller on
  // finished_ for the last index. The counters say whether a notify is needed.
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable finished_;
  std::atomic<int> sleeping_workers_{0};
  std::atomic<bool> caller_sleeping_{false};
};

}  // namespace epwa
