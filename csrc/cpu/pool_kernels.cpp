// CPU kernel of avg_pool2d_backward_scaled: the corrected input gradient of average pooling
// in one pass (pool.h), one (batch, channel) plane per task.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

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
    const scalar_t* src = grad.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, planes, std::max<int64_t>(1, 16384 / std::max<int64_t>(plane, 1)), [&](int64_t first, int64_t last) {
      for (int64_t q = first; q < last; ++q) {
        const scalar_t* g = src + q * out_plane;
        scalar_t* o = dst + q * plane;
        for (int64_t h = 0; h < p.height; ++h) {
          for (int64_t w = 0; w < p.width; ++w) {
            const int64_t i = h * p.width + w;
            o[i] = static_cast<scalar_t>(fac[i] * p.gather<opmath_t>(g, p.out_width, 1, h, w));
          }
        }
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
