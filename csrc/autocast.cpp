// Autocast of strideconv::conv and conv_transpose: the casting rule of torch's own convolutions,
// lower precision for every floating point argument (float64 is left alone). The corrected
// backward of conv scales the weight before the cast (keep_full_precision_weight), so that the
// scaled weight is rounded once, as the plain weight is.

#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "ops.h"

namespace strideconv {
namespace {

template <c10::DeviceType device_type>
at::Tensor conv_autocast(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    c10::string_view correction, double power) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(device_type));
  const auto dtype = at::autocast::get_lower_precision_fp_from_device_type(device_type);
  at::Tensor out = call_conv(
      at::autocast::cached_cast(dtype, input, device_type),
      at::autocast::cached_cast(dtype, weight, device_type),
      at::autocast::cached_cast(dtype, bias, device_type),
      stride, padding, dilation, groups, correction, power);
  // The backward scales the weight: from the full-precision one, rounded once.
  if (out.grad_fn() != nullptr) keep_full_precision_weight(out, weight);
  return out;
}

template <c10::DeviceType device_type>
at::Tensor conv_transpose_autocast(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
    at::IntArrayRef dilation, int64_t groups, c10::string_view correction, double power) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(device_type));
  const auto dtype = at::autocast::get_lower_precision_fp_from_device_type(device_type);
  return call_conv_transpose(
      at::autocast::cached_cast(dtype, input, device_type),
      at::autocast::cached_cast(dtype, weight, device_type),
      at::autocast::cached_cast(dtype, bias, device_type),
      stride, padding, output_padding, dilation, groups, correction, power);
}

}  // namespace

TORCH_LIBRARY_IMPL(strideconv, AutocastCPU, m) {
  m.impl("conv", &conv_autocast<c10::DeviceType::CPU>);
  m.impl("conv_transpose", &conv_transpose_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(strideconv, AutocastCUDA, m) {
  m.impl("conv", &conv_autocast<c10::DeviceType::CUDA>);
  m.impl("conv_transpose", &conv_transpose_autocast<c10::DeviceType::CUDA>);
}

}  // namespace strideconv
