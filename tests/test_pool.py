"""strideconv.AvgPool2d: the output of torch.nn.AvgPool2d, the input gradient corrected."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import strideconv
from strideconv.functional import avg_pool2d
from reference import interior_counts

CONFIGS = [
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
    dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 0), divisor_override=5),
    dict(kernel_size=2),
    dict(kernel_size=3, stride=3, ceil_mode=True),
    dict(kernel_size=2, stride=3),  # stride > kernel: positions no window reads
]


def true_counts(size, cfg):
    """C(i): the input gradient of a sum-pooling (divisor 1) of ones under ones, ceil windows too."""
    x = torch.ones((1, 1) + size, dtype=torch.float64, requires_grad=True)
    args = {k: v for k, v in cfg.items() if k not in ("count_include_pad", "divisor_override")}
    y = F.avg_pool2d(x, **args, divisor_override=1)
    (c,) = torch.autograd.grad(y, x, torch.ones_like(y))
    return c[0, 0].round()


def expected(correction, power, true_grad, size, cfg):
    k = cfg["kernel_size"]
    k = (k, k) if isinstance(k, int) else k
    s = cfg.get("stride", k)
    s = (s, s) if isinstance(s, int) else s
    p = cfg.get("padding", 0)
    p = (p, p) if isinstance(p, int) else p
    C = true_counts(size, cfg)
    K = float(k[0] * k[1])
    if correction == "none":
        return true_grad
    if correction == "position":
        return true_grad * torch.where(C > 0, (K / C.clamp(min=1)) ** power, torch.zeros_like(C))
    if correction == "kernel":
        n = interior_counts(size, k, s, p, (1, 1))
        return true_grad * torch.where(C > 0, (K / n.clamp(min=1)) ** power, torch.zeros_like(C))
    return true_grad * (K**power / (C ** (2 * power)).mean().sqrt())


@pytest.mark.parametrize("power", [0.5, 1.0])
@pytest.mark.parametrize("correction", strideconv.CORRECTIONS)
@pytest.mark.parametrize("cfg", CONFIGS)
def test_forward_identical_and_gradient_matches_reference(cfg, correction, power, device):
    size = (11, 10)
    x = torch.randn((2, 3) + size, dtype=torch.float64, device=device, requires_grad=True)
    y = avg_pool2d(x, **cfg, correction=correction, power=power)
    y0 = F.avg_pool2d(x, **cfg)
    assert torch.equal(y, y0)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    (true,) = torch.autograd.grad(y0, x, g)
    torch.testing.assert_close(gx.cpu(), expected(correction, power, true.cpu(), size, cfg), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cfg", CONFIGS[:3])
def test_module_is_a_drop_in(cfg):
    plain, ours = nn.AvgPool2d(**cfg), strideconv.AvgPool2d(**cfg, correction="map")
    assert isinstance(ours, nn.AvgPool2d)
    assert repr(ours) == repr(plain)[:-1] + ", correction='map', power=0.5)"
    x = torch.randn(2, 3, 9, 8)
    assert torch.equal(ours(x), plain(x))
    assert torch.equal(ours(x[0]), plain(x[0]))  # unbatched


@pytest.mark.parametrize("correction", strideconv.CORRECTIONS)
def test_double_backward(correction):
    """The corrected backward g -> factor * pool^T(g) is differentiable (w.r.t. g). The function
    is linear: with a nonlinearity after the pool, finite differences of the backward would see
    the true forward Jacobian where autograd uses the corrected one, by design."""
    x = torch.randn(1, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    fn = lambda x: avg_pool2d(x, 3, 2, 1, ceil_mode=True, correction=correction)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_bad_arguments_same_error_as_torch():
    x = torch.randn(1, 1, 6, 6, requires_grad=True)
    for kwargs in (dict(kernel_size=2, stride=0), dict(kernel_size=2, padding=2), dict(kernel_size=0)):
        errors = []
        for fn in (F.avg_pool2d, avg_pool2d):
            with pytest.raises(RuntimeError) as info:
                fn(x, **kwargs)
            errors.append(str(info.value))
        assert errors[0] == errors[1]


@pytest.mark.parametrize("correction", ["position", "kernel", "map"])
def test_layouts_dtypes_and_unbatched_input_give_the_reference(correction, device):
    """The one-pass backward on channels_last, unbatched and reduced-precision inputs: the true
    gradient times the factor map (computed in float64 from the definitions)."""
    cfg = CONFIGS[1]
    size = (13, 9)
    torch.manual_seed(0)
    base = torch.randn((2, 3) + size, dtype=torch.float64)
    cases = [("channels_last", base.to(memory_format=torch.channels_last)), ("unbatched", base[0]),
             ("float32", base.float()), ("bfloat16", base.bfloat16())]
    for name, x in cases:
        x = x.to(device).detach().requires_grad_(True)
        y = avg_pool2d(x, **cfg, correction=correction)
        assert torch.equal(y, F.avg_pool2d(x, **cfg)), name
        g = torch.randn(y.shape, dtype=torch.float64).to(device)
        (gx,) = torch.autograd.grad(y, x, g.to(y.dtype))
        assert gx.dtype == x.dtype and gx.shape == x.shape, name
        if name == "channels_last":
            assert gx.is_contiguous(memory_format=torch.channels_last)
        xd = x.detach().double().requires_grad_(True)
        (true,) = torch.autograd.grad(F.avg_pool2d(xd, **cfg), xd, g)
        batched = true if true.dim() == 4 else true.unsqueeze(0)
        want = expected(correction, 0.5, batched.cpu(), size, cfg).reshape(true.shape)
        tol = dict(rtol=1e-2, atol=1e-2) if name == "bfloat16" else dict(rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gx.double().cpu(), want, **tol, msg=name)


def test_compile_fullgraph_and_opcheck():
    x = torch.randn(2, 3, 10, 9, requires_grad=True)

    def fn(t):
        return avg_pool2d(t, 3, 2, 1, correction="position").square().sum()

    (eager,) = torch.autograd.grad(fn(x), x)
    (compiled,) = torch.autograd.grad(torch.compile(fn, fullgraph=True)(x), x)
    torch.testing.assert_close(compiled, eager)
    factor = torch.rand(10, 9) + 0.5
    g = torch.randn(2, 3, 5, 5)
    torch.library.opcheck(torch.ops.strideconv.avg_pool2d_backward_scaled.default,
                          (g, x.detach(), [3, 3], [2, 2], [1, 1], False, True, None, factor))


def test_direct_calls_of_the_backward_op_refuse_malformed_arguments():
    """avg_pool2d_backward_scaled is a registered op anyone can call: malformed arguments raise,
    in a child process so that a crash would be seen as one."""
    import subprocess
    import sys

    code = r"""
