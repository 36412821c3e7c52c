"""The post-hoc phase equaliser (strideconv.equalise): against phase energies computed by hand
from plain slicing, on gradients with a known stride pattern and on a model's input gradient."""

import pytest
import torch
from torch import nn

import strideconv
from strideconv.equalise import input_period, phase_factors


def energies_by_hand(g, stride, border):
    """Mean of g**2 over (N, C) and the interior positions of each phase (i mod s, j mod s)."""
    H, W = g.shape[-2:]
    out = {}
    for i in range(H):
        for j in range(W):
            if border <= i < H - border and border <= j < W - border:
                out.setdefault((i % stride[0], j % stride[1]), []).append(g[..., i, j].square().mean().item())
    return {k: sum(v) / len(v) for k, v in out.items()}


def patterned(shape, stride, seed=0):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    scale = torch.rand(stride, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64) * 4 + 0.25
    return g * scale.repeat(shape[-2] // stride[0] + 1, shape[-1] // stride[1] + 1)[:shape[-2], :shape[-1]]


@pytest.mark.parametrize("stride, border", [((2, 2), 0), ((4, 4), 2), ((2, 3), 1)])
def test_factors_and_equalised_map_against_hand_computed_energies(stride, border):
    g = patterned((3, 2, 13, 17), stride)
    e = energies_by_hand(g, stride, border)
    mean = sum(e.values()) / len(e)
    f = phase_factors(g, stride, border)
    assert f.shape == g.shape[2:]
    for i in range(13):
        for j in range(17):
            assert f[i, j].item() == pytest.approx((mean / e[(i % stride[0], j % stride[1])]) ** 0.5, rel=1e-12)
    out = strideconv.equalise_phases(g, stride, border)
    after = energies_by_hand(out, stride, border)
    assert max(after.values()) / min(after.values()) == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(torch.sign(out), torch.sign(g))  # positive factors: signs kept
    assert strideconv.metrics.phase_energy_ratio(g, stride, border) > 1.5


def strided_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 8, 3, 2, 1), nn.ReLU(), nn.Flatten(),
                         nn.LazyLinear(3)).double()


def test_input_period_is_found_from_the_report():
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    assert input_period(strided_net(), x) == (4, 4)  # two stride-2 layers
    assert input_period(nn.Conv2d(3, 8, 8, 8), torch.randn(1, 3, 32, 32)) == (8, 8)
    assert input_period(nn.Conv2d(3, 8, 3, 1, 1), torch.randn(1, 3, 32, 32)) == (1, 1)


def test_wrapped_model_keeps_the_forward_and_equalises_its_input_gradient():
    model = strided_net()
    x = torch.randn(8, 1, 16, 16, dtype=torch.float64)
    labels = torch.randint(3, (8,))
    model(x)  # materialise the lazy layer
    objective = lambda out: out.gather(1, labels[:, None]).sum()  # noqa: E731
    wrapped = strideconv.phase_equalised(model, x, objective, border=1)
    assert wrapped.factors.shape == (1, 1, 16, 16)
    assert torch.equal(wrapped(x), model(x))
    xs = x.clone().requires_grad_()
    (plain,) = torch.autograd.grad(objective(model(xs)), xs)
    (grad,) = torch.autograd.grad(objective(wrapped(xs)), xs)
    torch.testing.assert_close(grad, plain * phase_factors(plain, (4, 4), 1))  # the factors of the calibration map
    e = energies_by_hand(grad, (4, 4), 1)
    assert max(e.values()) / min(e.values()) == pytest.approx(1.0, abs=1e-9)
    assert strideconv.metrics.phase_energy_ratio(plain, 4, border=1) > 1.2


def test_bad_stride_is_a_value_error():
    with pytest.raises(ValueError):
        strideconv.equalise_phases(torch.randn(1, 1, 8, 8), (2, 2, 2))
    with pytest.raises(ValueError):
        strideconv.equalise_phases(torch.randn(8, 8), 2)
