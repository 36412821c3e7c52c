// Autograd of the scaling ops scale_weight, scale_taps and scale_border (registered for the
// Autograd key): fixed diagonal scalings, so each one's backward is itself, which is what makes
// double backward of the corrected convolutions work.

#include "common.h"

namespace strideconv {
namespace autograd {
namespace {

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
}  // namespace autograd

TORCH_LIBRARY_IMPL(strideconv, Autograd, m) {
  m.impl("scale_weight", &autograd::scale_weight_autograd);
  m.impl("scale_taps", &autograd::scale_taps_autograd);
  m.impl("scale_border", &autograd::scale_border_autograd);
}

}  // namespace strideconv
