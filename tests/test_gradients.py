"""The forward equals F.conv2d; the backward equals the corrections of docs/design.md, for every correction."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import strideconv
from helpers import operands
from reference import expected_grad_input
from strideconv.functional import conv2d

CORRECTIONS = ["none", "map", "kernel", "position"]

# (in, out, kernel, stride, padding, dilation, groups, size)
CASES = [
    (3, 4, 3, 2, 1, 1, 1, (11, 9)),
    (4, 6, 3, 2, 0, 1, 2, (10, 10)),
    (2, 3, 4, 4, 0, 1, 1, (16, 12)),
    (3, 2, 2, 3, 0, 1, 1, (13, 13)),  # stride > kernel: zero counts
    (2, 2, (3, 5), (2, 3), (1, 2), (2, 1), 1, (12, 15)),
    (3, 3, 1, 2, 0, 1, 3, (7, 8)),
    (2, 4, 3, 1, 1, 1, 1, (6, 6)),
    (2, 2, 7, 2, 3, 1, 1, (9, 9)),  # image barely larger than the kernel
    # Past the 32 positions / taps per side that the kernels keep in tables:
    (1, 2, 3, 2, 1, (20, 1), 1, (90, 7)),  # border band 40 wide
    (1, 2, (2, 37), (1, 2), 0, 1, 1, (3, 80)),  # 37 taps on one axis
]


def make(case, device, dtype=torch.float64, bias=True, seed=0):
    cin, cout, k, s, p, q, g, size = case
    x, w, b = operands(cin, cout, k, size, g, device, dtype, bias, seed)
    return x, w, b, dict(stride=s, padding=p, dilation=q, groups=g)


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize("correction", CORRECTIONS)
@pytest.mark.parametrize("case", CASES)
def test_forward_is_bit_identical(case, correction, device):
    for dtype in (torch.float32, torch.float64):
        x, w, b, kw = make(case, device, dtype)
        assert torch.equal(conv2d(x, w, b, **kw, correction=correction), F.conv2d(x, w, b, **kw))


@pytest.mark.parametrize("power", [0.5, 1.0])
@pytest.mark.parametrize("correction", CORRECTIONS)
@pytest.mark.parametrize("case", CASES)
def test_backward_matches_reference(case, correction, power, device):
    x, w, b, kw = make(case, device)
    x.requires_grad_()
    w.requires_grad_()
    b.requires_grad_()
    y = conv2d(x, w, b, **kw, correction=correction, power=power)
    grad_out = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), grad_out)
    # grad_weight and grad_bias are the true ones
    y0 = F.conv2d(x, w, b, **kw)
    _, gw0, gb0 = torch.autograd.grad(y0, (x, w, b), grad_out)
    torch.testing.assert_close(gw, gw0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gb, gb0, rtol=1e-12, atol=1e-12)
    expected = expected_grad_input(
        correction, power, x.cpu(), w.cpu(), grad_out.cpu(), pair(kw["stride"]), pair(kw["padding"]),
        pair(kw["dilation"]), kw["groups"],
    )
    torch.testing.assert_close(gx.cpu(), expected, rtol=1e-10, atol=1e-10)
    assert torch.isfinite(gx).all()


@pytest.mark.parametrize("case", CASES[:4])
def test_gradcheck_and_gradgradcheck_correction_none(case, device):
    x, w, b, kw = make(case, device)
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_())
    fn = lambda x, w, b: conv2d(x, w, b, **kw, correction="none")  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("correction", CORRECTIONS)
def test_weight_and_bias_gradients_gradcheck(correction, device):
    """With an input that needs no grad, the weight and bias gradients are the true ones."""
    x, w, b, kw = make(CASES[0], device)
    fn = lambda w, b: conv2d(x, w, b, **kw, correction=correction)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (w.requires_grad_(), b.requires_grad_()))


class _RecordConvBackward(TorchDispatchMode):
    """Records the output masks of every aten.convolution_backward call."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution_backward.default:
            self.masks.append(list(args[-1]))
        return func(*args, **(kwargs or {}))


def test_first_layer_skips_grad_input():
    """An input that needs no grad: convolution_backward is asked for no grad_input, and for no
    grad_bias without a bias."""
    x, w, b, kw = make(CASES[0], "cpu")
    with _RecordConvBackward() as rec:
        conv2d(x, w.requires_grad_(), b, **kw).sum().backward()
        conv2d(x, w, None, **kw).sum().backward()
    assert rec.masks == [[False, True, False], [False, True, False]]


