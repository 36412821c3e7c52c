"""strideconv.Conv2d is a drop-in for torch.nn.Conv2d: arguments, init, state_dict, repr, errors."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import strideconv
from strideconv.functional import conv2d

CONFIGS = [
    dict(in_channels=3, out_channels=8, kernel_size=3, stride=2, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    dict(in_channels=4, out_channels=8, kernel_size=3, groups=2, bias=False),
    dict(in_channels=3, out_channels=3, kernel_size=4, stride=4),
    dict(in_channels=3, out_channels=5, kernel_size=3, padding="same"),
    dict(in_channels=3, out_channels=5, kernel_size=4, padding="same", dilation=1),  # asymmetric
    dict(in_channels=3, out_channels=5, kernel_size=3, padding="valid", stride=2),
    dict(in_channels=3, out_channels=5, kernel_size=3, stride=2, padding=2, padding_mode="reflect"),
    dict(in_channels=3, out_channels=5, kernel_size=3, stride=2, padding=1, padding_mode="replicate"),
    dict(in_channels=3, out_channels=5, kernel_size=3, stride=2, padding=(1, 2), padding_mode="circular"),
]


def pair_of_modules(cfg, **extra):
    torch.manual_seed(0)
    plain = nn.Conv2d(**cfg)
    torch.manual_seed(0)
    ours = strideconv.Conv2d(**cfg, **extra)
    return plain, ours


@pytest.mark.parametrize("cfg", CONFIGS)
def test_same_init_parameters_and_forward(cfg):
    plain, ours = pair_of_modules(cfg)
    assert isinstance(ours, nn.Conv2d)
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in ours.named_parameters()]
    for a, b in zip(plain.parameters(), ours.parameters()):
        assert torch.equal(a, b)
    x = torch.randn(2, cfg["in_channels"], 13, 11)
    assert torch.equal(ours(x), plain(x))
    assert torch.equal(ours(x[0]), plain(x[0]))  # unbatched input


@pytest.mark.parametrize("cfg", CONFIGS)
def test_weight_gradients_equal_plain(cfg):
    plain, ours = pair_of_modules(cfg)
    x = torch.randn(2, cfg["in_channels"], 13, 11)
    g = torch.randn_like(plain(x))
    plain(x).backward(g)
    ours(x).backward(g)
    for a, b in zip(plain.parameters(), ours.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_padding_modes_correct_the_padded_tensor(cfg):
    """Non-zero padding modes pad first: the gradient equals the functional one on the padded input."""
    _, ours = pair_of_modules(cfg)
    ours = ours.double()
    x = torch.randn(2, cfg["in_channels"], 13, 11, dtype=torch.float64, requires_grad=True)
    g = torch.randn_like(ours(x))
    (gx,) = torch.autograd.grad(ours(x), x, g)
    xx = x.detach().requires_grad_()
    if ours.padding_mode != "zeros":
        y = conv2d(F.pad(xx, ours._reversed_padding_repeated_twice, mode=ours.padding_mode), ours.weight,
                   ours.bias, ours.stride, 0, ours.dilation, ours.groups)
    else:
        y = conv2d(xx, ours.weight, ours.bias, ours.stride, ours.padding, ours.dilation, ours.groups)
    (expected,) = torch.autograd.grad(y, xx, g)
    torch.testing.assert_close(gx, expected, rtol=1e-12, atol=1e-12)


def test_same_padding_uses_padded_count_map():
    # kernel 4, 'same': one extra zero column/row on the far side, as ATen pads
    torch.manual_seed(0)
    ours = strideconv.Conv2d(1, 1, 4, padding="same", bias=False).double()
    with torch.no_grad():
        ours.weight.fill_(1.0)
    x = torch.randn(1, 1, 10, 10, dtype=torch.float64, requires_grad=True)
    y = ours(x)
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    # all-ones kernel and gradient: the true gradient is C, so "position" gives K^g C^(1-g)
    C = strideconv.count_map((11, 11), 4, 1, 1)[:10, :10].double()
    torch.testing.assert_close(gx[0, 0], 16**0.5 * C**0.5, rtol=1e-12, atol=1e-12)


def test_state_dict_round_trip_both_ways():
    plain, ours = pair_of_modules(CONFIGS[0])
    assert plain.state_dict().keys() == ours.state_dict().keys()
    fresh_plain = nn.Conv2d(**CONFIGS[0])
    fresh_plain.load_state_dict(ours.state_dict())
    fresh_ours = strideconv.Conv2d(**CONFIGS[0])
    fresh_ours.load_state_dict(plain.state_dict())
    for a, b, c in zip(fresh_plain.parameters(), fresh_ours.parameters(), plain.parameters()):
        assert torch.equal(a, c) and torch.equal(b, c)
    clone = copy.deepcopy(ours)
    assert clone.correction == ours.correction and clone.power == ours.power


def test_repr_adds_the_two_settings():
    plain, ours = pair_of_modules(CONFIGS[1], correction="kernel", power=1)
    assert repr(ours) == repr(plain)[:-1] + ", correction='kernel', power=1.0)"


def test_device_and_dtype_arguments():
    m = strideconv.Conv2d(2, 3, 3, device="cpu", dtype=torch.float64)
    assert m.weight.dtype == torch.float64 and m.bias.dtype == torch.float64


# ----- bad input: the error torch.nn.Conv2d gives -------------------------------------------

def same_error(build, call=None):
    """Assert that plain and strideconv modules fail alike: same type and message."""
    errors = []
    for cls in (nn.Conv2d, strideconv.Conv2d):
        with pytest.raises(Exception) as info:
            m = build(cls)
            if call is not None:
                call(m)
        errors.append(info.value)
    assert type(errors[0]) is type(errors[1]), errors
    assert str(errors[0]) == str(errors[1])


x = torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize(
    "build, call",
    [
        (lambda c: c(4, 4, 3), lambda m: m(x)),  # wrong channels
        (lambda c: c(3, 4, 3), lambda m: m(x[None])),  # 5-D input
        (lambda c: c(3, 4, 3), lambda m: m(x[0, 0])),  # 2-D input
        (lambda c: c(3, 4, 9), lambda m: m(x)),  # kernel larger than the input
        (lambda c: c(3, 4, 7, padding=1), lambda m: m(x[..., :4, :4])),  # larger than the padded input
        (lambda c: c(3, 4, 3, stride=0), lambda m: m(x)),
        (lambda c: c(3, 4, 3, stride=-1), lambda m: m(x)),
        (lambda c: c(3, 4, 3, padding=-1), lambda m: m(x)),
        (lambda c: c(3, 4, 3, dilation=0), lambda m: m(x)),
        (lambda c: c(3, 4, 3), lambda m: m(x.long())),  # integer input
        (lambda c: c(3, 4, 3), lambda m: m(x.double())),  # mismatched dtypes
        (lambda c: c(3, 4, 3, groups=0), None),
        (lambda c: c(3, 4, 3, groups=2), None),
        (lambda c: c(3, 4, 3, padding_mode="mirror"), None),
        (lambda c: c(3, 4, 3, padding="full"), None),
        (lambda c: c(3, 4, 3, padding="same", stride=2), None),
    ],
)
def test_bad_input_same_error_as_nn_conv2d(build, call):
    same_error(build, call)


@pytest.mark.parametrize("correction", ["Position", "border", "", None, 3])
def test_unknown_correction_is_a_value_error(correction):
    with pytest.raises(ValueError, match="'none', 'map', 'kernel', 'position'"):
        strideconv.Conv2d(3, 4, 3, correction=correction)
    with pytest.raises(ValueError, match="'none', 'map', 'kernel', 'position'"):
        conv2d(x, torch.randn(4, 3, 3, 3), correction=correction)


@pytest.mark.parametrize("power", [0, -0.5, float("nan"), float("inf"), "0.5", True])
def test_bad_power_is_a_value_error(power):
    with pytest.raises(ValueError, match="positive finite"):
        strideconv.Conv2d(3, 4, 3, power=power)
    with pytest.raises(ValueError, match="positive finite"):
        conv2d(x, torch.randn(4, 3, 3, 3), power=power)


def test_compiled_op_checks_its_own_arguments():
    w = torch.randn(4, 3, 3, 3)
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
