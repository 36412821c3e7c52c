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
//
// `conv_transpose` normalises its forward by a fixed diagonal scaling (of the weight,
// or of the output), so its backward is the true gradient of that function: either the
// incoming gradient times the output factors and one ATen convolution backward with the
// plain weight, or one convolution backward with the scaled weight and the same
// scaling again on the weight gradient (the chain rule through a diagonal map).

#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/FuncTorchTLS.h>
#include <ATen/MemoryOverlap.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/scale_border.h"
#include "cpu/scale_rows.h"
#include "ops.h"
#include "options.h"
#include "output_factors.h"

namespace strideconv {
namespace {

using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// A node as the torch being built against holds it (std::shared_ptr up to 2.12,
// c10::intrusive_ptr since).
using NodePtr = decltype(torch::autograd::Edge::function);

template <class T>
auto make_node() {
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<Node>>) {
    // torch::autograd::deleteNode (found by argument-dependent lookup: 2.13 has none)
    // frees long chains of nodes without deep recursion.
    return std::shared_ptr<T>(new T(), [](T* node) { deleteNode(node); });
  } else {
    return c10::make_intrusive<T>();
  }
}

// ----- when a call records a node -------------------------------------------------------------

// No jvp is defined for the corrected ops, and torch.func cannot see through a C++
// node: refuse both loudly rather than return a plain (uncorrected) derivative.
void refuse_transforms(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& c = std::nullopt) {
  const auto tangent = [](const at::Tensor& t) { return t.defined() && t._fw_grad(/*level=*/0).defined(); };
  TORCH_CHECK(!tangent(a) && !tangent(b) && !(c.has_value() && tangent(*c)),
              "strideconv: jvp is not implemented for the corrected operators (forward-mode AD); "
              "use reverse mode, or the torch.nn.functional op for forward-mode derivatives");
  const auto& functorch_tls = at::functorch::functorchTLSAccessor();
  if (functorch_tls) functorch_tls->checkSupportsCppAutogradFunction();
}

// Whether a call must record a node: as ATen's own ops decide, so that inference
// (no_grad, or nothing requiring grad) pays for no node and nothing saved.
bool records_graph(const at::Tensor& a, const at::Tensor& b = at::Tensor(),
                   const std::optional<at::Tensor>& c = std::nullopt) {
  if (!at::GradMode::is_enabled()) return false;
  const auto tracked = [](const at::Tensor& t) { return t.defined() && t.requires_grad(); };
  return tracked(a) || tracked(b) || (c.has_value() && tracked(*c));
}

// A tensor with storage that no tracing sees (not fake, functional or meta, no dispatch
// mode active): the backward may then use cached factor tensors directly. Otherwise it
// goes through the registered ops, which tracing records.
bool concrete(const at::Tensor& t) {
  static const c10::DispatchKeySet traced({c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot,
                                           c10::DispatchKey::Functionalize});
  return !t.key_set().has_any(traced) && !t.is_meta() && !c10::impl::TorchDispatchModeTLS::any_modes_set();
}

// Whether an incoming gradient is ours to scale in place, as autograd's AccumulateGrad decides
// whether to steal one: nothing else holds the tensor or its storage (the caller's reference is
// the only one: no view, no hook, no user's grad_output), it is dense and has no internal overlap
// (not an expanded scalar), and no tracing sees it. Otherwise the scaling makes a copy.
bool ours_to_scale(const at::Tensor& grad) {
  return grad.use_count() == 1 && grad.has_storage() && grad.storage().use_count() == 1 && !grad.is_view() &&
         !grad.requires_grad() && concrete(grad) && grad.is_non_overlapping_and_dense() &&
         at::has_internal_overlap(grad) == at::MemOverlap::No;
}

// `source` (a contiguous CPU weight of the same float or double dtype as `like`) times the tap
// factors `f` (contiguous, one value per tap, repeating along the weight's rows) into a new
// tensor `out`, by the scale_taps kernel's loop (cpu/scale_rows.h) and without a dispatched op;
// false (nothing done) for anything else. Inside the backward, the first dispatched op ahead of
// the convolution backward was measured at about 4 us per call on CPU (a 3x3 weight: `at::mul`
// in a C++ loop costs 0.5); this loop costs what the multiply costs. The rounding is the same:
// one multiply in the weight's dtype by factors of that dtype.
bool scale_rows_on_cpu(const at::Tensor& source, const at::Tensor& f, const at::Tensor& like, at::Tensor& out) {
  const at::ScalarType dtype = like.scalar_type();
  if (!source.is_cpu() || source.scalar_type() != dtype || f.scalar_type() != dtype ||
      (dtype != at::kFloat && dtype != at::kDouble) || !source.is_contiguous() || !f.is_contiguous() ||
      f.device() != source.device()) {
    return false;
  }
  const int64_t taps = f.numel(), n = source.numel();
  if (taps == 0 || n % taps != 0) return false;
  out = at::detail::empty_cpu(source.sizes(), dtype, /*pin_memory=*/false, c10::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(dtype, "strideconv_scale_rows", [&] {
    scale_rows(source.const_data_ptr<scalar_t>(), f.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
               n / taps, taps);
  });
  return true;
}

// Checked options (each value in [0, 2^31)) as the SymInt lists convolution_backward takes,
// without a copy.
c10::SymIntArrayRef symint_list(at::IntArrayRef values) { return c10::fromIntArrayRefKnownNonNegative(values); }

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

// What the node of a conv or conv_transpose call keeps: the input and weight, the
// options the forward checked, and whether there was a bias.
struct ConvNode : Node {
  SavedVariable input_, weight_;
  // Under autocast, the weight before its cast to the lower precision: the scaled weight is
  // computed from it, so that it is rounded once, as the plain weight is (autocast.cpp).
  SavedVariable full_weight_;
  bool has_full_weight = false;
  ConvOptions o;
  bool has_bias = false;

  // The weight to scale: the one before the autocast cast if kept, else `weight`.
  at::Tensor weight_to_scale(const at::Tensor& weight) { return has_full_weight ? full_weight_.unpack() : weight; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_.reset_data();
    weight_.reset_data();
    full_weight_.reset_data();
  }

  // The gradients of input, weight and bias for the incoming `grad`, each where wanted.
  virtual variable_list gradients(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight,
                                  bool need_input, bool need_weight, bool need_bias) = 0;

  variable_list apply(variable_list&& grads) final {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!grads[0].defined()) return variable_list(3);
    return gradients(grads[0], input_.unpack(), weight_.unpack(), task_should_compute_output(0),
                     task_should_compute_output(1), has_bias && task_should_compute_output(2));
  }
};

// ----- conv ------------------------------------------------------------------------------------

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

// ----- conv_transpose --------------------------------------------------------------------------

// The backward of conv_transpose, whose forward is a fixed diagonal scaling (of the
// weight, or of the output) of a transposed convolution, taken the way the forward took
// it: either the incoming gradient times the output factors and one ATen convolution
// backward with the plain weight, or one with the scaled weight and the same scaling
// again on the weight gradient (the adjoint of a diagonal map is itself). On the weight
// path "position" scales the border band of the incoming gradient, nothing when the band
// is empty. Each scaling is in place when the incoming gradient is ours (ours_to_scale),
// on a copy otherwise.
struct ConvTransposeBackward final : ConvNode {
  std::string name() const override { return "strideconv::ConvTransposeBackward"; }

