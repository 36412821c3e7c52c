// Autograd of conv_transpose (registered for the Autograd key).
//
// `conv_transpose` normalises its forward by a fixed diagonal scaling (of the weight,
// or of the output), so its backward is the true gradient of that function: either the
// incoming gradient times the output factors and one ATen convolution backward with the
// plain weight, or one convolution backward with the scaled weight and the same
// scaling again on the weight gradient (the chain rule through a diagonal map).

#include "common.h"
#include "../cpu/scale_border.h"

namespace strideconv {
namespace autograd {
namespace {

// The backward of conv_transpose, whose forward is a fixed diagonal scaling (of the
// weight, or of the output) of a transposed convolution, taken the way the forward took
// it: either the incoming gradient times the output factors and one ATen convolution
// backward with the plain weight, or one with the scaled weight and the same scaling
// again on the weight gradient (the adjoint of a diagonal map is itself). On the weight
// path "position" scales the border band of the incoming gradient, nothing when the band
// is empty. Each scaling is in place when the incoming gradient is ours (ours_to_scale),
// on a copy otherwise. Without create_graph, on concrete CPU tensors, the scalings read the
// cached factors and run the CPU loops (cpu/) instead of dispatched ops, as conv's node does:
// in a small decoder layer's step, each dispatched op cost more than the work it did.
struct ConvTransposeBackward final : ConvNode {
  std::string name() const override { return "strideconv::ConvTransposeBackward"; }

  variable_list gradients(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight,
                          bool need_input, bool need_weight, bool need_bias) override {
    const auto kernel_size = weight.sizes().slice(2);
    const bool differentiable = at::GradMode::is_enabled();  // create_graph=True
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!differentiable) below_autograd.emplace();
    const bool in_place = !differentiable && ours_to_scale(grad);  // before any copy of the handle
    // Without create_graph, on concrete CPU tensors: the cached factors and the CPU loops
    // (cpu/), as in the forward; otherwise the registered ops (differentiable, traceable).
    const bool direct = !differentiable && grad.is_cpu() && concrete(grad);
    std::optional<Geometry> geometry;
    if (direct) geometry = make_geometry(grad.sizes().slice(2), kernel_size, o);
    const auto plain_bias_gradient = [&] {  // the bias is added after the scaling
      std::vector<int64_t> dims{0};
      for (int d = 0; d < o.ndim; ++d) dims.push_back(2 + d);
      return grad.sum(dims);
    };

    at::Tensor grad_input, grad_weight, grad_bias;
    if (o.correction != Correction::None && output_is_cheaper(weight.sym_numel(), grad.sym_numel())) {
      if (need_bias) grad_bias = plain_bias_gradient();
      if (need_input || need_weight) {
        // Reduced precision: float32 factors, and the product rounded once (as in the forward).
        const bool reduced = reduced_precision(grad.scalar_type());
        at::Tensor scaled;
        if (direct && o.correction != Correction::Map && !reduced) {
          // The cached map itself (the forward checked the options), read, never handed out.
          const at::Tensor factors =
              output_factor_map(*geometry, o.correction, o.power, grad.scalar_type(), grad.device());
          scaled = in_place ? grad.mul_(factors) : grad.mul(factors);
        } else {
          scaled = scaled_by_op(grad, kernel_size, reduced, differentiable, in_place);
        }
        std::tie(grad_input, grad_weight, std::ignore) = at::convolution_backward_symint(
            scaled, input, weight, std::nullopt, symint_list(o.stride_list()), symint_list(o.padding_list()),
            symint_list(o.dilation_list()), /*transposed=*/true, symint_list(o.output_padding_list()),
            c10::SymInt(o.groups), {need_input, need_weight, false});
      }
      return {std::move(grad_input), std::move(grad_weight), std::move(grad_bias)};
    }
    // The weight scaled as in the forward.
    const bool scaled = o.correction == Correction::Map ||
                        (o.correction != Correction::None &&
                         !taps_trivial(kernel_size, o.stride_list(), o.dilation_list()));
    const auto output_size = grad.sym_sizes().slice(2);
    const auto scale = [&](const at::Tensor& t) {
      at::Tensor out;
      if (direct && scale_rows_on_cpu(t, weight_factors(*geometry, o.correction, o.power, t.scalar_type(), t.device()),
                                      t, out)) {
        return out;
      }
      return call_scale_weight(t, output_size, o.stride_list(), o.padding_list(), o.dilation_list(),
                               correction_name(o.correction), o.power, o.output_padding_list());
    };
    // the scaled weight, from the full-precision one under autocast (rounded once)
    const auto scaled_weight = [&] {
      at::Tensor w = scale(weight_to_scale(weight));
      return w.scalar_type() == weight.scalar_type() ? w : w.to(weight.scalar_type());
    };
    at::Tensor g = grad;
    if (o.correction == Correction::Position && (need_input || need_weight) &&
        !band_is_empty(grad, kernel_size)) {
      if (need_bias) grad_bias = plain_bias_gradient();
      need_bias = false;
      if (in_place && direct) {
        scale_border_on_cpu(g, *geometry, o.power);
      } else if (in_place) {
        call_scale_border_(g, kernel_size, o.stride_list(), o.padding_list(), o.dilation_list(), o.power,
                           o.output_padding_list());
      } else {
        g = call_scale_border(grad, kernel_size, o.stride_list(), o.padding_list(), o.dilation_list(), o.power,
                              o.output_padding_list());
      }
    }
    // ATen's bias gradient (of g == grad) is the true one.
    const BiasSizes bias(weight.sym_size(1) * o.groups, need_bias);
    at::Tensor aten_bias;
    std::tie(grad_input, grad_weight, aten_bias) = at::convolution_backward_symint(
        g, input, scaled && (need_input || need_weight) ? scaled_weight() : weight, bias.sizes,
        symint_list(o.stride_list()), symint_list(o.padding_list()), symint_list(o.dilation_list()),
        /*transposed=*/true, symint_list(o.output_padding_list()), c10::SymInt(o.groups),
        {need_input, need_weight, need_bias});
    if (need_bias) grad_bias = std::move(aten_bias);
    if (need_weight && scaled) grad_weight = scale(grad_weight);
    return {std::move(grad_input), std::move(grad_weight), std::move(grad_bias)};
  }

