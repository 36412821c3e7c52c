"""Transposed convolutions normalised by their count map (docs/design.md, "Transposed convolutions").

The reference (tests/reference.py) is built from plain torch ops: the count map is
F.conv_transpose of an all-ones input and kernel; the expected output is
F.conv_transpose * factor + bias; every expected gradient is torch autograd through that.
Random argument forms and malformed direct calls are in the differential fuzz (test_fuzz.py).
"""

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import strideconv
from helpers import DEVICES, deterministic_algorithms, same_error, same_error_type, same_outcome
from reference import expected_conv_transpose, transposed_count_map_by_ones

OURS_M = {1: strideconv.ConvTranspose1d, 2: strideconv.ConvTranspose2d, 3: strideconv.ConvTranspose3d}
PLAIN_M = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
OURS_F = {1: strideconv.functional.conv_transpose1d, 2: strideconv.functional.conv_transpose2d,
          3: strideconv.functional.conv_transpose3d}
PLAIN_F = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
CORRECTED = ("position", "kernel", "map")


def random_geometry(rng: random.Random, nd: int):
    k = tuple(rng.randint(1, 5) for _ in range(nd))
    s = tuple(rng.randint(1, 4) for _ in range(nd))
    q = tuple(rng.randint(1, 3) for _ in range(nd))
    p = tuple(rng.randint(0, 2) for _ in range(nd))
    a = tuple(rng.randint(0, max(si, qi) - 1) for si, qi in zip(s, q))
    size = tuple(rng.randint(1 + (pi > 0), 6 if nd < 3 else 4) for pi in p)
    return k, s, p, a, q, size


def operands(nd, k, size, groups, seed, device="cpu", dtype=torch.float64, bias=True):
    g = torch.Generator().manual_seed(seed)
    c_in, c_out = 2 * groups, 3 * groups
    x = torch.randn((2, c_in) + size, generator=g, dtype=dtype).to(device)
    w = torch.randn((c_in, c_out // groups) + k, generator=g, dtype=dtype).to(device)
    b = torch.randn(c_out, generator=g, dtype=dtype).to(device) if bias else None
    return x, w, b


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("correction", CORRECTED)
@pytest.mark.parametrize("power", [0.5, 1.0, 0.3])
def test_output_and_every_gradient_match_the_reference(nd, correction, power):
    rng = random.Random(hash((nd, correction, power)) % 2**31)
    for case in range(6):
        k, s, p, a, q, size = random_geometry(rng, nd)
        # the output must not be empty
        if any((L - 1) * si - 2 * pi + qi * (ki - 1) + ai + 1 < 1 for L, ki, si, pi, ai, qi in zip(size, k, s, p, a, q)):
            continue
        groups = rng.choice([1, 2])
        x, w, b = operands(nd, k, size, groups, seed=case)
        x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
        ours = OURS_F[nd](x, w, b, s, p, a, groups, q, correction=correction, power=power)
        ref = expected_conv_transpose(correction, power, x, w, b, s, p, a, groups, q)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
        grad_out = torch.randn_like(ours)
        got = torch.autograd.grad(ours, (x, w, b), grad_out)
        want = torch.autograd.grad(ref, (x, w, b), grad_out)
        for u, v in zip(got, want):
            torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-10)


REGIMES = {
    # name: (c_in, c_out, input size, kernel, stride, padding, output_padding)
    "large weight, small output": (24, 16, (2, 3), 3, 2, 1, 1),  # weight 3456 elements, output 768
    "small weight, large output": (2, 1, (12, 11), 3, 2, 1, 1),  # weight 18, output 2*1*24*22
    "small weight, empty band": (2, 3, (7, 6), 2, 2, 0, 0),  # kernel = stride: every count is 1
}


@pytest.mark.parametrize("correction", CORRECTED)
@pytest.mark.parametrize("regime", list(REGIMES))
@pytest.mark.parametrize("channels_last", [False, True])
def test_both_ways_of_normalising_match_the_reference(correction, regime, channels_last):
    """The operator scales the output (and the incoming gradient) when the weight is the larger
    tensor, the weight otherwise ("position" then scales the output's border band in place, the
    bias kept unscaled, and in the backward a copy of the gradient's band): every way gives the
    same function and gradients, in either memory layout."""
    c_in, c_out, size, k, s, p, a = REGIMES[regime]
    g = torch.Generator().manual_seed(9)
    x = torch.randn((2, c_in) + size, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn((c_in, c_out, k, k), generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c_out, generator=g, dtype=torch.float64, requires_grad=True)
    for power in (0.5, 1.0):
        ours = strideconv.functional.conv_transpose2d(x, w, b, s, p, a, correction=correction, power=power)
        ref = expected_conv_transpose(correction, power, x, w, b, (s, s), (p, p), (a, a), 1, (1, 1))
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
        grad_out = torch.randn(ours.shape, generator=g, dtype=torch.float64)
        if channels_last:
            grad_out = grad_out.to(memory_format=torch.channels_last)
        for u, v in zip(torch.autograd.grad(ours, (x, w, b), grad_out), torch.autograd.grad(ref, (x, w, b), grad_out)):
            torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-10)
    if regime.startswith("small"):  # the weight path: no elementwise op over the output
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            out = strideconv.functional.conv_transpose2d(x, w, b, s, p, a, correction=correction)
        passes = {"aten::mul", "aten::mul_", "aten::add", "aten::add_", "aten::addcmul", "aten::clone", "aten::copy_"}
        over_output = [e.name for e in prof.events() if e.name in passes and list(out.shape) in e.input_shapes]
        # torch's own convolution may add its bias in a pass (CPU): count only the extra ones
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            F.conv_transpose2d(x, w, b, s, p, a)
        for e in prof.events():
            if e.name in passes and list(out.shape) in e.input_shapes:
                over_output.remove(e.name)
        assert not over_output
    # double backward through the same path: an output of 10x10 against a 3x3 weight takes the
    # weight path, one of 4x4 the output path
    small = 5 if regime.startswith("small") else 2
    args = (x[:1, :1, :small, :small].detach().requires_grad_(), w[:1, :1].detach().requires_grad_(),
            b[:1].detach().requires_grad_())
    fn = lambda x, w, b: strideconv.functional.conv_transpose2d(x, w, b, s, p, a, correction=correction)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, args)


