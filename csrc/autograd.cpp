// Autograd of the operators, in C++ (registered for the Autograd dispatch key),
// so that a strideconv convolution costs what an ATen convolution costs: no
// Python runs between the forward and the backward kernels.
//
// The backward of `conv` is one call of ATen's convolution backward with the
// weight scaled by `scale_weight` (the weight is tiny, and the weight and bias
// gradients do not depend on it, so they come out true), then, for "position",
// `scale_border_` on the few border rows and columns of the input gradient.
// Both scalings are fixed and diagonal, so each one's backward is itself: that
// is what makes double backward work.
//
// `conv_transpose` normalises its forward by a fixed diagonal scaling (of the weight,
// or of the output), so its backward is the true gradient of that function: either the
// incoming gradient times the output factors and one ATen convolution backward with the
// plain weight, or one convolution backward with the scaled weight and the same
// scaling again on the weight gradient (the chain rule through a diagonal map).

#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "ops.h"
#include "options.h"
#include "output_factors.h"

namespace strideconv {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ----- saved arguments ------------------------------------------------------------------------

// The checked options of a conv call, kept in the context as two entries (see
// encode_options) and read back as a typed ConvOptions; and whether the call had a
// bias (without one, the node has no bias edge to ask needs_input_grad about).
void save_options(AutogradContext* ctx, const ConvOptions& o, bool has_bias) {
  ctx->saved_data["options"] = encode_options(o);
  ctx->saved_data["power"] = o.power;
  ctx->saved_data["has_bias"] = has_bias;
}

ConvOptions load_options(AutogradContext* ctx) {
  return decode_options(ctx->saved_data["options"].toIntVector(), ctx->saved_data["power"].toDouble());
}

// What the forward of conv or conv_transpose saves, and what its backward reads back: the
// input and weight, the checked options, and which gradients are wanted.
void save_call(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
               const ConvOptions& o, const std::optional<at::Tensor>& bias) {
  ctx->save_for_backward({input, weight});
  save_options(ctx, o, bias.has_value() && bias->defined());
}

struct SavedCall {
  at::Tensor input, weight;
  ConvOptions o;
  bool need_input, need_weight, need_bias;

  explicit SavedCall(AutogradContext* ctx) : o(load_options(ctx)) {
    const auto saved = ctx->get_saved_variables();
    input = saved[0];
    weight = saved[1];
    need_input = ctx->needs_input_grad(0);
    need_weight = ctx->needs_input_grad(1);
    need_bias = ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2);
  }
};

// The int[] arguments and power of a scale_weight or scale_border call, whose
// forward (the registered op) checked them.
struct SavedScaling {
  std::vector<int64_t> stride, padding, dilation, output_padding;
  double power;

  static void save(AutogradContext* ctx, at::IntArrayRef stride, at::IntArrayRef padding,
                   at::IntArrayRef dilation, double power, at::IntArrayRef output_padding) {
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["power"] = power;
    ctx->saved_data["output_padding"] = output_padding;
  }

  explicit SavedScaling(AutogradContext* ctx)
      : stride(ctx->saved_data["stride"].toIntVector()),
        padding(ctx->saved_data["padding"].toIntVector()),
        dilation(ctx->saved_data["dilation"].toIntVector()),
        output_padding(ctx->saved_data["output_padding"].toIntVector()),
        power(ctx->saved_data["power"].toDouble()) {}
};

// The bias gradient's sizes (one entry per output channel) for
// convolution_backward, or none when it is not wanted.
struct BiasSizes {
  c10::SymInt size;
  std::optional<c10::SymIntArrayRef> sizes;
  BiasSizes(c10::SymInt channels, bool wanted) : size(std::move(channels)) {
    if (wanted) sizes = c10::SymIntArrayRef(&size, 1);
  }
  BiasSizes(const BiasSizes&) = delete;
};

// ----- autograd functions ---------------------------------------------------------------------

