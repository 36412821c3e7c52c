"""The network the attribution and image studies look at, and the gradients they compare.

A CNN with three 3x3/2 convolutions (28 -> 14 -> 7 -> 4 on 28x28 digits), trained plainly
with Adam. Every gradient variant uses the same trained weights, so every forward pass is the
same; only the gradient that reaches the image differs:

- plain: autograd's gradient;
- position, kernel (and others): `strideconv.convert`-ed copies (corrected input gradients);
- phase-equalised: the post-hoc baseline, no strideconv. The plain gradient at the image is
  multiplied by one fixed factor per stride-4 phase (16 of them), chosen on training images so
  that every phase carries the same mean energy. It removes the stride pattern by construction,
  as any per-phase rescaling does, so a pattern metric cannot tell it from a correction; only task
  measures can.

Every variant is an `nn.Module`, so any attribution library (Captum) runs on it unchanged.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

import strideconv
from strideconv.metrics import harmonic_energy_ratio, phase_energy_ratio

EQUALISED_STRIDE = 4
# label: (correction, power); None: no strideconv
GRADIENTS = {"plain": None, "position": ("position", 0.5), "kernel": ("kernel", 0.5)}


def strided_cnn(size: int = 28) -> nn.Module:
    side = size
    for _ in range(3):
        side = (side - 1) // 2 + 1
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * side * side, 10),
    )


def pooled_cnn() -> nn.Module:
    """The same three 3x3/2 convolutions, then a 3x3 convolution and a global max over positions:
    for canvases where the digit may be anywhere."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(), nn.Conv2d(64, 128, 3, 1, 1), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, batch: int = 64,
          lr: float = 1e-3) -> nn.Module:
    """Adam on cross-entropy; the seed sets the initial weights and the batch order."""
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def corrected(model: nn.Module, correction: str, power: float) -> nn.Module:
    """The trained network with its convolutions' input gradient corrected (same forward)."""
    return strideconv.convert(copy.deepcopy(model), correction=correction, power=power)


def phase_equalised(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    stride: int = EQUALISED_STRIDE) -> strideconv.PhaseEqualised:
    """The post-hoc baseline (strideconv.phase_equalised): factors chosen so that the plain
    gradients of the true-class logits of `x` have the same mean energy in every stride phase
    (interior positions, border 2)."""
    return strideconv.phase_equalised(model, x, lambda out: out.gather(1, y[:, None]).sum(), stride, border=2)


def variants(model: nn.Module, calibration_x: torch.Tensor, calibration_y: torch.Tensor,
             names=("plain", "position", "kernel", "phase-equalised")) -> dict:
    """The gradient variants of one trained network, by label."""
    out = {}
    for name in names:
        if name == "phase-equalised":
            out[name] = phase_equalised(model, calibration_x, calibration_y)
        elif GRADIENTS.get(name) is None:
            out[name] = model
        else:
            out[name] = corrected(model, *GRADIENTS[name])
    return out


def pattern(t: torch.Tensor) -> dict:
    """The stride pattern of a map: stride-2 and stride-4 phase energy ratios (border 2) and the
    stride-2 harmonic energy ratio."""
    return dict(phase2=phase_energy_ratio(t, 2, border=2), phase4=phase_energy_ratio(t, 4, border=2),
                harmonic2=harmonic_energy_ratio(t, 2))
