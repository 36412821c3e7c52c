"""Whole-model conversion: plain ``torch.nn`` convolutions to strideconv ones and back."""

from __future__ import annotations

from torch import nn

from ._factors import check_correction
from .modules import Conv1d, Conv2d, Conv3d

__all__ = ["convert", "revert"]

_TO_OURS = {nn.Conv1d: Conv1d, nn.Conv2d: Conv2d, nn.Conv3d: Conv3d}
_TO_PLAIN = {ours: plain for plain, ours in _TO_OURS.items()}


def _swap(module: nn.Module, cls: type) -> nn.Module:
    """A module of class ``cls`` that shares everything with ``module``: the same Parameter and
    buffer objects, hooks, training mode, device and dtype (nothing is copied or re-drawn)."""
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    for key in ("_parameters", "_buffers", "_modules"):
        new.__dict__[key] = dict(module.__dict__[key])
    return new


def _replace(module: nn.Module, make) -> nn.Module:
    replacement = make(module)
    if replacement is not None:
        return replacement
    for name, child in module.named_children():
        new_child = _replace(child, make)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def convert(model: nn.Module, correction: str = "position", power: float = 0.5, min_stride: int = 2) -> nn.Module:
    """Replace each ``torch.nn.Conv1d/2d/3d`` of ``model`` whose largest stride is at least
    ``min_stride`` by the strideconv module sharing its parameters; returns the model (the
    converted module itself if ``model`` is one such convolution).

    Only those exact classes are converted: a subclass may have its own forward. The forward
    output does not change; the input gradients of the converted layers are corrected. Undo
    with ``revert``.
    """
    check_correction(correction, power)
    if isinstance(min_stride, bool) or not isinstance(min_stride, int) or min_stride < 1:
        raise ValueError(f"min_stride must be a positive integer, got {min_stride!r}")

    def make(module):
        cls = _TO_OURS.get(type(module))
        if cls is None or max(module.stride) < min_stride:
            return None
        new = _swap(module, cls)
        new.correction = correction
        new.power = float(power)
        return new

    return _replace(model, make)


def revert(model: nn.Module) -> nn.Module:
    """Replace each strideconv ``Conv1d/2d/3d`` by the plain ``torch.nn`` module sharing its
    parameters (for export and inference; the forward output is the same); returns the model."""

    def make(module):
        cls = _TO_PLAIN.get(type(module))
        if cls is None:
            return None
        new = _swap(module, cls)
        del new.__dict__["correction"], new.__dict__["power"]
        return new

    return _replace(model, make)
