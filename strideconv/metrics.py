"""Checkerboard metrics: how much of a map's energy follows the stride's grid.

Run them on your own maps (input gradients, generated images, decoder outputs) to see whether
a stride pattern is there. Definitions (docs/design.md, "Checkerboard metrics"), for a map
``x`` of shape ``(N, C, *spatial)`` and a stride ``s`` per spatial dim:

* ``phase_energy_ratio``: group the positions at least ``border`` away from every border by
  their phase ``(i_1 mod s_1, ..., i_d mod s_d)``; ``E_r`` is the mean of ``x**2`` over group
  ``r`` (and over N and C); the ratio is ``max_r E_r / min_r E_r``. White noise: 1. The input
  gradient of a plain kernel-3 stride-2 convolution at random weights: about 4 (the counts
  4, 2, 2, 1); corrected with ``"position"``: about 1.
* ``harmonic_energy_ratio``: ``P = |DFT(x - mean)|**2`` averaged over N and C (the mean is
  each map's own); the stride harmonics are the frequencies ``m_d * L_d / s_d``
  (``0 <= m_d < s_d``, not all zero), after cropping each dim to a multiple of ``s_d``; the
  ratio is the mean of ``P`` at the harmonics over its mean at all non-DC frequencies. White
  noise: about 1; a checkerboard: large.
* The two ratios see different patterns: the phase ratio sees a pattern in the *energy* (a
  variance modulated per phase, as in the input gradient of a strided convolution with random
  upstream gradients, whose harmonic ratio stays about 1); the harmonic ratio sees an additive
  pattern (a checkerboard in the mean, as in generated images).
* ``azimuthal_spectrum``: ``P`` of 2-D maps averaged over rings ``floor(|w|) = r`` of the
  centred spectrum (for plots, and to compare generated images with real ones).
"""

from __future__ import annotations

import math

import torch

from ._arguments import int_tuple_exact

__all__ = ["azimuthal_spectrum", "harmonic_energy_ratio", "phase_energies", "phase_energy_ratio"]


def _map_and_stride(x: torch.Tensor, stride, name: str):
    if not isinstance(x, torch.Tensor) or x.dim() < 3:
        raise ValueError(f"{name} needs a tensor (N, C, *spatial) with at least one spatial dim, got "
                         f"{type(x).__name__ if not isinstance(x, torch.Tensor) else tuple(x.shape)}")
    nd = x.dim() - 2
    stride = int_tuple_exact(stride, nd, "stride")
    if min(stride) < 1:
        raise ValueError(f"stride must be positive, got {stride}")
    return x.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32), stride


def phase_energies(x: torch.Tensor, stride, border: int = 0) -> torch.Tensor:
    """``E_r``, the mean of ``x**2`` over each stride phase ``r`` (a tensor of shape ``stride``),
    over the positions at least ``border`` away from every border."""
    x, stride = _map_and_stride(x, stride, "phase_energies")
    if isinstance(border, bool) or not isinstance(border, int) or border < 0:
        raise ValueError(f"border must be a non-negative int, got {border!r}")
    nd = len(stride)
    energy = x.square()
    out = torch.empty(stride, dtype=torch.float64)
    for phase in torch.cartesian_prod(*[torch.arange(s) for s in stride]).reshape(-1, nd).tolist():
        index = [slice(None), slice(None)]
        for r, s, L in zip(phase, stride, x.shape[2:]):
            first = border + (r - border) % s  # the first position >= border with this phase
            index.append(slice(first, L - border, s))
        group = energy[tuple(index)]
        if group.numel() == 0:
            raise ValueError(
                f"no position of phase {tuple(phase)} lies {border} or more from the borders of a map of "
                f"spatial size {tuple(x.shape[2:])}: use a smaller border or a larger map"
            )
        out[tuple(phase)] = group.mean().double()
    return out


def phase_energy_ratio(x: torch.Tensor, stride, border: int = 0) -> float:
    """``max_r E_r / min_r E_r`` over the stride phases (see the module docstring): 1 for a map
    without a stride pattern; ``inf`` if some phase holds only zeros."""
    e = phase_energies(x, stride, border)
    low = e.min().item()
    return math.inf if low == 0 else e.max().item() / low


def _power_spectrum(x: torch.Tensor, nd: int) -> torch.Tensor:
    """``|DFT(x - mean)|**2`` over the spatial dims, averaged over N and C."""
    dims = tuple(range(2, 2 + nd))
    centred = x - x.mean(dim=dims, keepdim=True)
    return torch.fft.fftn(centred, dim=dims).abs().square().mean(dim=(0, 1))


def harmonic_energy_ratio(x: torch.Tensor, stride) -> float:
    """Mean power at the stride harmonics over the mean power at all non-DC frequencies (see the
    module docstring); each dim is first cropped to a multiple of its stride."""
    x, stride = _map_and_stride(x, stride, "harmonic_energy_ratio")
    if max(stride) == 1:
        raise ValueError("a stride of 1 on every dim has no harmonic frequencies")
    nd = len(stride)
    crop = tuple(L - L % s for L, s in zip(x.shape[2:], stride))
    if min(crop) == 0:
        raise ValueError(f"the map ({tuple(x.shape[2:])}) is smaller than the stride {stride}")
    x = x[(slice(None), slice(None)) + tuple(slice(0, c) for c in crop)]
    power = _power_spectrum(x, nd)
    harmonics = torch.zeros(crop, dtype=torch.bool)
    steps = [torch.arange(s) * (L // s) for s, L in zip(stride, crop)]
    harmonics[tuple(torch.meshgrid(*steps, indexing="ij"))] = True
    harmonics[(0,) * nd] = False
    non_dc = torch.ones(crop, dtype=torch.bool)
    non_dc[(0,) * nd] = False
    total = power[non_dc].mean().item()
    if total == 0:
        return math.nan  # a constant map: no energy to compare
    return power[harmonics].mean().item() / total


def azimuthal_spectrum(x: torch.Tensor) -> torch.Tensor:
    """The power spectrum of 2-D maps ``(N, C, H, W)``, averaged over N, C and over rings of
    integer radius ``floor(|w|)`` (frequencies in cycles per map, centred): entry ``r`` is the
    mean power at ``r <= |w| < r + 1``, from ``r = 0`` (DC) to the largest complete ring."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"azimuthal_spectrum needs a tensor (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    x = x.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    H, W = x.shape[2:]
    power = _power_spectrum(x, 2).double()
    fy = torch.fft.fftfreq(H, 1 / H).double()
    fx = torch.fft.fftfreq(W, 1 / W).double()
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2).floor().long()
    rings = min(H, W) // 2 + 1  # rings that lie inside the spectrum entirely
    keep = radius < rings
    sums = torch.zeros(rings, dtype=torch.float64).index_add_(0, radius[keep], power[keep])
    counts = torch.zeros(rings, dtype=torch.float64).index_add_(0, radius[keep], torch.ones_like(power[keep]))
    return sums / counts
