#include "watermark/stats.h"

#include <algorithm>
#include <cmath>

namespace epwa::wm {

double ZScore(int64_t green, int64_t n, double p0) {
  if (n <= 0) return 0.0;
  const double nd = static_cast<double>(n);
  return (static_cast<double>(green) - p0 * nd) / std::sqrt(nd * p0 * (1.0 - p0));
}

double Log10BinomialUpperTail(int64_t k, int64_t n, double p0) {
  if (k <= 0) return 0.0;
  if (k > n) return -INFINITY;
  const double lp = std::log(p0), lq = std::log1p(-p0);
  auto log_term = [&](int64_t i) {
    return std::lgamma(n + 1.0) - std::lgamma(i + 1.0) - std::lgamma(n - i + 1.0) + i * lp +
           (n - i) * lq;
  };
  // Terms rise up to the mode and fall after it; the sum is anchored at its
  // largest term, the one at max(k, mode), and extended both ways until the
  // terms stop mattering (below 1e-17 of the total).
  const int64_t mode = std::clamp<int64_t>(static_cast<int64_t>(std::floor((n + 1) * p0)), k, n);
  const double anchor = log_term(mode);
  double sum = 1.0;
  for (int64_t i = mode + 1; i <= n; ++i) {
    const double r = std::exp(log_term(i) - anchor);
    sum += r;
    if (r < 1e-17 * sum) break;
  }
  for (int64_t i = mode - 1; i >= k; --i) {
    const double r = std::exp(log_term(i) - anchor);
    sum += r;
    if (r < 1e-17 * sum) break;
  }
  return std::min(0.0, (anchor + std::log(sum)) / std::log(10.0));
}

}  // namespace epwa::wm
