// What every strideconv autograd node shares (see conv.cpp for why the nodes are C++): how
// a node is made, when a call records one, the checked options as the SymInt lists ATen's
// convolution backward takes, and the node of a conv or conv_transpose call. One operator's
// nodes per file (conv.cpp, conv_transpose.cpp, pool.cpp, scaling.cpp), as torchvision keeps
// each op's autograd apart; each file registers its own kernels for the Autograd key.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/FuncTorchTLS.h>
#include <ATen/MemoryOverlap.h>
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

#include "../ops.h"
#include "../options.h"
#include "../output_factors.h"
#include "../cpu/scale_rows.h"  // concrete(), scale_rows_on_cpu

namespace strideconv {
namespace autograd {

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
inline void refuse_transforms(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& c = std::nullopt) {
  const auto tangent = [](const at::Tensor& t) { return t.defined() && t._fw_grad(/*level=*/0).defined(); };
  TORCH_CHECK(!tangent(a) && !tangent(b) && !(c.has_value() && tangent(*c)),
              "strideconv: jvp is not implemented for the corrected operators (forward-mode AD); "
              "use reverse mode, or the torch.nn.functional op for forward-mode derivatives");
  const auto& functorch_tls = at::functorch::functorchTLSAccessor();
  if (functorch_tls) functorch_tls->checkSupportsCppAutogradFunction();
}

// Whether a call must record a node: as ATen's own ops decide, so that inference
// (no_grad, or nothing requiring grad) pays for no node and nothing saved.
inline bool records_graph(const at::Tensor& a, const at::Tensor& b = at::Tensor(),
                   const std::optional<at::Tensor>& c = std::nullopt) {
  if (!at::GradMode::is_enabled()) return false;
  const auto tracked = [](const at::Tensor& t) { return t.defined() && t.requires_grad(); };
  return tracked(a) || tracked(b) || (c.has_value() && tracked(*c));
}

// Whether an incoming gradient is ours to scale in place, as autograd's AccumulateGrad decides
// whether to steal one: nothing else holds the tensor or its storage (the caller's reference is
// the only one: no view, no hook, no user's grad_output), it is dense and has no internal overlap
// (not an expanded scalar), and no tracing sees it. Otherwise the scaling makes a copy.
inline bool ours_to_scale(const at::Tensor& grad) {
  return grad.use_count() == 1 && grad.has_storage() && grad.storage().use_count() == 1 && !grad.is_view() &&
         !grad.requires_grad() && concrete(grad) && grad.is_non_overlapping_and_dense() &&
         at::has_internal_overlap(grad) == at::MemOverlap::No;
}

// Checked options (each value in [0, 2^31)) as the SymInt lists convolution_backward takes,
// without a copy.
inline c10::SymIntArrayRef symint_list(at::IntArrayRef values) { return c10::fromIntArrayRefKnownNonNegative(values); }

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

}  // namespace autograd
}  // namespace strideconv