import torch, strideconv
op = torch.ops.strideconv.avg_pool2d_backward_scaled
x, g, f = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.ones(8, 8)
ok = op(g, x, [2, 2], [2, 2], [0, 0], False, True, None, f)
assert ok.shape == x.shape
bad = [
    (g[0], x, [2, 2], [2, 2], [0, 0], False, True, None, f),            # 3-d grad
    (g, x, [2, 2], [2, 2], [0, 0], False, True, None, torch.ones(7, 8)),  # factor of another size
    (g, x, [2, 2], [0, 2], [0, 0], False, True, None, f),               # zero stride
    (g, x, [2, 2], [2, 2], [2, 0], False, True, None, f),               # padding over half the kernel
    (g, x, [2, 2], [2, 2], [0, 0], False, True, 0, f),                  # zero divisor
    (g.double(), x, [2, 2], [2, 2], [0, 0], False, True, None, f),      # dtypes differ
    (g[:1], x, [2, 2], [2, 2], [0, 0], False, True, None, f),           # batch differs
    (g.long(), x.long(), [2, 2], [2, 2], [0, 0], False, True, None, f), # integer tensors
    (g, x, [2, 2], [2, 2], [0, 0], False, True, None, f.long()),        # integer factor map
]
for i, args in enumerate(bad):
    try:
        op(*args)
    except (RuntimeError, ValueError):
        continue
    raise SystemExit(f"case {i} ran")
print("refused")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "refused" in proc.stdout, proc.stderr[-2000:] + proc.stdout