  variable_list gradients(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight,
                          bool need_input, bool need_weight, bool need_bias) override {
    const auto kernel_size = weight.sizes().slice(2);
    const bool differentiable = at::GradMode::is_enabled();  // create_graph=True
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!differentiable) below_autograd.emplace();
    const bool in_place = !differentiable && ours_to_scale(grad);  // before any copy of the handle
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
        at::Tensor like = grad.detach();
        if (reduced) {
          std::vector<c10::SymInt> shape{1, 1};
          for (const auto& size : grad.sym_sizes().slice(2)) shape.push_back(size);
          like = at::empty_symint(shape, grad.options().dtype(at::kFloat));
        }
        const at::Tensor factors = call_output_factors(
            like, kernel_size, o.stride_list(), o.padding_list(), o.dilation_list(),
            o.output_padding_list(), correction_name(o.correction), o.power);
        at::Tensor scaled;
        if (in_place) {
          scaled = grad.mul_(factors);
        } else if (reduced && !differentiable) {
          scaled = at::empty_like(grad);
          at::mul_out(scaled, grad, factors);
        } else {
          scaled = grad.mul(factors.to(grad.scalar_type()));
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
      return call_scale_weight(t, output_size, o.stride_list(), o.padding_list(), o.dilation_list(),
                               correction_name(o.correction), o.power, o.output_padding_list());
    };
    // the scaled weight, from the full-precision one under autocast (rounded once)
    const auto scaled_weight = [&] { return scale(weight_to_scale(weight)).to(weight.scalar_type()); };
    at::Tensor g = grad;
    if (o.correction == Correction::Position && (need_input || need_weight) &&
        !band_is_empty(grad, kernel_size)) {
      if (need_bias) grad_bias = plain_bias_gradient();
      need_bias = false;
      if (in_place) {
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
  // Whether the output's border band is empty (every output position has the interior's
  // count), known only for concrete sizes; under tracing with symbolic sizes, not assumed.
  bool band_is_empty(const at::Tensor& grad, at::IntArrayRef kernel_size) const {
    if (grad.unsafeGetTensorImpl()->has_symbolic_sizes_strides()) return false;
    return Band(make_geometry(grad.sizes().slice(2), kernel_size, o.stride_list(), o.padding_list(),
                              o.dilation_list(), o.output_padding_list()))
               .count == 0;
  }
};

// ----- avg_pool2d ------------------------------------------------------------------------------

// The backward of avg_pool2d: the corrected input gradient in one pass (avg_pool2d_backward_scaled,
// whose own autograd gives double backward). An unbatched (3-d) input is pooled as a batch of one.
struct AvgPool2dBackward final : Node {
  SavedVariable input_, factor_;
  std::array<int64_t, 2> kernel_size{}, stride{}, padding{};
  bool ceil_mode = false, count_include_pad = true;
  std::optional<int64_t> divisor_override;

  std::string name() const override { return "strideconv::AvgPool2dBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_.reset_data();
    factor_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!grads[0].defined() || !task_should_compute_output(0)) return {at::Tensor()};
    const at::Tensor input = input_.unpack();
    const bool batched = input.dim() == 4;
    // Without create_graph nothing here needs a graph: the kernel itself, below the Autograd key
    // (whose kernel, for double backward, is Python's: torch.library.register_autograd).
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    const at::Tensor g = call_avg_pool2d_backward_scaled(
        batched ? grads[0] : grads[0].unsqueeze(0), batched ? input : input.unsqueeze(0), kernel_size, stride, padding,
        ceil_mode, count_include_pad, divisor_override, factor_.unpack());
    return {batched ? g : g.squeeze(0)};
  }
};

at::Tensor avg_pool2d_autograd(const at::Tensor& input, const at::Tensor& factor, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                               bool count_include_pad, std::optional<int64_t> divisor_override) {
  TORCH_CHECK_VALUE(!(factor.requires_grad() && at::GradMode::is_enabled()),
                    "strideconv: avg_pool2d's factor map is fixed; it cannot require grad");
  refuse_transforms(input, factor);
  at::Tensor output;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    output = call_avg_pool2d(input, factor, kernel_size, stride, padding, ceil_mode, count_include_pad,
                             divisor_override);
  }
  if (!records_graph(input)) return output;
  auto node = make_node<AvgPool2dBackward>();
  // ATen's avg_pool2d accepted the lists: one or two values each, and an empty stride meaning the
  // kernel size. Expanded as it expands them, for the backward kernel (two values each).
  const auto pair = [](at::IntArrayRef values, std::array<int64_t, 2>& out) {
    out = {values[0], values[values.size() == 2 ? 1 : 0]};
  };
  pair(kernel_size, node->kernel_size);
  pair(stride.empty() ? kernel_size : stride, node->stride);
  pair(padding, node->padding);
  node->set_next_edges(torch::autograd::collect_next_edges(input));
  node->input_ = SavedVariable(input, /*is_output=*/false);
  node->factor_ = SavedVariable(factor, /*is_output=*/false);
  node->ceil_mode = ceil_mode;
  node->count_include_pad = count_include_pad;
  node->divisor_override = divisor_override;
  torch::autograd::set_history(output, node);
  return output;
}

// ----- the fixed diagonal scalings: each one's backward is itself --------------------------------

struct ScaleWeightBackward final : Node {
  std::vector<c10::SymInt> input_size;
  std::vector<int64_t> stride, padding, dilation, output_padding;
  std::string correction;
  double power = 0.5;

