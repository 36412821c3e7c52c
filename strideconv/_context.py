"""``strideconv.corrected()``: every strided convolution called inside a block, corrected.

``convert`` swaps exact ``torch.nn`` classes. Model code also reaches strided convolutions
other ways: subclasses of ``nn.Conv2d`` with their own ``forward`` (weight standardisation,
TensorFlow-style "same" padding, conv-norm-activation wrappers) and plain functional calls.
All of them end in ``torch.nn.functional.conv1d/2d/3d`` (``conv_transpose*``, ``avg_pool2d``),
and a ``torch.overrides.TorchFunctionMode`` sees every such call: the mode below sends the
strided ones through strideconv's operator and passes everything else on untouched.

The torch function mode stack is per thread, so the mode is too; ``__exit__`` pops it whether
the block ends normally or by an exception, so nesting and re-entry restore the state before.
While the mode runs its handler it is off the stack, so strideconv's own calls inside do not
come back to it; calls already made through strideconv (its modules and functional API) reach
the mode as ``torch.ops.strideconv.*`` and are passed on as they are.
"""

from __future__ import annotations

import operator

import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ._arguments import check_correction, check_power, pool_stride
from .functional import _conv_nd, _conv_transpose_nd, avg_pool2d

__all__ = ["corrected"]


def _conv_arguments(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return input, weight, bias, stride, padding, dilation, groups


def _conv_transpose_arguments(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                              dilation=1):
    return input, weight, bias, stride, padding, output_padding, groups, dilation


def _pool_arguments(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                    divisor_override=None):
    return input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override


def _largest(value):
    """The largest entry of a stride argument, or None if it is not one torch would take (the
    call then goes to torch, which raises its own error)."""
    try:
        values = value if isinstance(value, (tuple, list)) else (value,)
        if not values or any(isinstance(v, bool) for v in values):
            return None
        return max(operator.index(v) for v in values)
    except (TypeError, ValueError):
        return None


_CONVS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_CONV_TRANSPOSES = {F.conv_transpose1d: 1, F.conv_transpose2d: 2, F.conv_transpose3d: 3}


class _CorrectedMode(TorchFunctionMode):
    """The mode ``corrected()`` returns (see there)."""

    def __init__(self, correction: str, power: float, transposed: bool, pool: bool, min_stride: int):
        super().__init__()
        self.correction, self.power = correction, power
        self.transposed, self.pool, self.min_stride = transposed, pool, min_stride

    def __repr__(self) -> str:
        return (f"strideconv.corrected(correction={self.correction!r}, power={self.power}, "
                f"transposed={self.transposed}, pool={self.pool}, min_stride={self.min_stride})")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CONVS:
            out = self._conv(_CONVS[func], args, kwargs)
        elif self.transposed and func in _CONV_TRANSPOSES:
            out = self._conv_transpose(_CONV_TRANSPOSES[func], args, kwargs)
        elif self.pool and func is F.avg_pool2d:
            out = self._avg_pool2d(args, kwargs)
        else:
            out = None
        return func(*args, **kwargs) if out is None else out

    # Each returns None to pass the call on to torch as it is: a stride below min_stride, or
    # arguments torch itself would refuse (so that its own error is raised).
    def _conv(self, nd, args, kwargs):
        try:
            input, weight, bias, stride, padding, dilation, groups = _conv_arguments(*args, **kwargs)
        except TypeError:
            return None
        largest = _largest(stride)
        if largest is None or largest < self.min_stride:
            return None
        return _conv_nd(input, weight, bias, stride, padding, dilation, groups, self.correction, self.power, nd)

    def _conv_transpose(self, nd, args, kwargs):
        try:
            input, weight, bias, stride, padding, output_padding, groups, dilation = _conv_transpose_arguments(
                *args, **kwargs)
        except TypeError:
            return None
        largest = _largest(stride)
        if largest is None or largest < self.min_stride:
            return None
        return _conv_transpose_nd(input, weight, bias, stride, padding, output_padding, groups, dilation,
                                  self.correction, self.power, nd)

    def _avg_pool2d(self, args, kwargs):
        try:
            input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override = _pool_arguments(
                *args, **kwargs)
        except TypeError:
            return None
        largest = _largest(pool_stride(stride, kernel_size))
        if largest is None or largest < self.min_stride:
            return None
        return avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                          correction=self.correction, power=self.power)


def corrected(correction: str = "position", power: float = 0.5, *, transposed: bool = False, pool: bool = False,
              min_stride: int = 2) -> TorchFunctionMode:
    """A context manager under which every strided convolution is corrected, however it is called.

    Inside ``with strideconv.corrected():``, each call of ``torch.nn.functional.conv1d/2d/3d``
    whose largest stride is at least ``min_stride`` runs through strideconv's operator with
    ``correction`` and ``power``: the same output, bit for bit, and a corrected input gradient.
    That reaches what ``convert`` cannot swap: subclasses of ``nn.Conv2d`` with their own
    ``forward`` and convolutions called functionally. With ``transposed=True`` the calls of
    ``F.conv_transpose1d/2d/3d`` are normalised too (their output changes, as with
    ``convert(transposed=True)``); with ``pool=True``, those of ``F.avg_pool2d``.

    Calls already made through strideconv (its modules, ``convert``-ed layers, its functional
    API) keep their own settings. The setting is per thread and ends with the block, also when
    the block raises; blocks nest (the innermost one decides the calls it covers). Works under
    ``torch.compile`` (no graph break) and ``torch.export`` when the block encloses the call.

    Every other torch call inside the block passes through the mode too, which costs a few
    microseconds of Python per call in eager mode (docs/performance.md has the measurement);
    under ``torch.compile`` the mode costs nothing at run time.
    """
    correction, power = check_correction(correction), check_power(power)
    if isinstance(min_stride, bool) or not isinstance(min_stride, int) or min_stride < 1:
        raise ValueError(f"min_stride must be a positive integer, got {min_stride!r}")
    for name, value in (("transposed", transposed), ("pool", pool)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    return _CorrectedMode(correction, power, transposed, pool, min_stride)
