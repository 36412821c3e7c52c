"""The input-gradient correction of average pooling: a factor map applied in the backward.

Average pooling is a convolution with a constant kernel, so its backward has the count map
of a convolution (with the extra windows of ``ceil_mode``), but it has no weight to
tap-scale: every correction is a per-position factor. The backward applies it as it writes
the input gradient (the compiled ``avg_pool2d_backward_scaled``: one pass, the cost of the
plain backward); its own backward, for double backward, is the pooling of the factor times
the incoming gradient (docs/design.md, "Pooling").
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .factors import _outer, axis_alpha, axis_class_counts, pool_axis_counts


_C_APPLY = torch._C._FunctionBase.__dict__["apply"]  # autograd's own apply, below Function.apply
_transforms_active = torch._C._are_functorch_transforms_active
_unwrap_if_dead = torch._C._functorch.unwrap_if_dead
_dynamo_traces = torch.compiler.is_dynamo_compiling


def apply(function, *args):
    """``function.apply(*args)``, every argument positional, without the per-call cost of
    ``torch.autograd.Function.apply``: for a Function with ``setup_context`` it binds the arguments
    to the forward's signature with ``inspect`` on every call (about 25 us; a small layer's whole
    step costs less), which changes nothing when every argument is given positionally. What
    ``Function.apply`` does besides is kept: dead torch.func wrappers are unwrapped, and while a
    torch.func transform is active or dynamo traces, the call is ``function.apply`` itself."""
    if _transforms_active() or _dynamo_traces():
        return function.apply(*args)
    args = tuple(_unwrap_if_dead(a) if isinstance(a, torch.Tensor) else a for a in args)
    return _C_APPLY.__get__(None, function)(*args)


class ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by a fixed factor map."""

    @staticmethod
    def forward(input, factor):
        return input.view_as(input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, grad):
        (factor,) = ctx.saved_tensors
        return grad * factor, None


def plain_avg_pool2d(input, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """``F.avg_pool2d`` on checked arguments (two-int kernel, stride and padding), as strideconv
    calls it itself: as the ATen op while a torch function mode is active, so that
    ``strideconv.corrected(pool=True)`` does not take strideconv's own plain call for a user's."""
    if torch.overrides._is_torch_function_mode_enabled():
        return torch.ops.aten.avg_pool2d.default(input, list(kernel), list(stride), list(padding), bool(ceil_mode),
                                                 bool(count_include_pad), divisor_override)
    return F.avg_pool2d(input, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)


class CorrectedAvgPool2d(torch.autograd.Function):
    """``F.avg_pool2d`` forward (bit for bit); the backward is the true input gradient times
    ``factor``, computed in one pass by the compiled op."""

    @staticmethod
    def forward(input, factor, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        return plain_avg_pool2d(input, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, factor, *settings = inputs
        ctx.save_for_backward(input, factor)
        ctx.settings = settings

    @staticmethod
    def backward(ctx, grad):
        input, factor = ctx.saved_tensors
        kernel, stride, padding, ceil_mode, count_include_pad, divisor_override = ctx.settings
        batched = input.dim() == 4
        out = torch.ops.strideconv.avg_pool2d_backward_scaled(
            grad if batched else grad.unsqueeze(0), input if batched else input.unsqueeze(0), kernel, stride, padding,
            ceil_mode, count_include_pad, divisor_override, factor)
        return (out if batched else out.squeeze(0)), None, None, None, None, None, None, None


@torch.library.register_fake("strideconv::avg_pool2d")
def _avg_pool2d_fake(input, factor, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return torch.ops.aten.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                     divisor_override)


@torch.library.register_fake("strideconv::avg_pool2d_backward_scaled")
def _avg_pool2d_backward_scaled_fake(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                     divisor_override, factor):
    return torch.empty_like(input)


def _backward_setup(ctx, inputs, output):
    _, _, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, factor = inputs
    ctx.save_for_backward(factor)
    ctx.settings = (kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)


def _backward_backward(ctx, grad_grad_input):
    """The op is linear in grad_output: its adjoint pools the factor times the incoming gradient."""
    (factor,) = ctx.saved_tensors
    kernel, stride, padding, ceil_mode, count_include_pad, divisor_override = ctx.settings
    gg = plain_avg_pool2d(grad_grad_input * factor, kernel, stride, padding, ceil_mode, count_include_pad,
                          divisor_override)
    return gg, None, None, None, None, None, None, None, None


torch.library.register_autograd("strideconv::avg_pool2d_backward_scaled", _backward_backward,
                                setup_context=_backward_setup)


@functools.lru_cache(maxsize=64)  # bounded; keys are small tuples, values H x W tensors
def _factor_map(size, kernel, stride, padding, ceil_mode, correction, power, device, dtype):
    # The factors are checked as Python floats (the largest one per axis, multiplied), so that
    # nothing here depends on a tensor's values and torch.compile can trace it.
    per_axis, largest = [], 1.0
    try:
        for length, k, s, p in zip(size, kernel, stride, padding):
            c = pool_axis_counts(length, k, s, p, ceil_mode)
            if correction == "position":
                f = [(k / ci) ** power if ci > 0 else 0.0 for ci in c]
            elif correction == "kernel":  # dilation 1: every tap reaching i has the class of (i + p) mod s
                n = axis_class_counts(k, s, 1)
                f = [(k / n[(i + p) % s]) ** power if ci > 0 else 0.0 for i, ci in enumerate(c)]
            else:  # "map": this axis' share of alpha
                f = [axis_alpha(c, k, power)] * length
            largest *= max(f, default=0.0)
            per_axis.append(f)
        fits = math.isfinite(largest) and largest <= torch.finfo(dtype).max
    except OverflowError:
        fits = False
    if not fits:
        raise ValueError(
            f"strideconv: power={power} makes the {correction!r} factors of this pooling overflow "
            f"{dtype} (largest {torch.finfo(dtype).max:.6g}); use a smaller power"
        )
    # applied in float32 (float64 for float64 input) and rounded once, by the compiled backward
    factor = _outer([torch.tensor(f, dtype=torch.float64) for f in per_axis])
    return factor.to(device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)


def factor_map(size, kernel, stride, padding, ceil_mode, correction, power, device, dtype):
    """The factor map that turns the true input gradient of ``avg_pool2d`` (of ``dtype``) into the
    corrected one, in float32 (float64 for float64), refused if a factor overflows ``dtype``
    (cached in eager mode; built in the graph while torch.compile traces)."""
    build = _factor_map.__wrapped__ if torch.compiler.is_compiling() else _factor_map
    return build(
        tuple(size), tuple(kernel), tuple(stride), tuple(padding), bool(ceil_mode), correction,
        float(power), torch.device(device), dtype,
    )
