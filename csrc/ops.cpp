// Operator schemas, the forward convolution and its autocast rule.
//
// The forward is ATen's own convolution, so it is bit-identical to
// torch.nn.functional.conv2d and runs cuDNN / oneDNN under the user's backend
// settings. The backward (autograd.cpp) is ATen's convolution backward
// with a tap-scaled weight, followed by scale_border_ on the input gradient.

#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "ops.h"

namespace strideconv {
namespace {

at::Tensor conv_forward(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    c10::string_view correction, double power) {
  parse_correction(correction);
  check_power(power);
  // ATen runs complex convolutions as real ones only from at::conv2d & co., not from
  // at::convolution, and the correction factors are real: not supported.
  TORCH_CHECK_VALUE(
      !input.is_complex() && !weight.is_complex(),
      "strideconv: complex convolutions are not supported; use torch.nn.functional.conv2d");
  // at::conv2d checks the bias before at::convolution does; keep its message.
  TORCH_CHECK(
      !bias.has_value() || !bias->defined() || input.dtype() == bias->dtype(),
      "Input type (", std::string(input.dtype().name()), ") and bias type (",
      std::string(bias->dtype().name()), ") should be the same");  // built only on failure
  const std::vector<int64_t> output_padding(stride.size(), 0);
  return at::convolution(input, weight, bias, stride, padding, dilation,
                         /*transposed=*/false, output_padding, groups);
}

// Same casting rule as torch's conv ops: lower precision for every eligible
// floating point argument (float64 is left alone).
template <c10::DeviceType device_type>
at::Tensor conv_autocast(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    c10::string_view correction, double power) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(device_type));
  const auto dtype = at::autocast::get_lower_precision_fp_from_device_type(device_type);
  return call_conv(
      at::autocast::cached_cast(dtype, input, device_type),
      at::autocast::cached_cast(dtype, weight, device_type),
      at::autocast::cached_cast(dtype, bias, device_type),
      stride, padding, dilation, groups, correction, power);
}

}  // namespace

at::Tensor call_conv(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    c10::string_view correction, double power) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("strideconv::conv", "")
                             .typed<decltype(conv_forward)>();
  return op.call(input, weight, bias, stride, padding, dilation, groups, correction, power);
}

TORCH_LIBRARY(strideconv, m) {
  // Forward convolution; correction and power only shape its backward.
  m.def(
      "conv(Tensor input, Tensor weight, Tensor? bias, int[] stride, int[] padding, "
      "int[] dilation, int groups, str correction, float power) -> Tensor");
  // The weight whose transposed convolution gives the corrected input
  // gradient ("map": alpha * w; "kernel"/"position": tap-scaled w).
  m.def(
      "scale_weight(Tensor weight, SymInt[] input_size, int[] stride, int[] padding, "
      "int[] dilation, str correction, float power) -> Tensor");
  // "kernel"-corrected input gradient -> "position"-corrected, in place, on
  // the border band only.
  m.def(
      "scale_border_(Tensor(a!) grad, int[] kernel_size, int[] stride, int[] padding, "
      "int[] dilation, float power) -> ()");
  // Out-of-place twin of scale_border_, differentiable (double backward).
  m.def(
      "scale_border(Tensor grad, int[] kernel_size, int[] stride, int[] padding, "
      "int[] dilation, float power) -> Tensor");
}

TORCH_LIBRARY_IMPL(strideconv, CPU, m) {
  m.impl("conv", &conv_forward);
}

TORCH_LIBRARY_IMPL(strideconv, CUDA, m) {
  m.impl("conv", &conv_forward);
}

TORCH_LIBRARY_IMPL(strideconv, AutocastCPU, m) {
  m.impl("conv", &conv_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(strideconv, AutocastCUDA, m) {
  m.impl("conv", &conv_autocast<c10::DeviceType::CUDA>);
}

}  // namespace strideconv