  std::string name() const override { return "strideconv::ScaleWeightBackward"; }
  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined() || !task_should_compute_output(0)) return {at::Tensor()};
    return {call_scale_weight(grads[0], input_size, stride, padding, dilation, correction, power, output_padding)};
  }
};

struct ScaleTapsBackward final : Node {
  std::vector<int64_t> stride, dilation;
  double power = 0.5;

  std::string name() const override { return "strideconv::ScaleTapsBackward"; }
  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined() || !task_should_compute_output(0)) return {at::Tensor()};
    return {call_scale_taps(grads[0], stride, dilation, power)};
  }
};

struct ScaleBorderBackward final : Node {
  std::vector<int64_t> kernel_size, stride, padding, dilation, output_padding;
  double power = 0.5;

  std::string name() const override { return "strideconv::ScaleBorderBackward"; }
  variable_list apply(variable_list&& grads) override {
    if (!grads[0].defined() || !task_should_compute_output(0)) return {at::Tensor()};
    return {call_scale_border(grads[0], kernel_size, stride, padding, dilation, power, output_padding)};
  }
};

// ----- the Autograd kernels ----------------------------------------------------------------------

template <class NodeT>
at::Tensor record_conv(at::Tensor output, const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, const ConvOptions& o) {
  auto node = make_node<NodeT>();
  node->set_next_edges(torch::autograd::collect_next_edges(input, weight, bias));
  node->input_ = SavedVariable(input, /*is_output=*/false);
  node->weight_ = SavedVariable(weight, /*is_output=*/false);
  node->o = o;
  node->has_bias = bias.has_value() && bias->defined();
  torch::autograd::set_history(output, node);
  return output;
}

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

