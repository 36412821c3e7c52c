"""Count maps and correction factors against references built from the definitions."""

import math

import random

import pytest
import torch

import strideconv
from reference import count_map_by_autograd, interior_counts, tap_factors


def random_geometries(n, nd, seed):
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        k = tuple(rng.randint(1, 6) for _ in range(nd))
        s = tuple(rng.randint(1, 7) for _ in range(nd))  # often larger than k: zero counts
        p = tuple(rng.randint(0, 3) for _ in range(nd))
        q = tuple(rng.randint(1, 3) for _ in range(nd))
        size = tuple(rng.randint(1, 20) for _ in range(nd))
        if all(L + 2 * pp >= qq * (kk - 1) + 1 for L, kk, pp, qq in zip(size, k, p, q)):
            out.append((size, k, s, p, q))
    return out


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_count_map_equals_all_ones_conv_gradient(nd):
    geometries = random_geometries(60 if nd < 3 else 20, nd, seed=nd)
    assert any(max(s) > max(k) for _, k, s, _, _ in geometries)  # stride > kernel is covered
    for size, k, s, p, q in geometries:
        expected = count_map_by_autograd(size, k, s, p, q).long()
        assert torch.equal(strideconv.count_map(size, k, s, p, q), expected), (size, k, s, p, q)


def test_count_map_documented_cells():
    # kernel 3, stride 2: the repeating cell [4 2; 2 1] (here with padding 1: [1 2; 2 4])
    c = strideconv.count_map((64, 64), 3, stride=2, padding=1)
    assert torch.equal(c[10:12, 10:12], torch.tensor([[1, 2], [2, 4]]))
    # kernel = stride: every pixel is touched once
    assert torch.equal(strideconv.count_map((224, 224), 16, 16), torch.ones(224, 224, dtype=torch.long))
    # stride 1, large image: the interior sees all k*k taps, borders fewer
    c = strideconv.count_map((50, 50), 3)
    assert c[25, 25] == 9 and c[0, 0] == 1 and c[0, 25] == 3


def test_stride_larger_than_kernel_has_zero_counts():
    c = strideconv.count_map((12, 12), 2, stride=3)
    assert (c == 0).any() and set(c.unique().tolist()) == {0, 1}
    f = strideconv.correction_factors((12, 12), 2, stride=3)
    assert torch.isfinite(f.position).all() and (f.position[c == 0] == 0).all()


@pytest.mark.parametrize("power", [0.5, 1.0, 0.3, 2.0])
def test_factors_match_definitions(power):
    for size, k, s, p, q in random_geometries(40, 2, seed=7):
        f = strideconv.correction_factors(size, k, s, p, q, power=power)
        C = count_map_by_autograd(size, k, s, p, q)
        K = k[0] * k[1]
        expected = torch.where(C > 0, (K / C.clamp(min=1)) ** power, torch.zeros_like(C))
        torch.testing.assert_close(f.position, expected, rtol=1e-12, atol=0)
        torch.testing.assert_close(f.kernel, tap_factors(k, s, q, power), rtol=1e-12, atol=0)
        if (C == 0).all():  # nothing is touched: alpha is undefined, only finite
            assert math.isfinite(f.map)
            continue
        alpha = K**power / (C ** (2 * power)).mean().sqrt()
        assert f.map == pytest.approx(alpha.item(), rel=1e-12)


def test_kernel_3_stride_2_tap_factors_power_1():
    taps = strideconv.correction_factors((16, 16), 3, 2, 1, power=1.0).kernel
    centre = taps[1, 1]
    assert taps[0, 0] / centre == pytest.approx(0.25)
    assert taps[0, 1] / centre == pytest.approx(0.5) and taps[1, 0] / centre == pytest.approx(0.5)
    assert centre == pytest.approx(9.0)  # alone in its class on both axes: K / n = 9 / 1


def test_stride_1_kernel_factors_are_one():
    for k, q in [(3, 1), (5, 2), (7, 1)]:
        taps = strideconv.correction_factors((30, 30), k, 1, k // 2, q).kernel
        assert torch.equal(taps, torch.ones(k, k, dtype=torch.float64))


def test_compiled_border_ratio_matches_definition(device):
    """scale_border on an all-ones tensor reveals the C++ ratio (n / C)^g at every position."""
    for size, k, s, p, q in random_geometries(40, 2, seed=11):
        for power in (0.5, 1.0, 0.7):
            ones = torch.ones((2, 3) + size, dtype=torch.float64, device=device)
            out = torch.ops.strideconv.scale_border(ones, list(k), list(s), list(p), list(q), power)
            C = count_map_by_autograd(size, k, s, p, q)
            n = interior_counts(size, k, s, p, q)
            expected = (n / C.clamp(min=1)) ** power
            touched = (C > 0).expand_as(out)  # untouched positions have a zero gradient anyway
            torch.testing.assert_close(out.cpu()[touched], expected.expand_as(out)[touched], rtol=1e-12, atol=0)
            assert torch.isfinite(out).all()


def test_compiled_tap_factors_match_definition(device):
    for size, k, s, p, q in random_geometries(30, 2, seed=13):
        w = torch.ones((4, 2) + k, dtype=torch.float64, device=device)
        for correction in ("kernel", "position"):
            out = torch.ops.strideconv.scale_weight(w, list(size), list(s), list(p), list(q), correction, 0.5)
            torch.testing.assert_close(out.cpu(), tap_factors(k, s, q, 0.5).expand_as(out), rtol=1e-12, atol=0)
        alpha = strideconv.correction_factors(size, k, s, p, q, 0.5).map
        out = torch.ops.strideconv.scale_weight(w, list(size), list(s), list(p), list(q), "map", 0.5)
        torch.testing.assert_close(out.cpu(), torch.full_like(out.cpu(), alpha), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kernel, stride, padding, dilation, power", [
    (3, 2, 1, 1, 0.5), (4, 2, 1, 1, 1.0), (5, 3, 2, 2, 0.5), (2, 2, 0, 1, 0.75), (7, 2, 3, 1, 0.5), (1, 2, 0, 1, 0.5)])
def test_traced_factor_maps_are_the_definitions(kernel, stride, padding, dilation, power):
    """The factor maps of the compiled path equal the definitions' (count maps from the windows,
    strideconv.factors) where a window reaches, for a strided convolution's input and a transposed
    convolution's output, at sizes where the last window stops short of the border."""
    from strideconv._traced import _factor_map

    size = (11, 14)
    ks, ss, ps, ds = (kernel, kernel), (stride, stride), (padding, padding), (dilation, dilation)
    windows = [(n + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1 for n in size]
    built = _factor_map(size, windows, ks, ss, ps, ds, power, torch.float64, "cpu")
    reference = strideconv.correction_factors(size, kernel, stride, padding, dilation, power).position
    torch.testing.assert_close(built.where(reference > 0, torch.zeros(())), reference, rtol=1e-15, atol=0)
    out = [(n - 1) * stride - 2 * padding + dilation * (kernel - 1) + 1 for n in size]
    built = _factor_map(out, size, ks, ss, ps, ds, power, torch.float64, "cpu")
    reference = strideconv.transposed_factors(size, kernel, stride, padding, 0, dilation, power).position
    torch.testing.assert_close(built.where(reference > 0, torch.zeros(())), reference, rtol=1e-15, atol=0)
