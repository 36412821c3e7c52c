"""Fake kernels of the compiled ``torch.ops.strideconv`` operators.

They give shapes, dtypes and strides without computing, for ``torch.compile`` and
meta tensors. The kernels and the autograd of the operators are compiled
(``csrc/``; docs/design.md has the map).
"""

from __future__ import annotations

import torch

@torch.library.register_fake("strideconv::conv")
def _conv_fake(input, weight, bias, stride, padding, dilation, groups, correction, power):
    return torch.ops.aten.convolution(
        input, weight, bias, stride, padding, dilation, False, [0] * len(stride), groups
    )


@torch.library.register_fake("strideconv::conv_transpose")
def _conv_transpose_fake(input, weight, bias, stride, padding, output_padding, dilation, groups, correction, power):
    return torch.ops.aten.convolution(input, weight, bias, stride, padding, dilation, True, output_padding, groups)


@torch.library.register_fake("strideconv::output_factors")
def _output_factors_fake(like, kernel_size, stride, padding, dilation, output_padding, correction, power):
    if correction == "map":
        return like.new_empty((1,) * like.dim())
    return like.new_empty((1, 1) + tuple(like.shape[2:]))


@torch.library.register_fake("strideconv::scale_weight")
def _scale_weight_fake(weight, input_size, stride, padding, dilation, correction, power, output_padding=()):
    return torch.empty_like(weight)


@torch.library.register_fake("strideconv::scale_taps")
def _scale_taps_fake(weight, stride, dilation, power):
    return torch.empty_like(weight)


@torch.library.register_fake("strideconv::scale_border")
def _scale_border_fake(grad, kernel_size, stride, padding, dilation, power, output_padding=()):
    return torch.empty_like(grad)


@torch.library.register_fake("strideconv::scale_border_")
def _scale_border_inplace_fake(grad, kernel_size, stride, padding, dilation, power, output_padding=(), bias=None):
    return None
