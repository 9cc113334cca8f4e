#include "serve/metrics.h"

#include <algorithm>
#include <cstdio>

namespace epwa::serve {
namespace {

std::string Number(double v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

void Counter(const std::string& name, const std::string& help, int64_t v, std::string* out) {
  *out += "# HELP " + name + " " + help + "\n# TYPE " + name + " counter\n" + name + " " +
          std::to_string(v) + "\n";
}

void Gauge(const std::string& name, const std::string& help, int64_t v, std::string* out) {
  *out += "# HELP " + name + " " + help + "\n# TYPE " + name + " gauge\n" + name + " " +
          std::to_string(v) + "\n";
}

// Latency buckets from 1 ms to 2 minutes, roughly x2.5 apart.
std::vector<double> LatencyBounds() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  ++counts_[i];
  sum_ += value;
  ++count_;
}

uint64_t Histogram::Count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return count_;
}

double Histogram::Quantile(double q) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (count_ == 0) return 0;
  const double target = q * static_cast<double>(count_);
  uint64_t seen = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    seen += counts_[i];
    if (static_cast<double>(seen) >= target) return i < bounds_.size() ? bounds_[i] : bounds_.back();
  }
  return bounds_.back();
}

void Histogram::Write(const std::string& name, const std::string& help, std::string* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  *out += "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    *out += name + "_bucket{le=\"" + Number(bounds_[i]) + "\"} " + std::to_string(cumulative) + "\n";
  }
  *out += name + "_bucket{le=\"+Inf\"} " + std::to_string(count_) + "\n";
  *out += name + "_sum " + Number(sum_) + "\n" + name + "_count " + std::to_string(count_) + "\n";
}

Metrics::Metrics() : latency_(LatencyBounds()), ttft_(LatencyBounds()), itl_(LatencyBounds()) {}

void Metrics::Request(const std::string& route, int status, double seconds) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++requests_[{route, status}];
  }
  latency_.Observe(seconds);
}

std::string Metrics::Text() const {
  std::string out;
  out += "# HELP epwa_requests_total HTTP requests by route and status.\n# TYPE epwa_requests_total counter\n";
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, n] : requests_)
      out += "epwa_requests_total{route=\"" + key.first + "\",status=\"" + std::to_string(key.second) + "\"} " +
             std::to_string(n) + "\n";
  }
  Counter("epwa_prompt_tokens_total", "Prompt tokens processed.", prompt_tokens_, &out);
  Counter("epwa_generated_tokens_total", "Tokens generated.", generated_tokens_, &out);
  Counter("epwa_rejected_requests_total", "Requests refused because the queue was full (429).", rejected_, &out);
  Counter("epwa_cancelled_requests_total", "Generations cancelled (client gone or server stopping).", cancelled_,
          &out);
  Counter("epwa_watermarked_completions_total", "Completions generated with the operator's watermark.",
          watermarked_completions, &out);
  Counter("epwa_detections_total", "Watermark detections served.", detections, &out);
  Counter("epwa_detection_batches_total", "Batched detection passes (concurrent detections share one).",
          detection_batches, &out);
  Gauge("epwa_queue_depth", "Requests waiting for a sequence slot.", queue_depth, &out);
  Gauge("epwa_active_sequences", "Sequences generating now.", active_sequences, &out);
  latency_.Write("epwa_request_duration_seconds", "Wall time of HTTP requests.", &out);
  ttft_.Write("epwa_time_to_first_token_seconds", "From submission to the first generated token.", &out);
  itl_.Write("epwa_inter_token_latency_seconds", "Time between consecutive generated tokens of a sequence.", &out);
  return out;
}

}  // namespace epwa::serve
