"""Arguments: every form torch's convolutions accept works as in torch; powers whose factors
would overflow are refused with the bound; the registered ops check their own lists.
(The differential fuzz of tests/test_fuzz.py draws these forms at random.)"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import strideconv
from helpers import same_error_type
from reference import expected_grad_input

FORMS = [
    pytest.param((3,), id="1-tuple"),
    pytest.param([3], id="1-list"),
    pytest.param(np.int64(3), id="numpy-int"),
    pytest.param((np.int32(3), 3), id="tuple-of-numpy-ints"),
    pytest.param(torch.tensor(3), id="0-d-tensor"),
]


@pytest.mark.parametrize("stride", FORMS)
@pytest.mark.parametrize("correction", ["position", "kernel", "map"])
def test_stride_forms_give_the_corrected_gradient_of_the_expanded_arguments(stride, correction):
    # the case that killed the process: stride=(3,) with dilation 2 under "position"
    torch.manual_seed(0)
    x = torch.randn(1, 1, 9, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    y = strideconv.functional.conv2d(x, w, None, stride=stride, dilation=(2, 2), correction=correction)
    assert torch.equal(y, F.conv2d(x, w, None, stride=stride, dilation=(2, 2)))
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    expected = expected_grad_input(correction, 0.5, x, w, torch.ones_like(y), (3, 3), (0, 0), (2, 2), 1)
    torch.testing.assert_close(g, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("form", [(2,), [2], np.int64(2)])
def test_module_keeps_what_nn_stores_and_expands_at_call_time(form):
    torch.manual_seed(0)
    ours = strideconv.Conv2d(2, 3, 3, stride=form, padding=form, dilation=(1,))
    torch.manual_seed(0)
    plain = nn.Conv2d(2, 3, 3, stride=form, padding=form, dilation=(1,))
    assert repr(ours).startswith(repr(plain)[:-1]) and ours.stride == plain.stride
    x = torch.randn(1, 2, 9, 9, requires_grad=True)
    y = ours(x)
    assert torch.equal(y, plain(x))
    (g,) = torch.autograd.grad(y.sum(), x)
    expected = expected_grad_input("position", 0.5, x, ours.weight, torch.ones_like(y), (2, 2), (2, 2), (1, 1), 1)
    torch.testing.assert_close(g.double(), expected, rtol=1e-5, atol=1e-6)


def test_numpy_groups_and_power():
    x = torch.randn(1, 4, 8, 8)
    w = torch.randn(4, 2, 3, 3)
    y = strideconv.functional.conv2d(x, w, None, 2, 1, 1, np.int64(2), power=np.float32(0.5))
    assert torch.equal(y, F.conv2d(x, w, None, 2, 1, 1, 2))
    assert strideconv.Conv2d(2, 2, 3, power=np.float64(1.0)).power == 1.0


@pytest.mark.parametrize("bad", [2.0, True, None, "2", (2.0, 2)])
def test_forms_torch_rejects_are_type_errors(bad):
    x, w = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 3, 3)
    with pytest.raises(TypeError):
        F.conv2d(x, w, None, stride=bad)
    with pytest.raises(TypeError):
        strideconv.functional.conv2d(x, w, None, stride=bad)


@pytest.mark.parametrize("dtype, k", [(torch.float32, 3), (torch.float64, 3), (torch.float32, 16)])
@pytest.mark.parametrize("correction", ["position", "kernel", "map"])
def test_largest_power_below_the_bound_gives_finite_gradients_above_is_refused(dtype, k, correction):
    """The largest factor is (K / 1)^power for "position" (a corner reached once), (k / n)^power
    per axis for "kernel"; the refusal names the bound, and just below it all is finite."""
    x = torch.randn(1, 1, 4 * k, 4 * k, dtype=dtype, requires_grad=True)
    w = torch.randn(1, 1, k, k, dtype=dtype) * 1e-3
    conv = lambda g: strideconv.functional.conv2d(x, w, None, stride=2, correction=correction, power=g)  # noqa: E731
    with pytest.raises(ValueError, match=r"power must be at most [0-9.]+") as info:
        conv(1000.0 if dtype == torch.float32 else 10000.0)
    bound = float(info.value.args[0].rsplit(" ", 1)[-1])
    finite_max = torch.finfo(dtype).max
    if correction == "position":
        assert bound == pytest.approx(math.log(finite_max) / math.log(k * k), rel=1e-4)
    y = conv(bound * (0.999 if correction != "map" else 0.9))  # alpha is not a pure power
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y) * 1e-3)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("power", [1e-300, 5e-324])
def test_tiny_powers_give_factors_of_one(power):
    x = torch.randn(1, 1, 9, 9, requires_grad=True)
    w = torch.randn(1, 1, 3, 3)
    y = strideconv.functional.conv2d(x, w, None, stride=2, power=power)
    (g,) = torch.autograd.grad(y.sum(), x)
    (true,) = torch.autograd.grad(F.conv2d(x, w, None, stride=2).sum(), x)
    torch.testing.assert_close(g, true)


def test_pooling_power_bound():
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    with pytest.raises(ValueError, match="use a smaller power"):
        strideconv.functional.avg_pool2d(x, 4, 4, power=1000.0)


@pytest.mark.parametrize("call, message", [
    (lambda x, w: torch.ops.strideconv.conv(x, w, None, [2, 2, 2], [0], [1], 1, "position", 0.5), "stride"),
    (lambda x, w: torch.ops.strideconv.conv(x, w, None, [], [0], [1], 1, "position", 0.5), "stride"),
    (lambda x, w: torch.ops.strideconv.conv(x, w, None, [2], [0], [1], 1, "nope", 0.5), "correction"),
    (lambda x, w: torch.ops.strideconv.conv(x, w, None, [2**40], [0], [1], 1, "position", 0.5), "stride"),
    (lambda x, w: torch.ops.strideconv.scale_border_(x, [3], [2], [1], [1, 1, 1], 0.5), "dilation"),
    (lambda x, w: torch.ops.strideconv.scale_border_(x, [3], [2**31], [1], [1], 0.5), "stride"),
    (lambda x, w: torch.ops.strideconv.scale_border_(x[0, 0], [3], [2], [1], [1], 0.5), "gradient"),
    (lambda x, w: torch.ops.strideconv.scale_weight(w, [9], [2], [0], [1], "kernel", 0.5), "input size"),
    (lambda x, w: torch.ops.strideconv.scale_weight(w, [9, 9], [2], [-1], [1], "kernel", 0.5), "padding"),
    (lambda x, w: torch.ops.strideconv.scale_taps(w, [2], [0], 0.5), "dilation"),
    (lambda x, w: torch.ops.strideconv.scale_taps(w, [2], [1], float("nan")), "power"),
])
def test_direct_op_calls_with_bad_lists_name_the_argument(call, message):
    x, w = torch.randn(1, 1, 9, 9), torch.randn(2, 1, 3, 3)
    with pytest.raises((RuntimeError, ValueError), match=message):
        call(x, w)


def test_direct_op_calls_broadcast_one_value_lists_as_aten():
    x, w = torch.randn(1, 1, 9, 9), torch.randn(2, 1, 3, 3)
    short = torch.ops.strideconv.scale_weight(w, [9, 9], [2], [0], [1], "kernel", 0.5)
    full = torch.ops.strideconv.scale_weight(w, [9, 9], [2, 2], [0, 0], [1, 1], "kernel", 0.5)
    assert torch.equal(short, full)
    y = torch.ops.strideconv.conv(x, w, None, [2], [1], [1], 1, "position", 0.5)
    assert torch.equal(y, F.conv2d(x, w, None, 2, 1))


def test_compiled_op_checks_its_own_arguments():
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="correction must be one of"):
        torch.ops.strideconv.conv(x, w, None, [1, 1], [0, 0], [1, 1], 1, "bogus", 0.5)
    with pytest.raises(ValueError, match="positive finite"):
        torch.ops.strideconv.scale_border_(x.clone(), [3, 3], [2, 2], [1, 1], [1, 1], -1.0)
    with pytest.raises(ValueError, match=r"every stride value in \[1, 2\^31 - 1\]"):
        torch.ops.strideconv.scale_border_(x.clone(), [3, 3], [0, 2], [1, 1], [1, 1], 0.5)
    with pytest.raises(ValueError, match="stride to be a single value or a list of 2 values"):
        torch.ops.strideconv.scale_weight(w, [8, 8], [2, 2, 2], [1, 1], [1, 1], "kernel", 0.5)
    with pytest.raises(RuntimeError, match="more than one element"):
        torch.ops.strideconv.scale_border_(torch.ones(1, 1, 1, 1).expand(2, 3, 8, 8), [3, 3], [2, 2],
                                           [1, 1], [1, 1], 0.5)


BIG = 2**63
OUT_OF_RANGE = [
    pytest.param(dict(groups=BIG), id="groups"), pytest.param(dict(groups=-BIG - 1), id="groups-negative"),
    pytest.param(dict(stride=BIG), id="stride-int"), pytest.param(dict(stride=(2, BIG)), id="stride-list"),
    pytest.param(dict(padding=(1, BIG)), id="padding-list"), pytest.param(dict(padding=[BIG]), id="padding-1-list"),
    pytest.param(dict(dilation=(1, BIG)), id="dilation-list"),
]


@pytest.mark.parametrize("kwargs", OUT_OF_RANGE)
@pytest.mark.parametrize("path", ["functional", "corrected()"])
def test_out_of_range_integers_raise_torchs_exception_types(kwargs, path):
    """torch: a ValueError for one int out of int64's range, a TypeError for such an entry of a list."""
    x, w = torch.randn(1, 4, 8, 8), torch.randn(4, 2, 3, 3)

    def ours():
        if path == "functional":
            return strideconv.functional.conv2d(x, w, **kwargs)
        with strideconv.corrected():
            return F.conv2d(x, w, **kwargs)

    same_error_type(lambda: F.conv2d(x, w, **kwargs), ours)


