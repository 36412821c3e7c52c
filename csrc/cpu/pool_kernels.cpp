// CPU kernel of avg_pool2d_backward_scaled: the corrected input gradient of average pooling
// in one pass over memory (pool.h), one (batch, channel) plane per task: the windows scatter
// into an accumulator of one plane (in cache), which is scaled as it is written out.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../pool.h"

namespace strideconv {
namespace {

at::Tensor avg_pool2d_backward_scaled(
    const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override,
    const at::Tensor& factor) {
  (void)ceil_mode;  // the output size (grad_output's) already includes ceil_mode's windows
  const PoolWindows p =
      pool_windows(grad_output, input, kernel_size, stride, padding, count_include_pad, divisor_override, factor);
  const at::Tensor grad = grad_output.contiguous();
  at::Tensor out = at::empty(input.sizes(), input.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out.contiguous(input.suggest_memory_format());
  const int64_t planes = input.size(0) * input.size(1), plane = p.height * p.width;
  const int64_t out_plane = p.out_height * p.out_width;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "avg_pool2d_backward_scaled_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor f = factor.to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
    const opmath_t* fac = f.const_data_ptr<opmath_t>();
    // 1 / divisor of every window, once per call (the same for every plane).
    std::vector<opmath_t> inverse(out_plane);
    for (int64_t oh = 0; oh < p.out_height; ++oh)
      for (int64_t ow = 0; ow < p.out_width; ++ow)
        inverse[oh * p.out_width + ow] = opmath_t(1) / static_cast<opmath_t>(p.divisor(oh, ow));
    const scalar_t* src = grad.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    // Per plane: each window adds its share to the positions it reads (an accumulator of one
    // plane, in cache), then each position is multiplied by its factor as it is written out.
    at::parallel_for(0, planes, std::max<int64_t>(1, 16384 / std::max<int64_t>(plane, 1)), [&](int64_t first, int64_t last) {
      std::vector<opmath_t> acc(plane);
      for (int64_t q = first; q < last; ++q) {
        std::fill(acc.begin(), acc.end(), opmath_t(0));
        const scalar_t* g = src + q * out_plane;
        for (int64_t oh = 0; oh < p.out_height; ++oh) {
          const int64_t h0 = std::max<int64_t>(oh * p.stride_h - p.pad_h, 0);
          const int64_t h1 = std::min<int64_t>(oh * p.stride_h - p.pad_h + p.kernel_h, p.height);
          for (int64_t ow = 0; ow < p.out_width; ++ow) {
            const int64_t w0 = std::max<int64_t>(ow * p.stride_w - p.pad_w, 0);
            const int64_t w1 = std::min<int64_t>(ow * p.stride_w - p.pad_w + p.kernel_w, p.width);
            const int64_t o = oh * p.out_width + ow;
            const opmath_t v = static_cast<opmath_t>(g[o]) * inverse[o];
            for (int64_t h = h0; h < h1; ++h) {
              opmath_t* row = acc.data() + h * p.width;
              for (int64_t w = w0; w < w1; ++w) row[w] += v;
            }
          }
        }
        scalar_t* o = dst + q * plane;
        for (int64_t i = 0; i < plane; ++i) o[i] = static_cast<scalar_t>(acc[i] * fac[i]);
      }
    });
  });
  return out.contiguous(input.suggest_memory_format());
}

}  // namespace

TORCH_LIBRARY_IMPL(strideconv, CPU, m) {
  m.impl("avg_pool2d_backward_scaled", &avg_pool2d_backward_scaled);
}

}  // namespace strideconv
