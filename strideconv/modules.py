"""Modules: drop-ins for ``torch.nn.Conv1d/2d/3d``, ``torch.nn.ConvTranspose1d/2d/3d`` and
``torch.nn.AvgPool2d``."""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import _C
from ._arguments import check_correction, check_power, int_arg, int_tuple
from .functional import (_conv_fast, _conv_nd, _conv_transpose_fast, _conv_transpose_nd, _dynamo_traces,
                         _fast_path_allowed, avg_pool2d)

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "AvgPool2d"]

TORCH_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)  # what strideconv's convolutions replace
TORCH_CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class _Corrected:
    """The two settings every strideconv module adds to its torch.nn base."""

    correction: str
    power: float

    def _set_correction(self, correction: str, power: float) -> None:
        """Store the settings, which the constructors check before building the base module
        (so that nothing is drawn from the RNG for a module that is refused)."""
        self.correction = correction
        self.power = power

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, correction={self.correction!r}, power={self.power}"

    @torch.jit.unused
    def _op_arguments(self):
        """The op's arguments, normalised from the settings once and again only when one of them
        changes (a user may set ``conv.stride = 2`` after construction, as with torch.nn's
        layers); None where the call needs the general path (``_normalised`` says which), or for
        settings it will refuse there, in torch's words."""
        key = self._settings()
        cached = self.__dict__.get("_op_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            args = self._normalised(*key)
        except (TypeError, ValueError, RuntimeError):
            args = None
        self.__dict__["_op_cache"] = (key, args)
        return args


class _ConvNd(_Corrected):
    """``_conv_forward`` of ``torch.nn.Conv{1,2,3}d`` through the compiled op."""

    _nd: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        correction: str = "position",
        power: float = 0.5,
    ) -> None:
        correction, power = check_correction(correction), check_power(power)  # before any draw
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype,
        )
        self._set_correction(correction, power)

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        if torch.jit.is_scripting():
            return self._scripted_conv(input, weight, bias)
        return self._eager_conv(input, weight, bias)

    @torch.jit.unused
    def _settings(self) -> tuple:
        return (self.stride, self.padding, self.dilation, self.groups, self.padding_mode, self.correction, self.power)

    @torch.jit.unused
    def _normalised(self, stride, padding, dilation, groups, padding_mode, correction, power):
        """(stride, padding, dilation, groups, correction, power) for the op; None for string
        and non-zero-mode paddings."""
        if padding_mode != "zeros" or isinstance(padding, str):
            return None
        nd = self._nd
        return (int_tuple(stride, nd, "stride"), int_tuple(padding, nd, "padding"), int_tuple(dilation, nd, "dilation"),
                int_arg(groups, "groups"), check_correction(correction), check_power(power))

    @torch.jit.unused
    def _eager_conv(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        if self.padding_mode == "zeros" and not _dynamo_traces():  # the common call, checked in C++
            out = _conv_fast(input, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                             self.correction, self.power, self._nd)
            if out is not None:
                return out
        args = self._op_arguments()
        if args is not None and input.dim() == self._nd + 2 and _fast_path_allowed(input, weight, bias):
            return _C.conv(input, weight, bias, *args)
        padding = self.padding
        if self.padding_mode != "zeros":  # as torch.nn.ConvNd: pad first, then convolve unpadded
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return _conv_nd(
            input, weight, bias, self.stride, padding, self.dilation, self.groups,
            self.correction, self.power, self._nd,
        )

    def _scripted_conv(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        """The same call in TorchScript, through the registered op (which expands one-value
        lists as ATen does). TorchScript resolves the isinstance test statically; 'same' is
        refused by ``__prepare_scriptable__``, so a string padding here is 'valid'."""
        unbatched = input.dim() == weight.dim() - 1
        if unbatched:
            input = input.unsqueeze(0)
        op = torch.ops.strideconv.conv
        if isinstance(self.padding, str):
            out = op(input, weight, bias, self.stride, [0], self.dilation, self.groups, self.correction, self.power)
        elif self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            out = op(input, weight, bias, self.stride, [0], self.dilation, self.groups, self.correction, self.power)
        else:
            out = op(input, weight, bias, self.stride, self.padding, self.dilation, self.groups, self.correction,
                     self.power)
        return out.squeeze(0) if unbatched else out

    def __prepare_scriptable__(self):
        if self.padding == "same":
            raise RuntimeError(
                f"strideconv: torch.jit.script does not support padding='same' in {type(self).__name__}; "
                "give the padding as numbers, or script strideconv.revert(model) (plain torch.nn layers)"
            )
        return self


_CONV_DOC = """Drop-in for ``torch.nn.Conv{nd}d`` whose backward corrects ``grad_input``.

    Same arguments, defaults, parameters, initial weights, ``state_dict`` and forward output as
    ``torch.nn.Conv{nd}d``; two keyword-only settings choose the correction of the input gradient
    (see ``strideconv.functional.conv{nd}d``). Padding modes other than ``"zeros"`` pad first, so
    the count map is that of the padded tensor.
    """


class Conv1d(_ConvNd, nn.Conv1d):
    __doc__ = _CONV_DOC.format(nd=1)
    _nd = 1


class Conv2d(_ConvNd, nn.Conv2d):
    __doc__ = _CONV_DOC.format(nd=2)
    _nd = 2


class Conv3d(_ConvNd, nn.Conv3d):
    __doc__ = _CONV_DOC.format(nd=3)
    _nd = 3


class _ConvTransposeNd(_Corrected):
    """``forward`` of ``torch.nn.ConvTranspose{1,2,3}d`` through the compiled op."""

    _nd: int
    _torch_name: str

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        output_padding=0,
        groups: int = 1,
        bias: bool = True,
        dilation=1,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        correction: str = "position",
        power: float = 0.5,
    ) -> None:
        correction, power = check_correction(correction), check_power(power)  # before any draw
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias,
            dilation, padding_mode, device, dtype,
        )
        self._set_correction(correction, power)

    def forward(self, input: torch.Tensor, output_size: Optional[List[int]] = None) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._scripted_conv_transpose(input, output_size)
        return self._eager_conv_transpose(input, output_size)

    @torch.jit.unused
    def _settings(self) -> tuple:
        return (self.stride, self.padding, self.output_padding, self.dilation, self.groups, self.padding_mode,
                self.correction, self.power)

    @torch.jit.unused
    def _normalised(self, stride, padding, output_padding, dilation, groups, padding_mode, correction, power):
        """(stride, padding, output_padding, dilation, groups, correction, power) for the op, for
        a call without ``output_size``; None for non-zero padding modes."""
        if padding_mode != "zeros":
            return None
        nd = self._nd
        return (int_tuple(stride, nd, "stride"), int_tuple(padding, nd, "padding"),
                int_tuple(output_padding, nd, "output_padding"), int_tuple(dilation, nd, "dilation"),
                int_arg(groups, "groups"), check_correction(correction), check_power(power))

    @torch.jit.unused
    def _eager_conv_transpose(self, input: torch.Tensor, output_size: Optional[List[int]]) -> torch.Tensor:
        if output_size is None and self.padding_mode == "zeros" and not _dynamo_traces():  # checked in C++
            out = _conv_transpose_fast(input, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                       self.dilation, self.groups, self.correction, self.power, self._nd)
            if out is not None:
                return out
        if output_size is None:
            args = self._op_arguments()
            if args is not None and input.dim() == self._nd + 2 and _fast_path_allowed(input, self.weight, self.bias):
                stride, padding, output_padding, dilation, groups, correction, power = args
                return _C.conv_transpose(input, self.weight, self.bias, stride, padding, output_padding, dilation,
                                         groups, correction, power)
        if self.padding_mode != "zeros":  # torch's check and words
            raise ValueError(f'Only "zeros" padding mode is supported for {self._torch_name}')
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size, self._nd, self.dilation
        )
        return _conv_transpose_nd(
            input, self.weight, self.bias, self.stride, self.padding, output_padding, self.groups,
            self.dilation, self.correction, self.power, self._nd,
        )

    def _scripted_conv_transpose(self, input: torch.Tensor, output_size: Optional[List[int]]) -> torch.Tensor:
        """The same call in TorchScript, through the registered op."""
        if self.padding_mode != "zeros":
            raise ValueError('Only "zeros" padding mode is supported for ConvTranspose')
        assert isinstance(self.padding, tuple)
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size, len(self.kernel_size), self.dilation
        )
        unbatched = input.dim() == self.weight.dim() - 1
        if unbatched:
            input = input.unsqueeze(0)
        out = torch.ops.strideconv.conv_transpose(
            input, self.weight, self.bias, self.stride, self.padding, output_padding, self.dilation,
            self.groups, self.correction, self.power,
        )
        return out.squeeze(0) if unbatched else out


