"""Checkerboard metrics (strideconv.metrics) on hand-built maps whose values are known."""

import math

import pytest
import torch
import torch.nn.functional as F

import strideconv
from strideconv.metrics import azimuthal_spectrum, harmonic_energy_ratio, phase_energies, phase_energy_ratio


def tiled(cell, reps):
    """A (1, 1, *spatial) map repeating ``cell``."""
    cell = torch.as_tensor(cell, dtype=torch.float64)
    return cell.repeat(*reps)[None, None]


def test_phase_energies_of_a_tiled_count_cell():
    x = tiled([[2.0, math.sqrt(2)], [math.sqrt(2), 1.0]], (5, 6))  # energies 4 2; 2 1
    e = phase_energies(x, 2)
    torch.testing.assert_close(e, torch.tensor([[4.0, 2.0], [2.0, 1.0]], dtype=torch.float64))
    assert phase_energy_ratio(x, 2) == pytest.approx(4.0)
    assert phase_energy_ratio(x, (2, 2), border=3) == pytest.approx(4.0)  # odd border: phases kept aligned


def test_phase_ratio_odd_sizes_border_and_3d():
    x = tiled([[3.0, 1.0, 1.0]], (7, 4))[..., :11]  # width 11: not a multiple of 3
    assert phase_energy_ratio(x, (1, 3)) == pytest.approx(9.0)
    x3 = tiled([[[2.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]], (3, 3, 3))
    assert phase_energy_ratio(x3, 2) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="border"):
        phase_energy_ratio(torch.randn(1, 1, 4, 4), 2, border=2)


def test_white_noise_and_a_stride_one_map_are_near_one():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(64, 8, 32, 32, generator=g)
    assert phase_energy_ratio(noise, 2) == pytest.approx(1.0, abs=0.03)
    # 3 harmonic bins, each averaged over 512 maps (the Nyquist ones are real: 1 degree of freedom)
    assert harmonic_energy_ratio(noise, 2) == pytest.approx(1.0, abs=0.2)
    # the input gradient of a stride-1 convolution: every position has the same count inside
    x = torch.randn(8, 4, 32, 32, generator=g, requires_grad=True)
    w = torch.randn(4, 4, 3, 3, generator=g)
    y = F.conv2d(x, w, padding=1)
    (grad,) = torch.autograd.grad(y, x, torch.randn(y.shape, generator=g))
    assert phase_energy_ratio(grad, 2, border=2) == pytest.approx(1.0, abs=0.05)
    assert harmonic_energy_ratio(grad, 2) < 2


def test_the_strided_input_gradient_plain_and_corrected():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 32, 32, 32, generator=g, requires_grad=True)
    w = torch.randn(32, 32, 3, 3, generator=g)  # many weights per tap: little sampling noise
    ratios = {}
    for correction in ("none", "position"):
        y = strideconv.functional.conv2d(x, w, stride=2, padding=1, correction=correction)
        (grad,) = torch.autograd.grad(y, x, torch.randn(y.shape, generator=g))
        ratios[correction] = phase_energy_ratio(grad, 2, border=2)
        # the pattern is in the variance, not the mean: no peak at the harmonics
        assert harmonic_energy_ratio(grad, 2) < 1.5
    assert ratios["none"] == pytest.approx(4.0, rel=0.15)
    assert ratios["position"] == pytest.approx(1.0, abs=0.1)


def test_harmonic_ratio_of_a_pure_checkerboard():
    H, W = 8, 10
    board = tiled([[1.0, -1.0], [-1.0, 1.0]], (H // 2, W // 2))
    # all the power sits at (H/2, W/2), one of the 3 harmonics, among H*W - 1 non-DC bins
    assert harmonic_energy_ratio(board, 2) == pytest.approx((H * W - 1) / 3)
    # odd sizes are cropped to a multiple of the stride first
    assert harmonic_energy_ratio(tiled([[1.0, -1.0], [-1.0, 1.0]], (5, 6))[..., :9, :11], 2) == pytest.approx(
        (8 * 10 - 1) / 3)
    with pytest.raises(ValueError, match="stride of 1"):
        harmonic_energy_ratio(board, 1)


def test_azimuthal_spectrum_of_a_single_frequency():
    H = W = 16
    i = torch.arange(H, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * 3 * i / W)[None, :].expand(H, W)[None, None]  # 3 cycles along x
    spectrum = azimuthal_spectrum(wave)
    assert spectrum.shape == (H // 2 + 1,)
    assert int(spectrum.argmax()) == 3
    assert spectrum[torch.arange(spectrum.numel()) != 3].abs().max() < 1e-12
    with pytest.raises(ValueError):
        azimuthal_spectrum(torch.randn(4, 4))


def test_argument_forms_and_refusals():
    import numpy as np

    x = tiled([[2.0, 1.0], [1.0, 1.0]], (4, 4))
    for stride in (2, (2,), [2, 2], np.int64(2), (np.int32(2), 2)):
        assert phase_energy_ratio(x, stride) == pytest.approx(4.0)
        assert harmonic_energy_ratio(x, stride) > 1
    for bad in [dict(stride=0), dict(stride=(2, 2, 2)), dict(stride=2.0), dict(border=-1), dict(border=1.5)]:
        with pytest.raises((ValueError, TypeError)):
            phase_energy_ratio(x, **{"stride": 2} | bad)
    with pytest.raises(ValueError):
        phase_energy_ratio(torch.zeros(4, 4), 2)  # no (N, C) dims
