"""The registered operators: opcheck, fake kernels, dtypes, memory formats, the import guard."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import strideconv
from strideconv.functional import conv2d


def conv_samples(device, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=torch.float64, requires_grad=requires_grad)  # noqa
    yield (make(2, 3, 9, 9), make(4, 3, 3, 3), make(4), [2, 2], [1, 1], [1, 1], 1, "position", 0.5)
    yield (make(2, 4, 8, 10), make(4, 2, 2, 3), None, [2, 3], [0, 1], [1, 2], 2, "kernel", 1.0)
    yield (make(1, 2, 12, 12), make(3, 2, 4, 4), make(3), [4, 4], [0, 0], [1, 1], 1, "map", 0.5)
    yield (make(2, 2, 7, 7), make(2, 2, 3, 3), None, [1, 1], [1, 1], [1, 1], 1, "none", 0.5)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_conv(device, requires_grad):
    for args in conv_samples(device, requires_grad):
        torch.library.opcheck(torch.ops.strideconv.conv.default, args)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_scalings(device, requires_grad):
    g = torch.randn(2, 3, 9, 10, dtype=torch.float64, device=device, requires_grad=requires_grad)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device, requires_grad=requires_grad)
    geom = ([3, 3], [2, 2], [1, 1], [1, 1])
    torch.library.opcheck(torch.ops.strideconv.scale_border.default, (g,) + geom + (0.5,))
    for correction in ("map", "kernel", "position"):
        torch.library.opcheck(
            torch.ops.strideconv.scale_weight.default, (w, [9, 10], [2, 2], [1, 1], [1, 1], correction, 0.5)
        )
    if not requires_grad:  # in-place, used only where no graph is recorded
        torch.library.opcheck(torch.ops.strideconv.scale_border_.default, (g.detach().clone(),) + geom + (0.5,))


def test_fake_conv_matches_real_memory_format():
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.randn(2, 3, 9, 9).to(memory_format=torch.channels_last)
    w = torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last)
    real = torch.ops.strideconv.conv(x, w, None, [2, 2], [1, 1], [1, 1], 1, "position", 0.5)
    with FakeTensorMode() as mode:
        fake = torch.ops.strideconv.conv(
            mode.from_tensor(x), mode.from_tensor(w), None, [2, 2], [1, 1], [1, 1], 1, "position", 0.5
        )
    assert fake.shape == real.shape and fake.stride() == real.stride() and fake.dtype == real.dtype


@pytest.mark.parametrize("correction", ["none", "map", "kernel", "position"])
def test_channels_last_and_non_contiguous(correction, device):
    x = torch.randn(2, 4, 12, 14, dtype=torch.float64, device=device)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64, device=device)
    variants = {
        "contiguous": (x, w),
        "channels_last": (x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last)),
        "sliced": (torch.randn(2, 4, 12, 28, dtype=torch.float64, device=device)[..., ::2].copy_(x), w),
    }
    grads = {}
    for name, (xi, wi) in variants.items():
        xi = xi.detach().requires_grad_()
        y = conv2d(xi, wi, stride=2, padding=1, correction=correction)
        expected_format = torch.nn.functional.conv2d(xi, wi, stride=2, padding=1)
        assert y.stride() == expected_format.stride()
        (grads[name],) = torch.autograd.grad(y, xi, torch.ones_like(y))
    torch.testing.assert_close(grads["channels_last"], grads["contiguous"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads["sliced"], grads["contiguous"], rtol=1e-12, atol=1e-12)


def _layouts(t):
    """The same values in different memory layouts, each with its own strides."""
    nd = t.dim() - 2
    yield "contiguous", t.clone()
    fmt = {2: torch.channels_last, 3: torch.channels_last_3d}.get(nd)
    if fmt is not None:
        yield "channels_last", t.clone(memory_format=fmt)
    # batch and channel dims swapped in memory; one channel (stride 1 but not "inner")
    yield "channel-major", t.transpose(0, 1).contiguous().transpose(0, 1)
    yield "one channel", t[:, :1].contiguous()
    wide = torch.zeros(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype, device=t.device)
    yield "sliced", wide[..., ::2].copy_(t)


@pytest.mark.parametrize(
    "size, k, s, p",
    [((12, 14), (3, 3), (2, 2), (1, 1)), ((9,), (4,), (3,), (2,)), ((7, 8, 9), (3, 2, 3), (2, 2, 3), (1, 0, 1))],
)
def test_scale_border_inplace_any_layout(size, k, s, p, device):
    """The in-place border pass equals the out-of-place one (whose ratios test_factors checks
    against the definition) whatever the strides of the gradient."""
    g = torch.randn((3, 5) + size, dtype=torch.float64, device=device)
    geom = (list(k), list(s), list(p), [1] * len(size), 0.5)
    for name, t in _layouts(g):
        expected = torch.ops.strideconv.scale_border(t.contiguous(), *geom)
        torch.ops.strideconv.scale_border_(t, *geom)
        torch.testing.assert_close(t, expected, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("correction", ["map", "kernel", "position"])
def test_low_precision_against_float64(dtype, tol, correction, device):
    if device == "cpu" and dtype == torch.float16:
        pytest.skip("float16 convolution backward is slow on CPU; covered on CUDA")
    torch.manual_seed(0)
    x = torch.randn(2, 8, 17, 17, device=device)
    w = torch.randn(8, 8, 3, 3, device=device) / 8
    grad = torch.randn(2, 8, 8, 8, device=device)
    out = {}
    for dt in (torch.float64, dtype):
        xi = x.to(dt).requires_grad_()
        y = conv2d(xi, w.to(dt), stride=2, correction=correction)
        (out[dt],) = torch.autograd.grad(y, xi, grad.to(dt))
    err = (out[dtype].double() - out[torch.float64]).norm() / out[torch.float64].norm()
    assert err.item() < tol


def test_empty_batch(device):
    x = torch.randn(0, 3, 9, 9, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)
    y = conv2d(x, w, stride=2)
    assert y.shape == (0, 4, 4, 4)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w))


def test_import_without_extension_says_how_to_build():
    code = "import sys; sys.modules['strideconv._C'] = None; import strideconv"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "pip install --no-build-isolation" in proc.stderr


# ----- the eager binding and torch.ops: one operator, two entry points ------------------------

@pytest.mark.parametrize("correction", ["none", "map", "kernel", "position"])
def test_eager_binding_equals_torch_ops(correction, device):
    """strideconv._C.conv (the eager entry of functional.conv2d) is the registered op itself."""
    args = ([2, 2], [1, 1], [1, 1], 1, correction, 0.5)
    results = []
    for call in (strideconv._C.conv, torch.ops.strideconv.conv.default):
        torch.manual_seed(0)
        x = torch.randn(2, 3, 9, 9, device=device, requires_grad=True)
        w = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)
        b = torch.randn(4, device=device, requires_grad=True)
        y = call(x, w, b, *args)
        # the op's C++ node; "none" is ATen's convolution with its own node
        expected = "ConvolutionBackward0" if correction == "none" else "strideconv::ConvBackward"
        assert y.grad_fn.name() == expected
        y.backward(torch.ones_like(y))
        results.append((y, x.grad, w.grad, b.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_torch_function_modes_and_subclasses_see_the_op():
    """Under a __torch_function__ mode or with a tensor subclass, functional.conv2d goes
    through torch.ops, so the override sees strideconv.conv, as it sees F.conv2d."""
    from torch.overrides import TorchFunctionMode

    seen = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    x, w = torch.randn(1, 2, 7, 7), torch.randn(3, 2, 3, 3)
    with Record():
        conv2d(x, w, stride=2)
    assert torch.ops.strideconv.conv.default in seen

    class Tagged(torch.Tensor):
        pass

    y = conv2d(x.as_subclass(Tagged), w, stride=2)
    assert type(y) is type(torch.nn.functional.conv2d(x.as_subclass(Tagged), w, stride=2)) is Tagged
    assert torch.equal(y.as_subclass(torch.Tensor), conv2d(x, w, stride=2))

    # the modules too (their common call is checked in C++, which must step aside for both)
    seen.clear()
    module = strideconv.Conv2d(2, 3, 3, stride=2)
    with Record():
        module(x)
    assert torch.ops.strideconv.conv.default in seen
    y = module(x.as_subclass(Tagged))
    assert type(y) is Tagged and torch.equal(y.as_subclass(torch.Tensor), module(x))
    # and torch.jit.trace records the op
    traced = torch.jit.trace(module, (x,))
    assert "strideconv::conv" in str(traced.graph)
    assert torch.equal(traced(x), module(x))


@pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning")  # torch's forward_ad import
def test_no_graph_without_grad_and_forward_ad_refused():
    """Inference records no node (as ATen's ops); a forward-mode tangent is refused loudly,
    never dropped (no jvp is defined for the corrected op)."""
    import torch.autograd.forward_ad as fwAD

    x = torch.randn(1, 2, 7, 7, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    with torch.no_grad():
        y = conv2d(x, w, stride=2)
    assert y.grad_fn is None and not y.requires_grad
    y = conv2d(x.detach(), w.detach(), stride=2)
    assert y.grad_fn is None and not y.requires_grad
    assert conv2d(x, w, stride=2).grad_fn is not None
    with fwAD.dual_level():
        dual = fwAD.make_dual(x.detach(), torch.ones_like(x))
        for mode in (torch.enable_grad, torch.no_grad):
            with mode(), pytest.raises(RuntimeError, match="jvp is not implemented"):
                conv2d(dual, w.detach(), stride=2)


@pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning")  # torch's forward_ad import
def test_none_supports_forward_ad_and_torch_func_as_torch_does():
    """correction="none" is ATen's convolution with ATen's own node: forward-mode AD and
    torch.func give F.conv2d's derivatives."""
    import torch.autograd.forward_ad as fwAD

    torch.manual_seed(0)
    x, w, t = torch.randn(1, 2, 7, 7), torch.randn(3, 2, 3, 3), torch.randn(1, 2, 7, 7)
    with fwAD.dual_level():
        ours = fwAD.unpack_dual(conv2d(fwAD.make_dual(x, t), w, stride=2, correction="none")).tangent
        plain = fwAD.unpack_dual(F.conv2d(fwAD.make_dual(x, t), w, stride=2)).tangent
    torch.testing.assert_close(ours, plain, rtol=0, atol=0)
    g_ours = torch.func.grad(lambda v: conv2d(v, w, stride=2, correction="none").square().sum())(x)
    g_plain = torch.func.grad(lambda v: F.conv2d(v, w, stride=2).square().sum())(x)
    torch.testing.assert_close(g_ours, g_plain, rtol=0, atol=0)


def test_functorch_transforms_refused_loudly():
    """torch.func cannot run a C++ autograd Function: it must say so, never return a plain gradient."""
    x, w = torch.randn(1, 2, 7, 7), torch.randn(3, 2, 3, 3)
    with pytest.raises(RuntimeError, match="functorch"):
        torch.func.grad(lambda t: conv2d(t, w, stride=2).sum())(x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_scale_taps_on_any_layout(dtype, device):
    """scale_taps on a channels_last or permuted weight (as inductor lays weights out) gives the
    contiguous weight's result, in the input's layout."""
    w = torch.randn(6, 4, 3, 5, dtype=torch.float64).to(device, dtype)
    want = torch.ops.strideconv.scale_taps(w, [2, 3], [1, 2], 0.5)
    for other in (w.to(memory_format=torch.channels_last), w.transpose(0, 1).contiguous().transpose(0, 1)):
        got = torch.ops.strideconv.scale_taps(other, [2, 3], [1, 2], 0.5)
        assert got.stride() == other.stride()
        assert torch.equal(got, want)


def test_transposed_fast_entry_is_the_op_and_steps_aside(monkeypatch):
    """_C.conv_transpose_fast (the eager entry of functional.conv_transpose1d/2d/3d and of the
    modules) runs the registered op for the common argument forms, with the op's node and
    gradients, and returns None (the general path) for anything else; ATen's refusals reach
    Python as they do from F.conv_transpose2d."""
    import numpy as np
    from torch.overrides import TorchFunctionMode

    class Tagged(torch.Tensor):
        pass

    class Passing(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    fast, op = strideconv._C.conv_transpose_fast, torch.ops.strideconv.conv_transpose.default
    torch.manual_seed(0)
    x, w, b = (torch.randn(*s, requires_grad=True) for s in ((2, 3, 5, 5), (3, 4, 3, 3), (4,)))
    for correction in ("none", "map", "kernel", "position"):
        want = op(x, w, b, [2, 2], [1, 1], [1, 1], [1, 1], 1, correction, 0.5)
        want_grads = torch.autograd.grad(want.square().sum(), (x, w, b))
        for forms in ((2, 1, 1, 1), ((2,), (1,), (1,), (1,)), ((2, 2), (1, 1), (1, 1), (1, 1))):
            got = fast(x, w, b, *forms, 1, correction, 0.5, 2)
            assert torch.equal(got, want) and got.grad_fn.name() == want.grad_fn.name()
            for u, v in zip(torch.autograd.grad(got.square().sum(), (x, w, b)), want_grads):
                assert torch.equal(u, v)
    common = (x, w, b, 2, 1, 1, 1, 1, "position", 0.5, 2)

    def other(i, value):
        return common[:i] + (value,) + common[i + 1:]

    for args in (other(3, [2, 2]), other(3, np.int64(2)), other(3, True), other(5, (1, 1, 1)), other(7, np.int64(1)),
                 other(8, "Position"), other(9, 1), other(9, float("inf")), other(9, -0.5), other(0, x[0]),
                 other(0, x.as_subclass(Tagged)), other(2, b.as_subclass(Tagged)), other(10, 3)):
        assert fast(*args) is None
    with Passing():
        assert fast(*common) is None
    with pytest.raises(RuntimeError) as ours:
        fast(*other(3, 0))
    with pytest.raises(RuntimeError) as torchs:
        F.conv_transpose2d(x, w, b, 0, 1, 1)
    assert str(ours.value) == str(torchs.value)
    # the module's common call takes it too, and gives the functional result
    calls = []
    monkeypatch.setattr(strideconv.modules, "_conv_transpose_fast", lambda *a: calls.append(a) or fast(*a))
    module = strideconv.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)
    y = module(x)
    assert len(calls) == 1 and torch.equal(y, strideconv.functional.conv_transpose2d(x, module.weight, module.bias, 2,
                                                                                      1, 1))
