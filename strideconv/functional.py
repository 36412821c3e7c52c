"""Functional interface: drop-ins for ``F.conv1d``, ``F.conv2d``, ``F.conv3d`` and ``F.avg_pool2d``."""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _ntuple, _pair

from . import _C
from ._factors import check_correction, pool_factor_map

__all__ = ["conv1d", "conv2d", "conv3d", "avg_pool2d"]

_conv_op = torch.ops.strideconv.conv.default
_has_torch_function = torch.overrides.has_torch_function_variadic
_is_compiling = torch.compiler.is_compiling


def _same_padding(weight: torch.Tensor, dilation, stride, nd: int):
    """Per-dimension (left, right) padding that ATen's padding='same' uses."""
    if any(s != 1 for s in stride):
        raise RuntimeError("padding='same' is not supported for strided convolutions")
    pads = []
    for d in range(nd):
        total = dilation[d] * (weight.shape[2 + d] - 1)
        pads.append((total // 2, total - total // 2))
    return pads


def _string_padding(input, weight, padding: str, stride, dilation, nd: int):
    """(input, padding) for ``padding='valid'`` or ``'same'``, resolved as ATen does."""
    if padding == "valid":
        return input, (0,) * nd
    if padding != "same":
        raise ValueError(f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")
    pads = _same_padding(weight, dilation, stride, nd)
    extra = [right - left for left, right in pads]
    if any(extra):
        # Asymmetric: pad the far side by the odd one, as ATen does; the count
        # map is then that of the padded tensor.
        pad_arg = []
        for e in reversed(extra):
            pad_arg += [0, e]
        input = F.pad(input, pad_arg)
    return input, tuple(left for left, _ in pads)


def _expand(value, nd: int):
    """An int argument repeated per spatial dim, as torch.nn.modules.utils._ntuple does."""
    if type(value) is tuple:  # the common case first: modules store tuples
        return value
    if type(value) is int:
        return (value,) * nd
    return _ntuple(nd)(value)


def _conv_nd(input, weight, bias, stride, padding, dilation, groups, correction, power, nd):
    """Public N-d entry: checks the rank, expands int arguments, accepts unbatched input.

    Kept lean on purpose: on a GPU, a small convolution's time is mostly this host code.
    """
    check_correction(correction, power)
    dim = input.dim()
    if dim != nd + 2 and dim != nd + 1:
        raise RuntimeError(
            f"Expected {nd + 1}D (unbatched) or {nd + 2}D (batched) input to conv{nd}d, but got "
            f"input of size: {list(input.shape)}"
        )
    stride, dilation = _expand(stride, nd), _expand(dilation, nd)
    if isinstance(padding, str):
        input, padding = _string_padding(input, weight, padding, stride, dilation, nd)
    else:
        padding = _expand(padding, nd)
    batched = dim == nd + 2
    if not batched:
        input = input.unsqueeze(0)
    # torch.ops while torch.compile traces (dynamo sees the op) or a __torch_function__
    # override is in play; otherwise the unboxed binding of the same operator.
    call = _conv_op if _is_compiling() or _has_torch_function(input, weight, bias) else _C.conv
    out = call(input, weight, bias, stride, padding, dilation, groups, correction, float(power))
    return out if batched else out.squeeze(0)


_DOC = """``torch.nn.functional.conv{nd}d`` with a corrected input gradient.

    The output is bit-identical to ``F.conv{nd}d``. In the backward pass, ``grad_weight`` and
    ``grad_bias`` are the true gradients and ``grad_input`` is corrected for the uneven number of
    kernel windows that touch each input position (see ``correction_factors``):

    * ``"position"`` (default): true gradient times ``(K / C(i)) ** power`` at every position;
    * ``"kernel"``: each tap scaled by ``(K / n) ** power``, ``n`` its class count (interior only);
    * ``"map"``: true gradient times one scalar ``alpha``;
    * ``"none"``: the true gradient.
    """

_Int = Union[int, tuple[int, ...]]


def conv1d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           stride: _Int = 1, padding: Union[_Int, str] = 0, dilation: _Int = 1, groups: int = 1,
           *, correction: str = "position", power: float = 0.5) -> torch.Tensor:
    return _conv_nd(input, weight, bias, stride, padding, dilation, groups, correction, power, 1)


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           stride: _Int = 1, padding: Union[_Int, str] = 0, dilation: _Int = 1, groups: int = 1,
           *, correction: str = "position", power: float = 0.5) -> torch.Tensor:
    return _conv_nd(input, weight, bias, stride, padding, dilation, groups, correction, power, 2)


def conv3d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           stride: _Int = 1, padding: Union[_Int, str] = 0, dilation: _Int = 1, groups: int = 1,
           *, correction: str = "position", power: float = 0.5) -> torch.Tensor:
    return _conv_nd(input, weight, bias, stride, padding, dilation, groups, correction, power, 3)


for _nd, _fn in ((1, conv1d), (2, conv2d), (3, conv3d)):
    _fn.__doc__ = _DOC.format(nd=_nd)


class _ScaleGrad(torch.autograd.Function):
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


def avg_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Optional[int] = None,
               *, correction: str = "position", power: float = 0.5) -> torch.Tensor:
    """``torch.nn.functional.avg_pool2d`` with a corrected input gradient.

    Average pooling is a convolution with a constant kernel, so its backward has the same count
    map (with ``ceil_mode``'s extra windows included). The output is ``F.avg_pool2d``'s; the input
    gradient is the true one times the factor map of ``correction`` (with dilation 1, "kernel" is
    a factor map too: ``(K / n((i + p) mod s)) ** power`` where a window touches ``i``).
    """
    check_correction(correction, power)
    kernel = _pair(kernel_size)
    stride_ = kernel if (stride is None or (not isinstance(stride, int) and len(stride) == 0)) else _pair(stride)
    pad = _pair(padding)
    valid = min(kernel) > 0 and min(stride_) > 0 and min(pad) >= 0  # else F.avg_pool2d raises
    if valid and correction != "none" and input.requires_grad and torch.is_grad_enabled() and input.dim() in (3, 4):
        factor = pool_factor_map(
            tuple(input.shape[-2:]), kernel, stride_, pad, ceil_mode, correction, float(power),
            input.device, input.dtype,
        )
        input = _ScaleGrad.apply(input, factor)
    return F.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
