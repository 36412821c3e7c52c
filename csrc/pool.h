#pragma once
// The corrected backward of average pooling, shared by the CPU and CUDA kernels: each
// input position gathers the gradient of the windows that read it, divided as ATen's
// avg_pool2d divides, and multiplies the sum by its factor as it writes (one pass, the
// cost of the plain backward; docs/design.md, "Pooling").

#include <ATen/core/Tensor.h>

#include <optional>

#include "axis.h"

namespace strideconv {

// One avg_pool2d call's windows, as ATen defines them: window (oh, ow) starts at
// (oh s_h - p_h, ow s_w - p_w), ends k later but not past the padded input, and is
// divided by divisor_override, or its size with padding (count_include_pad), or its size
// inside the input.
struct PoolWindows {
  int64_t height = 0, width = 0;            // input
  int64_t out_height = 0, out_width = 0;    // output (ceil_mode included)
  int64_t kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
  int64_t divisor_override = 0;             // 0: none
  bool count_include_pad = true;

  STRIDECONV_HD int64_t divisor(int64_t oh, int64_t ow) const {
    if (divisor_override != 0) return divisor_override;
    int64_t h0 = oh * stride_h - pad_h, w0 = ow * stride_w - pad_w;
    int64_t h1 = h0 + kernel_h, w1 = w0 + kernel_w;
    if (h1 > height + pad_h) h1 = height + pad_h;
    if (w1 > width + pad_w) w1 = width + pad_w;
    if (count_include_pad) return (h1 - h0) * (w1 - w0);
    if (h0 < 0) h0 = 0;
    if (w0 < 0) w0 = 0;
    if (h1 > height) h1 = height;
    if (w1 > width) w1 = width;
    return (h1 - h0) * (w1 - w0);
  }

  // The outputs o whose window reads input position i along one axis: o s - p <= i < o s - p + k.
  STRIDECONV_HD static void outputs_reading(int64_t i, int64_t k, int64_t s, int64_t p, int64_t n_out,
                                            int64_t& first, int64_t& last) {
    const int64_t hi = i + p;            // o s <= i + p
    const int64_t lo = i + p - k + 1;    // o s >= i + p - k + 1
    first = lo <= 0 ? 0 : (lo + s - 1) / s;
    last = hi / s;
    if (last > n_out - 1) last = n_out - 1;
  }

  // The true input gradient at (h, w) of one plane whose output gradient is `grad`
  // (row stride `row`, element stride `col`).
  template <typename opmath_t, typename scalar_t>
  STRIDECONV_HD opmath_t gather(const scalar_t* grad, int64_t row, int64_t col, int64_t h, int64_t w) const {
    int64_t oh0, oh1, ow0, ow1;
    outputs_reading(h, kernel_h, stride_h, pad_h, out_height, oh0, oh1);
    outputs_reading(w, kernel_w, stride_w, pad_w, out_width, ow0, ow1);
    opmath_t sum = 0;
    for (int64_t oh = oh0; oh <= oh1; ++oh) {
      for (int64_t ow = ow0; ow <= ow1; ++ow) {
        sum += static_cast<opmath_t>(grad[oh * row + ow * col]) / static_cast<opmath_t>(divisor(oh, ow));
      }
    }
    return sum;
  }
};

// The checked windows of an avg_pool2d_backward_scaled call (pool.cpp).
PoolWindows pool_windows(const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef kernel_size,
                         at::IntArrayRef stride, at::IntArrayRef padding, bool count_include_pad,
                         std::optional<int64_t> divisor_override, const at::Tensor& factor);

}  // namespace strideconv
