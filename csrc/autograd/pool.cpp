// Autograd of avg_pool2d (registered for the Autograd key): the corrected input gradient in one
// pass of the pooling backward kernel, with a fixed factor map.

#include "common.h"

namespace strideconv {
namespace autograd {
namespace {

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

}  // namespace
}  // namespace autograd

TORCH_LIBRARY_IMPL(strideconv, Autograd, m) { m.impl("avg_pool2d", &autograd::avg_pool2d_autograd); }

}  // namespace strideconv
