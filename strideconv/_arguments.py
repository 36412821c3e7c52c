"""Arguments, normalised once at the public boundary.

Every form torch's convolutions accept for an int list (an int, a numpy or 0-d tensor
integer, a SymInt, or a list/tuple of them, of one value or one per spatial dim) becomes a
tuple of one value per dim; forms torch rejects raise the same exception type (a wrong
length is left for ATen, which raises torch's own message). Past this point the
operator receives full-length int lists and a checked correction and power.
"""

from __future__ import annotations

import math
import operator
from numbers import Real

import torch

CORRECTIONS = ("none", "map", "kernel", "position")


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_OVERFLOW = "Overflow when unpacking long long"  # torch's words


def int_arg(value, name: str, position: int = 0):
    """An integer as torch's argument parser takes it (int, numpy or 0-d tensor integer, SymInt;
    not bool or float). Out of int64's range, torch's exception types: a ValueError for a single
    int, a TypeError for an entry of a list (``position``, counted from 1)."""
    if type(value) is int and _INT64_MIN <= value <= _INT64_MAX or isinstance(value, torch.SymInt):
        return value
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dim() != 0):
        raise TypeError(f"{name} must be an int or a tuple of ints, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a tuple of ints, got {value!r}") from None
    if not _INT64_MIN <= value <= _INT64_MAX:
        if position:
            raise TypeError(f"argument '{name}' failed to unpack the object at pos {position} with error \"{_OVERFLOW}\"")
        raise ValueError(_OVERFLOW)
    return value


def int_tuple(value, nd: int, name: str) -> tuple:
    """``value`` as one int per spatial dim, broadcasting one value as torch does. Other
    lengths are returned as they are, for the operator (ATen) to reject in torch's words."""
    if type(value) is tuple and len(value) == nd:  # the common case first: modules store these
        for v in value:
            if type(v) is not int or not _INT64_MIN <= v <= _INT64_MAX:
                break
        else:
            return value
    if isinstance(value, (tuple, list)):
        ints = tuple(int_arg(v, name, i + 1) for i, v in enumerate(value))
        return ints * nd if len(ints) == 1 else ints
    return (int_arg(value, name),) * nd


def int_tuple_exact(value, nd: int, name: str) -> tuple:
    """``int_tuple`` for the Python helpers (count maps, init, report): a length other than 1
    or ``nd`` is a ValueError here, as there is no operator to reject it."""
    out = int_tuple(value, nd, name)
    if len(out) != nd:
        raise ValueError(f"{name} needs 1 or {nd} values, got {tuple(value)}")
    return out


def pool_stride(stride, kernel_size):
    """Average pooling's stride argument as torch reads it: the kernel size when it is None or an
    empty list or tuple."""
    return kernel_size if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else stride


def check_correction(correction) -> str:
    """The correction's name, or a ValueError listing the valid ones."""
    if not isinstance(correction, str) or correction not in CORRECTIONS:
        raise ValueError(
            f"correction must be one of {', '.join(repr(c) for c in CORRECTIONS)}, got {correction!r}"
        )
    return str(correction)


def check_power(power) -> float:
    """``power`` as a float, or a ValueError unless it is a positive finite real number.

    Comparisons rather than math.isfinite, so that a symbolic float (torch.compile with
    dynamic shapes) can be checked too; NaN fails both comparisons. Whether its factors fit
    the gradient's dtype depends on the layer and is checked by the operator.
    """
    if type(power) is float and 0 < power < math.inf:
        return power  # the common case first (a module's stored power): on every call's path
    if isinstance(power, torch.Tensor) and power.dim() == 0 and power.is_floating_point():
        power = power.item()
    if isinstance(power, bool) or not isinstance(power, (Real, torch.SymFloat)) or not 0 < power < math.inf:
        raise ValueError(f"power must be a positive finite number, got {power!r}")
    return power if isinstance(power, torch.SymFloat) else float(power)


def same_padding(kernel_size, stride, dilation) -> list[tuple[int, int]]:
    """Per-dimension (before, after) padding that ATen's ``padding='same'`` uses: the total
    ``dilation * (k - 1)``, the odd one after."""
    if any(s != 1 for s in stride):
        raise RuntimeError("padding='same' is not supported for strided convolutions")
    pads = []
    for k, q in zip(kernel_size, dilation):
        total = q * (k - 1)
        pads.append((total // 2, total - total // 2))
    return pads