class ConvFunction : public torch::autograd::Function<ConvFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
      const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
      at::IntArrayRef dilation, int64_t groups, c10::string_view correction, double power) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    // The op checks every argument (ATen's checks, then ours) before it returns.
    at::Tensor output =
        call_conv(input, weight, bias, stride, padding, dilation, groups, correction, power);
    save_call(ctx, input, weight,
              conv_options(weight.dim() - 2, stride, padding, dilation, groups,
                           parse_correction(correction), power),
              bias);
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const SavedCall call(ctx);
    const at::Tensor& input = call.input;
    const at::Tensor& weight = call.weight;
    const ConvOptions& o = call.o;
    const bool need_input = call.need_input, need_weight = call.need_weight, need_bias = call.need_bias;
    const bool corrected = need_input && o.correction != Correction::None;
    const auto kernel_size = weight.sizes().slice(2);
    // Without create_graph nothing here needs a graph: call the kernels below
    // the Autograd key (no autograd node, no fallback bookkeeping per call).
    const bool differentiable = at::GradMode::is_enabled();

    at::Tensor w = weight;
    if (corrected &&
        (o.correction == Correction::Map ||
         !taps_trivial(kernel_size, o.stride_list(), o.dilation_list()))) {
      std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
      if (!differentiable) below_autograd.emplace();
      w = call_scale_weight(weight, input.sym_sizes().slice(2), o.stride_list(), o.padding_list(),
                            o.dilation_list(), correction_name(o.correction), o.power);
    }
    const BiasSizes bias(weight.sym_size(0), need_bias);
    const std::vector<c10::SymInt> output_padding(o.ndim, 0);
    auto [grad_input, grad_weight, grad_bias] = at::convolution_backward_symint(
        grads[0], input, w, bias.sizes, c10::fromIntArrayRefSlow(o.stride_list()),
        c10::fromIntArrayRefSlow(o.padding_list()), c10::fromIntArrayRefSlow(o.dilation_list()),
        /*transposed=*/false, output_padding, c10::SymInt(o.groups),
        {need_input, need_weight, need_bias});

    if (corrected && o.correction == Correction::Position) {
      if (differentiable) {  // create_graph=True: keep it differentiable
        grad_input = call_scale_border(grad_input, kernel_size, o.stride_list(), o.padding_list(),
                                       o.dilation_list(), o.power);
      } else {  // grad_input is a fresh tensor: scale its border band in place
        at::AutoDispatchBelowADInplaceOrView below_autograd;
        call_scale_border_(grad_input, kernel_size, o.stride_list(), o.padding_list(),
                           o.dilation_list(), o.power);
      }
    }
    return {grad_input, grad_weight, grad_bias, at::Tensor(), at::Tensor(),
            at::Tensor(),  at::Tensor(),  at::Tensor(), at::Tensor()};
  }
};

