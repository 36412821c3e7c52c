"""Whole-model conversion: plain ``torch.nn`` convolutions to strideconv ones and back."""

from __future__ import annotations

import collections
import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._arguments import check_correction, check_power
from ._context import _CorrectedMode, _largest
from .modules import (
    TORCH_CONV_TRANSPOSES, TORCH_CONVS, AvgPool2d, Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d,
    ConvTranspose3d,
)

__all__ = ["convert", "revert"]

_TO_OURS = dict(zip(TORCH_CONVS, (Conv1d, Conv2d, Conv3d)))
_TO_OURS_TRANSPOSED = dict(zip(TORCH_CONV_TRANSPOSES, (ConvTranspose1d, ConvTranspose2d, ConvTranspose3d)))
_TO_PLAIN = {ours: plain for plain, ours in (*_TO_OURS.items(), *_TO_OURS_TRANSPOSED.items())}
_TO_PLAIN[AvgPool2d] = nn.AvgPool2d


def _base_class(module: nn.Module) -> type:
    """The class a module was built as: under ``torch.nn.utils.parametrize`` its class is a
    generated ``Parametrized<Name>`` subclass of it."""
    cls = type(module)
    return cls.__bases__[0] if parametrize.is_parametrized(module) else cls


# ----- scoped modules: a module's own forward, run inside corrected() ----------------------------
#
# A subclass of nn.ConvNd with a forward of its own (weight standardisation, TF-style "same"
# padding, a conv-norm-act class), or a module whose forward makes functional strided calls (a
# blur pool), cannot be swapped for one of ours. convert gives it a class of its own instead: a
# subclass of its class, with the same name, whose forward runs the original one inside a
# corrected() mode. Only that module's own ops pass through the mode; its parameters, buffers,
# state_dict and hooks stay as they are, and isinstance() with its class still holds.

_SCOPED: dict = {}  # original class -> its scoped subclass


def _scoped_class(cls: type) -> type:
    scoped = _SCOPED.get(cls)
    if scoped is None:
        def forward(self, *args, **kwargs):
            with self._strideconv_mode:
                return cls.forward(self, *args, **kwargs)

        def __reduce_ex__(self, protocol):
            # pickled (torch.save, copy.deepcopy) as the scoped class, which is rebuilt on load
            _, _, *rest = object.__reduce_ex__(self, protocol)
            return (_new_scoped, (cls,), *rest)

        scoped = type(cls.__name__, (cls,), {
            "forward": forward, "__reduce_ex__": __reduce_ex__, "__module__": cls.__module__,
            "__qualname__": cls.__qualname__, "_strideconv_scoped_base": cls,
            "__doc__": cls.__doc__,
        })
        _SCOPED[cls] = scoped
    return scoped


def _new_scoped(cls: type):
    scoped = _scoped_class(cls)
    return scoped.__new__(scoped)


def _is_scoped(module: nn.Module) -> bool:
    return "_strideconv_scoped_base" in type(module).__dict__


def _scope(module: nn.Module, mode: _CorrectedMode) -> None:
    module.__class__ = _scoped_class(type(module))
    module._strideconv_mode = mode


def _unscope(module: nn.Module) -> None:
    module.__class__ = type(module)._strideconv_scoped_base
    del module._strideconv_mode


