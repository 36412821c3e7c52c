#pragma once
// Multiplication counts and correction factors of a strided convolution for ONE
// spatial axis (SPEC section 2); every N-d quantity is the product over axes.
// Used on the host and inside the CPU and CUDA kernels. The readable Python
// twin, used by the tests and the public helpers, is strideconv/_factors.py.

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define STRIDECONV_HD __host__ __device__
#else
#define STRIDECONV_HD
#endif

namespace strideconv {

constexpr int kMaxSpatialDims = 3;

// b^g with the two common powers exact and cheap: g = 1 and g = 0.5.
template <typename real_t>
STRIDECONV_HD inline real_t power_of(real_t b, real_t g) {
  if (g == real_t(1)) return b;
  if (g == real_t(0.5)) return sqrt(b);
  return pow(b, g);
}

struct Axis {
  int64_t length = 1;    // L: input length, padding not included
  int64_t kernel = 1;    // k
  int64_t stride = 1;    // s
  int64_t padding = 0;   // p
  int64_t dilation = 1;  // q

  STRIDECONV_HD int64_t out_length() const {
    const int64_t span = length + 2 * padding - dilation * (kernel - 1) - 1;
    return span < 0 ? 0 : span / stride + 1;
  }

  // Taps t and t' share a class (t*q = t'*q mod s) iff t = t' mod period.
  STRIDECONV_HD int64_t class_period() const {
    int64_t a = dilation % stride, b = stride;
    while (a != 0) {
      const int64_t r = b % a;
      b = a;
      a = r;
    }
    return stride / b;  // b = gcd(q mod s, s)
  }

  // n(r(t)): how many taps share the class of tap t.
  STRIDECONV_HD int64_t class_count_of_tap(int64_t t) const {
    const int64_t period = class_period();
    return (kernel - 1 - t % period) / period + 1;
  }

  // n((i + p) mod s): the count position i would have away from the borders.
  STRIDECONV_HD int64_t class_count_at(int64_t i) const {
    const int64_t period = class_period();
    const int64_t target = (i + padding) % stride;
    for (int64_t t = 0; t < period && t < kernel; ++t) {
      if ((t * dilation) % stride == target) return class_count_of_tap(t);
    }
    return 0;
  }

  // C(i): the number of (output o, tap t) pairs with o*s - p + t*q == i.
  STRIDECONV_HD int64_t count(int64_t i) const {
    const int64_t n_out = out_length();
    int64_t c = 0;
    for (int64_t t = 0; t < kernel; ++t) {
      const int64_t v = i + padding - t * dilation;
      if (v >= 0 && v % stride == 0 && v / stride < n_out) ++c;
    }
    return c;
  }

  // [interior_begin, interior_end) holds only positions with C(i) equal to
  // their class count, where "position" and "kernel" agree. Conservative: a
  // few positions outside may have ratio 1 too.
  STRIDECONV_HD int64_t interior_begin() const {
    if (out_length() == 0) return 0;
    const int64_t b = dilation * (kernel - 1) - padding;
    return b < 0 ? 0 : (b > length ? length : b);
  }
  STRIDECONV_HD int64_t interior_end() const {
    const int64_t n_out = out_length();
    if (n_out == 0) return length;  // nothing is touched: nothing to correct
    const int64_t begin = interior_begin();
    const int64_t e = stride * (n_out - 1) - padding + 1;
    return e < begin ? begin : (e > length ? length : e);
  }

  // Whether (n / C)^g is 1 at position i whatever g is.
  STRIDECONV_HD bool ratio_is_one(int64_t i) const {
    const int64_t c = count(i);
    return c == 0 || c == class_count_at(i);
  }

  // [band_begin, band_end): the interior widened over its neighbours whose
  // ratio is 1 anyway (every position when k == s, as in a patch embedding),
  // so that the band holds only positions that may need scaling. Host only.
  int64_t band_begin() const {
    int64_t b = interior_begin();
    while (b > 0 && ratio_is_one(b - 1)) --b;
    return b;
  }
  int64_t band_end() const {
    int64_t e = interior_end();
    while (e < length && ratio_is_one(e)) ++e;
    return e;
  }

  // (n / C)^g turns the "kernel"-corrected gradient into the "position" one.
  // Positions no window touches (C = 0) keep their zero gradient: factor 1.
  template <typename real_t>
  STRIDECONV_HD real_t border_ratio(int64_t i, real_t power) const {
    if (i >= interior_begin() && i < interior_end()) return real_t(1);
    const int64_t c = count(i);
    const int64_t n = class_count_at(i);
    if (c == 0 || c == n) return real_t(1);
    return power_of(real_t(n) / real_t(c), power);
  }

  // (k / n(r(t)))^g: the "kernel" correction of tap t (reference count K = k).
  template <typename real_t>
  STRIDECONV_HD real_t tap_factor(int64_t t, real_t power) const {
    const int64_t n = class_count_of_tap(t);
    return n == kernel ? real_t(1) : power_of(real_t(kernel) / real_t(n), power);
  }

  // K^g / sqrt(mean_i C(i)^(2g)): this axis' share of the "map" scalar alpha.
  double map_factor(double power) const {
    double sum = 0;
    for (int64_t i = 0; i < length; ++i) {
      const int64_t c = count(i);
      if (c > 0) sum += power_of(double(c), 2 * power);
    }
    if (sum == 0) return 1.0;  // no window touches the input: nothing to scale
    return power_of(double(kernel), power) / std::sqrt(sum / double(length));
  }
};

}  // namespace strideconv
