"""strideconv.Conv1d/2d/3d are drop-ins for torch.nn.Conv1d/2d/3d: arguments, init, state_dict,
repr, errors, and the same corrected gradient in every dimension."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import strideconv
from strideconv.functional import conv1d, conv2d, conv3d
from helpers import operands, same_error
from reference import count_map_by_autograd, expected_grad_input

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


@pytest.mark.parametrize("nd, size, kernel, dilation, power", [
    (1, (3,), (2,), (1,), 1.0),            # the smallest case: alpha 2/sqrt(3), not over 4 positions
    (2, (7, 6), (4, 3), (1, 2), 0.5),      # odd total padding along one axis only
    (2, (5, 9), (2, 4), (3, 1), 0.7),
    (3, (4, 5, 3), (2, 3, 4), (1, 1, 1), 0.5),
])
def test_map_with_same_padding_averages_alpha_over_the_input(nd, size, kernel, dilation, power):
    """alpha = K^g / sqrt(mean C^(2g)) over the input's positions, with C the input gradient of an
    all-ones convolution under torch's own padding='same' (whose far side may get one more)."""
    torch.manual_seed(0)
    x = torch.randn((2, 3) + size, dtype=torch.float64, requires_grad=True)
    w = torch.randn((4, 3) + kernel, dtype=torch.float64)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    ones = torch.ones((1, 1) + size, dtype=torch.float64, requires_grad=True)
    out = conv(ones, torch.ones((1, 1) + kernel, dtype=torch.float64), padding="same", dilation=dilation)
    (counts,) = torch.autograd.grad(out, ones, torch.ones_like(out))
    K = float(torch.tensor(kernel).prod())
    alpha = K**power / (counts ** (2 * power)).mean().sqrt()
    y = conv(x, w, padding="same", dilation=dilation)
    g = torch.randn_like(y)
    (true,) = torch.autograd.grad(y, x, g)
    ours = getattr(strideconv.functional, f"conv{nd}d")(x, w, padding="same", dilation=dilation, correction="map",
                                                        power=power)
    assert torch.equal(ours, y)
    (gx,) = torch.autograd.grad(ours, x, g)
    torch.testing.assert_close(gx, true * alpha, rtol=1e-12, atol=1e-12)
    module = getattr(strideconv, f"Conv{nd}d")(3, 4, kernel, padding="same", dilation=dilation, bias=False,
                                              correction="map", power=power).double()
    with torch.no_grad():
        module.weight.copy_(w)
    (gm,) = torch.autograd.grad(module(x), x, g)
    torch.testing.assert_close(gm, true * alpha, rtol=1e-12, atol=1e-12)


def test_settings_changed_after_construction_are_followed():
    """Modules normalise their arguments once, and again when a setting changes: the output
    stays nn.Conv2d's and the input gradient the reference's after each change."""
    torch.manual_seed(0)
    plain = nn.Conv2d(3, 4, 3, stride=2, padding=1).double()
    ours = strideconv.Conv2d(3, 4, 3, stride=2, padding=1).double()
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 11, 10, dtype=torch.float64, requires_grad=True)
    changes = [{}, dict(stride=1), dict(stride=(3, 2)), dict(padding=(0, 2)), dict(dilation=2), dict(stride=[2]),
               dict(groups=1, correction="kernel"), dict(power=1.0), dict(correction="map"), dict(padding="valid"),
               dict(correction="position", padding=1, stride=2)]
    for change in changes:
        for name, value in change.items():
            if name not in ("correction", "power"):
                setattr(plain, name, value)
            setattr(ours, name, value)
        y0, y1 = plain(x), ours(x)
        assert torch.equal(y0, y1), change
        g = torch.randn_like(y1)
        (gx,) = torch.autograd.grad(y1, x, g)
        pad = (0, 0) if plain.padding == "valid" else plain.padding
        expected = expected_grad_input(ours.correction, ours.power, x, ours.weight, g,
                                       nn.modules.utils._pair(plain.stride), nn.modules.utils._pair(pad),
                                       nn.modules.utils._pair(plain.dilation), 1)
        torch.testing.assert_close(gx, expected, rtol=1e-12, atol=1e-12, msg=str(change))
    ours.correction = "bogus"
    with pytest.raises(ValueError, match="correction"):
        ours(x)


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

