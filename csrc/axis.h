#pragma once
// Counts and correction factors of a strided convolution along ONE spatial axis
// (docs/design.md, "Definitions"); every N-d quantity is the product over axes.
// Used on the host and inside the CPU and CUDA kernels. The readable Python twin,
// used by the tests and the public helpers, is strideconv/factors.py.
//
// Every query is O(1) (a few divisions and one modular inverse), so no argument,
// however large, makes a kernel loop over taps or strides. The values are
// bounded by kMaxArgument (checked in options.cpp), so nothing below overflows
// 64-bit arithmetic.

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define STRIDECONV_HD __host__ __device__
#else
#define STRIDECONV_HD
#endif

namespace strideconv {

constexpr int kMaxSpatialDims = 3;
constexpr int64_t kMaxArgument = (int64_t(1) << 31) - 1;  // lengths, kernel, stride, padding, dilation

// b^g with the two common powers exact and cheap: g = 1 and g = 0.5.
template <typename real_t>
STRIDECONV_HD inline real_t power_of(real_t b, real_t g) {
  if (g == real_t(1)) return b;
  if (g == real_t(0.5)) return sqrt(b);
  return pow(b, g);
}

STRIDECONV_HD inline int64_t gcd(int64_t a, int64_t b) {
  while (b != 0) {
    const int64_t r = a % b;
    a = b;
    b = r;
  }
  return a;
}

// x with a * x = 1 (mod m), for gcd(a, m) = 1 and m >= 1.
STRIDECONV_HD inline int64_t inverse_mod(int64_t a, int64_t m) {
  int64_t r0 = m, r1 = a % m, x0 = 0, x1 = 1;
  while (r1 != 0) {
    const int64_t quotient = r0 / r1;
    int64_t r = r0 - quotient * r1;
    r0 = r1;
    r1 = r;
    r = x0 - quotient * x1;
    x0 = x1;
    x1 = r;
  }
  return ((x0 % m) + m) % m;
}

struct Axis {
  int64_t length = 1;    // L: input length, padding not included
  int64_t kernel = 1;    // k
  int64_t stride = 1;    // s
  int64_t padding = 0;   // p
  int64_t dilation = 1;  // q
  // a: for the output of a transposed convolution (docs/design.md, "Transposed
  // convolutions"), its output padding. The windows are then the transposed
  // convolution's inputs: those of a strided convolution over the first L - a
  // positions, which also counts every position correctly when a >= s. 0 for a
  // strided convolution.
  int64_t output_padding = 0;

  // The number of windows (outputs of the strided convolution).
  STRIDECONV_HD int64_t out_length() const {
    const int64_t span = length - output_padding + 2 * padding - dilation * (kernel - 1) - 1;
    return span < 0 ? 0 : span / stride + 1;
  }

  // Taps t and t' share a class (t*q = t'*q mod s) iff t = t' mod period.
  STRIDECONV_HD int64_t class_period() const { return stride / gcd(dilation % stride, stride); }

  // n(r(t)): how many taps share the class of tap t.
  STRIDECONV_HD int64_t class_count_of_tap(int64_t t) const {
    const int64_t period = class_period();
    return (kernel - 1 - t % period) / period + 1;
  }

  // The smallest tap t >= 0 with t*q = i + p (mod s), or -1 if there is none:
  // every tap reaching position i is t plus a multiple of the class period.
  STRIDECONV_HD int64_t first_tap_at(int64_t i) const {
    const int64_t g = gcd(dilation % stride, stride);
    const int64_t target = (i + padding) % stride;
    if (target % g != 0) return -1;
    const int64_t period = stride / g;
    if (period == 1) return 0;
    return (target / g) * inverse_mod((dilation % stride) / g, period) % period;
  }

  // n((i + p) mod s): the count position i would have away from the borders.
  STRIDECONV_HD int64_t class_count_at(int64_t i) const {
    const int64_t t = first_tap_at(i);
    return t < 0 || t >= kernel ? 0 : class_count_of_tap(t);
  }

  // C(i): the number of (output o, tap t) pairs with o*s - p + t*q == i. The taps
  // are those of one class (t = t0 mod period) with 0 <= (i + p - t*q) / s < L_out.
  STRIDECONV_HD int64_t count(int64_t i) const {
    const int64_t n_out = out_length();
    const int64_t t0 = first_tap_at(i);
    if (n_out == 0 || t0 < 0) return 0;
    const int64_t v = i + padding;
    const int64_t low_v = v - stride * (n_out - 1);  // t*q >= low_v
    const int64_t lo = low_v <= 0 ? 0 : (low_v + dilation - 1) / dilation;
    int64_t hi = v / dilation;
    if (hi > kernel - 1) hi = kernel - 1;
    if (lo > hi) return 0;
    const int64_t period = class_period();
    const int64_t first = lo + ((t0 - lo) % period + period) % period;
    return first > hi ? 0 : (hi - first) / period + 1;
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

  // log of K^g / sqrt(mean_i C(i)^(2g)), this axis' share of the "map" scalar
  // alpha, computed with m the largest count as
  // g log(k / m) - log(mean_i (C(i) / m)^(2g)) / 2, so that no power of a count
  // overflows or underflows alone. 0 when no window touches the input.
  double log_map_factor(double power) const {
    int64_t largest = 0;
    for (int64_t i = 0; i < length; ++i) {
      const int64_t c = count(i);
      if (c > largest) largest = c;
    }
    if (largest == 0) return 0.0;  // no window touches the input: nothing to scale
    double sum = 0;
    for (int64_t i = 0; i < length; ++i) {
      const int64_t c = count(i);
      if (c > 0) sum += power_of(double(c) / double(largest), 2 * power);
    }
    return power * std::log(double(kernel) / double(largest)) - 0.5 * std::log(sum / double(length));
  }

  // The fewest taps any class holds: floor(k / period), or 1 when period > k.
  STRIDECONV_HD int64_t smallest_class_count() const {
    const int64_t period = class_period();
    return period > kernel ? 1 : kernel / period;
  }
};

}  // namespace strideconv
