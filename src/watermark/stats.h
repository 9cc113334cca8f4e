// The detector's statistics: a one-proportion z-score and the exact
// binomial tail, so that p-values stay right for short texts where the normal
// approximation is poor.
#pragma once

#include <cstdint>

namespace epwa::wm {

// (green - p0 n) / sqrt(n p0 (1 - p0)); 0 when n == 0.
double ZScore(int64_t green, int64_t n, double p0);

// log10 P(X >= k) for X ~ Binomial(n, p0), exact up to floating-point
// rounding: the tail's terms are summed in log space from the largest one, so
// tails far below 1e-308 keep their exponent instead of underflowing.
double Log10BinomialUpperTail(int64_t k, int64_t n, double p0);

}  // namespace epwa::wm
