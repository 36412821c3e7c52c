"""Whole-model conversion: plain ``torch.nn`` convolutions to strideconv ones and back."""

from __future__ import annotations

import warnings

from torch import nn
from torch.nn.utils import parametrize

from ._arguments import check_correction, check_power
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
    transposed: bool = False,
) -> nn.Module:
    """Replace each ``torch.nn.Conv1d/2d/3d`` of ``model`` whose largest stride is at least
    ``min_stride`` by the strideconv module sharing its parameters; returns the model (the
    converted module itself if ``model`` is one such convolution).

    With ``transposed=True``, each ``torch.nn.ConvTranspose1d/2d/3d`` with such a stride is
    converted too, with the same ``correction`` and ``power``: its forward output is then
    normalised by its count map, so it changes (off by default for that reason).

    Converted: those exact classes, also under ``torch.nn.utils.parametrize`` (e.g.
    ``parametrizations.weight_norm``) and lazy ones once materialised; a module used at
    several places stays one module. Skipped, each named in a warning: other subclasses (they
    may have their own forward) and lazy convolutions not yet run. The forward output of the
    convolutions does not change; the input gradients of the converted layers are corrected.
    Undo with ``revert``.
    """
    correction, power = check_correction(correction), check_power(power)
    if isinstance(min_stride, bool) or not isinstance(min_stride, int) or min_stride < 1:
        raise ValueError(f"min_stride must be a positive integer, got {min_stride!r}")
    if not isinstance(transposed, bool):
        raise ValueError(f"transposed must be True or False, got {transposed!r}")
    targets = {**_TO_OURS, **_TO_OURS_TRANSPOSED} if transposed else _TO_OURS
    torch_classes = TORCH_CONVS + TORCH_CONV_TRANSPOSES if transposed else TORCH_CONVS
    ours = tuple(targets.values())
    names = {id(m): name or "(model)" for name, m in model.named_modules(remove_duplicate=False)}
    skipped = []

    def make(module):
        cls = targets.get(_base_class(module))
        if cls is None:
            # other subclasses of the torch.nn convolutions, lazy ones included
            if isinstance(module, torch_classes) and not isinstance(module, ours):
                skipped.append(f"{names.get(id(module))} ({type(module).__name__})")
            return None
        if max(module.stride) < min_stride:
            return None
        new = _swap(module, cls)
        new.correction = correction
        new.power = power
        return new

    out = _replace(model, make)
    if skipped:
        warnings.warn(
            "strideconv.convert left these convolutions unconverted: " + ", ".join(skipped)
            + " (a lazy convolution converts after its first forward pass; a subclass of "
            "nn.ConvNd may have its own forward: run the model inside strideconv.corrected(), which "
            "corrects every strided convolution call however it is made)",
            stacklevel=2,
        )
    return out


def revert(model: nn.Module) -> nn.Module:
    """Replace each strideconv ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d`` and ``AvgPool2d`` by
    the plain ``torch.nn`` module sharing its parameters (for TorchScript, or to train without
    the correction; the forward output of the convolutions and pooling is the same, that of the
    transposed convolutions loses its normalisation); returns the model."""

    def make(module):
        cls = _TO_PLAIN.get(_base_class(module))
        if cls is None:
            return None
        new = _swap(module, cls)
        del new.__dict__["correction"], new.__dict__["power"]
        return new

    return _replace(model, make)
