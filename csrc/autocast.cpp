// Autocast of strideconv::conv and conv_transpose: the casting rule of torch's own convolutions,
// lower precision for every floating point argument (float64 is left alone). Wherever a weight
// is scaled (the backward of conv; the forward and backward of conv_transpose), the weight
// before the cast is scaled (keep_full_precision_weight, FullPrecisionWeight), so that the
// scaled weight is rounded once, as the plain weight is.

#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "ops.h"

namespace strideconv {

namespace {
thread_local const FullPrecisionWeight* current_scope = nullptr;
}  // namespace

FullPrecisionWeight::FullPrecisionWeight(const at::Tensor& cast, const at::Tensor& full)
    : cast_(&cast), full_(&full), previous_(current_scope) {
  current_scope = this;
}

FullPrecisionWeight::~FullPrecisionWeight() { current_scope = previous_; }

const at::Tensor& FullPrecisionWeight::source_of(const at::Tensor& weight) {
  const FullPrecisionWeight* scope = current_scope;
  if (scope != nullptr && scope->cast_->is_same(weight) && scope->full_->defined()) return *scope->full_;
  return weight;
}

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
  const at::Tensor cast_weight = at::autocast::cached_cast(dtype, weight, device_type);
  at::Tensor out;
  {
    // The forward scales the full-precision weight where it scales the weight (rounded once).
    const FullPrecisionWeight scope(cast_weight, weight);
    out = call_conv_transpose(at::autocast::cached_cast(dtype, input, device_type), cast_weight,
                              at::autocast::cached_cast(dtype, bias, device_type), stride, padding, output_padding,
                              dilation, groups, correction, power);
  }
  // ... and so does the backward.
  if (out.grad_fn() != nullptr) keep_full_precision_weight(out, weight);
  return out;
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
