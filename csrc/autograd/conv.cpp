// Autograd of the operators, in C++ (registered for the Autograd dispatch key),
// so that a strideconv convolution costs what an ATen convolution costs: no
// Python runs between the forward and the backward kernels, and each node is
// written the way ATen's generated ones are (ConvolutionBackward0 and its
// siblings): a plain Node with typed members and SavedVariables, a fixed name(),
// release_variables(), wired with collect_next_edges and set_history. (A
// torch::autograd::Function costs about 4 us more per call: a string-keyed context,
// type erasure of the saved values, and the demangling of its type name at every
// backward.)
//
// The backward of `conv` is one call of ATen's convolution backward with the
// weight scaled by `scale_weight` (the weight is tiny, and the weight and bias
// gradients do not depend on it, so they come out true), then, for "position",
// `scale_border_` on the few border rows and columns of the input gradient.
// Both scalings are fixed and diagonal, so each one's backward is itself: that
// is what makes double backward work.

#include "common.h"
#include "../cpu/scale_border.h"
#include "../cpu/scale_rows.h"

namespace strideconv {
namespace autograd {
namespace {

// The backward of conv: one ATen convolution backward with the weight scaled by
// scale_weight (grad_weight and grad_bias do not depend on it, so they come out
// true), then, for "position", scale_border_ on the border band of grad_input.
struct ConvBackward final : ConvNode {
  std::string name() const override { return "strideconv::ConvBackward"; }

  variable_list gradients(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight,
                          bool need_input, bool need_weight, bool need_bias) override {
    const bool corrected = need_input && o.correction != Correction::None;
    const auto kernel_size = weight.sizes().slice(2);
    // Without create_graph nothing here needs a graph: call the kernels below the
    // Autograd key (no node, no fallback bookkeeping per call).
    const bool differentiable = at::GradMode::is_enabled();
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!differentiable) below_autograd.emplace();

    at::Tensor w = weight;
    if (corrected &&
        (o.correction == Correction::Map || !taps_trivial(kernel_size, o.stride_list(), o.dilation_list()))) {
      const at::Tensor source = weight_to_scale(weight);
      if (!differentiable && concrete(source)) {
        // The cached factors (the forward checked the options): one multiply, in float32
        // or float64, rounded once to the weight's dtype.
        const at::Tensor f = weight_factors(make_geometry(input.sizes().slice(2), kernel_size, o), o.correction,
                                            o.power, source.scalar_type(), source.device());
        if (!scale_rows_on_cpu(source, f, weight, w)) {
          w = at::empty_like(weight);
          at::mul_out(w, source, f);
        }
      } else {  // through the op: differentiable (create_graph) and traceable (torch.compile)
        w = call_scale_weight(source, input.sym_sizes().slice(2), o.stride_list(), o.padding_list(),
                              o.dilation_list(), correction_name(o.correction), o.power)
                .to(weight.scalar_type());
      }
    }
    const BiasSizes bias(weight.sym_size(0), need_bias);
    auto [grad_input, grad_weight, grad_bias] = at::convolution_backward_symint(
        grad, input, w, bias.sizes, symint_list(o.stride_list()), symint_list(o.padding_list()),
        symint_list(o.dilation_list()), /*transposed=*/false, symint_list(o.output_padding_list()),
        c10::SymInt(o.groups), {need_input, need_weight, need_bias});

    if (corrected && o.correction == Correction::Position) {
      if (differentiable) {  // create_graph=True: keep it differentiable
        grad_input = call_scale_border(grad_input, kernel_size, o.stride_list(), o.padding_list(),
                                       o.dilation_list(), o.power);
      } else if (grad_input.is_cpu() && concrete(grad_input) && grad_input.is_non_overlapping_and_dense()) {
        // a fresh CPU tensor, the options checked by the forward: the band loop itself, no dispatch
        scale_border_on_cpu(grad_input, make_geometry(input.sizes().slice(2), kernel_size, o), o.power);
      } else {  // grad_input is a fresh tensor: scale its border band in place
        call_scale_border_(grad_input, kernel_size, o.stride_list(), o.padding_list(), o.dilation_list(),
                           o.power);
      }
    }
    return {std::move(grad_input), std::move(grad_weight), std::move(grad_bias)};
  }
};

at::Tensor conv_autograd(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    c10::string_view correction, double power) {
  const Correction kind = parse_correction(correction);
  if (kind == Correction::None) {
    // ATen's convolution with ATen's own node (ConvolutionBackward0): the backward,
    // forward-mode AD and torch.func work as they do for torch's convolutions.
    check_power(power);
    check_conv_inputs(input, weight, bias);
    return at::convolution(input, weight, bias, stride, padding, dilation, /*transposed=*/false,
                           std::vector<int64_t>(stride.size(), 0), groups);
  }
  refuse_transforms(input, weight, bias);
  at::Tensor output;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    // The op checks every argument (ATen's checks, then ours) before it returns.
    output = call_conv(input, weight, bias, stride, padding, dilation, groups, correction, power);
  }
  if (!records_graph(input, weight, bias)) return output;
  return record_conv<ConvBackward>(
      std::move(output), input, weight, bias,
      conv_options(weight.dim() - 2, stride, padding, dilation, groups, kind, power));
}

}  // namespace

void keep_weight_before_cast(const at::Tensor& output, const at::Tensor& weight) {
  auto* node = dynamic_cast<ConvNode*>(output.grad_fn().get());
  if (node == nullptr || !weight.defined() || weight.scalar_type() == node->weight_.unpack().scalar_type()) return;
  node->full_weight_ = SavedVariable(weight, /*is_output=*/false);
  node->has_full_weight = true;
}

}  // namespace autograd

// Under autocast, the weight before its cast (autocast.cpp calls this on the output of a call).
void keep_full_precision_weight(const at::Tensor& output, const at::Tensor& weight) {
  autograd::keep_weight_before_cast(output, weight);
}

TORCH_LIBRARY_IMPL(strideconv, Autograd, m) { m.impl("conv", &autograd::conv_autograd); }

}  // namespace strideconv