@pytest.mark.parametrize("kwargs", [dict(stride=(2, BIG)), dict(padding=(1, BIG)), dict(padding=BIG), dict(stride=BIG),
                                    dict(output_padding=(0, BIG)), dict(groups=BIG)])
def test_out_of_range_integers_in_transposed_calls(kwargs):
    x, w = torch.randn(1, 4, 8, 8), torch.randn(4, 2, 3, 3)
    same_error_type(lambda: F.conv_transpose2d(x, w, **kwargs),
                    lambda: strideconv.functional.conv_transpose2d(x, w, **kwargs))


@pytest.mark.parametrize("kwargs", [dict(stride=(2, BIG)), dict(padding=(1, BIG)), dict(padding=BIG)])
def test_out_of_range_integers_in_modules(kwargs):
    x = torch.randn(1, 4, 8, 8)
    same_error_type(lambda: nn.Conv2d(4, 4, 3, **kwargs)(x), lambda: strideconv.Conv2d(4, 4, 3, **kwargs)(x))
    same_error_type(lambda: nn.ConvTranspose2d(4, 4, 3, **kwargs)(x),
                    lambda: strideconv.ConvTranspose2d(4, 4, 3, **kwargs)(x))


@pytest.mark.parametrize("kwargs", [dict(stride=(2, BIG)), dict(padding=BIG), dict(kernel_size=BIG)])
def test_out_of_range_integers_in_pooling(kwargs):
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    kwargs = dict(dict(kernel_size=2), **kwargs)
    same_error_type(lambda: F.avg_pool2d(x, **kwargs), lambda: strideconv.functional.avg_pool2d(x, **kwargs))
