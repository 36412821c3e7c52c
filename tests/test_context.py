"""strideconv.corrected(): every strided convolution in a block, however the model calls it.

The reference is a torch function mode written here from the definitions alone: each strided
F.conv2d runs the plain convolution with an input gradient from reference.expected_grad_input
(the true gradient times the factor map of the all-ones count map). The models below reach their
convolutions the ways real model code does, written here (no new dependency): a weight-standardised
subclass (timm's StdConv2d, BiT), TensorFlow-style "same" padding (Conv2dSame), a subclass that
applies norm and activation inside forward (detectron2's Conv2d), and a bare functional call.
"""

import math
import threading

import numpy as np
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import strideconv
from helpers import same_error
from reference import count_map_by_autograd, expected_conv_transpose, expected_grad_input, interior_counts

CORRECTED = ("position", "kernel", "map")


# ----- the ways model code reaches a strided convolution ------------------------------------------

class StdConv2d(nn.Conv2d):
    """Weight standardisation in forward."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / torch.sqrt(w.var((1, 2, 3), keepdim=True, unbiased=False) + 1e-6)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Conv2dSame(nn.Conv2d):
    """TensorFlow's "SAME" padding for any stride: pad by what the input size needs, then convolve."""

    def forward(self, x):
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        x = F.pad(x, [pads[1][0], pads[1][1], pads[0][0], pads[0][1]])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class ConvNormAct(nn.Conv2d):
    """A convolution that carries its norm and activation, applied inside forward."""

    def __init__(self, *args, norm=None, activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm, self.activation = norm, activation

    def forward(self, x):
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.norm is not None:
            x = self.norm(x)
        return self.activation(x) if self.activation is not None else x


class Functional(nn.Module):
    """A weight the model holds and convolves with by hand (hypernetworks, weight sharing)."""

    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, channels, 2, 2, dtype=torch.float64) / 4)

    def forward(self, x):
        return F.conv2d(x, self.weight, stride=[2])


def mixed_model():
    torch.manual_seed(0)
    return nn.Sequential(
        StdConv2d(3, 6, 3, stride=2, padding=1),
        Conv2dSame(6, 6, 3, stride=2),
        ConvNormAct(6, 6, 3, stride=(2, 1), padding=1, norm=nn.GroupNorm(2, 6), activation=nn.ReLU()),
        nn.Conv2d(6, 6, 3, stride=2, padding=1),  # the plain class, called as usual
        nn.Conv2d(6, 6, 3, stride=1, padding=1),  # stride 1: never corrected
        Functional(6),
    ).double()


# ----- the reference ---------------------------------------------------------------------------------

class _ReferenceConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation, groups, correction, power):
        ctx.save_for_backward(x, w, b)
        ctx.settings = stride, padding, dilation, groups, correction, power
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        x, w, b = ctx.saved_tensors
        stride, padding, dilation, groups, correction, power = ctx.settings
        with torch.enable_grad():
            x_, w_ = x.detach().requires_grad_(), w.detach().requires_grad_()
            y = F.conv2d(x_, w_, None, stride, padding, dilation, groups)
            (grad_w,) = torch.autograd.grad(y, w_, grad)
            grad_x = expected_grad_input(correction, power, x, w, grad, stride, padding, dilation, groups)
        grad_b = None if b is None else grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


def _pair(v):
    v = tuple(int(t) for t in v) if isinstance(v, (tuple, list)) else (int(v),)
    return v * 2 if len(v) == 1 else v


class ReferenceMode(TorchFunctionMode):
    def __init__(self, correction, power=0.5, min_stride=2):
        super().__init__()
        self.correction, self.power, self.min_stride = correction, power, min_stride

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
            a = dict(zip(names, (None, None, None, 1, 0, 1, 1)))
            a.update(zip(names, args))
            a.update(kwargs)
            if max(_pair(a["stride"])) >= self.min_stride:
                return _ReferenceConv.apply(a["input"], a["weight"], a["bias"], _pair(a["stride"]),
                                            _pair(a["padding"]), _pair(a["dilation"]), a["groups"], self.correction,
                                            self.power)
        return func(*args, **kwargs)


def run(model, x, mode=None):
    x = x.detach().clone().requires_grad_()
    if mode is None:
        y = model(x)
    else:
        with mode:
            y = model(x)
    grads = torch.autograd.grad(y.square().sum(), [x] + list(model.parameters()))
    return y.detach(), grads