@pytest.mark.parametrize("correction", ["position", "kernel", "map"])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_eager_node_and_the_traced_path_agree(cfg, correction):
    """The eager call records the compiled node; torch.func (which needs the Python autograd
    Function) gives the same gradient, bit for bit: both run the one compiled backward kernel."""
    from strideconv._pooling import CorrectedAvgPool2d

    x = torch.randn(2, 3, 11, 10, dtype=torch.float64, requires_grad=True)
    y = avg_pool2d(x, **cfg, correction=correction)
    assert y.grad_fn.name() == "strideconv::AvgPool2dBackward"
    g = torch.randn_like(y)
    (eager,) = torch.autograd.grad(y, x, g)
    via_func = torch.func.vjp(lambda t: avg_pool2d(t, **cfg, correction=correction), x)[1](g)[0]
    assert torch.equal(via_func, eager)
    # and the Python Function itself, called as Function.apply
    from strideconv._pooling import factor_map
    k = cfg["kernel_size"]
    k = (k, k) if isinstance(k, int) else tuple(k)
    s = cfg.get("stride", k)
    s = (s, s) if isinstance(s, int) else tuple(s)
    p = cfg.get("padding", 0)
    p = (p, p) if isinstance(p, int) else tuple(p)
    f = factor_map((11, 10), k, s, p, cfg.get("ceil_mode", False), correction, 0.5, x.device, x.dtype)
    y2 = CorrectedAvgPool2d.apply(x, f, k, s, p, cfg.get("ceil_mode", False), cfg.get("count_include_pad", True),
                                  cfg.get("divisor_override"))
    assert y2.grad_fn.name() == "CorrectedAvgPool2dBackward"
    assert torch.equal(y2, y) and torch.equal(torch.autograd.grad(y2, x, g)[0], eager)


def test_pooling_op_checks_and_argument_forms():
    """strideconv::avg_pool2d: opcheck (schema, fake kernel, autograd registration, AOT dispatch);
    the one- and two-value lists ATen's avg_pool2d accepts, and an empty stride (the kernel size),
    give the gradient of the expanded arguments; a factor map that requires grad is refused."""
    op = torch.ops.strideconv.avg_pool2d.default
    x = torch.randn(2, 3, 10, 9, dtype=torch.float64, requires_grad=True)
    f = torch.rand(10, 9, dtype=torch.float64) + 0.5
    torch.library.opcheck(op, (x, f, [3, 3], [2, 2], [1, 1], False, True, None))
    g = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    want = torch.ops.strideconv.avg_pool2d_backward_scaled(g, x.detach(), [3, 3], [2, 2], [1, 1], False, True, None, f)
    for args in (([3], [2], [1]), ([3, 3], [2, 2], [1, 1]), ([3, 3], [2], [1, 1])):
        (got,) = torch.autograd.grad(op(x, f, *args, False, True, None), x, g)
        assert torch.equal(got, want), args
    g3 = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    want3 = torch.ops.strideconv.avg_pool2d_backward_scaled(g3, x.detach(), [3, 3], [3, 3], [0, 0], False, True, None,
                                                          f)
    (got3,) = torch.autograd.grad(op(x, f, [3], [], [0], False, True, None), x, g3)
    assert torch.equal(got3, want3)
    with pytest.raises(ValueError, match="fixed"):
        op(x, f.clone().requires_grad_(), [3, 3], [2, 2], [1, 1], False, True, None)


def test_forward_mode_ad_refused_loudly():
    """No jvp is defined for the corrected pooling: forward-mode AD raises, never returns the
    plain (uncorrected) derivative; correction="none" is F.avg_pool2d and supports it."""
    import torch.autograd.forward_ad as fwAD

    x = torch.randn(1, 2, 8, 8, requires_grad=True)
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.randn_like(x))
        with pytest.raises(RuntimeError, match="forward-mode"):
            avg_pool2d(dual, 3, 2, 1)
        tangent = fwAD.unpack_dual(avg_pool2d(dual, 3, 2, 1, correction="none")).tangent
        assert tangent is not None