// One input, one output: a fixed diagonal scaling `call` of `t`, whose node is `node`.
template <class NodeT, class Call>
at::Tensor record_scaling(const at::Tensor& t, const Call& call, const std::function<void(NodeT&)>& fill) {
  refuse_transforms(t, at::Tensor());
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    out = call();
  }
  if (!records_graph(t)) return out;
  auto node = make_node<NodeT>();
  node->set_next_edges(torch::autograd::collect_next_edges(t));
  fill(*node);
  torch::autograd::set_history(out, node);
  return out;
}

at::Tensor scale_weight_autograd(
    const at::Tensor& weight, c10::SymIntArrayRef input_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view correction, double power,
    at::IntArrayRef output_padding) {
  return record_scaling<ScaleWeightBackward>(
      weight,
      [&] { return call_scale_weight(weight, input_size, stride, padding, dilation, correction, power, output_padding); },
      [&](ScaleWeightBackward& n) {
        n.input_size = input_size.vec();
        n.stride = stride.vec();
        n.padding = padding.vec();
        n.dilation = dilation.vec();
        n.output_padding = output_padding.vec();
        n.correction = std::string(correction);
        n.power = power;
      });
}

at::Tensor scale_taps_autograd(
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef dilation, double power) {
  return record_scaling<ScaleTapsBackward>(
      weight, [&] { return call_scale_taps(weight, stride, dilation, power); },
      [&](ScaleTapsBackward& n) {
        n.stride = stride.vec();
        n.dilation = dilation.vec();
        n.power = power;
      });
}

at::Tensor scale_border_autograd(
    const at::Tensor& grad, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, double power,
    at::IntArrayRef output_padding) {
  return record_scaling<ScaleBorderBackward>(
      grad, [&] { return call_scale_border(grad, kernel_size, stride, padding, dilation, power, output_padding); },
      [&](ScaleBorderBackward& n) {
        n.kernel_size = kernel_size.vec();
        n.stride = stride.vec();
        n.padding = padding.vec();
        n.dilation = dilation.vec();
        n.output_padding = output_padding.vec();
        n.power = power;
      });
}

}  // namespace

void keep_full_precision_weight(const at::Tensor& output, const at::Tensor& weight) {
  auto* node = dynamic_cast<ConvNode*>(output.grad_fn().get());
  if (node == nullptr || !weight.defined() || weight.scalar_type() == node->weight_.unpack().scalar_type()) return;
  node->full_weight_ = SavedVariable(weight, /*is_output=*/false);
  node->has_full_weight = true;
}

TORCH_LIBRARY_IMPL(strideconv, Autograd, m) {
  m.impl("conv", &conv_autograd);
  m.impl("conv_transpose", &conv_transpose_autograd);
  m.impl("scale_weight", &scale_weight_autograd);
  m.impl("scale_taps", &scale_taps_autograd);
  m.impl("scale_border", &scale_border_autograd);
  m.impl("avg_pool2d", &avg_pool2d_autograd);
}

}  // namespace strideconv
