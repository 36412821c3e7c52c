#pragma once
// The CPU loop of scale_border_ (cpu/scale_kernels.cpp), callable without the dispatcher by a
// kernel or a backward whose arguments were checked (conv.cpp, autograd/conv.cpp,
// autograd/conv_transpose.cpp): on CPU, a dispatched op costs more than scaling a small layer's band.

#include <ATen/core/Tensor.h>

#include <optional>

#include "../band.h"

namespace strideconv {

// The border band of `grad` (batch, channels, *spatial; on the CPU, floating point, no internal
// overlap) times its "position" factors at `power`, in place; with a bias b (one value per
// channel, on the CPU), each band value v becomes f (v - b) + b. Nothing is checked.
void scale_border_on_cpu(at::Tensor& grad, const Geometry& g, double power,
                         const std::optional<at::Tensor>& bias = std::nullopt);

}  // namespace strideconv
