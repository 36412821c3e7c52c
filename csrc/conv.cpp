// The operators' schemas, and the operators that are the same on every device,
// written and registered once (CompositeExplicitAutograd): the forward
// convolution, the count-normalised transposed convolution, the choice of the
// weight that gives the corrected input gradient (or the normalised transposed
// output), and the out-of-place border scaling. The device kernels
// (scale_taps, scale_border_) are in cpu/ and cuda/; autograd in autograd/ (one file per operator);
// the design in docs/design.md.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <string>
#include <vector>

#include "ops.h"
#include "options.h"
#include "output_factors.h"
#include "cpu/scale_border.h"
#include "cpu/scale_rows.h"

namespace strideconv {

// ATen runs complex convolutions as real ones only from at::conv2d & co., not
// from at::convolution, and the correction factors are real: not supported.
void check_real(const at::Tensor& input, const at::Tensor& weight, const char* plain) {
  TORCH_CHECK_VALUE(!input.is_complex() && !weight.is_complex(),
                    "strideconv: complex convolutions are not supported; use torch.nn.functional.",
                    plain);
}

void check_conv_inputs(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_real(input, weight, "conv2d");
  // at::conv2d checks the bias before at::convolution does; keep its message.
  TORCH_CHECK(
      !bias.has_value() || !bias->defined() || input.dtype() == bias->dtype(),
      "Input type (", std::string(input.dtype().name()), ") and bias type (",
      std::string(bias->dtype().name()), ") should be the same");  // built only on failure
}

namespace {

// ATen's own convolution, so the output is bit-identical to
// torch.nn.functional.convNd and runs cuDNN / oneDNN under the user's backend
// settings. correction and power only shape the backward, but they are checked
// here, so that a bad setting fails at the call that made it.
at::Tensor conv(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    c10::string_view correction, double power) {
  const Correction kind = parse_correction(correction);
  check_power(power);
  check_conv_inputs(input, weight, bias);
  const std::vector<int64_t> output_padding(stride.size(), 0);
  // ATen checks every argument first, with the messages torch's convolutions give.
  at::Tensor output = at::convolution(input, weight, bias, stride, padding, dilation,
                                      /*transposed=*/false, output_padding, groups);
  // What ATen accepts and the backward could not handle: values past 2^31 and
  // powers whose factors overflow the dtype.
  const ConvOptions o = conv_options(weight.dim() - 2, stride, padding, dilation, groups, kind, power);
  check_factors_fit(make_geometry(input.sizes().slice(2), weight.sizes().slice(2), o.stride_list(),
                                  o.padding_list(), o.dilation_list()),
                    kind, power, weight.scalar_type());
  return output;
}

// The output lengths of a transposed convolution, (L_in - 1) s - 2p + q (k - 1) + a + 1.
// The options are checked (below 2^31), so nothing overflows.
std::vector<int64_t> transposed_lengths(at::IntArrayRef input_lengths, at::IntArrayRef kernel_size,
                                        const ConvOptions& o) {
  std::vector<int64_t> out(o.ndim);
  for (int d = 0; d < o.ndim; ++d) {
    out[d] = (input_lengths[d] - 1) * o.stride[d] - 2 * o.padding[d] +
             o.dilation[d] * (kernel_size[d] - 1) + o.output_padding[d] + 1;
  }
  return out;
}

// The count-normalised transposed convolution (docs/design.md, "Transposed
// convolutions"): ONE ATen transposed convolution, normalised the cheaper way.
// - On the weight: the weight `scale_weight` gives over the output (tap-scaled for
//   "kernel" and "position", alpha * weight for "map"), ATen adding the bias; for
//   "position" the border band of the output is then scaled in place, each value v
//   becoming f (v - b) + b, so the bias stays unscaled. No pass over the whole output.
// - On the output, when the weight is not much smaller than the output (decoders'
//   early layers; output_is_cheaper): the plain weight, then one elementwise pass
//   with the output factor map (or alpha) that also adds the bias.
// "none" is at::convolution itself, so it is F.conv_transposeNd bit for bit.
at::Tensor conv_transpose(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
    at::IntArrayRef dilation, int64_t groups, c10::string_view correction, double power) {
  const Correction kind = parse_correction(correction);
  check_power(power);
  check_real(input, weight, "conv_transpose2d");
  const auto plain = [&](const std::optional<at::Tensor>& b) {
    return at::convolution(input, weight, b, stride, padding, dilation, /*transposed=*/true,
                           output_padding, groups);
  };
  if (kind == Correction::None) return plain(bias);
  const bool with_bias = bias.has_value() && bias->defined();
  // The scaled weight needs the checked options (and the output lengths) before the
  // convolution runs. Where our checks refuse the arguments and ATen refuses them
  // too, ATen's error (torch's) comes first; only the error path pays for that call.
  ConvOptions o;
  std::vector<int64_t> lengths;  // of the output
  Geometry g;
  try {
    check_operand(weight, "weight", "(in, out / groups, *kernel)");
    TORCH_CHECK_VALUE(input.dim() == weight.dim(), "strideconv: expected a batched input of ",
                      std::to_string(weight.dim()), " dims, got ", std::to_string(input.dim()));
    // The bias may be added by us: check it as ATen would.
    TORCH_CHECK_VALUE(!with_bias || (bias->dim() == 1 && bias->size(0) == weight.size(1) * groups &&
                                     bias->device() == input.device()),
                      "strideconv: expected a bias of one value per output channel");
    // ATen accepts some mixed input and bias dtypes and refuses others, by backend.
    if (with_bias && bias->dtype() != input.dtype()) (void)plain(bias);
    o = conv_options(weight.dim() - 2, stride, padding, dilation, groups, kind, power, output_padding);
    lengths = transposed_lengths(input.sizes().slice(2), weight.sizes().slice(2), o);
    g = make_geometry(lengths, weight.sizes().slice(2), o.stride_list(), o.padding_list(),
                      o.dilation_list(), o.output_padding_list());
    check_factors_fit(g, kind, power, weight.scalar_type());
  } catch (const c10::Error&) {
    (void)plain(bias);
    throw;
  }
  std::vector<int64_t> channel_shape(input.dim(), 1);  // a bias broadcast over (N, C, *spatial)
  channel_shape[1] = -1;
  int64_t output_numel = input.size(0) * weight.size(1) * groups;
  for (const int64_t length : lengths) output_numel *= length;
  const auto kernel_size = weight.sizes().slice(2);

  if (output_is_cheaper(weight.numel(), output_numel)) {
    at::Tensor out = plain(std::nullopt);
    if (kind == Correction::Map) {
      const double alpha = map_alpha(g, power);
      return with_bias ? at::add(bias->view(channel_shape), out, alpha) : out.mul_(alpha);
    }
    // Reduced precision: the factors stay in float32, and the one pass rounds once.
    const bool reduced = reduced_precision(out.scalar_type());
    const at::Tensor factors =
        output_factor_map(g, kind, power, reduced ? at::kFloat : out.scalar_type(), out.device());
    if (!with_bias) return out.mul_(factors);
    if (reduced) return at::addcmul_out(out, bias->view(channel_shape), out, factors);
    return at::addcmul(bias->view(channel_shape), out, factors);
  }

  // The weight path; ATen adds any bias. On the CPU, the weight and the band are scaled by the
  // loops of cpu/ (the arguments are checked above), elsewhere by the dispatched ops.
  at::Tensor w = weight;
  if (kind == Correction::Map || !taps_trivial(kernel_size, o.stride_list(), o.dilation_list())) {
    // Under autocast, from the weight before its cast: rounded once (FullPrecisionWeight).
    const at::Tensor& source = FullPrecisionWeight::source_of(weight);
    const auto cpu_factors = [&] { return weight_factors(g, kind, power, source.scalar_type(), source.device()); };
    if (!source.is_cpu() || !scale_rows_on_cpu(source, cpu_factors(), weight, w)) {
      w = call_scale_weight(source, c10::fromIntArrayRefSlow(lengths), o.stride_list(), o.padding_list(),
                            o.dilation_list(), correction, power, o.output_padding_list());
      if (w.scalar_type() != weight.scalar_type()) w = w.to(weight.scalar_type());
    }
  }
  at::Tensor out = at::convolution(input, w, bias, stride, padding, dilation, /*transposed=*/true,
                                   output_padding, groups);
  if (kind == Correction::Position && out.is_cpu() && concrete(out)) {
    scale_border_on_cpu(out, g, power, bias);
  } else if (kind == Correction::Position) {
    call_scale_border_(out, kernel_size, o.stride_list(), o.padding_list(), o.dilation_list(), power,
                       o.output_padding_list(), bias);
  }
  return out;
}

// The factors of output_factors.h for a transposed convolution's output or gradient
// `like`, as a fresh tensor (callers may be traced by torch.compile, which may reuse an
// op's output buffer: the cached map itself is never handed out here).
at::Tensor output_factors(
    const at::Tensor& like, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, at::IntArrayRef output_padding,
    c10::string_view correction, double power) {
  const Correction kind = parse_correction(correction);
  check_power(power);
  check_operand(like, "output", "(batch, channels, *spatial)");
  TORCH_CHECK_VALUE(kind != Correction::None, "strideconv: output_factors needs a correction other than 'none'");
  const Geometry g = make_geometry(like.sizes().slice(2), kernel_size, stride, padding, dilation, output_padding);
  check_factors_fit(g, kind, power, like.scalar_type());
  if (kind == Correction::Map) {
    return at::full(std::vector<int64_t>(like.dim(), 1), map_alpha(g, power), like.options());
  }
  return output_factor_map(g, kind, power, like.scalar_type(), like.device()).clone();
}

// The weight whose input gradient is the corrected one: "none" a copy, "map"
// alpha * weight, "kernel" and "position" the tap-scaled weight. With
// output_padding, input_size is a transposed convolution's output size, and
// the weight is the one that normalises that output.
at::Tensor scale_weight(
    const at::Tensor& weight, c10::SymIntArrayRef input_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view correction, double power,
    at::IntArrayRef output_padding) {
  const Correction kind = parse_correction(correction);
  check_power(power);
  check_operand(weight, "weight", "(out, in / groups, *kernel)");
  TORCH_CHECK_VALUE(
      static_cast<int64_t>(input_size.size()) == weight.dim() - 2,
      "strideconv: expected the input size to have one value per spatial dim of the weight (",
      std::to_string(weight.dim() - 2), "), got ", std::to_string(input_size.size()), " values");
  const Geometry g = make_geometry(C10_AS_INTARRAYREF_SLOW(input_size), weight.sizes().slice(2),
                                   stride, padding, dilation, output_padding);
  check_factors_fit(g, kind, power, weight.scalar_type());
  switch (kind) {
    case Correction::None:
      return weight.clone();
    case Correction::Map: {
      double log_alpha = 0;
      for (int d = 0; d < g.ndim; ++d) log_alpha += g.axis[d].log_map_factor(power);
      return weight * std::exp(log_alpha);
    }
    default:
      return call_scale_taps(weight, stride, dilation, power);
  }
}

at::Tensor scale_border(
    const at::Tensor& grad, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, double power,
    at::IntArrayRef output_padding) {
  at::Tensor out = grad.clone();
  call_scale_border_(out, kernel_size, stride, padding, dilation, power, output_padding);
  return out;
}

// Average pooling whose input gradient is the true one times `factor` (autograd/pool.cpp): the
// forward is ATen's avg_pool2d itself.
at::Tensor avg_pool2d(const at::Tensor& input, const at::Tensor& factor, at::IntArrayRef kernel_size,
                      at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                      std::optional<int64_t> divisor_override) {
  (void)factor;  // it shapes the backward only
  return at::avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override);
}

}  // namespace