def test_direct_calls_of_the_pooling_op_refuse_malformed_arguments():
    """strideconv::avg_pool2d is a registered op anyone can call: malformed arguments raise (in
    the forward, ATen's avg_pool2d's own errors; in the backward, the kernel's checks), in a child
    process so that a crash would be seen as one."""
    import subprocess
    import sys

    code = r"""
import torch, strideconv
op = torch.ops.strideconv.avg_pool2d
x, f = torch.randn(2, 3, 8, 8, requires_grad=True), torch.ones(8, 8)
op(x, f, [2, 2], [2, 2], [0, 0], False, True, None).sum().backward()
assert x.grad.shape == x.shape
bad = [
    (x, f, [], [2, 2], [0, 0], False, True, None),                      # empty kernel
    (x, f, [2, 2, 2], [2, 2], [0, 0], False, True, None),               # three kernel values
    (x, f, [2, 2], [0, 2], [0, 0], False, True, None),                  # zero stride
    (x, f, [2, 2], [2, 2], [], False, True, None),                      # empty padding
    (x, f, [2, 2], [2, 2], [2, 0], False, True, None),                  # padding over half the kernel
    (x, f, [2, 2], [2, 2], [0, 0], False, True, 0),                     # zero divisor
    (x, torch.ones(7, 8), [2, 2], [2, 2], [0, 0], False, True, None),   # factor of another size
    (x, f.long(), [2, 2], [2, 2], [0, 0], False, True, None),           # integer factor map
    (x[0, 0, 0], f, [2, 2], [2, 2], [0, 0], False, True, None),         # 1-d input (torch's IndexError)
]
for i, args in enumerate(bad):
    try:
        op(*args).sum().backward()
    except (RuntimeError, ValueError, IndexError):
        continue
    raise SystemExit(f"case {i} ran")
print("refused")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "refused" in proc.stdout, proc.stderr[-2000:] + proc.stdout


@pytest.mark.parametrize("cfg", CONFIGS)
def test_every_call_gives_the_reference_gradient_through_the_compiled_entry(cfg):
    """A layer's first corrected call builds its factor map in Python and hands it to the C++
    entry (``_C.pool_fast``); later calls run from there. Corrections, powers, dtypes and an
    unbatched input interleaved, twice over, so that a map remembered for one call never serves
    another: every call's output is F.avg_pool2d's and its gradient the reference."""
    size = (11, 10)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        for dtype in (torch.float64, torch.float32):
            for correction in strideconv.CORRECTIONS:
                for power in (0.5, 1.0):
                    for shape in ((2, 3) + size, (3,) + size):
                        x = torch.randn(shape, dtype=dtype, generator=gen).requires_grad_()
                        y = avg_pool2d(x, **cfg, correction=correction, power=power)
                        y0 = F.avg_pool2d(x, **cfg)
                        assert torch.equal(y, y0)
                        g = torch.randn(y.shape, dtype=dtype, generator=gen)
                        (gx,) = torch.autograd.grad(y, x, g)
                        (true,) = torch.autograd.grad(y0, x, g)
                        want = expected(correction, power, true.double(), size, cfg).to(dtype)
                        tol = 1e-12 if dtype == torch.float64 else 1e-5
                        torch.testing.assert_close(gx, want, rtol=tol, atol=tol)


def test_the_common_call_runs_in_cpp_and_leaves_the_rest_to_python():
    """``_C.pool_fast`` runs the common eager call once the layer's factor map is remembered, and
    returns None (the Python entry's general path) for a map not yet built and for every form it
    does not check itself: lists, numpy ints, int flags, invalid values, a torch function mode,
    a torch.func transform."""
    import numpy as np
    from torch.overrides import TorchFunctionMode

    from strideconv import _C

    x = torch.randn(2, 3, 13, 7, requires_grad=True)  # a geometry no other test uses
    args = (x, 3, 2, 1, False, True, None)
    assert _C.pool_fast(*args, "position", 0.5) is None  # not remembered yet
    first = avg_pool2d(x, 3, 2, 1)  # the general path builds the map and hands it over
    y = _C.pool_fast(*args, "position", 0.5)
    assert y is not None and y.grad_fn.name() == "strideconv::AvgPool2dBackward" and torch.equal(y, first)
    g = torch.randn_like(y)
    assert torch.equal(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(first, x, g)[0])
    assert _C.pool_fast(*args, "position", 1.0) is None  # another power: another map
    assert _C.pool_fast(x.double(), 3, 2, 1, False, True, None, "position", 0.5) is None  # another dtype
    plain = _C.pool_fast(*args, "none", 0.5)
    assert plain.grad_fn.name() == "AvgPool2DBackward0" and torch.equal(plain, first)
    with torch.no_grad():
        assert torch.equal(_C.pool_fast(*args, "position", 0.5), first)
    for other in ((x, [3, 3], 2, 1), (x, np.int64(3), 2, 1), (x, 3, 2, -1), (x, 3, 0, 1), (x, 3, 2, (1, 1, 1)),
                  (x.detach()[0, 0], 3, 2, 1)):
        assert _C.pool_fast(*other, False, True, None, "position", 0.5) is None, other[1:]
    assert _C.pool_fast(x, 3, 2, 1, 0, True, None, "position", 0.5) is None  # an int flag
    assert _C.pool_fast(x, 3, 2, 1, False, True, 2.0, "position", 0.5) is None  # a float divisor
    assert _C.pool_fast(*args, "Position", 0.5) is None and _C.pool_fast(*args, "position", 1) is None

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Mode():
        assert _C.pool_fast(*args, "position", 0.5) is None
    seen = []
    torch.func.vmap(lambda t: seen.append(_C.pool_fast(t, 3, 2, 1, False, True, None, "none", 0.5)) or t)(x)
    assert seen == [None]