@pytest.mark.parametrize(
    "build, call",
    [
        (lambda c: c(4, 4, 3), lambda m, x: m(x)),  # wrong channels
        (lambda c: c(3, 4, 3), lambda m, x: m(x[None])),  # 5-D input
        (lambda c: c(3, 4, 3), lambda m, x: m(x[0, 0])),  # 2-D input
        (lambda c: c(3, 4, 9), lambda m, x: m(x)),  # kernel larger than the input
        (lambda c: c(3, 4, 7, padding=1), lambda m, x: m(x[..., :4, :4])),  # larger than the padded input
        (lambda c: c(3, 4, 3, stride=0), lambda m, x: m(x)),
        (lambda c: c(3, 4, 3, stride=-1), lambda m, x: m(x)),
        (lambda c: c(3, 4, 3, padding=-1), lambda m, x: m(x)),
        (lambda c: c(3, 4, 3, dilation=0), lambda m, x: m(x)),
        (lambda c: c(3, 4, 3), lambda m, x: m(x.long())),  # integer input
        (lambda c: c(3, 4, 3), lambda m, x: m(x.double())),  # mismatched dtypes
        (lambda c: c(3, 4, 3, groups=0), None),
        (lambda c: c(3, 4, 3, groups=2), None),
        (lambda c: c(3, 4, 3, padding_mode="mirror"), None),
        (lambda c: c(3, 4, 3, padding="full"), None),
        (lambda c: c(3, 4, 3, padding="same", stride=2), None),
    ],
)
def test_bad_input_same_error_as_nn_conv2d(build, call):
    x = torch.randn(2, 3, 8, 8)

    def run(cls):
        m = build(cls)
        if call is not None:
            call(m, x)

    same_error(lambda: run(nn.Conv2d), lambda: run(strideconv.Conv2d))


@pytest.mark.parametrize("correction", ["Position", "border", "", None, 3])
def test_unknown_correction_is_a_value_error(correction):
    with pytest.raises(ValueError, match="'none', 'map', 'kernel', 'position'"):
        strideconv.Conv2d(3, 4, 3, correction=correction)
    with pytest.raises(ValueError, match="'none', 'map', 'kernel', 'position'"):
        conv2d(torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), correction=correction)


@pytest.mark.parametrize("power", [0, -0.5, float("nan"), float("inf"), "0.5", True])
def test_bad_power_is_a_value_error(power):
    with pytest.raises(ValueError, match="positive finite"):
        strideconv.Conv2d(3, 4, 3, power=power)
    with pytest.raises(ValueError, match="positive finite"):
        conv2d(torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), power=power)


# ----- 1-d and 3-d ---------------------------------------------------------------------------

FUNCS = {1: (conv1d, F.conv1d, nn.Conv1d, strideconv.Conv1d), 3: (conv3d, F.conv3d, nn.Conv3d, strideconv.Conv3d)}

# (nd, cin, cout, kernel, stride, padding, dilation, groups, spatial size)
CASES = [
    (1, 3, 4, 3, 2, 1, 1, 1, (17,)),
    (1, 4, 4, 4, 4, 0, 1, 2, (16,)),
    (1, 2, 3, 2, 3, 0, 1, 1, (14,)),  # stride > kernel
    (1, 2, 2, 3, 2, 0, 3, 1, (19,)),
    (3, 2, 3, 3, 2, 1, 1, 1, (7, 6, 5)),
    (3, 2, 2, (2, 3, 1), (2, 2, 1), (0, 1, 0), 1, 1, (6, 7, 4)),
    (3, 2, 4, 4, 4, 0, 1, 2, (8, 8, 4)),
]


def make(case, device, dtype=torch.float64):
    nd, cin, cout, k, s, p, q, g, size = case
    x, w, b = operands(cin, cout, k, size, g, device, dtype, seed=1)
    return x, w, b, dict(stride=s, padding=p, dilation=q, groups=g)