// ----- typed calls through the dispatcher ------------------------------------------------------

at::Tensor call_conv(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    c10::string_view correction, double power) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("strideconv::conv", "")
                             .typed<decltype(conv)>();
  return op.call(input, weight, bias, stride, padding, dilation, groups, correction, power);
}

at::Tensor call_conv_transpose(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
    at::IntArrayRef dilation, int64_t groups, c10::string_view correction, double power) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("strideconv::conv_transpose", "")
                             .typed<decltype(conv_transpose)>();
  return op.call(input, weight, bias, stride, padding, output_padding, dilation, groups, correction,
                 power);
}

at::Tensor call_avg_pool2d(const at::Tensor& input, const at::Tensor& factor, at::IntArrayRef kernel_size,
                           at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                           std::optional<int64_t> divisor_override) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("strideconv::avg_pool2d", "")
                             .typed<decltype(avg_pool2d)>();
  return op.call(input, factor, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override);
}

at::Tensor call_avg_pool2d_backward_scaled(const at::Tensor& grad_output, const at::Tensor& input,
                                           at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                           std::optional<int64_t> divisor_override, const at::Tensor& factor) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("strideconv::avg_pool2d_backward_scaled", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                            bool, bool, std::optional<int64_t>, const at::Tensor&)>();
  return op.call(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                 factor);
}

