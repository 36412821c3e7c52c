#pragma once
// The CPU loop of scale_border_ (cpu/scale_kernels.cpp), callable without the dispatcher by the
// backward of a call whose arguments the forward checked (autograd/conv.cpp): on CPU, a dispatched op
// costs more than scaling a small layer's band.

#include <ATen/core/Tensor.h>

#include "../band.h"

namespace strideconv {

// The border band of `grad` (batch, channels, *spatial; on the CPU, floating point, no internal
// overlap) times its "position" factors at `power`, in place. Nothing is checked.
void scale_border_on_cpu(at::Tensor& grad, const Geometry& g, double power);

}  // namespace strideconv