def per_axis(v, nd):
    return (v,) * nd if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize("power", [0.5, 1.0])
@pytest.mark.parametrize("correction", strideconv.CORRECTIONS)
@pytest.mark.parametrize("case", CASES)
def test_forward_identical_and_backward_matches_reference(case, correction, power, device):
    nd = case[0]
    ours, plain, _, _ = FUNCS[nd]
    x, w, b, kw = make(case, device)
    x.requires_grad_()
    w.requires_grad_()
    b.requires_grad_()
    y = ours(x, w, b, **kw, correction=correction, power=power)
    y0 = plain(x, w, b, **kw)
    assert torch.equal(y, y0)
    g = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), g)
    _, gw0, gb0 = torch.autograd.grad(y0, (x, w, b), g)
    torch.testing.assert_close(gw, gw0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gb, gb0, rtol=1e-12, atol=1e-12)
    expected = expected_grad_input(
        correction, power, x.cpu(), w.cpu(), g.cpu(), per_axis(kw["stride"], nd),
        per_axis(kw["padding"], nd), per_axis(kw["dilation"], nd), kw["groups"],
    )
    torch.testing.assert_close(gx.cpu(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("nd", [1, 3])
def test_count_map_is_the_gradient_of_an_all_ones_convolution(nd):
    size, k, s, p = ((23,), 3, 2, 1) if nd == 1 else ((7, 8, 5), 3, 2, 1)
    ref = count_map_by_autograd(size, (k,) * nd, (s,) * nd, (p,) * nd, (1,) * nd)
    assert torch.equal(strideconv.count_map(size, k, s, p).double(), ref)


@pytest.mark.parametrize("nd", [1, 3])
def test_gradgradcheck(nd, device):
    case = CASES[0] if nd == 1 else CASES[4]
    x, w, b, kw = make(case, device)
    ours = FUNCS[nd][0]
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_())
    # The corrected backward is not the derivative of the forward, so gradcheck applies to
    # "none" only; gradgradcheck checks the derivative of the (corrected) backward itself.
    plain = lambda x, w, b: ours(x, w, b, **kw, correction="none")  # noqa: E731
    assert torch.autograd.gradcheck(plain, args)
    for correction in strideconv.CORRECTIONS:
        fn = lambda x, w, b: ours(x, w, b, **kw, correction=correction)  # noqa: E731
        assert torch.autograd.gradgradcheck(fn, args)


MODULE_CONFIGS = [
    dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=2, stride=2, groups=2, bias=False),
    dict(in_channels=3, out_channels=4, kernel_size=3, padding="same"),
    dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1, padding_mode="reflect"),
    dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1, padding_mode="circular"),
]


@pytest.mark.parametrize("cfg", MODULE_CONFIGS)
@pytest.mark.parametrize("nd", [1, 3])
def test_module_is_a_drop_in(nd, cfg):
    _, _, plain_cls, ours_cls = FUNCS[nd]
    torch.manual_seed(0)
    plain = plain_cls(**cfg)
    torch.manual_seed(0)
    ours = ours_cls(**cfg, correction="kernel")
    assert isinstance(ours, plain_cls)
    for a, b in zip(plain.state_dict().items(), ours.state_dict().items()):
        assert a[0] == b[0] and torch.equal(a[1], b[1])
    assert repr(ours) == repr(plain)[:-1] + ", correction='kernel', power=0.5)"
    x = torch.randn((2, cfg["in_channels"]) + (9,) * nd)
    assert torch.equal(ours(x), plain(x))
    assert torch.equal(ours(x[0]), plain(x[0]))  # unbatched
    plain(x).sum().backward()
    ours(x).sum().backward()
    for a, b in zip(plain.parameters(), ours.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nd", [1, 3])
def test_wrong_rank_same_error_as_torch(nd):
    _, _, plain_cls, ours_cls = FUNCS[nd]
    x = torch.randn((2, 3) + (8,) * (nd + 1))  # one dimension too many
    errors = []
    for cls in (plain_cls, ours_cls):
        with pytest.raises(RuntimeError) as info:
            cls(3, 4, 3)(x)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
