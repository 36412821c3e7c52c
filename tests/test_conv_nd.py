"""strideconv.Conv1d and Conv3d: the same op, the same guarantees as Conv2d."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import strideconv
from strideconv.functional import conv1d, conv3d
from reference import count_map_by_autograd, expected_grad_input

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
    gen = torch.Generator().manual_seed(1)
    kernel = (k,) * nd if isinstance(k, int) else k
    x = torch.randn((2, cin) + size, generator=gen, dtype=dtype).to(device)
    w = torch.randn((cout, cin // g) + kernel, generator=gen, dtype=dtype).to(device)
    b = torch.randn(cout, generator=gen, dtype=dtype).to(device)
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
