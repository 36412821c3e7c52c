"""Reliability: edge shapes and values, the errors torch.nn.Conv2d gives, soak and threads,
indexing past 2^31 elements."""

import resource
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import strideconv
from strideconv.functional import conv2d
from helpers import needs_cuda, same_error
from reference import expected_grad_input


# ----- edge cases: the result or the error torch.nn.Conv2d gives -------------------------------

def both(cfg, x, g=None, correction="position"):
    """Forward (and backward) of nn.Conv2d and strideconv.Conv2d with the same weights."""
    torch.manual_seed(0)
    plain = nn.Conv2d(**cfg).to(x.device)
    ours = strideconv.Conv2d(**cfg, correction=correction).to(x.device)
    ours.load_state_dict(plain.state_dict())
    out = []
    for m in (plain, ours):
        xi = x.detach().requires_grad_(x.is_floating_point())
        y = m(xi)
        gx = torch.autograd.grad(y, xi, torch.ones_like(y) if g is None else g)[0] if xi.requires_grad else None
        out.append((y, gx))
    return out


EDGE = {
    "empty batch": (dict(in_channels=3, out_channels=4, kernel_size=3, stride=2), torch.randn(0, 3, 9, 9)),
    "1x1 output": (dict(in_channels=3, out_channels=4, kernel_size=3, stride=2), torch.randn(2, 3, 3, 3)),
    "stride > kernel": (dict(in_channels=3, out_channels=4, kernel_size=2, stride=3), torch.randn(2, 3, 10, 10)),
    "input = kernel": (dict(in_channels=3, out_channels=4, kernel_size=5, stride=5), torch.randn(2, 3, 5, 5)),
    "non-contiguous": (dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1),
                       torch.randn(2, 9, 3, 9).transpose(1, 2)),
    "expanded": (dict(in_channels=3, out_channels=4, kernel_size=3, stride=2), torch.randn(1, 3, 9, 9).expand(4, 3, 9, 9)),
    "sliced": (dict(in_channels=3, out_channels=4, kernel_size=3, stride=2), torch.randn(2, 6, 20, 20)[:, ::2, 1::2, ::2]),
}


