// A small fork-join thread pool for data-parallel kernels.
//
// Kernels split their output rows into contiguous chunks, one per worker, and
// the calling thread works as worker 0, so a pool of N threads uses exactly N
// cores. Workers spin briefly before sleeping: decode issues thousands of tiny
// parallel regions per token, and a futex wake-up per region would cost more
// than the work itself.
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
  // num_threads <= 0 means one per available hardware thread.
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return num_threads_; }

  // Runs fn(thread_index) on every thread (0..size()-1) and waits for all.
  void RunOnAll(const std::function<void(int)>& fn);

  // Splits [0, n) into size() contiguous ranges (each a multiple of `grain`
  // except the last) and runs fn(begin, end) on each; waits for all.
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

  static int HardwareThreads();

 private:
  void WorkerLoop(int index);

  int num_threads_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* job_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
};

}  // namespace epwa
