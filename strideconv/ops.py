"""Fake kernels and autograd of the compiled ``torch.ops.strideconv`` operators.

The backward of ``conv`` is one call of ATen's convolution backward with the
weight scaled by ``scale_weight`` (the weight is tiny, and the weight and bias
gradients do not depend on it, so they come out true), then, for "position",
``scale_border_`` on the few border rows and columns of the input gradient.
Both scalings are fixed and diagonal, so each one's backward is itself; that is
what makes double backward work.
"""

from __future__ import annotations

import torch

_ops = torch.ops.strideconv


# ----- fake (meta) kernels: shapes, dtypes and strides without computing -------------------

@torch.library.register_fake("strideconv::conv")
def _conv_fake(input, weight, bias, stride, padding, dilation, groups, correction, power):
    return torch.ops.aten.convolution(
        input, weight, bias, stride, padding, dilation, False, [0] * len(stride), groups
    )


@torch.library.register_fake("strideconv::scale_weight")
def _scale_weight_fake(weight, input_size, stride, padding, dilation, correction, power):
    return torch.empty_like(weight)


@torch.library.register_fake("strideconv::scale_border")
def _scale_border_fake(grad, kernel_size, stride, padding, dilation, power):
    return torch.empty_like(grad)


@torch.library.register_fake("strideconv::scale_border_")
def _scale_border_inplace_fake(grad, kernel_size, stride, padding, dilation, power):
    return None


# ----- autograd -------------------------------------------------------------------------------

def _taps_trivial(kernel_size, stride, dilation):
    return all(k == 1 or q % s == 0 for k, s, q in zip(kernel_size, stride, dilation))


def _conv_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, correction, power = inputs
    ctx.save_for_backward(input, weight)
    ctx.bias_sizes = None if bias is None else [bias.shape[0]]
    ctx.conv = (stride, padding, dilation, groups)
    ctx.correction = correction
    ctx.power = power


def _conv_backward(ctx, grad):
    input, weight = ctx.saved_tensors
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    stride, padding, dilation, groups = ctx.conv
    corrected = need_input and ctx.correction != "none"
    # "kernel" and "position" leave the weight alone when every tap factor is 1
    # (k == 1, or all taps in one class: dilation a multiple of stride).
    scale_taps = ctx.correction != "map" and not _taps_trivial(weight.shape[2:], stride, dilation)
    w = weight
    if corrected and (ctx.correction == "map" or scale_taps):
        w = _ops.scale_weight(
            weight, input.shape[2:], stride, padding, dilation, ctx.correction, ctx.power
        )
    grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        grad, input, w, ctx.bias_sizes, stride, padding, dilation, False, [0] * len(stride), groups,
        [need_input, need_weight, need_bias and ctx.bias_sizes is not None],
    )
    if corrected and ctx.correction == "position":
        border = (weight.shape[2:], stride, padding, dilation, ctx.power)
        if torch.is_grad_enabled():  # create_graph=True: keep it differentiable
            grad_input = _ops.scale_border(grad_input, *border)
        else:  # grad_input is a fresh tensor: scale its border band in place
            _ops.scale_border_(grad_input, *border)
    return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


torch.library.register_autograd(
    "strideconv::conv", _conv_backward, setup_context=_conv_setup_context
)


def _save_args(ctx, inputs, output):
    ctx.args = inputs[1:]


def _scale_weight_backward(ctx, grad):
    return (_ops.scale_weight(grad, *ctx.args),) + (None,) * len(ctx.args)


def _scale_border_backward(ctx, grad):
    return (_ops.scale_border(grad, *ctx.args),) + (None,) * len(ctx.args)


torch.library.register_autograd(
    "strideconv::scale_weight", _scale_weight_backward, setup_context=_save_args
)
torch.library.register_autograd(
    "strideconv::scale_border", _scale_border_backward, setup_context=_save_args
)
