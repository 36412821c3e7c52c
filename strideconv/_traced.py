"""The corrected convolutions as ``torch.compile`` sees them.

In eager mode a corrected layer is one call of ``torch.ops.strideconv.conv`` (or
``conv_transpose``), whose autograd is compiled. To inductor such an op is opaque: it keeps the
layout the op had when traced, while every plain convolution of the graph gets the layout
inductor picks for convolutions (channels_last on CPU and CUDA, 1.2-1.7x faster there for a
3x3/2 layer on CPU). So while dynamo traces (not for ``torch.export``, which keeps the ops),
the layers are written with ``aten.convolution`` itself and strideconv's small scaling ops:

- a strided convolution is an ``autograd.Function`` whose forward is ``aten.convolution`` and
  whose backward is one ``aten.convolution_backward`` with the weight scaled by
  ``strideconv.scale_weight``, then, for ``position``, ``strideconv.scale_border`` on the input
  gradient: the same arithmetic as the compiled node (docs/design.md);
- a transposed convolution is the same function as the op, written with differentiable ops:
  ``scale_weight`` on the weight (``map``, ``kernel``), or ``aten.convolution`` times
  ``strideconv.output_factors`` (``position``: one multiply that inductor fuses with its
  neighbours), plus the bias.

The scaling ops accept any layout (``flexible_layout``), so inductor's choice reaches them.
"""

from __future__ import annotations

import torch

_ops = torch.ops.strideconv
_aten = torch.ops.aten


class TracedConv(torch.autograd.Function):
    """``aten.convolution`` forward; the corrected input gradient in the backward."""

    @staticmethod
    def forward(input, weight, bias, stride, padding, dilation, groups, correction, power):
        return _aten.convolution.default(input, weight, bias, list(stride), list(padding), list(dilation), False,
                                         [0] * len(stride), groups)

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
        scaled = weight
        if need_input and correction != "none":
            # grad_weight and grad_bias do not depend on the weight: they come out true
            scaled = _ops.scale_weight(weight, input.shape[2:], stride, padding, dilation, correction,
                                       power).to(weight.dtype)
        grad_input, grad_weight, grad_bias = _aten.convolution_backward.default(
            grad, input, scaled, [weight.shape[0]] if need_bias else None, stride, padding, dilation, False,
            [0] * len(stride), groups, [need_input, need_weight, need_bias])
        if need_input and correction == "position":  # a fresh tensor: its band scaled in place
            _ops.scale_border_(grad_input, list(weight.shape[2:]), stride, padding, dilation, power)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


def conv(input, weight, bias, stride, padding, dilation, groups, correction, power):
    """``strideconv.conv`` for a batched input, as dynamo should trace it."""
    if correction == "none":
        return _aten.convolution.default(input, weight, bias, list(stride), list(padding), list(dilation), False,
                                         [0] * len(stride), groups)
    return TracedConv.apply(input, weight, bias, stride, padding, dilation, groups, correction, power)


def conv_transpose(input, weight, bias, stride, padding, output_padding, dilation, groups, correction, power):
    """``strideconv.conv_transpose`` for a batched input, as dynamo should trace it."""
    stride, padding, output_padding, dilation = list(stride), list(padding), list(output_padding), list(dilation)

    def plain(w, b):
        return _aten.convolution.default(input, w, b, stride, padding, dilation, True, output_padding, groups)

    if correction == "none":
        return plain(weight, bias)
    if correction in ("map", "kernel"):  # the weight scaled (per tap class, or by alpha); the bias added after
        size = _output_size(input, weight, stride, padding, output_padding, dilation)
        scaled = _ops.scale_weight(weight, size, stride, padding, dilation, correction, power, output_padding)
        return plain(scaled.to(weight.dtype), bias)
    # "position": the output times its factor map, then the bias
    out = plain(weight, None)
    out = out * _ops.output_factors(out.detach(), list(weight.shape[2:]), stride, padding, dilation, output_padding,
                                    correction, power).to(out.dtype)
    if bias is not None:
        out = out + bias.reshape((-1,) + (1,) * len(stride))
    return out


def _output_size(input, weight, stride, padding, output_padding, dilation):
    """The spatial size of a transposed convolution's output: (L - 1) s - 2p + q (k - 1) + a + 1."""
    return [(length - 1) * s - 2 * p + q * (k - 1) + a + 1
            for length, k, s, p, a, q in zip(input.shape[2:], weight.shape[2:], stride, padding, output_padding,
                                             dilation)]