 private:
  // The incoming gradient times the output factors, the factors from the registered op
  // (differentiable under create_graph, recorded by tracing); reduced precision: float32
  // factors, and the product rounded once (as in the forward).
  at::Tensor scaled_by_op(const at::Tensor& grad, at::IntArrayRef kernel_size, bool reduced, bool differentiable,
                          bool in_place) const {
    at::Tensor like = grad.detach();
    if (reduced) {
      std::vector<c10::SymInt> shape{1, 1};
      for (const auto& size : grad.sym_sizes().slice(2)) shape.push_back(size);
      like = at::empty_symint(shape, grad.options().dtype(at::kFloat));
    }
    const at::Tensor factors = call_output_factors(like, kernel_size, o.stride_list(), o.padding_list(),
                                                   o.dilation_list(), o.output_padding_list(),
                                                   correction_name(o.correction), o.power);
    if (in_place) return grad.mul_(factors);
    if (reduced && !differentiable) {
      at::Tensor scaled = at::empty_like(grad);
      at::mul_out(scaled, grad, factors);
      return scaled;
    }
    return grad.mul(factors.to(grad.scalar_type()));
  }

  // Whether the output's border band is empty (every output position has the interior's
  // count), known only for concrete sizes; under tracing with symbolic sizes, not assumed.
  bool band_is_empty(const at::Tensor& grad, at::IntArrayRef kernel_size) const {
    if (grad.unsafeGetTensorImpl()->has_symbolic_sizes_strides()) return false;
    return Band(make_geometry(grad.sizes().slice(2), kernel_size, o.stride_list(), o.padding_list(),
                              o.dilation_list(), o.output_padding_list()))
               .count == 0;
  }
};

at::Tensor conv_transpose_autograd(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
    at::IntArrayRef dilation, int64_t groups, c10::string_view correction, double power) {
  const Correction kind = parse_correction(correction);
  if (kind == Correction::None) {  // as in conv_autograd: ATen's own node
    check_power(power);
    check_real(input, weight, "conv_transpose2d");
    return at::convolution(input, weight, bias, stride, padding, dilation, /*transposed=*/true, output_padding,
                           groups);
  }
  refuse_transforms(input, weight, bias);
  at::Tensor output;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    output = call_conv_transpose(input, weight, bias, stride, padding, output_padding, dilation, groups,
                                 correction, power);
  }
  if (!records_graph(input, weight, bias)) return output;
  return record_conv<ConvTransposeBackward>(
      std::move(output), input, weight, bias,
      conv_options(weight.dim() - 2, stride, padding, dilation, groups, kind, power, output_padding));
}

}  // namespace
}  // namespace autograd

TORCH_LIBRARY_IMPL(strideconv, Autograd, m) { m.impl("conv_transpose", &autograd::conv_transpose_autograd); }

}  // namespace strideconv