def test_kernel_equals_position_in_the_interior(device):
    case = (3, 4, 3, 2, 1, 1, 1, (20, 20))
    x, w, b, kw = make(case, device)
    grads = {}
    for correction in ("kernel", "position"):
        xx = x.clone().requires_grad_()
        y = conv2d(xx, w, b, **kw, correction=correction)
        (grads[correction],) = torch.autograd.grad(y, xx, torch.ones_like(y))
    interior = (slice(None), slice(None), slice(0, 19), slice(0, 19))
    # equal up to rounding: cuDNN may pick different dgrad algorithms for the two calls
    torch.testing.assert_close(grads["kernel"][interior], grads["position"][interior], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(grads["kernel"], grads["position"])  # the last row/column differ


@pytest.mark.parametrize("correction", CORRECTIONS)
def test_zero_counts_give_zero_gradient_not_nan(correction, device):
    x = torch.randn(2, 2, 13, 13, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(3, 2, 2, 2, dtype=torch.float64, device=device)
    y = conv2d(x, w, stride=3, correction=correction)
    (gx,) = torch.autograd.grad(y, x, torch.randn_like(y))
    C = strideconv.count_map((13, 13), 2, 3).to(device)
    assert torch.isfinite(gx).all()
    assert (gx[:, :, C == 0] == 0).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    k=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    s=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    p=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    q=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    extra=st.tuples(st.integers(0, 9), st.integers(0, 9)),
    groups=st.sampled_from([1, 2]),
    correction=st.sampled_from(CORRECTIONS),
    power=st.floats(0.1, 2.0),
    channels_last=st.booleans(),
)
def test_property_random_configurations(k, s, p, q, extra, groups, correction, power, channels_last):
    # the smallest valid input plus a random margin
    size = tuple(max(1, qq * (kk - 1) + 1 - 2 * pp) + e for kk, pp, qq, e in zip(k, p, q, extra))
    case = (2 * groups, 2 * groups, k, s, p, q, groups, size)
    x, w, b, kw = make(case, "cpu")
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    y = conv2d(x, w, b, **kw, correction=correction, power=power)
    assert torch.equal(y, F.conv2d(x, w, b, **kw))
    grad_out = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, grad_out)
    expected = expected_grad_input(correction, power, x, w, grad_out, s, p, q, groups)
    torch.testing.assert_close(gx, expected, rtol=1e-10, atol=1e-10)


def test_input_gradient_variance_is_restored():
    """The gradient-variance experiment (README, benchmarks/run.py) at small scale: one strided layer, c = 3, k = 4, stride 2, image 32.

    Independent draws run side by side as groups. Kaiming predicts Var[dx] = k*k*c = 48; plain
    convolution gives about 48 / (k*k / (k/s)^2) = 12 (less at the borders); "position" gives 48
    everywhere, and "map" gives 48 on average.
    """
    c, k, s, size, draws = 3, 4, 2, 32, 400
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(1, draws * c, size, size, generator=gen, requires_grad=True)
    w = torch.randn(draws * c, c, k, k, generator=gen)
    results = {}
    for correction in ("none", "position", "map"):
        y = conv2d(x, w, stride=s, groups=draws, correction=correction)
        grad_out = torch.randn(y.shape, generator=gen)
        (gx,) = torch.autograd.grad(y, x, grad_out)
        per_position = gx.reshape(draws, c, size, size).var(dim=(0, 1))
        results[correction] = per_position
    n = k * k * c
    assert results["none"].mean().item() == pytest.approx(n * 0.25 * (1 - 2 / size) ** 2, rel=0.1)
    assert results["position"].mean().item() == pytest.approx(n, rel=0.05)
    assert results["map"].mean().item() == pytest.approx(n, rel=0.05)
    # flat: no checkerboard and no border deficit left under "position"
    assert results["position"].min().item() > 0.75 * n and results["position"].max().item() < 1.25 * n
    assert results["none"].min().item() < 0.3 * n


def test_power_changes_only_input_gradient_scale():
    x, w, b, kw = make(CASES[0], "cpu")
    x.requires_grad_()
    g = {}
    for power in (0.5, 1.0):
        y = conv2d(x, w, b, **kw, power=power)
        (g[power],) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert not torch.allclose(g[0.5], g[1.0])
    assert math.isfinite(g[1.0].abs().max().item())


# ----- double backward ------------------------------------------------------------------------

@pytest.mark.parametrize("power", [0.5, 1.0])
@pytest.mark.parametrize("correction", strideconv.CORRECTIONS)
def test_gradgradcheck_every_correction(correction, power, device):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 8, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    w = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    b = torch.randn(4, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    fn = lambda x, w, b: conv2d(x, w, b, 2, 1, correction=correction, power=power)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def factor_input(x, factor):
    """Plain ops only: forward is x, the gradient reaching x is multiplied by ``factor``
    (a constant), at any order of differentiation."""
    return x * factor - (x * factor).detach() + x.detach()


@pytest.mark.parametrize("correction", ["position", "map"])
def test_gradient_penalty_step_matches_plain_pytorch_reference(correction, device):
    """WGAN-GP / R1: the norm of the input gradient in the loss, one optimiser step."""
    torch.manual_seed(0)
    layers = [(3, 8, 3, 2, 1), (8, 8, 4, 2, 1)]
    weights = [(torch.randn(o, i, k, k, dtype=torch.float64, device=device) * 0.3).requires_grad_()
               for i, o, k, _, _ in layers]
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, device=device, requires_grad=True)

    def critic(x, ours):
        h = x
        for w, (_, _, k, s, p) in zip(weights, layers):
            if ours:
                h = conv2d(h, w, None, s, p, correction=correction)
            else:
                f = strideconv.correction_factors(h.shape[2:], k, s, p)
                factor = f.position if correction == "position" else torch.full(f.counts.shape, f.map, dtype=torch.float64)
                h = F.conv2d(factor_input(h, factor.to(h)), w, None, s, p)
            h = F.softplus(h)
        return h.mean(dim=(1, 2, 3))

    results = []
    for ours in (True, False):
        out = critic(x, ours)
        (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        loss = out.mean() + 10 * gx.flatten(1).norm(dim=1).sub(1).square().mean()
        results.append(torch.autograd.grad(loss, weights))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
