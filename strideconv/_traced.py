"""The corrected convolutions as ``torch.compile`` sees them.

In eager mode a corrected layer is one call of ``torch.ops.strideconv.conv`` (or
``conv_transpose``), whose autograd is compiled. To inductor such an op is opaque: it keeps the
layout the op had when traced, while every plain convolution of the graph gets the layout
inductor picks for convolutions (channels_last on CPU and CUDA, faster there for a
3x3/2 layer on CPU). So while dynamo traces (not for ``torch.export``, which keeps the ops),
the layers are written with torch's own convolutions (``F.conv2d`` and its siblings, which
autocast casts and which reach ``aten.convolution``) and strideconv's small scaling ops:

- a strided convolution is an ``autograd.Function`` whose forward is the plain convolution and
  whose backward is one ``aten.convolution_backward`` with the weight scaled by
  ``strideconv.scale_weight``, then, for ``position``, ``strideconv.scale_border`` on the input
  gradient: the same arithmetic as the compiled node (docs/design.md);
- a transposed convolution is the same function as the op, written with differentiable ops:
  ``scale_weight`` on the weight (``map``, ``kernel``), or the plain output times
  ``strideconv.output_factors`` (``position``: one multiply that inductor fuses with its
  neighbours), plus the bias.

The scaling ops accept any layout (``flexible_layout``), so inductor's choice reaches them.
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
        if need_input and correction == "position" and _static(input.shape[2:], grad.shape[2:]):
            return _position_backward(grad, input, weight, stride, padding, dilation, groups, power,
                                      need_weight, need_bias)
        scaled = weight
        if need_input and correction != "none":
            # grad_weight and grad_bias do not depend on the weight: they come out true
            scaled = _ops.scale_weight(weight, input.shape[2:], stride, padding, dilation, correction, power)
        grad_input, grad_weight, grad_bias = _aten.convolution_backward.default(
            grad, input.to(dtype), scaled.to(dtype), [weight.shape[0]] if need_bias else None, stride, padding,
            dilation, False, [0] * len(stride), groups, [need_input, need_weight, need_bias])
        if need_input and correction == "position":  # a fresh tensor: its band scaled in place
            _ops.scale_border_(grad_input, list(weight.shape[2:]), stride, padding, dilation, power)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


def _static(*sizes) -> bool:
    """Whether every size is a plain int (no symbolic size of dynamic shapes)."""
    return all(type(v) is int for size in sizes for v in size)


def _position_backward(grad, input, weight, stride, padding, dilation, groups, power, need_weight, need_bias):
    """``position``'s gradients as its definition states them: the true input gradient (the plain
    weight) times the factor map ``(K / C(i)) ** power``. One multiply, which inductor fuses with
    the pointwise ops around it; no weight scaling and no in-place band update, whose
    functionalised form copies the whole input gradient first. The factor map is the output
    factor map of the transposed convolution with the same geometry, whose output is this
    input (the counts are the same), at the output padding that gives the input's size."""
    dtype = grad.dtype
    kernel = list(weight.shape[2:])
    grad_input, grad_weight, grad_bias = _aten.convolution_backward.default(
        grad, input.to(dtype), weight.to(dtype), [weight.shape[0]] if need_bias else None, stride, padding,
        dilation, False, [0] * len(stride), groups, [True, need_weight, need_bias])
    size = list(input.shape[2:])
    output_padding = [(L + 2 * p - q * (k - 1) - 1) % s for L, k, s, p, q in zip(size, kernel, stride, padding, dilation)]
    like = input.new_empty([1, 1] + size, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    factors = _ops.output_factors(like, kernel, stride, padding, dilation, output_padding, "position", power)
    return (grad_input * factors).to(dtype), grad_weight, grad_bias, None, None, None, None, None, None


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
    like = out.new_empty((1, 1) + tuple(out.shape[2:]), dtype=torch.float64 if out.dtype == torch.float64
                         else torch.float32)
    factors = _ops.output_factors(like, list(weight.shape[2:]), stride, padding, dilation, output_padding,
                                  correction, power)
    scaled = out * factors
    if bias is not None:
        scaled = scaled + bias.reshape((-1,) + (1,) * len(stride))
    return scaled.to(out.dtype)


def _output_size(input, weight, stride, padding, output_padding, dilation):
    """The spatial size of a transposed convolution's output."""
    return [_transposed_length(*axis)
            for axis in zip(input.shape[2:], weight.shape[2:], stride, padding, output_padding, dilation)]
