#pragma once
// Typed calls of the registered operators (schemas in conv.cpp), through the
// dispatcher, so that autograd, autocast, tracing and the device kernels all
// see the same op. Every layer that calls an op calls it through these.

#include <ATen/core/Tensor.h>
#include <c10/core/SymIntArrayRef.h>
#include <c10/util/string_view.h>

#include <optional>

namespace strideconv {

// What ATen does not check, or checks with another message, before a convolution:
// complex operands (refused), and a bias of another dtype (at::conv2d's message).
void check_real(const at::Tensor& input, const at::Tensor& weight, const char* plain);
void check_conv_inputs(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias);

at::Tensor call_conv(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    c10::string_view correction, double power);

at::Tensor call_conv_transpose(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
    at::IntArrayRef dilation, int64_t groups, c10::string_view correction, double power);

// avg_pool2d whose input gradient is the true one times `factor`, and that gradient itself (the
// corrected backward, one pass; pool.h).
at::Tensor call_avg_pool2d(const at::Tensor& input, const at::Tensor& factor, at::IntArrayRef kernel_size,
                           at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                           std::optional<int64_t> divisor_override);
at::Tensor call_avg_pool2d_backward_scaled(const at::Tensor& grad_output, const at::Tensor& input,
                                           at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                           std::optional<int64_t> divisor_override, const at::Tensor& factor);

// The output factors of a normalised transposed convolution whose output (or gradient) is
// `like`: (1, 1, *spatial) for "position" and "kernel", alpha as (1, 1, 1, ...) for "map"; a
// fresh tensor (output_factors.h).
at::Tensor call_output_factors(
    const at::Tensor& like, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, at::IntArrayRef output_padding,
    c10::string_view correction, double power);

// The lists of the scalings below describe a strided convolution over a tensor
// of `input_size` (the size of `grad`), or, with output_padding, the output of a
// transposed convolution (an empty output_padding: all zeros).
at::Tensor call_scale_weight(
    const at::Tensor& weight, c10::SymIntArrayRef input_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view correction, double power,
    at::IntArrayRef output_padding = {});

at::Tensor call_scale_taps(
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef dilation, double power);

at::Tensor call_scale_border(
    const at::Tensor& grad, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, double power,
    at::IntArrayRef output_padding = {});

// With a bias, the band values v become f (v - b) + b (a transposed convolution's output).
void call_scale_border_(
    at::Tensor& grad, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, double power,
    at::IntArrayRef output_padding = {}, const std::optional<at::Tensor>& bias = std::nullopt);

// Under autocast: let the backward of the conv (or conv_transpose) that made `output` scale
// `weight` (the weight before its cast) rather than the cast weight it saved; nothing if `output`
// has no such node.
void keep_full_precision_weight(const at::Tensor& output, const at::Tensor& weight);

// Under autocast, while a conv_transpose call runs on `cast`, the weight autocast cast from
// `full`: the forward's weight path scales `full` and rounds once, as the plain weight is
// rounded once (a scope on this thread, set by autocast.cpp, read by conv.cpp).
class FullPrecisionWeight {
 public:
  FullPrecisionWeight(const at::Tensor& cast, const at::Tensor& full);
  ~FullPrecisionWeight();
  FullPrecisionWeight(const FullPrecisionWeight&) = delete;
  FullPrecisionWeight& operator=(const FullPrecisionWeight&) = delete;
  // The full-precision weight `weight` was cast from, inside such a scope; else `weight`.
  static const at::Tensor& source_of(const at::Tensor& weight);

 private:
  const at::Tensor* cast_;
  const at::Tensor* full_;
  const FullPrecisionWeight* previous_;
};

}  // namespace strideconv