at::Tensor call_output_factors(
    const at::Tensor& like, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, at::IntArrayRef output_padding,
    c10::string_view correction, double power) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("strideconv::output_factors", "")
                             .typed<decltype(output_factors)>();
  return op.call(like, kernel_size, stride, padding, dilation, output_padding, correction, power);
}

at::Tensor call_scale_weight(
    const at::Tensor& weight, c10::SymIntArrayRef input_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view correction, double power,
    at::IntArrayRef output_padding) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("strideconv::scale_weight", "")
                             .typed<decltype(scale_weight)>();
  return op.call(weight, input_size, stride, padding, dilation, correction, power, output_padding);
}

at::Tensor call_scale_taps(
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef dilation, double power) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("strideconv::scale_taps", "")
          .typed<at::Tensor(const at::Tensor&, at::IntArrayRef, at::IntArrayRef, double)>();
  return op.call(weight, stride, dilation, power);
}

at::Tensor call_scale_border(
    const at::Tensor& grad, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, double power,
    at::IntArrayRef output_padding) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("strideconv::scale_border", "")
                             .typed<decltype(scale_border)>();
  return op.call(grad, kernel_size, stride, padding, dilation, power, output_padding);
}

void call_scale_border_(
    at::Tensor& grad, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, double power,
    at::IntArrayRef output_padding, const std::optional<at::Tensor>& bias) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("strideconv::scale_border_", "")
          .typed<void(at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                      at::IntArrayRef, double, at::IntArrayRef, const std::optional<at::Tensor>&)>();
  op.call(grad, kernel_size, stride, padding, dilation, power, output_padding, bias);
}

