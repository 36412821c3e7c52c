"""strideconv.init: the effective fan_out, torch.nn.init's draws at stride 1, the seed experiment."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import strideconv
from strideconv import init


@pytest.mark.parametrize(
    "ours, theirs, kwargs",
    [
        (init.kaiming_normal_, nn.init.kaiming_normal_, dict(mode="fan_out", nonlinearity="relu")),
        (init.kaiming_normal_, nn.init.kaiming_normal_, dict(a=0.1)),
        (init.kaiming_uniform_, nn.init.kaiming_uniform_, dict(mode="fan_out", nonlinearity="relu")),
        (init.kaiming_uniform_, nn.init.kaiming_uniform_, dict(a=math.sqrt(5))),
        (init.xavier_normal_, nn.init.xavier_normal_, dict(gain=2.0)),
        (init.xavier_uniform_, nn.init.xavier_uniform_, dict()),
    ],
)
def test_stride_one_draws_what_torch_draws(ours, theirs, kwargs):
    for shape in [(8, 3, 3, 3), (6, 2, 5), (4, 4, 2, 3, 3)]:
        a, b = torch.empty(shape), torch.empty(shape)
        out = ours(a, generator=torch.Generator().manual_seed(3), **kwargs)
        theirs(b, generator=torch.Generator().manual_seed(3), **kwargs)
        assert out is a
        assert torch.equal(a, b)


def test_fans_of_a_weight_and_of_a_module():
    w = torch.empty(8, 2, 3, 3)  # a conv with in_channels 4, groups 2
    f = init.fans(w, stride=2, groups=2)
    assert f.fan_in == 2 * 9
    assert f.fan_out_torch == 8 * 9
    assert f.fan_out == pytest.approx(8 / 2 * (3 / 2) ** 2)
    m = nn.Conv2d(4, 8, 3, stride=2, groups=2)
    assert init.fans(m) == f
    assert init.fans(nn.Conv1d(4, 6, 5, stride=5)).fan_out == pytest.approx(6.0)
    assert init.fans(torch.empty(6, 4, 3, 3)).fan_out == init.fans(torch.empty(6, 4, 3, 3)).fan_out_torch


def test_bad_arguments():
    with pytest.raises(ValueError, match="fan_in, fan_out"):
        init.kaiming_normal_(torch.empty(4, 3, 3, 3), mode="fan_avg")
    with pytest.raises(ValueError, match="groups"):
        init.fans(torch.empty(6, 2, 3, 3), groups=4)
    with pytest.raises(ValueError, match="stride"):
        init.fans(torch.empty(6, 2, 3, 3), stride=0)
    with pytest.raises(ValueError, match="convolution weight"):
        init.fans(torch.empty(6, 2))
    with pytest.warns(UserWarning, match="zero-element"):
        init.kaiming_normal_(torch.empty(0, 3, 3, 3))


def test_uniform_bound_and_leaky_relu_gain():
    for a in (0.0, 0.1, 0.2, 1.0):
        assert init.calculate_gain("leaky_relu", a) == pytest.approx(math.sqrt(2 / (1 + a * a)))
    w = torch.empty(256, 64, 3, 3)
    init.kaiming_uniform_(w, mode="fan_out", nonlinearity="relu", stride=2,
                          generator=torch.Generator().manual_seed(0))
    std = math.sqrt(2) / math.sqrt(256 * 9 / 4)
    assert w.abs().max() <= math.sqrt(3) * std
    assert w.abs().max() > 0.99 * math.sqrt(3) * std
    assert w.std().item() == pytest.approx(std, rel=0.02)


@pytest.mark.parametrize("k, s", [(5, 5), (4, 2), (3, 2), (1, 2)])
def test_seed_experiment_input_gradient_variance_is_one(k, s):
    """One strided conv, no ReLU, Var[w] = 1 / fan_out: Var[grad_input] ~ 1 with the effective
    fan_out, far from 1 with PyTorch's (which assumes every input element meets k*k taps)."""
    gen = torch.Generator().manual_seed(0)
    cin, cout, size = 4, 64, 4 * s * 5 + k
    variances = {}
    for which in ("effective", "torch"):
        acc = []
        for _ in range(6):
            w = torch.empty(cout, cin, k, k)
            if which == "effective":
                init.kaiming_normal_(w, mode="fan_out", nonlinearity="linear", stride=s, generator=gen)
            else:
                nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="linear", generator=gen)
            x = torch.randn(4, cin, size, size, generator=gen, requires_grad=True)
            y = F.conv2d(x, w, stride=s)
            (gx,) = torch.autograd.grad(y, x, torch.randn(y.shape, generator=gen))
            # whole periods of the count map away from the borders
            lo = k + (-k) % s
            hi = lo + 2 * s * ((size - 2 * lo) // (2 * s))
            acc.append(gx[..., lo:hi, lo:hi].pow(2).mean())
        variances[which] = torch.stack(acc).mean().item()
    assert variances["effective"] == pytest.approx(1.0, rel=0.1)
    assert variances["torch"] == pytest.approx(1.0 / s**2, rel=0.1)  # PyTorch's fan_out: off by s^2


def test_init_convs_uses_each_layers_own_geometry():
    model = nn.Sequential(nn.Conv2d(3, 64, 4, stride=4), nn.ReLU(), strideconv.Conv2d(64, 128, 3, stride=2, groups=2),
                          nn.Conv1d(2, 2, 1), nn.Linear(4, 4))
    linear = model[4].weight.detach().clone()
    out = init.init_convs_(model, generator=torch.Generator().manual_seed(0))
    assert out is model
    for conv, fan in ((model[0], 64 * 1.0), (model[2], 128 / 2 * 2.25)):
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan), rel=0.05)
        assert torch.count_nonzero(conv.bias) == 0
    assert torch.equal(model[4].weight, linear)  # not a conv: untouched
    with pytest.raises(ValueError, match="distribution"):
        init.init_convs_(model, distribution="trunc")
