// The schema-independent checks of avg_pool2d_backward_scaled (pool.h), the same on every device.

#include "pool.h"

#include <ATen/ATen.h>

namespace strideconv {

PoolWindows pool_windows(const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef kernel_size,
                         at::IntArrayRef stride, at::IntArrayRef padding, bool count_include_pad,
                         std::optional<int64_t> divisor_override, const at::Tensor& factor) {
  TORCH_CHECK_VALUE(input.dim() == 4 && grad_output.dim() == 4,
                    "strideconv: avg_pool2d_backward_scaled expects 4-d input and grad_output (N, C, H, W)");
  TORCH_CHECK_VALUE(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2,
                    "strideconv: avg_pool2d_backward_scaled expects two values each of kernel_size, stride, padding");
  TORCH_CHECK_VALUE(grad_output.size(0) == input.size(0) && grad_output.size(1) == input.size(1),
                    "strideconv: grad_output and input differ in batch or channels");
  TORCH_CHECK_VALUE(factor.dim() == 2 && factor.size(0) == input.size(2) && factor.size(1) == input.size(3),
                    "strideconv: expected a factor map of the input's spatial size");
  TORCH_CHECK_VALUE(factor.device() == input.device() && grad_output.device() == input.device(),
                    "strideconv: avg_pool2d_backward_scaled expects its tensors on one device");
  TORCH_CHECK_VALUE(grad_output.scalar_type() == input.scalar_type(),
                    "strideconv: grad_output and input differ in dtype");
  TORCH_CHECK_VALUE(at::isFloatingType(factor.scalar_type()), "strideconv: the factor map must be floating point");
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK_VALUE(kernel_size[d] > 0 && stride[d] > 0 && padding[d] >= 0 && padding[d] <= kernel_size[d] / 2,
                      "strideconv: avg_pool2d_backward_scaled got an invalid kernel_size, stride or padding");
  }
  TORCH_CHECK_VALUE(!divisor_override.has_value() || *divisor_override != 0, "divisor must be not zero");
  PoolWindows p;
  p.height = input.size(2);
  p.width = input.size(3);
  p.out_height = grad_output.size(2);
  p.out_width = grad_output.size(3);
  p.kernel_h = kernel_size[0];
  p.kernel_w = kernel_size[1];
  p.stride_h = stride[0];
  p.stride_w = stride[1];
  p.pad_h = padding[0];
  p.pad_w = padding[1];
  p.divisor_override = divisor_override.value_or(0);
  p.count_include_pad = count_include_pad;
  return p;
}

}  // namespace strideconv
