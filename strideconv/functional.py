"""Functional interface: ``strideconv.functional.conv2d``, a drop-in for ``F.conv2d``."""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from ._factors import check_correction

__all__ = ["conv2d"]

_IntOr2 = Union[int, tuple[int, int]]


def _same_padding(weight: torch.Tensor, dilation, stride, nd: int):
    """Per-dimension (left, right) padding that F.conv2d's padding='same' uses."""
    if any(s != 1 for s in stride):
        raise RuntimeError("padding='same' is not supported for strided convolutions")
    pads = []
    for d in range(nd):
        total = dilation[d] * (weight.shape[2 + d] - 1)
        pads.append((total // 2, total - total // 2))
    return pads


def _conv(input, weight, bias, stride, padding, dilation, groups, correction, power, nd):
    """N-d convolution through the compiled op, with string paddings resolved as ATen does."""
    check_correction(correction, power)
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0,) * nd
        elif padding == "same":
            pads = _same_padding(weight, dilation, stride, nd)
            padding = tuple(left for left, _ in pads)
            extra = [right - left for left, right in pads]
            if any(extra):
                # Asymmetric: pad the far side by the odd one, as ATen does; the count
                # map is then that of the padded tensor.
                pad_arg = []
                for e in reversed(extra):
                    pad_arg += [0, e]
                input = F.pad(input, pad_arg)
        else:
            raise ValueError(f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")
    return torch.ops.strideconv.conv(
        input, weight, bias, list(stride), list(padding), list(dilation), groups, correction, float(power)
    )


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: _IntOr2 = 1,
    padding: Union[_IntOr2, str] = 0,
    dilation: _IntOr2 = 1,
    groups: int = 1,
    *,
    correction: str = "position",
    power: float = 0.5,
) -> torch.Tensor:
    """``torch.nn.functional.conv2d`` with a corrected input gradient.

    The output is bit-identical to ``F.conv2d``. In the backward pass, ``grad_weight`` and
    ``grad_bias`` are the true gradients and ``grad_input`` is corrected for the uneven number of
    kernel windows that touch each input pixel (see ``correction_factors``):

    * ``"position"`` (default): true gradient times ``(K / C(i)) ** power`` at every position;
    * ``"kernel"``: each tap scaled by ``(K / n) ** power``, ``n`` its class count (interior only);
    * ``"map"``: true gradient times one scalar ``alpha``;
    * ``"none"``: the true gradient.
    """
    if input.dim() not in (3, 4):
        raise RuntimeError(
            "Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: "
            f"{list(input.shape)}"
        )
    stride, dilation = _pair(stride), _pair(dilation)
    if not isinstance(padding, str):
        padding = _pair(padding)
    if input.dim() == 3:
        out = _conv(input.unsqueeze(0), weight, bias, stride, padding, dilation, groups, correction, power, 2)
        return out.squeeze(0)
    return _conv(input, weight, bias, stride, padding, dilation, groups, correction, power, 2)
