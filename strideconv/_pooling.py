"""The input-gradient correction of average pooling: a factor map applied in the backward.

Average pooling is a convolution with a constant kernel, so its backward has the count map
of a convolution (with the extra windows of ``ceil_mode``), but it has no weight to
tap-scale: every correction is a per-position factor, applied to the whole gradient by an
identity whose backward multiplies by a cached map (docs/design.md, "Pooling").
"""

from __future__ import annotations

import functools

import torch

from .factors import _outer, axis_alpha, axis_class_counts, pool_axis_counts


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


@functools.lru_cache(maxsize=64)  # bounded; keys are small tuples, values H x W tensors
def _factor_map(size, kernel, stride, padding, ceil_mode, correction, power, device, dtype):
    per_axis = []
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
            per_axis.append(torch.tensor(f, dtype=torch.float64))
        factor = _outer(per_axis).to(dtype)
        fits = bool(torch.isfinite(factor).all())
    except OverflowError:
        fits = False
    if not fits:
        raise ValueError(
            f"strideconv: power={power} makes the {correction!r} factors of this pooling overflow "
            f"{dtype} (largest {torch.finfo(dtype).max:.6g}); use a smaller power"
        )
    return factor.to(device=device)


def factor_map(size, kernel, stride, padding, ceil_mode, correction, power, device, dtype):
    """The factor map that turns the true input gradient of ``avg_pool2d`` into the corrected one."""
    return _factor_map(
        tuple(size), tuple(kernel), tuple(stride), tuple(padding), bool(ceil_mode), correction,
        float(power), torch.device(device), dtype,
    )
