#include "base/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>

namespace epwa {
namespace {

using Clock = std::chrono::steady_clock;

// How long a waiting thread spins before it sleeps. Within one decode step
// the gaps between parallel regions are a few microseconds and between steps
// (sampling, the watermark) tens of microseconds, so 200 us keeps workers
// awake through a whole generation while an idle pool stops burning a core
// within a fraction of a millisecond.
constexpr auto kSpinBudget = std::chrono::microseconds(200);
// Spinning iterations between sched_yield calls: frequent enough that a
// runnable thread of this pool sharing the core (the one holding the last
// chunk) waits microseconds, not a scheduler time slice; rare enough that
// on an idle machine the syscalls cost nothing measurable.
constexpr int kPausesPerYield = 256;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Spins until ready() or the budget is spent; returns ready().
template <typename Ready>
bool SpinUntil(Ready ready) {
  const Clock::time_point deadline = Clock::now() + kSpinBudget;
  for (int i = 1;; ++i) {
    if (ready()) return true;
    CpuRelax();
    if (i % kPausesPerYield == 0) {
      if (Clock::now() >= deadline) return ready();
      sched_yield();
    }
  }
}

// The CPU quota of a cgroup v2 (cpu.max: "QUOTA PERIOD" or "max PERIOD"),
// rounded up to whole CPUs; 0 when there is none or it cannot be read.
int CgroupCpuQuota() {
  std::ifstream in("/sys/fs/cgroup/cpu.max");
  std::string quota;
  double period = 0;
  if (!(in >> quota >> period) || quota == "max" || period <= 0) return 0;
  double q = 0;
  try {
    q = std::stod(quota);
  } catch (const std::exception&) {
    return 0;
  }
  return q > 0 ? static_cast<int>(std::ceil(q / period)) : 0;
}

}  // namespace

int ThreadPool::HardwareThreads() {
  int n = 0;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) n = CPU_COUNT(&set);
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  if (const int quota = CgroupCpuQuota(); quota > 0) n = std::min(n, quota);
  return std::max(n, 1);
}

ThreadPool::ThreadPool(int num_threads) {
  num_threads_ = num_threads <= 0 ? HardwareThreads() : num_threads;
  // Nothing to claim until the first RunOnAll.
  next_.store(num_threads_);
  done_.store(num_threads_);
  for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::RunClaims() {
  for (;;) {
    const int i = next_.fetch_add(1, std::memory_order_acq_rel);
    if (i >= num_threads_) return;
    (*job_)(i);
    // The thread that finishes the last index wakes the caller if it sleeps.
    if (done_.fetch_add(1, std::memory_order_seq_cst) + 1 == num_threads_ &&
        caller_sleeping_.load(std::memory_order_seq_cst)) {
      std::lock_guard<std::mutex> lock(mutex_);
      finished_.notify_one();
    }
  }
}

void ThreadPool::WorkerLoop() {
  uint64_t seen = 0;
  for (;;) {
    auto fresh = [&] { return generation_.load(std::memory_order_seq_cst) != seen; };
    if (!SpinUntil(fresh)) {
      std::unique_lock<std::mutex> lock(mutex_);
      sleeping_workers_.fetch_add(1, std::memory_order_seq_cst);
      wake_.wait(lock, fresh);
      sleeping_workers_.fetch_sub(1, std::memory_order_relaxed);
    }
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load()) return;
    RunClaims();
  }
}

void ThreadPool::RunOnAll(const std::function<void(int)>& fn) {
  if (num_threads_ == 1) {
    fn(0);
    return;
  }
  // The previous job is complete (done_ == size()), so no thread is inside
  // it; a late worker can only claim from the counter reset below, and then
  // runs an index of this job.
  job_ = &fn;
  done_.store(0, std::memory_order_relaxed);
  next_.store(0, std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_seq_cst);
  // A worker going to sleep registers in sleeping_workers_ before it checks
  // the generation (both seq_cst), so either it sees the new generation or
  // this sees it and wakes it.
  if (sleeping_workers_.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard<std::mutex> lock(mutex_);
    wake_.notify_all();
  }
  RunClaims();
  // Only indices other threads are running now remain. Sleeping follows the
  // same pattern as the workers': the flag is set before done_ is checked
  // again, and the last finisher reads the flag after counting itself.
  auto all_done = [&] { return done_.load(std::memory_order_seq_cst) == num_threads_; };
  if (!SpinUntil(all_done)) {
    std::unique_lock<std::mutex> lock(mutex_);
    caller_sleeping_.store(true, std::memory_order_seq_cst);
    finished_.wait(lock, all_done);
    caller_sleeping_.store(false, std::memory_order_relaxed);
  }
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t blocks = (n + grain - 1) / grain;
  const int workers = static_cast<int>(std::min<int64_t>(num_threads_, blocks));
  if (workers <= 1) {
    fn(0, n);
    return;
  }
  RunOnAll([&](int t) {
    if (t >= workers) return;
    const int64_t b0 = blocks * t / workers;
    const int64_t b1 = blocks * (t + 1) / workers;
    const int64_t begin = b0 * grain;
    const int64_t end = std::min(n, b1 * grain);
    if (begin < end) fn(begin, end);
  });
}

void ThreadPool::ParallelForClaimed(int64_t n, int64_t grain, int chunks_per_thread,
                                    const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t blocks = (n + grain - 1) / grain;
  const int64_t chunks = std::min<int64_t>(blocks, int64_t{num_threads_} * std::max(chunks_per_thread, 1));
  if (num_threads_ == 1 || chunks <= 1) {
    fn(0, n);
    return;
  }
  // Chunk c covers blocks [blocks * c / chunks, blocks * (c + 1) / chunks).
  std::atomic<int64_t> next{0};
  RunOnAll([&](int) {
    for (;;) {
      const int64_t c = next.fetch_add(1, std::memory_order_relaxed);
      if (c >= chunks) return;
      const int64_t begin = blocks * c / chunks * grain;
      const int64_t end = std::min(n, blocks * (c + 1) / chunks * grain);
      if (begin < end) fn(begin, end);
    }
  });
}

}  // namespace epwa