def _is_lazy(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params()


def _uncovered_warning(skipped: list) -> str:
    """One short line: the lazy classes left unconverted (the only ones left), with counts, most
    frequent first."""
    counts = collections.Counter(skipped)
    parts = [f"{n} {name}" for name, n in counts.most_common()]
    shown = []
    for part in parts:
        if len(", ".join(shown + [part])) > 120:
            break
        shown.append(part)
    more = len(parts) - len(shown)
    text = (f"strideconv.convert left {len(skipped)} strided convolution{'s' if len(skipped) > 1 else ''} "
            f"unconverted: {', '.join(shown)}{f' and {more} more classes' if more else ''}")
    return text + " (lazy ones convert after their first forward pass); strideconv.report(model, x) lists them"


def _swap(module: nn.Module, cls: type) -> nn.Module:
    """A module of class ``cls`` (or its parametrized twin) that shares everything with
    ``module``: the same Parameter, buffer and parametrization objects, hooks, training mode,
    device and dtype (nothing is copied or re-drawn)."""
    if parametrize.is_parametrized(module):
        # The generated class holds the parametrized properties (e.g. `weight`): rebuild it
        # over `cls`, with the same properties and methods.
        extra = {k: v for k, v in type(module).__dict__.items() if k not in ("__dict__", "__weakref__", "__doc__")}
        cls = type(f"Parametrized{cls.__name__}", (cls,), extra)
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    for key in ("_parameters", "_buffers", "_modules"):
        new.__dict__[key] = dict(module.__dict__[key])
    return new


def _replace(model: nn.Module, make) -> nn.Module:
    """Apply ``make`` to every module of ``model`` (depth first); a module reached at several
    places is replaced once, by one new module, so that sharing is kept."""
    done: dict[int, nn.Module] = {}

    def visit(module: nn.Module) -> nn.Module:
        if id(module) in done:
            return done[id(module)]
        replacement = make(module)
        if replacement is None:
            replacement = module
            for name, child in list(module._modules.items()):  # every slot, shared ones too
                if child is None:
                    continue
                new_child = visit(child)
                if new_child is not child:
                    setattr(module, name, new_child)
        done[id(module)] = replacement
        return replacement

    return visit(model)


def convert(
    model: nn.Module, correction: str = "position", power: float = 0.5, min_stride: int = 2,
    transposed: bool = False, example_input=None,
) -> nn.Module:
    """Correct every strided convolution of ``model`` whose largest stride is at least
    ``min_stride``; returns the model (the converted module itself if ``model`` is one such
    convolution).

    * ``torch.nn.Conv1d/2d/3d`` (exactly those classes, also under ``torch.nn.utils.parametrize``,
      lazy ones once materialised) are replaced by the strideconv module sharing their
      parameters; a module used at several places stays one module.
    * Other subclasses of them, whose forward may be their own (weight standardisation,
      TensorFlow-style "same" padding, conv-norm-act classes), keep their class, parameters and
      ``state_dict``: their forward runs inside ``strideconv.corrected()``, so the strided
      convolutions it makes are corrected and only that module's own ops pass through the mode.
    * With ``example_input`` (a tensor, or a tuple of positional arguments), the model is also
      run once on it (no gradient; buffers restored): each module whose forward makes a strided
      functional call that is still plain (a blur pool's ``F.conv2d(..., stride=2, groups=C)``)
      gets the same treatment.

    With ``transposed=True``, ``torch.nn.ConvTranspose1d/2d/3d`` (and their subclasses) with such
    a stride are converted too: their forward output is then normalised by its count map, so it
    changes (off by default for that reason). Otherwise the forward output does not change; the
    input gradients of the converted layers are corrected. A module already converted keeps its
    setting. What cannot be covered (a lazy convolution not yet run) is named in one warning.
    Undo with ``revert``.
    """
    correction, power = check_correction(correction), check_power(power)
    if isinstance(min_stride, bool) or not isinstance(min_stride, int) or min_stride < 1:
        raise ValueError(f"min_stride must be a positive integer, got {min_stride!r}")
    if not isinstance(transposed, bool):
        raise ValueError(f"transposed must be True or False, got {transposed!r}")
    targets = {**_TO_OURS, **_TO_OURS_TRANSPOSED} if transposed else _TO_OURS
    torch_classes = TORCH_CONVS + TORCH_CONV_TRANSPOSES if transposed else TORCH_CONVS
    ours = tuple(_TO_PLAIN)
    mode = _CorrectedMode(correction, power, transposed, False, min_stride)
    skipped = []  # lazy convolutions not yet run: the only ones nothing can cover

    def make(module):
        if isinstance(module, ours) or _is_scoped(module) or not isinstance(module, torch_classes):
            return None
        largest = _largest(module.stride)
        if largest is None or largest < min_stride:
            return None
        if _is_lazy(module):
            skipped.append(type(module).__name__)
            return None
        cls = targets.get(_base_class(module))
        if cls is None:  # a subclass: its own forward, inside the mode
            _scope(module, mode)
            return None
        new = _swap(module, cls)
        new.correction = correction
        new.power = power
        return new

    out = _replace(model, make)
    if example_input is not None:
        _scope_functional_calls(out, example_input, mode, min_stride, transposed)
    if skipped:
        warnings.warn(_uncovered_warning(skipped), stacklevel=2)
    return out


def _scope_functional_calls(model: nn.Module, example_input, mode, min_stride: int, transposed: bool) -> None:
    """Scope each module whose forward made a strided torch call that nothing corrected on
    ``example_input`` (a strideconv layer set to "none" is left as it is)."""
    from ._recording import buffers_kept, record  # the recording pass imports the modules, as this file does

    with buffers_kept(model), torch.no_grad():
        rec = record(model, example_input, min_stride=min_stride, transposed=transposed)
    for call, module in zip(rec.calls, rec.modules):
        if call.by == "" and module is not None and not _is_scoped(module):
            _scope(module, mode)


def revert(model: nn.Module) -> nn.Module:
    """Replace each strideconv ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d`` and ``AvgPool2d`` by
    the plain ``torch.nn`` module sharing its parameters, and give each module that ``convert``
    scoped its own class back (for TorchScript, or to train without
    the correction; the forward output of the convolutions and pooling is the same, that of the
    transposed convolutions loses its normalisation); returns the model."""

    def make(module):
        if _is_scoped(module):
            _unscope(module)
            return None
        cls = _TO_PLAIN.get(_base_class(module))
        if cls is None:
            return None
        new = _swap(module, cls)
        del new.__dict__["correction"], new.__dict__["power"]
        return new

    return _replace(model, make)