class ConvTransposeFunction : public torch::autograd::Function<ConvTransposeFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
      const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
      at::IntArrayRef output_padding, at::IntArrayRef dilation, int64_t groups,
      c10::string_view correction, double power) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor output = call_conv_transpose(input, weight, bias, stride, padding, output_padding,
                                            dilation, groups, correction, power);
    save_call(ctx, input, weight,
              conv_options(weight.dim() - 2, stride, padding, dilation, groups,
                           parse_correction(correction), power, output_padding),
              bias);
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const SavedCall call(ctx);
    const at::Tensor& input = call.input;
    const at::Tensor& weight = call.weight;
    const ConvOptions& o = call.o;
    const bool need_input = call.need_input, need_weight = call.need_weight, need_bias = call.need_bias;
    const bool position = o.correction == Correction::Position;
    const auto kernel_size = weight.sizes().slice(2);
    const bool differentiable = at::GradMode::is_enabled();  // create_graph=True
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!differentiable) below_autograd.emplace();

    const at::Tensor& grad = grads[0];
    at::Tensor grad_input, grad_weight, grad_bias;
    // "position" always scales the incoming gradient (a full pass, which the band alone
    // would need too, as that tensor is not ours to scale in place); "kernel" and "map"
    // when the forward would choose it (output_is_cheaper); "none" never.
    if (position || (o.correction != Correction::None && output_is_cheaper(weight.sym_numel(), grad.sym_numel()))) {
      if (need_bias) {  // the bias is added after the scaling: its gradient is the plain sum
        std::vector<int64_t> dims{0};
        for (int d = 0; d < o.ndim; ++d) dims.push_back(2 + d);
        grad_bias = grad.sum(dims);
      }
      if (need_input || need_weight) {
        const at::Tensor factors = call_output_factors(
            grad.detach(), kernel_size, o.stride_list(), o.padding_list(), o.dilation_list(),
            o.output_padding_list(), correction_name(o.correction), o.power);
        std::tie(grad_input, grad_weight, std::ignore) = at::convolution_backward_symint(
            grad.mul(factors), input, weight, std::nullopt, c10::fromIntArrayRefSlow(o.stride_list()),
            c10::fromIntArrayRefSlow(o.padding_list()), c10::fromIntArrayRefSlow(o.dilation_list()),
            /*transposed=*/true, c10::fromIntArrayRefSlow(o.output_padding_list()),
            c10::SymInt(o.groups), {need_input, need_weight, false});
      }
    } else {
      // The weight scaled as in the forward; ATen's bias gradient is the true one.
      const bool scaled = o.correction == Correction::Map ||
                          (o.correction == Correction::Kernel &&
                           !taps_trivial(kernel_size, o.stride_list(), o.dilation_list()));
      const auto output_size = grad.sym_sizes().slice(2);
      const auto scale = [&](const at::Tensor& t) {
        return call_scale_weight(t, output_size, o.stride_list(), o.padding_list(), o.dilation_list(),
                                 correction_name(o.correction), o.power, o.output_padding_list());
      };
      const BiasSizes bias(weight.sym_size(1) * o.groups, need_bias);
      std::tie(grad_input, grad_weight, grad_bias) = at::convolution_backward_symint(
          grad, input, scaled && (need_input || need_weight) ? scale(weight) : weight, bias.sizes,
          c10::fromIntArrayRefSlow(o.stride_list()), c10::fromIntArrayRefSlow(o.padding_list()),
          c10::fromIntArrayRefSlow(o.dilation_list()), /*transposed=*/true,
          c10::fromIntArrayRefSlow(o.output_padding_list()), c10::SymInt(o.groups),
          {need_input, need_weight, need_bias});
      // the adjoint of a diagonal scaling is itself
      if (need_weight && scaled) grad_weight = scale(grad_weight);
    }
    return {grad_input,   grad_weight,  grad_bias,    at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// A fixed diagonal scaling of the weight: its backward is itself.
class ScaleWeightFunction : public torch::autograd::Function<ScaleWeightFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx, const at::Tensor& weight, c10::SymIntArrayRef input_size,
      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
      c10::string_view correction, double power, at::IntArrayRef output_padding) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor out = call_scale_weight(weight, input_size, stride, padding, dilation, correction,
                                       power, output_padding);
    SavedScaling::save(ctx, stride, padding, dilation, power, output_padding);
    ctx->saved_data["input_size"] = input_size;
    ctx->saved_data["correction"] = std::string(correction);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const SavedScaling s(ctx);
    const auto input_size = ctx->saved_data["input_size"].toSymIntVector();
    const std::string correction = ctx->saved_data["correction"].toStringRef();
    return {call_scale_weight(grads[0], input_size, s.stride, s.padding, s.dilation, correction,
                              s.power, s.output_padding),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

// A fixed diagonal scaling of the weight: its backward is itself.
class ScaleTapsFunction : public torch::autograd::Function<ScaleTapsFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weight, at::IntArrayRef stride,
                            at::IntArrayRef dilation, double power) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor out = call_scale_taps(weight, stride, dilation, power);
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["power"] = power;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto stride = ctx->saved_data["stride"].toIntVector();
    const auto dilation = ctx->saved_data["dilation"].toIntVector();
    return {call_scale_taps(grads[0], stride, dilation, ctx->saved_data["power"].toDouble()),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// A fixed diagonal scaling of the gradient: its backward is itself.
class ScaleBorderFunction : public torch::autograd::Function<ScaleBorderFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx, const at::Tensor& grad, at::IntArrayRef kernel_size,
      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, double power,
      at::IntArrayRef output_padding) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor out =
        call_scale_border(grad, kernel_size, stride, padding, dilation, power, output_padding);
    SavedScaling::save(ctx, stride, padding, dilation, power, output_padding);
    ctx->saved_data["kernel_size"] = kernel_size;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const SavedScaling s(ctx);
    const auto kernel_size = ctx->saved_data["kernel_size"].toIntVector();
    return {call_scale_border(grads[0], kernel_size, s.stride, s.padding, s.dilation, s.power,
                              s.output_padding),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// Whether a call must record a graph node: as ATen's own ops decide, so that
// inference (no_grad, or nothing requiring grad) pays for no node and nothing
// saved. A forward-mode tangent still goes through the Function, which
// refuses it loudly (no jvp is defined) rather than dropping it.
bool records_graph(const at::Tensor& input, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias) {
  const bool grad_mode = at::GradMode::is_enabled();
  const auto tracked = [&](const at::Tensor& t) {
    return t.defined() && ((grad_mode && t.requires_grad()) || t._fw_grad(/*level=*/0).defined());
  };
  return tracked(input) || tracked(weight) || (bias.has_value() && tracked(*bias));
}

at::Tensor conv_autograd(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    c10::string_view correction, double power) {
  if (!records_graph(input, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_conv(input, weight, bias, stride, padding, dilation, groups, correction, power);
  }
  return ConvFunction::apply(input, weight, bias, stride, padding, dilation, groups, correction,
                             power);
}

at::Tensor conv_transpose_autograd(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
    at::IntArrayRef dilation, int64_t groups, c10::string_view correction, double power) {
  if (!records_graph(input, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_conv_transpose(input, weight, bias, stride, padding, output_padding, dilation,
                               groups, correction, power);
  }
  return ConvTransposeFunction::apply(input, weight, bias, stride, padding, output_padding,
                                      dilation, groups, correction, power);
}

at::Tensor scale_weight_autograd(
    const at::Tensor& weight, c10::SymIntArrayRef input_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view correction, double power,
    at::IntArrayRef output_padding) {
  return ScaleWeightFunction::apply(weight, input_size, stride, padding, dilation, correction,
                                    power, output_padding);
}

at::Tensor scale_taps_autograd(
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef dilation, double power) {
  return ScaleTapsFunction::apply(weight, stride, dilation, power);
}

at::Tensor scale_border_autograd(
    const at::Tensor& grad, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, double power,
    at::IntArrayRef output_padding) {
  return ScaleBorderFunction::apply(grad, kernel_size, stride, padding, dilation, power,
                                    output_padding);
}

}  // namespace

TORCH_LIBRARY_IMPL(strideconv, Autograd, m) {
  m.impl("conv", &conv_autograd);
  m.impl("conv_transpose", &conv_transpose_autograd);
  m.impl("scale_weight", &scale_weight_autograd);
  m.impl("scale_taps", &scale_taps_autograd);
  m.impl("scale_border", &scale_border_autograd);
}

}  // namespace strideconv
