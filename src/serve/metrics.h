// Prometheus metrics of `epwa serve` (text exposition format 0.0.4).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace epwa::serve {

// A histogram with fixed upper bounds (seconds), as Prometheus expects:
// cumulative bucket counts, a sum and a count.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);
  // Appends `name_bucket{le=...}`, `name_sum` and `name_count` lines.
  void Write(const std::string& name, const std::string& help, std::string* out) const;
  // The q-quantile estimated from the buckets (upper bound of the bucket
  // holding it; 0 when empty). For tests and the bench summary.
  double Quantile(double q) const;
  uint64_t Count() const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; last = +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();
  // One finished HTTP request: its route ("/v1/chat/completions"), status
  // and wall time.
  void Request(const std::string& route, int status, double seconds);
  void PromptTokens(int64_t n) { prompt_tokens_ += n; }
  void GeneratedTokens(int64_t n) { generated_tokens_ += n; }
  void TimeToFirstToken(double s) { ttft_.Observe(s); }
  void InterTokenLatency(double s) { itl_.Observe(s); }
  void Rejected() { rejected_ += 1; }
  void Cancelled() { cancelled_ += 1; }
  std::atomic<int64_t> queue_depth{0};       // submitted, not yet generating
  std::atomic<int64_t> active_sequences{0};  // generating now
  std::atomic<int64_t> watermarked_completions{0};
  std::atomic<int64_t> detections{0};
  std::atomic<int64_t> detection_batches{0};  // batched passes that served them

  std::string Text() const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::atomic<int64_t> prompt_tokens_{0}, generated_tokens_{0}, rejected_{0}, cancelled_{0};
  Histogram latency_, ttft_, itl_;
};

}  // namespace epwa::serve
