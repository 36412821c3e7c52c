"""Post-hoc phase equalisation: the plain gradient with each stride phase rescaled.

The corrections change the backward of every strided layer so that the gradient arrives
without the stride pattern. For *looking at* a gradient map (a saliency map, an attribution),
a simpler remedy does better in our records (docs/attribution.md): take the plain input
gradient and rescale each stride phase so that all phases carry the same mean energy. It removes
the pattern by construction, keeps the gradient's sign and its values within each phase, and
needs no change to the model.

``equalise_phases`` does it to one gradient map, with factors measured on that map;
``phase_equalised`` measures the factors once, on calibration inputs, and returns the model
wrapped so that every input gradient it passes back is multiplied by them (its forward is the
model's). The period is the stride of the pattern at the input: given, or found by ``report``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from ._arguments import int_tuple_exact
from ._pooling import ScaleGrad, apply
from .metrics import phase_energies

__all__ = ["PhaseEqualised", "equalise_phases", "input_period", "phase_equalised", "phase_factors"]


def phase_factors(grad: torch.Tensor, stride, border: int = 0) -> torch.Tensor:
    """The factor of every position of ``grad``'s spatial size: ``sqrt(mean_r E_r / E_r)`` for the
    stride phase ``r`` of that position, ``E_r`` the phase's mean squared gradient over the batch,
    the channels and the positions at least ``border`` from every border (``metrics.phase_energies``).
    A phase that holds only zeros gets a large factor, which leaves its zeros zero."""
    energy = phase_energies(grad, stride, border).clamp_min(1e-30)
    scale = (energy.mean() / energy).sqrt()
    size = grad.shape[2:]
    tiled = scale.repeat(*[-(-length // s) for length, s in zip(size, scale.shape)])  # whole periods, then cut
    return tiled[tuple(slice(0, length) for length in size)]


def equalise_phases(grad: torch.Tensor, stride, border: int = 0) -> torch.Tensor:
    """``grad`` (N, C, *spatial) with each stride phase rescaled to the same mean energy (factors
    from ``phase_factors`` of this map). For display: the pattern goes, the values within a phase
    keep their ratios."""
    return grad * phase_factors(grad, stride, border).to(grad.dtype)


class PhaseEqualised(nn.Module):
    """``model`` whose input gradient is multiplied by a fixed factor map (its forward is the
    model's, bit for bit). Build it with ``phase_equalised``."""

    def __init__(self, model: nn.Module, factors: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("factors", factors)

    def forward(self, x):
        return self.model(apply(ScaleGrad, x, self.factors.to(x.dtype)))


def input_period(model: nn.Module, example_input: torch.Tensor) -> tuple:
    """The period of the stride pattern at the model's input: per spatial dim, the largest
    over the strided convolution calls ``report`` lists of (how much the input was downsampled
    before the call) x (the call's stride), at most the input's size."""
    from ._report import report  # report imports the modules; this file is imported with them

    size = tuple(example_input.shape[2:])
    period = [1] * len(size)
    for row in report(model, example_input):
        if not row.op.startswith("conv") or row.op.startswith("conv_transpose") or len(row.stride) != len(size):
            continue
        for d, (length, counted, s) in enumerate(zip(size, row.input_size, row.stride)):
            period[d] = max(period[d], min(length, round(length / max(counted, 1)) * s))
    return tuple(period)


def phase_equalised(model: nn.Module, x: torch.Tensor, objective: Optional[Callable] = None, stride=None,
                    border: int = 0) -> PhaseEqualised:
    """``model`` wrapped so that its input gradient is phase-equalised, with factors measured once
    on the calibration inputs ``x``: the plain gradient of ``objective(model(x))`` (default: the
    sum of the outputs; for a classifier, e.g. ``lambda out: out.gather(1, labels[:, None]).sum()``).
    ``stride`` is the pattern's period at the input (an int or one per dim); by default
    ``input_period(model, x)``."""
    if stride is None:
        stride = input_period(model, x)
    stride = int_tuple_exact(stride, x.dim() - 2, "stride")
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out.sum() if objective is None else objective(out), x)
    factors = phase_factors(grad, stride, border)
    return PhaseEqualised(model, factors.to(x.dtype).reshape((1, 1) + tuple(factors.shape)).clone())