def _output_sized_passes(fn, shape):
    """The names of the elementwise ops (and copies) that a call of fn makes on tensors of `shape`."""
    passes = {"aten::mul", "aten::mul_", "aten::add", "aten::add_", "aten::addcmul", "aten::clone", "aten::copy_"}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return sorted(e.name for e in prof.events() if e.name in passes and list(shape) in e.input_shapes)


@pytest.mark.parametrize("correction", CORRECTED)
@pytest.mark.parametrize("regime", list(REGIMES))
def test_backward_scales_a_gradient_in_place_only_when_nothing_else_holds_it(correction, regime):
    """The backward scales the incoming gradient in place when autograd hands it over and nobody
    else holds it; a grad_output the caller keeps, one that reaches two uses of the output, one a
    hook keeps, or an expanded one is left as it was, and every gradient matches the reference."""
    c_in, c_out, size, k, s, p, a = REGIMES[regime]
    g = torch.Generator().manual_seed(5)
    x = torch.randn((2, c_in) + size, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn((c_in, c_out, k, k), generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c_out, generator=g, dtype=torch.float64, requires_grad=True)
    ours = lambda: strideconv.functional.conv_transpose2d(x, w, b, s, p, a, correction=correction)  # noqa: E731
    ref = lambda: expected_conv_transpose(correction, 0.5, x, w, b, (s, s), (p, p), (a, a), 1, (1, 1))  # noqa: E731
    weights = torch.randn(ours().shape, generator=g, dtype=torch.float64)

    def check(loss, keep=None):
        got = torch.autograd.grad(loss(ours()), (x, w, b))
        want = torch.autograd.grad(loss(ref()), (x, w, b))
        for u, v in zip(got, want):
            torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-10)
        if keep is not None:
            torch.testing.assert_close(keep[0], keep[1], rtol=0, atol=0)

    check(lambda y: (y * weights).sum())  # a fresh gradient from MulBackward: ours
    check(lambda y: y.sum())  # an expanded one
    kept = weights.clone()
    check(lambda y: (y + y * 0.5).mul(kept).sum())  # one gradient reaching two uses
    go = weights.clone()
    got = torch.autograd.grad(ours(), (x, w, b), go)
    torch.testing.assert_close(go, weights, rtol=0, atol=0)  # the caller's grad_output
    want = torch.autograd.grad(ref(), (x, w, b), weights)
    for u, v in zip(got, want):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-10)
    seen = []
    y = ours()
    y.register_hook(lambda grad: seen.append(grad))
    torch.autograd.grad((y * weights).sum(), (x, w, b))
    torch.testing.assert_close(seen[0], weights, rtol=0, atol=0)  # the gradient a hook keeps
    y = ours()
    y.retain_grad()
    (y * weights).sum().backward()
    torch.testing.assert_close(y.grad, weights, rtol=0, atol=0)
    # and when it is ours, no copy of it: no more output-sized passes than torch's own backward
    y0, y1 = ours(), F.conv_transpose2d(x, w, b, s, p, a)
    extra = _output_sized_passes(lambda: torch.autograd.grad((y0 * weights).sum(), (x, w, b)), y0.shape)
    for name in _output_sized_passes(lambda: torch.autograd.grad((y1 * weights).sum(), (x, w, b)), y1.shape):
        extra.remove(name)
    # the output path scales the gradient once, in place; the weight path only its band
    assert extra == (["aten::mul_"] if regime.startswith("large") else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_border_band_with_a_bias_keeps_the_bias_unscaled(device, dtype, channels_last):
    """scale_border_ with a bias turns the kernel-normalised output plus its bias into the
    position-normalised output plus the same bias (each band value v becomes f (v - b) + b)."""
    k, s, p, a = (3, 4), (2, 3), (1, 2), (1, 0)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64)
    w = torch.randn(3, 5, *k, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    shift = b.view(1, -1, 1, 1)
    kernel = expected_conv_transpose("kernel", 0.5, x, w, None, s, p, a, 1, (1, 1)) + shift
    want = expected_conv_transpose("position", 0.5, x, w, None, s, p, a, 1, (1, 1)) + shift
    got = kernel.to(device, dtype)
    if channels_last:
        got = got.to(memory_format=torch.channels_last)
    torch.ops.strideconv.scale_border_(got, k, s, p, (1, 1), 0.5, a, b.to(device, dtype))
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(got.double().cpu(), want, rtol=tol, atol=tol)
    assert not torch.equal(kernel, want)  # the band is not empty here
    for bad in (b[:3], b.view(1, -1), b.to(torch.int64)):  # wrong length, wrong rank, not floating point
        with pytest.raises(ValueError, match="one value per channel"):
            torch.ops.strideconv.scale_border_(got, k, s, p, (1, 1), 0.5, a, bad.to(device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_none_is_torch_bit_for_bit(device, nd):
    with deterministic_algorithms():  # else cuDNN need not repeat even torch's own result
        torch.manual_seed(0)
        plain = PLAIN_M[nd](4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, device=device)
        torch.manual_seed(0)
        ours = OURS_M[nd](4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, device=device, correction="none")
        x = torch.randn((2, 4) + (5,) * nd, device=device, requires_grad=True)
        y0, y1 = plain(x), ours(x)
        assert torch.equal(y0, y1)
        g0 = torch.autograd.grad(y0.square().sum(), (x, plain.weight, plain.bias))
        g1 = torch.autograd.grad(y1.square().sum(), (x, ours.weight, ours.bias))
        for u, v in zip(g0, g1):
            assert torch.equal(u, v)
        assert torch.equal(plain(x[0]), ours(x[0]))  # unbatched
        size = [9] * nd  # output_padding 0 instead of the stored 1
        assert torch.equal(plain(x, output_size=size), ours(x, output_size=size))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_modules_match_torch_in_init_state_and_repr(nd):
    torch.manual_seed(3)
    plain = PLAIN_M[nd](4, 6, (3,) * nd, stride=2, padding=1, output_padding=1, groups=2, bias=True, dilation=1)
    torch.manual_seed(3)
    ours = OURS_M[nd](4, 6, (3,) * nd, stride=2, padding=1, output_padding=1, groups=2, bias=True, dilation=1)
    assert list(plain.state_dict()) == list(ours.state_dict())
    for key, value in plain.state_dict().items():
        assert torch.equal(value, ours.state_dict()[key])
    assert repr(ours) == repr(plain)[:-1] + ", correction='position', power=0.5)"
    draws = []
    for cls in (PLAIN_M[nd], OURS_M[nd]):  # the same number of draws from the RNG
        torch.manual_seed(3)
        cls(4, 6, 3)
        draws.append(torch.rand(()))
    assert draws[0] == draws[1]
    ours.load_state_dict(plain.state_dict())
    assert isinstance(ours, PLAIN_M[nd])


def test_refusals_match_torch():
    same_error(lambda: nn.ConvTranspose2d(4, 6, 3, padding_mode="reflect"),
               lambda: strideconv.ConvTranspose2d(4, 6, 3, padding_mode="reflect"))
    x, w, b = operands(2, (3, 3), (5, 5), 1, seed=0)
    cases = [
        dict(output_padding=2, stride=2),  # output_padding >= stride and dilation
        dict(stride=0),
        dict(output_padding=-1),
        dict(stride=(1, 2, 3)),
        dict(bias=torch.zeros(5, dtype=torch.float64)),
        dict(bias=torch.zeros(3)),  # a float bias with float64 input: torch runs it
        dict(padding=-1),
    ]
    for kwargs in cases:
        for correction in ("position", "kernel", "map", "none"):
            same_outcome(lambda: F.conv_transpose2d(x, w, **{"bias": b} | kwargs),
                         lambda: strideconv.functional.conv_transpose2d(x, w, **{"bias": b} | kwargs,
                                                                         correction=correction))
    xf, wf = x.float(), w.float()  # a float64 bias with float32 input: torch refuses it
    same_outcome(lambda: F.conv_transpose2d(xf, wf, b), lambda: strideconv.functional.conv_transpose2d(xf, wf, b))
    same_error_type(lambda: F.conv_transpose2d(x[0, 0], w), lambda: strideconv.functional.conv_transpose2d(x[0, 0], w))
    same_error(lambda: F.conv_transpose2d(x[0, 0], w), lambda: strideconv.functional.conv_transpose2d(x[0, 0], w))
    with pytest.raises(ValueError, match="correction"):
        strideconv.ConvTranspose2d(4, 6, 3, correction="bogus")
    with pytest.raises(ValueError, match="power"):
        strideconv.functional.conv_transpose2d(x, w, power=0.0)


def test_count_map_against_the_all_ones_transposed_convolution():
    rng = random.Random(5)
    for nd in (1, 2, 3):
        for _ in range(20):
            k, s, p, a, q, size = random_geometry(rng, nd)
            try:
                want = transposed_count_map_by_ones(size, k, s, p, a, q)
            except RuntimeError:  # empty output
                continue
            got = strideconv.transposed_count_map(size, k, s, p, a, q)
            assert torch.equal(got.double(), want)


def test_power_one_makes_constant_inputs_a_mean():
    """Constant input c and kernel v: each output with C(j) > 0 contributions becomes K * c * v."""
    x = torch.full((1, 1, 7, 6), 0.5, dtype=torch.float64)
    w = torch.full((1, 1, 3, 3), 2.0, dtype=torch.float64)
    y = strideconv.functional.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1, power=1.0)
    torch.testing.assert_close(y, torch.full_like(y, 9 * 0.5 * 2.0))
    plain = F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1)
    assert plain.unique().numel() > 1  # the plain one is not constant: that is the defect


def test_power_half_equalises_the_output_variance():
    """At random init, Var[y(j)] is proportional to C(j); with power 0.5 every stride phase has
    the variance of a K-tap stride-1 layer."""
    torch.manual_seed(0)
    x = torch.randn(16, 32, 8, 8, dtype=torch.float64)
    w = torch.randn(32, 64, 3, 3, dtype=torch.float64) / math.sqrt(32 * 9)
    plain = F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1)
    ours = strideconv.functional.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    phases = lambda y: torch.stack([y[inner][..., i::2, j::2].var() for i in (0, 1) for j in (0, 1)])  # noqa: E731
    vp, vo = phases(plain), phases(ours)
    assert vp.max() / vp.min() > 3  # the [4 2; 2 1] cell (relative to the 1-window phase)
    assert vo.max() / vo.min() < 1.2
    torch.testing.assert_close(vo, torch.full_like(vo, 1.0), rtol=0.15, atol=0)
