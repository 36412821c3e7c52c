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

#include <optional>
#include <vector>

#include "ops.h"

namespace strideconv {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ----- typed handles of the registered operators -------------------------------------------

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

// The int[] arguments of a call and its power, kept as one integer list and one
// double: every saved_data entry is a string-keyed hash map insert, and a
// backward runs once per training step, so two entries beat eight.
// Layout: [nd, stride (nd), padding (nd), dilation (nd), extra...].
struct Saved {
  std::vector<int64_t> values;
  double power = 1.0;

  Saved(at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, double g,
        at::IntArrayRef extra)
      : power(g) {
    values.reserve(1 + 3 * stride.size() + extra.size());
    values.push_back(static_cast<int64_t>(stride.size()));
    for (const at::IntArrayRef list : {stride, padding, dilation, extra}) {
      values.insert(values.end(), list.begin(), list.end());
    }
  }
  explicit Saved(AutogradContext* ctx)
      : values(ctx->saved_data["args"].toIntVector()), power(ctx->saved_data["power"].toDouble()) {}

  void save(AutogradContext* ctx) const {
    ctx->saved_data["args"] = values;
    ctx->saved_data["power"] = power;
  }

  at::IntArrayRef stride() const { return list(0); }
  at::IntArrayRef padding() const { return list(1); }
  at::IntArrayRef dilation() const { return list(2); }
  at::IntArrayRef extra() const { return at::IntArrayRef(values).slice(1 + 3 * values[0]); }

 private:
  at::IntArrayRef list(int64_t which) const {
    return at::IntArrayRef(values).slice(1 + which * values[0], values[0]);
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
    const bool has_bias = bias.has_value() && bias->defined();
    const int64_t extra[] = {groups, static_cast<int64_t>(parse_correction(correction)), has_bias};
    Saved(stride, padding, dilation, power, extra).save(ctx);
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& weight = saved[1];
    const Saved s(ctx);
    const int64_t groups = s.extra()[0];
    const auto correction = static_cast<Correction>(s.extra()[1]);
    const bool has_bias = s.extra()[2] != 0;

    const bool need_input = ctx->needs_input_grad(0);
    const bool need_weight = ctx->needs_input_grad(1);
    const bool need_bias = has_bias && ctx->needs_input_grad(2);
    const bool corrected = need_input && correction != Correction::None;
    const auto kernel_size = weight.sizes().slice(2);
    // Without create_graph nothing here needs a graph: call the kernels below
    // the Autograd key (no autograd node, no fallback bookkeeping per call).
    const bool differentiable = at::GradMode::is_enabled();

    at::Tensor w = weight;
    if (corrected &&
        (correction == Correction::Map || !taps_trivial(kernel_size, s.stride(), s.dilation()))) {
      std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
      if (!differentiable) below_autograd.emplace();
      w = call_scale_weight(weight, input.sym_sizes().slice(2), s.stride(), s.padding(),
                            s.dilation(), correction_name(correction), s.power);
    }
    // The bias has one entry per output channel.
    const c10::SymInt bias_size = weight.sym_size(0);
    std::optional<c10::SymIntArrayRef> bias_sizes;
    if (has_bias) bias_sizes = c10::SymIntArrayRef(&bias_size, 1);
    const std::vector<c10::SymInt> output_padding(s.stride().size(), 0);
    auto [grad_input, grad_weight, grad_bias] = at::convolution_backward_symint(
        grads[0], input, w, bias_sizes, c10::fromIntArrayRefSlow(s.stride()),
        c10::fromIntArrayRefSlow(s.padding()), c10::fromIntArrayRefSlow(s.dilation()),
        /*transposed=*/false, output_padding, c10::SymInt(groups),
        {need_input, need_weight, need_bias});

    if (corrected && correction == Correction::Position) {
      if (differentiable) {  // create_graph=True: keep it differentiable
        grad_input = call_scale_border(grad_input, kernel_size, s.stride(), s.padding(),
                                       s.dilation(), s.power);
      } else {  // grad_input is a fresh tensor: scale its border band in place
        at::AutoDispatchBelowADInplaceOrView below_autograd;
        call_scale_border_(grad_input, kernel_size, s.stride(), s.padding(), s.dilation(),
                           s.power);
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
    at::Tensor out =
        call_scale_weight(weight, input_size, stride, padding, dilation, correction, power);
    const int64_t extra[] = {static_cast<int64_t>(parse_correction(correction))};
    Saved(stride, padding, dilation, power, extra).save(ctx);
    ctx->saved_data["input_size"] = input_size;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Saved s(ctx);
    const auto input_size = ctx->saved_data["input_size"].toSymIntVector();
    const auto correction = static_cast<Correction>(s.extra()[0]);
    return {call_scale_weight(grads[0], input_size, s.stride(), s.padding(), s.dilation(),
                              correction_name(correction), s.power),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class ScaleBorderFunction : public torch::autograd::Function<ScaleBorderFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx, const at::Tensor& grad, at::IntArrayRef kernel_size,
      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, double power) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor out = call_scale_border(grad, kernel_size, stride, padding, dilation, power);
    Saved(stride, padding, dilation, power, kernel_size).save(ctx);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Saved s(ctx);
    return {call_scale_border(grads[0], s.extra(), s.stride(), s.padding(), s.dilation(), s.power),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
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