// ----- schemas and the device-independent registrations ---------------------------------------

TORCH_LIBRARY(strideconv, m) {
  // Forward convolution; correction and power shape its backward.
  m.def(
      "conv(Tensor input, Tensor weight, Tensor? bias, int[] stride, int[] padding, "
      "int[] dilation, int groups, str correction, float power) -> Tensor",
      {at::Tag::flexible_layout});
  // Transposed convolution whose output is normalised by the count map.
  m.def(
      "conv_transpose(Tensor input, Tensor weight, Tensor? bias, int[] stride, int[] padding, "
      "int[] output_padding, int[] dilation, int groups, str correction, float power) -> Tensor",
      {at::Tag::flexible_layout});
  // The factor of each output position of a normalised transposed convolution
  // whose output (or gradient) is `like` (alpha alone for "map").
  m.def(
      "output_factors(Tensor like, int[] kernel_size, int[] stride, int[] padding, int[] dilation, "
      "int[] output_padding, str correction, float power) -> Tensor",
      {at::Tag::flexible_layout});
  // The weight whose transposed convolution gives the corrected input
  // gradient ("map": alpha * w; "kernel"/"position": tap-scaled w), or, with
  // output_padding given, the normalised output of a transposed convolution.
  m.def(
      "scale_weight(Tensor weight, SymInt[] input_size, int[] stride, int[] padding, "
      "int[] dilation, str correction, float power, int[] output_padding=[]) -> Tensor",
      {at::Tag::flexible_layout});
  // Each tap of the weight times its "kernel" factor (a device kernel).
  m.def("scale_taps(Tensor weight, int[] stride, int[] dilation, float power) -> Tensor");
  // "kernel"-corrected input gradient -> "position"-corrected, in place, on
  // the border band only (a device kernel). With a bias (one value per channel), each
  // band value v becomes f (v - b) + b: a transposed convolution's output whose bias
  // was added before the scaling.
  m.def(
      "scale_border_(Tensor(a!) grad, int[] kernel_size, int[] stride, int[] padding, "
      "int[] dilation, float power, int[] output_padding=[], Tensor? bias=None) -> ()");
  // The corrected input gradient of avg_pool2d (the true one times `factor`, an (H, W) map),
  // in one pass (a device kernel; pool.h).
  m.def(
      "avg_pool2d_backward_scaled(Tensor grad_output, Tensor input, int[2] kernel_size, int[2] stride, "
      "int[2] padding, bool ceil_mode, bool count_include_pad, int? divisor_override, Tensor factor) -> Tensor");
  // F.avg_pool2d (the forward, bit for bit) whose input gradient is the true one times `factor`,
  // an (H, W) map of the input's spatial size; no gradient flows to `factor` (a fixed map).
  m.def(
      "avg_pool2d(Tensor input, Tensor factor, int[2] kernel_size, int[2] stride, int[2] padding, "
      "bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  // Out-of-place twin of scale_border_, differentiable (double backward).
  m.def(
      "scale_border(Tensor grad, int[] kernel_size, int[] stride, int[] padding, "
      "int[] dilation, float power, int[] output_padding=[]) -> Tensor",
      {at::Tag::flexible_layout});
}

TORCH_LIBRARY_IMPL(strideconv, CompositeExplicitAutograd, m) {
  m.impl("conv", &conv);
  m.impl("conv_transpose", &conv_transpose);
  m.impl("output_factors", &output_factors);
  m.impl("scale_weight", &scale_weight);
  m.impl("scale_border", &scale_border);
  m.impl("avg_pool2d", &avg_pool2d);
}

}  // namespace strideconv
