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

#include <torch/autograd.h>
#include <torch/library.h>

#include "ops.h"

namespace strideconv {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ----- typed handles of the registered operators -------------------------------------------

at::Tensor call_conv(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    c10::string_view correction, double power) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("strideconv::conv", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t,
                            c10::string_view, double)>();
  return op.call(input, weight, bias, stride, padding, dilation, groups, correction, power);
}

at::Tensor call_scale_weight(
    const at::Tensor& weight, c10::SymIntArrayRef input_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view correction, double power) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("strideconv::scale_weight", "")
          .typed<at::Tensor(const at::Tensor&, c10::SymIntArrayRef, at::IntArrayRef,
                            at::IntArrayRef, at::IntArrayRef, c10::string_view, double)>();
  return op.call(weight, input_size, stride, padding, dilation, correction, power);
}

at::Tensor call_scale_border(
    const at::Tensor& grad, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, double power) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("strideconv::scale_border", "")
          .typed<at::Tensor(const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                            at::IntArrayRef, double)>();
  return op.call(grad, kernel_size, stride, padding, dilation, power);
}

void call_scale_border_(
    at::Tensor& grad, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, double power) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("strideconv::scale_border_", "")
          .typed<void(at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                      at::IntArrayRef, double)>();
  op.call(grad, kernel_size, stride, padding, dilation, power);
}

// ----- saved arguments ------------------------------------------------------------------------

// The non-tensor arguments every backward here needs.
struct Saved {
  std::vector<int64_t> stride, padding, dilation;
  double power;

  void save(AutogradContext* ctx) const {
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["power"] = power;
  }
  static Saved load(AutogradContext* ctx) {
    return {ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
            ctx->saved_data["dilation"].toIntVector(), ctx->saved_data["power"].toDouble()};
  }
};

// "kernel" and "position" leave the weight alone when every tap factor is 1:
// k == 1, or all taps of an axis in one class (dilation a multiple of stride).
bool taps_trivial(at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef dilation) {
  for (size_t d = 0; d < kernel_size.size(); ++d) {
    if (kernel_size[d] != 1 && dilation[d] % stride[d] != 0) {
      return false;
    }
  }
  return true;
}

// ----- autograd functions ---------------------------------------------------------------------

class ConvFunction : public torch::autograd::Function<ConvFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
      const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
      at::IntArrayRef dilation, int64_t groups, c10::string_view correction, double power) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor output =
        call_conv(input, weight, bias, stride, padding, dilation, groups, correction, power);
    ctx->save_for_backward({input, weight});
    Saved{stride.vec(), padding.vec(), dilation.vec(), power}.save(ctx);
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["correction"] = std::string(correction);
    const bool has_bias = bias.has_value() && bias->defined();
    ctx->saved_data["has_bias"] = has_bias;
    if (has_bias) {
      ctx->saved_data["bias_size"] = bias->sym_size(0);
    }
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& weight = saved[1];
    const Saved s = Saved::load(ctx);
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const std::string& name = ctx->saved_data["correction"].toStringRef();
    const Correction correction = parse_correction(name);
    const bool has_bias = ctx->saved_data["has_bias"].toBool();

    const bool need_input = ctx->needs_input_grad(0);
    const bool need_weight = ctx->needs_input_grad(1);
    const bool need_bias = has_bias && ctx->needs_input_grad(2);
    const bool corrected = need_input && correction != Correction::None;
    const auto kernel_size = weight.sizes().slice(2);

    at::Tensor w = weight;
    if (corrected &&
        (correction == Correction::Map || !taps_trivial(kernel_size, s.stride, s.dilation))) {
      w = call_scale_weight(weight, input.sym_sizes().slice(2), s.stride, s.padding, s.dilation,
                            name, s.power);
    }
    std::optional<c10::SymIntArrayRef> bias_sizes;
    c10::SymInt bias_size;
    if (has_bias) {
      bias_size = ctx->saved_data["bias_size"].toSymInt();
      bias_sizes = c10::SymIntArrayRef(&bias_size, 1);
    }
    const std::vector<c10::SymInt> output_padding(s.stride.size(), 0);
    auto [grad_input, grad_weight, grad_bias] = at::convolution_backward_symint(
        grads[0], input, w, bias_sizes, c10::fromIntArrayRefSlow(s.stride),
        c10::fromIntArrayRefSlow(s.padding), c10::fromIntArrayRefSlow(s.dilation),
        /*transposed=*/false, output_padding, c10::SymInt(groups),
        {need_input, need_weight, need_bias});

    if (corrected && correction == Correction::Position) {
      if (at::GradMode::is_enabled()) {  // create_graph=True: keep it differentiable
        grad_input =
            call_scale_border(grad_input, kernel_size, s.stride, s.padding, s.dilation, s.power);
      } else {  // grad_input is a fresh tensor: scale its border band in place
        call_scale_border_(grad_input, kernel_size, s.stride, s.padding, s.dilation, s.power);
      }
    }
    return {grad_input, grad_weight, grad_bias, at::Tensor(), at::Tensor(),
            at::Tensor(),  at::Tensor(),  at::Tensor(), at::Tensor()};
  }
};

class ScaleWeightFunction : public torch::autograd::Function<ScaleWeightFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx, const at::Tensor& weight, c10::SymIntArrayRef input_size,
      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
      c10::string_view correction, double power) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    Saved{stride.vec(), padding.vec(), dilation.vec(), power}.save(ctx);
    ctx->saved_data["input_size"] = input_size;
    ctx->saved_data["correction"] = std::string(correction);
    return call_scale_weight(weight, input_size, stride, padding, dilation, correction, power);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Saved s = Saved::load(ctx);
    const auto input_size = ctx->saved_data["input_size"].toSymIntVector();
    return {call_scale_weight(grads[0], input_size, s.stride, s.padding, s.dilation,
                              ctx->saved_data["correction"].toStringRef(), s.power),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class ScaleBorderFunction : public torch::autograd::Function<ScaleBorderFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx, const at::Tensor& grad, at::IntArrayRef kernel_size,
      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, double power) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    Saved{stride.vec(), padding.vec(), dilation.vec(), power}.save(ctx);
    ctx->saved_data["kernel_size"] = kernel_size.vec();
    return call_scale_border(grad, kernel_size, stride, padding, dilation, power);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Saved s = Saved::load(ctx);
    const auto kernel_size = ctx->saved_data["kernel_size"].toIntVector();
    return {call_scale_border(grads[0], kernel_size, s.stride, s.padding, s.dilation, s.power),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor conv_autograd(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    c10::string_view correction, double power) {
  return ConvFunction::apply(input, weight, bias, stride, padding, dilation, groups, correction,
                             power);
}

at::Tensor scale_weight_autograd(
    const at::Tensor& weight, c10::SymIntArrayRef input_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view correction, double power) {
  return ScaleWeightFunction::apply(weight, input_size, stride, padding, dilation, correction,
                                    power);
}

at::Tensor scale_border_autograd(
    const at::Tensor& grad, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, double power) {
  return ScaleBorderFunction::apply(grad, kernel_size, stride, padding, dilation, power);
}

}  // namespace

TORCH_LIBRARY_IMPL(strideconv, Autograd, m) {
  m.impl("conv", &conv_autograd);
  m.impl("scale_weight", &scale_weight_autograd);
  m.impl("scale_border", &scale_border_autograd);
}

}  // namespace strideconv
