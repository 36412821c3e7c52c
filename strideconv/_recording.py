"""The recording pass: every strided convolution call a model makes, as it is made.

``report`` and ``convert(model, example_input=x)`` run the model once under the mode below. It
sees each call of ``F.conv1d/2d/3d`` and of strideconv's own ops (and, when asked, the transposed
convolutions and average pooling) with the arguments of *that call*: a layer that pads itself
(TensorFlow-style "same": an asymmetric ``F.pad``, then a convolution with padding 0) is seen with
its real input and its real padding per side, a blur pool's functional call is seen at all. Module
hooks keep the stack of modules running, so each call names the innermost module whose forward
made it. The setting a call runs with is read where it is decided: a strideconv op carries its
own; a ``F.conv*`` call is corrected by the innermost ``corrected()`` block below this mode that
takes it, if any.

With ``force`` set, every strided convolution call runs with that correction instead (the
gradient measurement of ``report``: one pass plain, one corrected); with ``taps``, each call's
input is given to it through a fresh view, so that ``torch.autograd.grad`` can return the part of
the input gradient that flows through that call alone.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

from ._arguments import int_tuple, pool_stride, same_padding
from ._context import (_CONV_TRANSPOSES, _CONVS, _conv_arguments, _conv_transpose_arguments, _CorrectedMode,
                       _largest, _pool_arguments)
from .functional import _conv_nd
from .modules import AvgPool2d, _Corrected

__all__ = ["Call", "Recording", "buffers_kept", "record"]

_OP_CONV = torch.ops.strideconv.conv.default
_OP_CONV_TRANSPOSE = torch.ops.strideconv.conv_transpose.default
_POOLS = {F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3}


class Call(NamedTuple):
    """One strided call as it was made."""

    module: str  # qualified name of the innermost module running ("" for the model itself)
    module_type: str  # its class name
    op: str  # "conv2d", "conv_transpose2d", "avg_pool2d", ...
    input_size: tuple  # spatial size of the layer's own input (before a zero F.pad folded in)
    kernel: tuple
    stride: tuple
    padding: tuple  # ((before, after), ...) per spatial dim, a folded zero F.pad included
    dilation: tuple
    groups: int
    output_padding: tuple  # transposed convolutions (else zeros)
    ceil_mode: bool  # average pooling (else False)
    correction: str  # the setting the call ran with ("none": torch's own gradient)
    power: float
    by: str  # what set it: "layer" (a strideconv layer), "corrected()" (a block, or convert's scope), ""


class Recording(NamedTuple):
    calls: list  # Call, in call order
    modules: list  # the module object that made each call
    taps: list  # with taps=True: the view each call read its input through (None if no gradient)
    output: object  # what the model returned


class _Recorder(TorchFunctionMode):
    def __init__(self, min_stride: int, transposed: bool, pool: bool, force: Optional[str], taps: bool):
        super().__init__()
        self.min_stride, self.transposed, self.pool, self.force, self.want_taps = (
            min_stride, transposed, pool, force, taps)
        self.calls, self.modules, self.taps = [], [], []
        self.stack = []  # (name, module) of the modules whose forward runs
        self.pads = {}  # id(F.pad output) -> (weakref to it, input's spatial shape, pad list)

    # ----- the module stack, kept by hooks --------------------------------------------------------
    def enter(self, name, module, args):
        self.stack.append((name, module))
        if isinstance(module, AvgPool2d) and self.pool and args:  # its calls are not all F calls: read it
            self.module_pool(module, args[0])

    def leave(self):
        self.stack.pop()

    def _where(self):
        return self.stack[-1] if self.stack else ("", None)

    def _op_setter(self) -> str:
        """Who set a strideconv op call's setting: a strideconv layer, or a corrected() mode
        (a block, or convert's scope) that turned a torch call into the op."""
        return "layer" if isinstance(self._where()[1], _Corrected) else "corrected()"

    # ----- calls ----------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.pad:
            out = func(*args, **kwargs)
            self._note_pad(out, *args, **kwargs)
            return out
        if func in _CONVS:
            return self._conv(func, _CONVS[func], args, kwargs)
        if func is _OP_CONV:
            return self._op_conv(func, args, kwargs)
        if self.transposed and (func in _CONV_TRANSPOSES or func is _OP_CONV_TRANSPOSE):
            return self._conv_transpose(func, args, kwargs)
        if self.pool and func in _POOLS and not isinstance(self._where()[1], AvgPool2d):
            return self._avg_pool(func, _POOLS[func], args, kwargs)
        return func(*args, **kwargs)

    def _note_pad(self, out, input, pad, mode="constant", value=None):
        if mode == "constant" and not value and isinstance(out, torch.Tensor):
            pads = [int(p) for p in pad]
            if min(pads, default=0) >= 0:
                self.pads[id(out)] = (weakref.ref(out), tuple(input.shape), pads)

    def _folded(self, input, nd: int, padding):
        """(the layer's own input size, per-side padding): a zero F.pad whose output is ``input``
        and that pads spatial dims only is folded into the call's padding."""
        size = tuple(int(v) for v in input.shape[-nd:])
        entry = self.pads.get(id(input))
        if entry is None or entry[0]() is not input or len(entry[2]) > 2 * nd:
            return size, padding
        pads = entry[2] + [0] * (2 * nd - len(entry[2]))  # F.pad lists the last dim first
        folded = tuple((b + pads[2 * (nd - 1 - d)], a + pads[2 * (nd - 1 - d) + 1]) for d, (b, a) in enumerate(padding))
        return tuple(int(v) for v in entry[1][-nd:]), folded

    def _setting(self, kind: str, largest: int):
        """(correction, power, by) that the modes below give a torch call of this kind."""
        for mode in reversed(_get_current_function_mode_stack()):
            if isinstance(mode, _CorrectedMode) and largest >= mode.min_stride and (
                    kind == "conv" or (kind == "transposed" and mode.transposed) or (kind == "pool" and mode.pool)):
                return mode.correction, mode.power, "corrected()"
        return "none", 0.5, ""

    def _add(self, op, size, kernel, stride, padding, dilation, groups, setting, output_padding=None,
             ceil_mode=False):
        name, module = self._where()
        nd = len(kernel)
        self.calls.append(Call(name, type(module).__name__ if module is not None else "", op, size, kernel, stride,
                               padding, dilation, groups, output_padding or (0,) * nd, ceil_mode, *setting))
        self.modules.append(module)

    def _tap(self, input):
        """The view the call reads its input through, when the gradient per call is wanted."""
        if not (self.want_taps and isinstance(input, torch.Tensor) and input.requires_grad
                and torch.is_grad_enabled()):
            self.taps.append(None)
            return input
        view = input.view_as(input)
        self.taps.append(view)
        return view

    def _geometry(self, input, weight, stride, padding, dilation, nd):
        """(size, kernel, stride, per-side padding, dilation) of a convolution call, or None for
        arguments torch will refuse (it then raises its own error)."""
        try:
            if input.dim() not in (nd + 1, nd + 2) or weight.dim() != nd + 2:
                return None
            kernel = tuple(int(k) for k in weight.shape[2:])
            stride, dilation = int_tuple(stride, nd, "stride"), int_tuple(dilation, nd, "dilation")
            if padding == "valid":
                pads = ((0, 0),) * nd
            elif padding == "same":
                pads = tuple(same_padding(kernel, stride, dilation))
            else:
                pads = tuple((p, p) for p in int_tuple(padding, nd, "padding"))
        except (AttributeError, TypeError, ValueError, RuntimeError):
            return None
        if not len(stride) == len(dilation) == len(pads) == nd:
            return None
        size, pads = self._folded(input, nd, pads)
        return size, kernel, tuple(int(s) for s in stride), pads, tuple(int(q) for q in dilation)

    def _conv(self, func, nd, args, kwargs):
        try:
            input, weight, bias, stride, padding, dilation, groups = _conv_arguments(*args, **kwargs)
        except TypeError:
            return func(*args, **kwargs)
        largest = _largest(stride)
        geometry = None if largest is None or largest < self.min_stride else self._geometry(
            input, weight, stride, padding, dilation, nd)
        if geometry is None:
            return func(*args, **kwargs)
        setting = self._setting("conv", largest)
        self._add(f"conv{nd}d", *geometry, groups, setting)
        input = self._tap(input)
        if self.force is not None:
            return _conv_nd(input, weight, bias, stride, padding, dilation, groups, self.force, setting[1], nd)
        return func(input, weight, bias, stride, padding, dilation, groups)

    def _op_conv(self, func, args, kwargs):
        input, weight, bias, stride, padding, dilation, groups, correction, power = _op_arguments(*args, **kwargs)
        nd = weight.dim() - 2
        largest = max(stride)
        geometry = self._geometry(input, weight, stride, padding, dilation, nd) if largest >= self.min_stride else None
        if geometry is None:
            return func(*args, **kwargs)
        self._add(f"conv{nd}d", *geometry, groups, (correction, power, self._op_setter()))
        input = self._tap(input)
        if self.force is not None:
            correction = self.force
        return func(input, weight, bias, stride, padding, dilation, groups, correction, power)

    def _conv_transpose(self, func, args, kwargs):
        if func is _OP_CONV_TRANSPOSE:
            (input, weight, bias, stride, padding, output_padding, dilation, groups, correction,
             power) = _op_transpose_arguments(*args, **kwargs)
            setting = (correction, power, self._op_setter())
        else:
            try:
                input, weight, bias, stride, padding, output_padding, groups, dilation = _conv_transpose_arguments(
                    *args, **kwargs)
            except TypeError:
                return func(*args, **kwargs)
            setting = None
        out = func(*args, **kwargs)
        nd = weight.dim() - 2
        largest = _largest(stride)
        if largest is None or largest < self.min_stride:
            return out
        try:
            stride, padding = int_tuple(stride, nd, "stride"), int_tuple(padding, nd, "padding")
            output_padding, dilation = int_tuple(output_padding, nd, "output_padding"), int_tuple(dilation, nd, "dilation")
        except (TypeError, ValueError):
            return out
        setting = setting or self._setting("transposed", largest)
        self._add(f"conv_transpose{nd}d", tuple(int(v) for v in input.shape[-nd:]), tuple(weight.shape[2:]), stride,
                  tuple((p, p) for p in padding), dilation, groups, setting, output_padding)
        self.taps.append(None)
        return out

    def _avg_pool(self, func, nd, args, kwargs):
        try:
            input, kernel, stride, padding, ceil_mode, *_ = _pool_arguments(*args, **kwargs)
            kernel = int_tuple(kernel, nd, "kernel_size")
            stride, padding = int_tuple(pool_stride(stride, kernel), nd, "stride"), int_tuple(padding, nd, "padding")
        except (TypeError, ValueError):
            return func(*args, **kwargs)
        if len(kernel) == len(stride) == len(padding) == nd and max(stride) >= self.min_stride:
            setting = self._setting("pool", max(stride)) if nd == 2 else ("none", 0.5, "")
            self._add(f"avg_pool{nd}d", tuple(int(v) for v in input.shape[-nd:]), kernel, stride,
                      tuple((p, p) for p in padding), (1,) * nd, 1, setting, ceil_mode=bool(ceil_mode))
            self.taps.append(None)
        return func(*args, **kwargs)

    def module_pool(self, module, input):
        """A strideconv.AvgPool2d: its call from its attributes and its own setting."""
        kernel = int_tuple(module.kernel_size, 2, "kernel_size")
        stride = int_tuple(pool_stride(module.stride, kernel), 2, "stride")
        padding = int_tuple(module.padding, 2, "padding")
        if max(stride) >= self.min_stride:
            self._add("avg_pool2d", tuple(int(v) for v in input.shape[-2:]), kernel, stride,
                      tuple((p, p) for p in padding), (1, 1), 1, (module.correction, module.power, "layer"),
                      ceil_mode=bool(module.ceil_mode))
            self.taps.append(None)


def _op_arguments(input, weight, bias, stride, padding, dilation, groups, correction, power):
    return input, weight, bias, stride, padding, dilation, groups, correction, power


def _op_transpose_arguments(input, weight, bias, stride, padding, output_padding, dilation, groups, correction, power):
    return input, weight, bias, stride, padding, output_padding, dilation, groups, correction, power


@contextlib.contextmanager
def buffers_kept(model: nn.Module):
    """The model's buffers (BatchNorm statistics) as they were before the block, also when it raises."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def record(model: nn.Module, example_input, *, min_stride: int = 2, transposed: bool = False, pool: bool = False,
           force: Optional[str] = None, taps: bool = False) -> Recording:
    """Run ``model`` once on ``example_input`` (a tensor, or a tuple of positional arguments)
    under the recording mode; every strided call it makes, in order. Gradient mode is the
    caller's; buffers (e.g. BatchNorm statistics) update as in any forward pass."""
    recorder = _Recorder(min_stride, transposed, pool, force, taps)
    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(
            lambda mod, args, name=name: recorder.enter(name, mod, args), prepend=True))
        handles.append(module.register_forward_hook(lambda *_: recorder.leave(), always_call=True))
    try:
        with recorder:
            output = model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return Recording(recorder.calls, recorder.modules, recorder.taps, output)