def assert_grads_close(got, want):
    for u, v in zip(got, want, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


X = torch.randn(2, 3, 19, 17, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


# ----- what it does -----------------------------------------------------------------------------------

@pytest.mark.parametrize("correction", CORRECTED)
def test_every_strided_convolution_is_corrected_inside_and_only_inside(correction):
    model = mixed_model()
    plain_y, plain_g = run(model, X)
    y, grads = run(model, X, strideconv.corrected(correction))
    assert torch.equal(y, plain_y)  # the forward, bit for bit
    ref_y, ref_g = run(model, X, ReferenceMode(correction))
    torch.testing.assert_close(ref_y, plain_y, rtol=0, atol=0)
    assert_grads_close(grads, ref_g)
    assert not torch.allclose(grads[0], plain_g[0])  # the correction did something
    # after the block: plain again
    assert_grads_close(run(model, X)[1], plain_g)


def test_min_stride_and_power():
    model = mixed_model()
    _, plain_g = run(model, X)
    assert_grads_close(run(model, X, strideconv.corrected(min_stride=3))[1], plain_g)
    _, got = run(model, X, strideconv.corrected("position", 1.0))
    assert_grads_close(got, run(model, X, ReferenceMode("position", 1.0))[1])


def test_strideconv_calls_keep_their_own_settings():
    torch.manual_seed(0)
    ours = strideconv.Conv2d(3, 4, 3, stride=2, padding=1, correction="kernel").double()
    pool = strideconv.AvgPool2d(2, correction="none")
    model = nn.Sequential(pool, ours)
    want = run(model, X, ReferenceMode("kernel"))[1]  # pool: plain; conv: its own "kernel"
    got = run(model, X, strideconv.corrected("position", pool=True))[1]
    assert_grads_close(got, want)
    # and a strideconv functional call with its own correction
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    x = X.clone().requires_grad_()
    with strideconv.corrected("position"):
        y = strideconv.functional.conv2d(x, w, stride=2, correction="map")
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    expected = expected_grad_input("map", 0.5, X, w, torch.ones_like(y), (2, 2), (0, 0), (1, 1), 1)
    torch.testing.assert_close(g, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("correction", CORRECTED)
def test_transposed_and_pooling_when_asked(correction):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 7, 6, generator=gen, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(3, generator=gen, dtype=torch.float64)
    with strideconv.corrected(correction):  # transposed=False: left as it is
        assert torch.equal(F.conv_transpose2d(x, w, b, 2, 1, 1), F.conv_transpose2d(x, w, b, 2, 1, 1))
    xt = x.clone().requires_grad_()
    with strideconv.corrected(correction, transposed=True):
        y = F.conv_transpose2d(xt, w, b, stride=2, padding=1, output_padding=1)
    want = expected_conv_transpose(correction, 0.5, x, w, b, (2, 2), (1, 1), (1, 1), 1, (1, 1))
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10)
    assert y.grad_fn is not None

    # average pooling: the true gradient times the factor map of its all-ones count map
    xp = torch.randn(2, 3, 9, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    with strideconv.corrected(correction, pool=True):
        yp = F.avg_pool2d(xp, 3, 2, 1)
    assert torch.equal(yp, F.avg_pool2d(xp, 3, 2, 1))
    (got,) = torch.autograd.grad(yp.sum(), xp)
    (true,) = torch.autograd.grad(F.avg_pool2d(xp, 3, 2, 1).sum(), xp)
    counts = count_map_by_autograd((9, 8), (3, 3), (2, 2), (1, 1), (1, 1))
    if correction == "map":
        factor = 9**0.5 / (counts**1.0).mean().sqrt()
    elif correction == "kernel":  # a factor map too: the interior count of each position's class
        factor = (9 / interior_counts((9, 8), (3, 3), (2, 2), (1, 1), (1, 1))) ** 0.5
    else:
        factor = (9 / counts) ** 0.5
    torch.testing.assert_close(got, true * factor, rtol=1e-10, atol=1e-12)


# ----- state: nesting, re-entry, exceptions, threads -------------------------------------------------------

def _input_grad(x, w):
    x = x.detach().clone().requires_grad_()
    y = F.conv2d(x, w, stride=2, padding=1)
    return torch.autograd.grad(y, x, torch.ones_like(y))[0]


W = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


# computed here, outside any block (the reference convolves with stride 2 too)
_EXPECTED = {c: expected_grad_input(c, 0.5, X, W, torch.ones(2, 4, 10, 9, dtype=torch.float64), (2, 2), (1, 1),
                                    (1, 1), 1) for c in CORRECTED + ("none",)}


def _expected(correction):
    return _EXPECTED[correction]


def test_nesting_re_entry_and_exceptions_restore_the_state():
    outer, inner = strideconv.corrected("position"), strideconv.corrected("kernel")
    with outer:
        torch.testing.assert_close(_input_grad(X, W), _expected("position"))
        with inner:
            torch.testing.assert_close(_input_grad(X, W), _expected("kernel"))
            with outer:  # the same object entered again
                torch.testing.assert_close(_input_grad(X, W), _expected("position"))
            torch.testing.assert_close(_input_grad(X, W), _expected("kernel"))
        torch.testing.assert_close(_input_grad(X, W), _expected("position"))
    torch.testing.assert_close(_input_grad(X, W), _expected("none"))
    with pytest.raises(KeyError):
        with strideconv.corrected("map"):
            with strideconv.corrected("kernel"):
                raise KeyError("inside")
    assert not torch.overrides._is_torch_function_mode_enabled()
    torch.testing.assert_close(_input_grad(X, W), _expected("none"))


def test_the_setting_is_per_thread():
    results = {}
    started, release = threading.Event(), threading.Event()

    def other_thread():
        started.wait()
        results["other"] = _input_grad(X, W)  # runs while the main thread is inside the block
        release.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with strideconv.corrected("position"):
        started.set()
        release.wait(timeout=60)
        results["main"] = _input_grad(X, W)
    thread.join()
    torch.testing.assert_close(results["other"], _expected("none"))
    torch.testing.assert_close(results["main"], _expected("position"))


# ----- arguments ------------------------------------------------------------------------------------

def test_bad_settings_are_value_errors():
    for kwargs in (dict(correction="bogus"), dict(power=0.0), dict(power=float("nan")), dict(min_stride=0),
                   dict(min_stride=True), dict(min_stride=2.0), dict(transposed="yes"), dict(pool=1)):
        with pytest.raises(ValueError):
            strideconv.corrected(**kwargs)


@pytest.mark.parametrize("stride", [2, (2, 2), [2], np.int64(2), torch.tensor(2), (np.int32(2), 2)])
def test_argument_forms_as_torch_takes_them(stride):
    x = X.clone().requires_grad_()
    with strideconv.corrected():
        y = F.conv2d(x, W, None, stride, [1], (1,), 1)
    assert torch.equal(y, F.conv2d(X, W, None, 2, 1, 1, 1))
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    torch.testing.assert_close(g, _expected("position"))


def test_calls_torch_refuses_raise_torch_error():
    cases = [
        lambda: F.conv2d(X, W, stride=0),
        lambda: F.conv2d(X, W, stride=(2, 2, 2)),
        lambda: F.conv2d(X, W, stride=2.0),
        lambda: F.conv2d(X, W[:, :2], stride=2),
        lambda: F.conv2d(X, W, stride=2, padding=-1),
        lambda: F.conv2d(X, W, stride=2, padding="same"),
        lambda: F.conv2d(X, W, stride=2, bogus=1),
        lambda: F.avg_pool2d(X, 2, 0),
    ]
    for call in cases:
        def inside(call=call):
            with strideconv.corrected(pool=True):
                return call()
        same_error(call, inside)


# ----- compilers ------------------------------------------------------------------------------------------

def test_torch_compile_fullgraph_inside_the_block():
    model = mixed_model()
    want_y, want_g = run(model, X, ReferenceMode("position"))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with strideconv.corrected():
        x = X.clone().requires_grad_()
        y = compiled(x)
    grads = torch.autograd.grad(y.square().sum(), [x] + list(model.parameters()))
    torch.testing.assert_close(y.detach(), want_y, rtol=1e-10, atol=1e-12)
    assert_grads_close(grads, want_g)


def test_torch_export_records_the_operator():
    model = mixed_model()
    with strideconv.corrected():
        exported = torch.export.export(model, (X,))
    targets = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.strideconv.conv.default) == 5  # the five strided convolutions
    assert torch.equal(exported.module()(X), model(X))


def test_convert_corrects_a_subclass_as_corrected_does():
    torch.manual_seed(0)
    model = nn.Sequential(StdConv2d(3, 4, 3, stride=2))
    x = torch.randn(2, 3, 11, 11, requires_grad=True)
    with strideconv.corrected():
        (want,) = torch.autograd.grad(model(x).square().sum(), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strideconv.convert(model)
    (got,) = torch.autograd.grad(model(x).square().sum(), x)
    assert torch.equal(got, want)
