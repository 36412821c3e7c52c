"""Stride-aware initialisation, following ``torch.nn.init``'s conventions.

PyTorch's ``fan_out`` of a convolution weight is ``out_channels * prod(k)``: the number of
backward connections of an input element when the stride is 1 and there is one group. Under a
stride each input element is reached by ``prod(k_i / s_i)`` taps on average, not ``prod(k)``, and
with groups only by the ``out_channels / groups`` filters of its own group. The functions here
take ``stride``, ``dilation`` and ``groups`` and use the effective backward fan

    fan_out = (out_channels / groups) * prod(k_i / s_i)

(dilation moves the taps but does not change how many reach an element on average). ``fan_in``
is ``weight.size(1) * prod(k)``, which already counts ``in_channels / groups``. With stride 1 and
one group every function draws exactly what its ``torch.nn.init`` namesake draws.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Optional, Union

import torch
from torch import nn
from torch.nn.init import calculate_gain

from ._arguments import int_arg, int_tuple_exact
from .modules import TORCH_CONVS

__all__ = [
    "Fans",
    "calculate_gain",
    "fans",
    "init_convs_",
    "kaiming_normal_",
    "kaiming_uniform_",
    "xavier_normal_",
    "xavier_uniform_",
]


class Fans(NamedTuple):
    fan_in: float  # weight.size(1) * prod(k): in_channels / groups connections per output
    fan_out_torch: float  # out_channels * prod(k): what torch.nn.init uses
    fan_out: float  # (out_channels / groups) * prod(k_i / s_i): mean backward connections


def fans(weight: Union[torch.Tensor, nn.Module], stride=1, dilation=1, groups: int = 1) -> Fans:
    """``fan_in``, PyTorch's ``fan_out`` and the effective ``fan_out`` of a convolution weight.

    ``weight`` is a weight tensor ``(out, in / groups, *kernel)`` or a conv module, whose own
    stride, dilation and groups are then used (the keyword arguments are ignored).
    """
    if isinstance(weight, nn.Module):
        if not isinstance(weight, TORCH_CONVS):
            raise ValueError(f"fans() takes a weight tensor or a Conv1d/2d/3d module, got {type(weight).__name__}")
        stride, dilation, groups = weight.stride, weight.dilation, weight.groups
        weight = weight.weight
    if weight.dim() < 3:
        raise ValueError(
            f"fans() needs a convolution weight (out, in / groups, *kernel), got shape {tuple(weight.shape)}"
        )
    kernel = tuple(weight.shape[2:])
    stride = int_tuple_exact(stride, len(kernel), "stride")
    dilation = int_tuple_exact(dilation, len(kernel), "dilation")  # accepted, no effect on the mean
    groups = int_arg(groups, "groups")
    if any(s < 1 for s in stride) or any(q < 1 for q in dilation):
        raise ValueError(f"stride and dilation must be positive, got {stride} and {dilation}")
    if groups < 1 or weight.shape[0] % groups != 0:
        raise ValueError(f"groups must be a positive divisor of out_channels={weight.shape[0]}, got {groups}")
    taps = math.prod(kernel)
    out = weight.shape[0]
    return Fans(
        fan_in=float(weight.shape[1] * taps),
        fan_out_torch=float(out * taps),
        fan_out=float(out / groups * math.prod(k / s for k, s in zip(kernel, stride))),
    )


def _fan(tensor, mode, stride, dilation, groups) -> float:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    f = fans(tensor, stride, dilation, groups)
    return f.fan_in if mode == "fan_in" else f.fan_out


def _empty(tensor: torch.Tensor) -> bool:
    if 0 in tensor.shape:
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=3)
        return True
    return False


def kaiming_normal_(tensor: torch.Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                    generator: Optional[torch.Generator] = None, *, stride=1, dilation=1,
                    groups: int = 1) -> torch.Tensor:
    """``torch.nn.init.kaiming_normal_`` with the effective ``fan_out`` (see the module docstring):
    ``std = gain / sqrt(fan)``."""
    if _empty(tensor):
        return tensor
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode, stride, dilation, groups))
    with torch.no_grad():
        return tensor.normal_(0, std, generator=generator)


def kaiming_uniform_(tensor: torch.Tensor, a: float = 0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                     generator: Optional[torch.Generator] = None, *, stride=1, dilation=1,
                     groups: int = 1) -> torch.Tensor:
    """``torch.nn.init.kaiming_uniform_`` with the effective ``fan_out``:
    ``U(-bound, bound)``, ``bound = sqrt(3) * gain / sqrt(fan)``."""
    if _empty(tensor):
        return tensor
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(tensor, mode, stride, dilation, groups))
    bound = math.sqrt(3.0) * std
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)


def xavier_normal_(tensor: torch.Tensor, gain: float = 1.0, generator: Optional[torch.Generator] = None,
                   *, stride=1, dilation=1, groups: int = 1) -> torch.Tensor:
    """``torch.nn.init.xavier_normal_`` with the effective ``fan_out``:
    ``std = gain * sqrt(2 / (fan_in + fan_out))``."""
    if _empty(tensor):
        return tensor
    f = fans(tensor, stride, dilation, groups)
    std = gain * math.sqrt(2.0 / (f.fan_in + f.fan_out))
    with torch.no_grad():
        return tensor.normal_(0, std, generator=generator)


def xavier_uniform_(tensor: torch.Tensor, gain: float = 1.0, generator: Optional[torch.Generator] = None,
                    *, stride=1, dilation=1, groups: int = 1) -> torch.Tensor:
    """``torch.nn.init.xavier_uniform_`` with the effective ``fan_out``:
    ``U(-a, a)``, ``a = sqrt(3) * gain * sqrt(2 / (fan_in + fan_out))``."""
    if _empty(tensor):
        return tensor
    f = fans(tensor, stride, dilation, groups)
    std = gain * math.sqrt(2.0 / (f.fan_in + f.fan_out))
    a = math.sqrt(3.0) * std  # torch's order of operations: the same draws, bit for bit
    with torch.no_grad():
        return tensor.uniform_(-a, a, generator=generator)


def init_convs_(model: nn.Module, mode: str = "fan_out", nonlinearity: str = "relu", a: float = 0,
                distribution: str = "normal", zero_bias: bool = True,
                generator: Optional[torch.Generator] = None) -> nn.Module:
    """Kaiming-initialise every ``Conv1d/2d/3d`` of ``model`` (strideconv's too) from its own
    stride, dilation and groups; biases are zeroed unless ``zero_bias=False``. Returns ``model``.

    The defaults (``fan_out``, ReLU, normal) are those torchvision's ResNets use, with the
    effective ``fan_out`` in place of PyTorch's.
    """
    if distribution not in ("normal", "uniform"):
        raise ValueError(f"distribution must be 'normal' or 'uniform', got {distribution!r}")
    draw = kaiming_normal_ if distribution == "normal" else kaiming_uniform_
    for module in model.modules():
        if isinstance(module, TORCH_CONVS):
            draw(module.weight, a, mode, nonlinearity, generator,
                 stride=module.stride, dilation=module.dilation, groups=module.groups)
            if zero_bias and module.bias is not None:
                with torch.no_grad():
                    module.bias.zero_()
    return model
