"""The corrected convolutions as ``torch.compile`` sees them.

In eager mode a corrected layer is one call of ``torch.ops.strideconv.conv`` (or
``conv_transpose``), whose autograd is compiled. To inductor such an op is opaque: it keeps the
layout the op had when traced, while every plain convolution of the graph gets the layout
inductor picks for convolutions (channels_last on CPU and CUDA, faster there for a
3x3/2 layer on CPU). So while dynamo traces (not for ``torch.export``, which keeps the ops),
the layers are written with torch's own convolutions (``F.conv2d`` and its siblings, which
autocast casts and which reach ``aten.convolution``) and strideconv's small scaling ops:

- a strided convolution is an ``autograd.Function`` whose forward is the plain convolution and
  whose backward is one ``aten.convolution_backward``: for ``map`` and ``kernel`` with the weight
  scaled by ``strideconv.scale_weight`` (the same arithmetic as the compiled node,
  docs/design.md); for ``position`` with the plain weight, its input gradient then multiplied
  by the factor map;
- a transposed convolution is the same function as the op, written with differentiable ops:
  ``scale_weight`` on the weight (``map``, ``kernel``), or the plain output times its factor
  map (``position``), plus the bias.

``position``'s factor map is built from ``arange`` with pointwise ops, one factor vector per axis
(``_factor_map``): inductor folds it into the multiply that applies it, so no map is stored or
read at run time, and symbolic sizes stay symbolic. The scaling ops accept any layout
(``flexible_layout``), so inductor's choice reaches them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .factors import _transposed_length

_ops = torch.ops.strideconv
_aten = torch.ops.aten
# torch.nn.functional's convolutions, not aten.convolution: autocast casts these (as it casts
# nn.Conv2d's), and dynamo records the aten.convolution they reach
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class TracedConv(torch.autograd.Function):
    """The plain convolution forward; the corrected input gradient in the backward."""

    @staticmethod
    def forward(input, weight, bias, stride, padding, dilation, groups, correction, power):
        return _CONV[len(stride)](input, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, stride, padding, dilation, groups, correction, power = inputs
        ctx.save_for_backward(input, weight)
        ctx.settings = (list(stride), list(padding), list(dilation), groups, correction, power)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad):
        input, weight = ctx.saved_tensors
        stride, padding, dilation, groups, correction, power = ctx.settings
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        need_bias = need_bias and ctx.has_bias
        # Under autocast the forward ran in the gradient's dtype: the operands are cast to it here
        # (the weight after its scaling, so it is rounded once); autograd casts the gradients back.
        dtype = grad.dtype
        if need_input and correction == "position":
            return _position_backward(grad, input, weight, stride, padding, dilation, groups, power,
                                      need_weight, need_bias)
        scaled = weight
        if need_input and correction != "none":
            # grad_weight and grad_bias do not depend on the weight: they come out true
            scaled = _ops.scale_weight(weight, input.shape[2:], stride, padding, dilation, correction, power)
        grad_input, grad_weight, grad_bias = _aten.convolution_backward.default(
            grad, input.to(dtype), scaled.to(dtype), [weight.shape[0]] if need_bias else None, stride, padding,
            dilation, False, [0] * len(stride), groups, [need_input, need_weight, need_bias])
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


def _position_backward(grad, input, weight, stride, padding, dilation, groups, power, need_weight, need_bias):
    """``position``'s gradients as its definition states them: the true input gradient (the plain
    weight) times the factor map ``(K / C(i)) ** power`` (``_factor_map``).
    One multiply, which inductor fuses with the pointwise ops around it; no weight scaling and no
    in-place band update, whose functionalised form copies the whole input gradient first."""
    dtype = grad.dtype
    kernel = list(weight.shape[2:])
    grad_input, grad_weight, grad_bias = _aten.convolution_backward.default(
        grad, input.to(dtype), weight.to(dtype), [weight.shape[0]] if need_bias else None, stride, padding,
        dilation, False, [0] * len(stride), groups, [True, need_weight, need_bias])
    sizes = input.shape[2:]
    windows = grad.shape[2:]
    factors = _factor_map(sizes, windows, kernel, stride, padding, dilation, power, dtype, grad.device)
    return (grad_input * factors).to(dtype), grad_weight, grad_bias, None, None, None, None, None, None


def _axis_factors(length, windows, kernel, stride, padding, dilation, power, dtype, device):
    """``(k / c(x)) ** power`` along one axis of ``length`` positions, as a tensor built from
    ``arange`` with pointwise ops (so inductor folds it into the multiply that uses it, and a
    symbolic length stays symbolic); 1 where c(x) = 0 (its gradient is 0) or c(x) = k, as the
    compiled op's factor map has it, and a square root for ``power=0.5``, as there.

    c(x) counts the pairs (window o < ``windows``, tap t < k) with o * s - p + t * d = x: the
    windows of a convolution over its input positions, or, with ``windows`` the input length,
    the inputs of a transposed convolution over its output positions (the same equation)."""
    x = torch.arange(length, device=device)
    count = torch.zeros((), dtype=dtype, device=device)
    for t in range(kernel):
        m = x + (padding - t * dilation)  # = o * s where a window o reads x through tap t
        count = count + ((m >= 0) & (m <= (windows - 1) * stride) & (m % stride == 0)).to(dtype)
    ratio = kernel / count
    scaled = ratio.sqrt() if power == 0.5 else ratio.pow(power)
    return torch.where((count == 0) | (count == kernel), torch.ones((), dtype=dtype, device=device), scaled)


def _factor_map(sizes, windows, kernel, stride, padding, dilation, power, dtype, device):
    """The ``position`` factor map over ``sizes``, the outer product of one factor vector per axis
    (C is the product of the axes' counts), shaped to broadcast over batch and channels; float32
    for reduced precision (the product with it is rounded once)."""
    dtype = torch.float64 if dtype == torch.float64 else torch.float32
    nd, factors = len(sizes), None
    for d, axis in enumerate(zip(sizes, windows, kernel, stride, padding, dilation)):
        v = _axis_factors(*axis, power, dtype, device).reshape([-1] + [1] * (nd - 1 - d))
        factors = v if factors is None else factors * v
    return factors


def conv(input, weight, bias, stride, padding, dilation, groups, correction, power):
    """``strideconv.conv`` for a batched input, as dynamo should trace it."""
    if correction == "none":
        return _CONV[len(stride)](input, weight, bias, stride, padding, dilation, groups)
    return TracedConv.apply(input, weight, bias, stride, padding, dilation, groups, correction, power)


def conv_transpose(input, weight, bias, stride, padding, output_padding, dilation, groups, correction, power):
    """``strideconv.conv_transpose`` for a batched input, as dynamo should trace it."""
    stride, padding, output_padding, dilation = list(stride), list(padding), list(output_padding), list(dilation)

    def plain(w, b):
        return _CONV_TRANSPOSE[len(stride)](input, w, b, stride, padding, output_padding, groups, dilation)

    if correction == "none":
        return plain(weight, bias)
    if correction in ("map", "kernel"):  # the weight scaled (per tap class, or by alpha); the bias added after
        size = _output_size(input, weight, stride, padding, output_padding, dilation)
        scaled = _ops.scale_weight(weight, size, stride, padding, dilation, correction, power, output_padding)
        return plain(scaled, bias)  # under autocast the scaled weight is cast once, here
    # "position": the output times its factor map (float32 factors: a product in float16 or
    # bfloat16 is rounded once), then the bias
    out = plain(weight, None)
    kernel = list(weight.shape[2:])
    factors = _factor_map(out.shape[2:], input.shape[2:], kernel, stride, padding, dilation, power, out.dtype,
                          out.device)
    scaled = out * factors
    if bias is not None:
        scaled = scaled + bias.reshape((-1,) + (1,) * len(stride))
    return scaled.to(out.dtype)


def _output_size(input, weight, stride, padding, output_padding, dilation):
    """The spatial size of a transposed convolution's output."""
    return [_transposed_length(*axis)
            for axis in zip(input.shape[2:], weight.shape[2:], stride, padding, output_padding, dilation)]