_TRANSPOSED_DOC = """Drop-in for ``torch.nn.ConvTranspose{nd}d`` whose output is normalised by its count map.

    Same arguments, defaults, parameters, initial weights and ``state_dict`` as
    ``torch.nn.ConvTranspose{nd}d`` (``output_size=`` in ``forward`` too); two keyword-only
    settings choose the normalisation (see ``strideconv.functional.conv_transpose{nd}d``).
    ``correction="none"`` is ``torch.nn.ConvTranspose{nd}d`` bit for bit. Unlike the
    convolutions, the correction changes the forward output; every gradient is the true one.
    """


class ConvTranspose1d(_ConvTransposeNd, nn.ConvTranspose1d):
    __doc__ = _TRANSPOSED_DOC.format(nd=1)
    _nd = 1
    _torch_name = "ConvTranspose1d"


class ConvTranspose2d(_ConvTransposeNd, nn.ConvTranspose2d):
    __doc__ = _TRANSPOSED_DOC.format(nd=2)
    _nd = 2
    _torch_name = "ConvTranspose2d"


class ConvTranspose3d(_ConvTransposeNd, nn.ConvTranspose3d):
    __doc__ = _TRANSPOSED_DOC.format(nd=3)
    _nd = 3
    _torch_name = "ConvTranspose3d"


class AvgPool2d(_Corrected, nn.AvgPool2d):
    """Drop-in for ``torch.nn.AvgPool2d`` whose backward corrects ``grad_input``.

    Same arguments and output as ``torch.nn.AvgPool2d``; see ``strideconv.functional.avg_pool2d``.
    """

    def __init__(
        self,
        kernel_size,
        stride=None,
        padding=0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: Optional[int] = None,
        *,
        correction: str = "position",
        power: float = 0.5,
    ) -> None:
        correction, power = check_correction(correction), check_power(power)
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        self._set_correction(correction, power)

    def __prepare_scriptable__(self):
        raise RuntimeError(
            "strideconv: torch.jit.script does not support strideconv.AvgPool2d (its correction is a "
            "Python autograd.Function); script strideconv.revert(model), which turns it back into "
            "torch.nn.AvgPool2d (same output, plain gradient)"
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return avg_pool2d(
            input, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
            self.divisor_override, correction=self.correction, power=self.power,
        )
