// CPU kernels of scale_border_, scale_border and scale_weight.

#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../ops.h"

namespace strideconv {
namespace {

template <typename scalar_t>
void scale_band(at::Tensor& grad, const Geometry& g, double power) {
  using opmath_t = at::opmath_type<scalar_t>;
  const Factors<opmath_t> factors(g, power);
  const BandWalk walk(grad, g);
  scalar_t* data = grad.data_ptr<scalar_t>();
  at::parallel_for(0, walk.items(), 2048, [&](int64_t first, int64_t last) {
    int64_t coord[kMaxSpatialDims];
    for (int64_t e = first; e < last; ++e) {
      const int64_t off = walk.offset(e, coord);
      const opmath_t f = factors.ratio(coord);
      if (f != opmath_t(1)) data[off] = static_cast<scalar_t>(static_cast<opmath_t>(data[off]) * f);
    }
  });
}

void scale_border_inplace(
    at::Tensor& grad, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, double power) {
  check_power(power);
  const Geometry g = input_geometry(grad, kernel_size, stride, padding, dilation);
  at::assert_no_internal_overlap(grad);
  if (grad.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "scale_border_cpu", [&] {
    scale_band<scalar_t>(grad, g, power);
  });
}

at::Tensor scale_border(
    const at::Tensor& grad, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, double power) {
  at::Tensor out = grad.clone();
  scale_border_inplace(out, kernel_size, stride, padding, dilation, power);
  return out;
}

void scale_taps(const at::Tensor& weight, at::Tensor& out, const Geometry& g, double power) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "scale_taps_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    std::vector<opmath_t> factor[kMaxSpatialDims];  // per axis, per tap
    for (int d = 0; d < g.ndim; ++d) {
      for (int64_t t = 0; t < g.axis[d].kernel; ++t)
        factor[d].push_back(g.axis[d].tap_factor<opmath_t>(t, opmath_t(power)));
    }
    const scalar_t* src = weight.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    if (weight.is_contiguous() && out.is_contiguous()) {
      // The usual layout: taps innermost, so one flat table of tap factors
      // repeats along the weight and no index arithmetic is needed.
      std::vector<opmath_t> flat(1, opmath_t(1));
      for (int d = 0; d < g.ndim; ++d) {
        std::vector<opmath_t> next;
        for (const opmath_t a : flat)
          for (const opmath_t b : factor[d]) next.push_back(a * b);
        flat.swap(next);
      }
      const int64_t taps = static_cast<int64_t>(flat.size());
      at::parallel_for(0, weight.numel() / taps, 256, [&](int64_t first, int64_t last) {
        for (int64_t row = first; row < last; ++row) {
          for (int64_t t = 0; t < taps; ++t) {
            const int64_t e = row * taps + t;
            dst[e] = static_cast<scalar_t>(static_cast<opmath_t>(src[e]) * flat[t]);
          }
        }
      });
      return;
    }
    const TapWalk walk(weight, out);
    at::parallel_for(0, weight.numel(), 4096, [&](int64_t first, int64_t last) {
      int64_t tap[kMaxSpatialDims];
      int64_t in_off, out_off;
      for (int64_t e = first; e < last; ++e) {
        walk.offsets(e, in_off, out_off, tap);
        opmath_t f = 1;
        for (int d = 0; d < g.ndim; ++d) f *= factor[d][tap[d]];
        dst[out_off] = static_cast<scalar_t>(static_cast<opmath_t>(src[in_off]) * f);
      }
    });
  });
}

at::Tensor scale_weight(
    const at::Tensor& weight, c10::SymIntArrayRef input_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view correction, double power) {
  return scale_weight_with(&scale_taps, weight, C10_AS_INTARRAYREF_SLOW(input_size), stride,
                           padding, dilation, correction, power);
}

}  // namespace

TORCH_LIBRARY_IMPL(strideconv, CPU, m) {
  m.impl("scale_border_", &scale_border_inplace);
  m.impl("scale_border", &scale_border);
  m.impl("scale_weight", &scale_weight);
}

}  // namespace strideconv