@pytest.mark.parametrize("name", list(EDGE))
def test_edge_cases_shapes_and_values(name, device):
    cfg, x = EDGE[name]
    (y0, gx0), (y, gx) = both(cfg, x.to(device))
    assert torch.equal(y, y0)
    assert gx.shape == gx0.shape and gx.stride() == gx0.stride()
    assert torch.isfinite(gx).all()
    w = nn.Conv2d(**cfg).weight  # the reference with the same weights
    torch.manual_seed(0)
    w = nn.Conv2d(**cfg).weight.detach().double()
    s, p = cfg.get("stride", 1), cfg.get("padding", 0)
    expected = expected_grad_input("position", 0.5, x.double(), w, torch.ones(y.shape, dtype=torch.float64),
                                   (s, s), (p, p), (1, 1), 1)
    torch.testing.assert_close(gx.double().cpu(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("where", ["input", "grad"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("correction", strideconv.CORRECTIONS)
def test_nan_and_inf_propagate_as_in_nn_conv2d(where, value, correction, device):
    cfg = dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1)
    x = torch.randn(1, 2, 9, 9, device=device)
    g = torch.randn(1, 3, 5, 5, device=device)
    if where == "input":
        x[0, 1, 4, 4] = value
    else:
        g[0, 2, 0, 4] = value
    (y0, gx0), (y, gx) = both(cfg, x, g, correction)
    assert torch.equal(torch.isnan(y), torch.isnan(y0)) and torch.equal(torch.isinf(y), torch.isinf(y0))
    assert torch.equal(torch.isnan(gx), torch.isnan(gx0))
    assert torch.equal(torch.isinf(gx), torch.isinf(gx0))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool])
def test_integer_inputs_same_error(dtype):
    x = torch.ones(1, 3, 8, 8, dtype=dtype)
    same_error(lambda: nn.Conv2d(3, 4, 3)(x), lambda: strideconv.Conv2d(3, 4, 3)(x))


def test_complex_is_a_clear_error():
    x = torch.randn(1, 3, 8, 8, dtype=torch.complex64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.complex64)
    for weight in (w, w.real):
        for correction in strideconv.CORRECTIONS:
            with pytest.raises(ValueError, match="complex convolutions are not supported"):
                conv2d(x, weight, stride=2, correction=correction)


@needs_cuda
def test_tensors_on_different_devices_same_error():
    x = torch.randn(1, 3, 8, 8, device="cuda")
    w = torch.randn(4, 3, 3, 3)
    same_error(lambda: F.conv2d(x, w), lambda: conv2d(x, w))


# ----- soak and threads -----------------------------------------------------------------------

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def test_soak_varying_sizes_memory_flat_results_right():
    """Detection-style input sizes: thousands of steps, no growth, spot-checked results."""
    torch.manual_seed(0)
    conv = strideconv.Conv2d(3, 4, 3, 2, 1)
    pool = strideconv.AvgPool2d(3, 2, 1)
    gen = torch.Generator().manual_seed(0)
    sizes = torch.randint(5, 40, (3000, 2), generator=gen).tolist()
    marks = {}
    for step, (h, w) in enumerate(sizes):
        x = torch.randn(1, 3, h, w, requires_grad=True)
        y = conv(x)
        (gx,) = torch.autograd.grad(y.sum() + pool(x).sum(), x)
        if step % 500 == 0:
            (true,) = torch.autograd.grad(F.conv2d(x, conv.weight, conv.bias, 2, 1).sum(), x)
            (true_pool,) = torch.autograd.grad(F.avg_pool2d(x, 3, 2, 1).sum(), x)
            f = strideconv.correction_factors((h, w), 3, 2, 1).position.float()
            torch.testing.assert_close(gx, (true + true_pool) * f, rtol=1e-4, atol=1e-5)
        if step in (1000, 2999):
            marks[step] = rss_mb()
    assert marks[2999] - marks[1000] < 20, marks
    assert strideconv._pooling._factor_map.cache_info().currsize <= 64


def test_concurrent_calls_from_threads(device):
    torch.manual_seed(0)
    jobs = [(3 + i % 3, 5 + i, 2 + i % 2, i % 2, 11 + 3 * i) for i in range(8)]
    inputs = [(torch.randn(2, c, n, n + 1, dtype=torch.float64, device=device),
               torch.randn(o, c, 3, 3, dtype=torch.float64, device=device), s, p) for c, o, s, p, n in jobs]
    expected = []
    for x, w, s, p in inputs:
        y = F.conv2d(x, w, None, s, p)
        g = torch.ones_like(y)
        expected.append(expected_grad_input("position", 0.5, x.cpu(), w.cpu(), g.cpu(), (s, s), (p, p), (1, 1), 1))
    results = [None] * len(inputs)
    errors = []

    def work(i):
        try:
            x, w, s, p = inputs[i]
            for _ in range(20):
                xi = x.clone().requires_grad_()
                y = conv2d(xi, w, None, s, p)
                (gx,) = torch.autograd.grad(y, xi, torch.ones_like(y))
            results[i] = gx.cpu()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# ----- large tensors: indexing past 2^31 elements ---------------------------------------------

def _check_large(device):
    # 7 planes of 16384 x 32769: more than 2^31 elements, offsets past 2^31 too
    n, h, w = 7, 16384, 32768 + 1
    grad = torch.ones(n, 1, h, w, dtype=torch.bfloat16, device=device)
    assert grad.numel() > 2**31
    torch.ops.strideconv.scale_border_(grad, [3, 3], [2, 2], [1, 1], [1, 1], 1.0)
    # On ones, the result is the ratio map n((i + p) mod s) / C(i) itself (power 1).
    rows, cols = torch.tensor(axis_ratios(h)), torch.tensor(axis_ratios(w))
    for b in (0, n - 1):
        torch.testing.assert_close(grad[b, 0, h - 1].float().cpu(), rows[h - 1] * cols)
        torch.testing.assert_close(grad[b, 0, :, w - 1].float().cpu(), rows * cols[w - 1])
        assert torch.equal(grad[b, 0, h // 2].float().cpu(), rows[h // 2] * cols)


def axis_ratios(length, k=3, s=2, p=1):
    """n((i + p) mod s) / C(i) along one axis (1 where C = 0), from the definitions."""
    counts = [0] * length
    for o in range((length + 2 * p - k) // s + 1):
        for t in range(k):
            j = o * s - p + t
            if 0 <= j < length:
                counts[j] += 1
    classes = [sum(1 for t in range(k) if t % s == r) for r in range(s)]
    return [classes[(i + p) % s] / c if c else 1.0 for i, c in enumerate(counts)]


@needs_cuda
def test_large_tensor_indexing_cuda():
    _check_large("cuda")


@pytest.mark.slow
def test_large_tensor_indexing_cpu():
    _check_large("cpu")
