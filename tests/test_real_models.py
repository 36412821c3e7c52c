"""Models written the way the model zoos write them: weight-standardised and self-padding
subclasses of nn.Conv2d, a conv-norm-act subclass, a blur pool's functional call, a strided 1x1
shortcut, functional conv1d/conv3d calls. After ``convert``, every strided call's input gradient
is the true gradient times the factor map of that call's own geometry (float64, from
tests/reference.py); ``report`` lists every call with that geometry, its count cell read off an
independent count map, and measures the phase ratio of the gradient that flows through it."""

import copy
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import strideconv
from reference import count_map_by_autograd


# ----- the mimics ---------------------------------------------------------------------------------

class StdConv2d(nn.Conv2d):
    """Weight standardisation (BiT / NFNet style): its own forward."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def tf_same_pads(length, k, s, d=1):
    """TensorFlow's "same": the total padding, the odd one after."""
    total = max((math.ceil(length / s) - 1) * s + (k - 1) * d + 1 - length, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """TF-ported layers (EfficientNet): padding attribute 0, an asymmetric F.pad in the forward."""

    def forward(self, x):
        (t, b), (l, r) = (tf_same_pads(L, k, s) for L, k, s in zip(x.shape[-2:], self.kernel_size, self.stride))
        return F.conv2d(F.pad(x, (l, r, t, b)), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class ConvNormAct(nn.Conv2d):
    """A conv-norm-act class that subclasses the convolution and holds its norm as a child."""

    def __init__(self, cin, cout, k, stride, padding):
        super().__init__(cin, cout, k, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(super().forward(x)))


class BlurPool(nn.Module):
    """Anti-aliased downsampling: a fixed binomial filter, depthwise, stride 2 (a functional call)."""

    def __init__(self, channels):
        super().__init__()
        f = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (f[:, None] * f[None, :] / 16).expand(channels, 1, 3, 3).clone())

    def forward(self, x):
        return F.conv2d(x, self.filt, stride=2, padding=1, groups=x.shape[1])


class Functional1d3d(nn.Module):
    """A module that makes strided F.conv1d and F.conv3d calls with its own parameters."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(2, 2, 3) / 3)
        self.w3 = nn.Parameter(torch.randn(2, 2, 3, 3, 3) / 9)

    def forward(self, x):  # x: (N, 2, 6, 6, 6)
        y = F.conv3d(x, self.w3, stride=2, padding=1)  # 3x3x3
        z = F.conv1d(y.flatten(2), self.w1, stride=3)  # 27 -> 9
        return z


def chain():
    """Each module's input feeds that module alone, so its input gradient is its calls'."""
    torch.manual_seed(0)
    return nn.Sequential(
        StdConv2d(3, 8, 3, 2, 1), nn.ReLU(),
        Conv2dSame(8, 8, 5, 2, groups=8),
        ConvNormAct(8, 8, 3, 2, 1),
        BlurPool(8),
        nn.Conv2d(8, 8, 1, 2),  # a strided 1x1 shortcut
        nn.Conv2d(8, 4, 3, 1, 1),
    ).double()


# The strided modules of chain() on a 32x32 input and their calls' geometry: the counted input
# size, the call's padded size and leading pad, kernel, stride, the call's padding, dilation.
CALLS = {
    "0": ((32, 32), (32, 32), (0, 0), (3, 3), (2, 2), (1, 1)),
    "2": ((16, 16), (19, 19), (1, 1), (5, 5), (2, 2), (0, 0)),  # TF "same" at 16: pads (1, 2)
    "3": ((8, 8), (8, 8), (0, 0), (3, 3), (2, 2), (1, 1)),
    "4": ((4, 4), (4, 4), (0, 0), (3, 3), (2, 2), (1, 1)),
    "5": ((2, 2), (2, 2), (0, 0), (1, 1), (2, 2), (0, 0)),
}
X = torch.randn(2, 3, 32, 32, dtype=torch.float64)


def factor_map(call, correction, power=0.5):
    """The correction's factor on the layer's own input: the factor map of the call's geometry
    (over its padded input), cut to the positions of the layer's input."""
    size, padded, lead, kernel, stride, padding = call
    C = count_map_by_autograd(padded, kernel, stride, padding, (1, 1))
    K = math.prod(kernel)
    if correction == "position":
        f = torch.where(C > 0, (K / C.clamp(min=1)) ** power, torch.zeros_like(C))
    else:  # map
        f = torch.full_like(C, K**power / (C ** (2 * power)).mean().sqrt().item())
    return f[lead[0]:lead[0] + size[0], lead[1]:lead[1] + size[1]]


def module_io(model, names, x):
    """Run model on x, keeping each named module's input and output with their gradients."""
    kept, handles = {}, []
    for name in names:
        def hook(mod, args, out, name=name):
            args[0].retain_grad()
            out.retain_grad()
            kept[name] = (args[0], out)
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        y = model(x)
    finally:
        for h in handles:
            h.remove()
    return y, kept


@pytest.mark.parametrize("correction", ["position", "map"])
def test_every_strided_call_gets_the_factor_map_of_its_own_geometry(correction):
    plain, model = chain(), chain()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left uncovered: no warning
        strideconv.convert(model, correction=correction, example_input=X)
    model.eval(), plain.eval()
    x = X.clone().requires_grad_()
    y, kept = module_io(model, list(CALLS), x)
    assert torch.equal(y, plain(X))  # forward bit-identical
    y.backward(torch.randn_like(y))
    for name, call in CALLS.items():
        inp, out = kept[name]
        # the true gradient through the plain module, under the gradient its output received
        xin = inp.detach().requires_grad_()
        (true,) = torch.autograd.grad(plain.get_submodule(name)(xin), xin, out.grad)
        expected = true * factor_map(call, correction)
        torch.testing.assert_close(inp.grad, expected, rtol=1e-10, atol=1e-12, msg=name)


def test_convert_keeps_state_and_classes_and_revert_undoes_it():
    model = chain()
    params = dict(model.named_parameters())
    state = copy.deepcopy(model.state_dict())
    classes = [type(m) for m in model]
    strideconv.convert(model, example_input=X)
    assert [m.__class__.__name__ for m in model] == [c.__name__ for c in classes]
    assert all(isinstance(m, c) for m, c in zip(model, classes))
    assert type(model[5]) is strideconv.Conv2d  # the exact class is swapped
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()) and model.state_dict().keys() == state.keys()
    once = [type(m) for m in model]
    strideconv.convert(model, correction="kernel", example_input=X)  # nothing is converted twice
    assert [type(m) for m in model] == once and model[0]._strideconv_mode.correction == "position"
    strideconv.revert(model)
    assert [type(m) for m in model] == classes
    assert not any(hasattr(m, "_strideconv_mode") for m in model.modules())
    x = X.clone().requires_grad_()
    (g,) = torch.autograd.grad(model(x).sum(), x)
    x2 = X.clone().requires_grad_()
    (g2,) = torch.autograd.grad(chain()(x2).sum(), x2)
    assert torch.equal(g, g2)  # plain again


def test_converted_model_pickles_deepcopies_and_compiles(tmp_path):
    model = strideconv.convert(chain().eval(), example_input=X)
    x = X.clone().requires_grad_()
    y = model(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    clone = copy.deepcopy(model)
    assert clone[0]._strideconv_mode is not model[0]._strideconv_mode
    xc = X.clone().requires_grad_()
    assert torch.equal(torch.autograd.grad(clone(xc).sum(), xc)[0], g)
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert type(loaded[0]).__name__ == "StdConv2d" and hasattr(loaded[0], "_strideconv_mode")
    xl = X.clone().requires_grad_()
    assert torch.equal(torch.autograd.grad(loaded(xl).sum(), xl)[0], g)
    compiled = torch.compile(model, fullgraph=True)
    xk = X.clone().requires_grad_()
    yk = compiled(xk)
    torch.testing.assert_close(yk, y)
    torch.testing.assert_close(torch.autograd.grad(yk.sum(), xk)[0], g)


def test_converted_model_exports_with_the_corrected_calls():
    model = strideconv.convert(chain().eval(), example_input=X)
    exported = torch.export.export(model, (X,))
    ops = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert ops.count(torch.ops.strideconv.conv.default) == len(CALLS)
    assert torch.equal(exported.module()(X), model(X))


def test_functional_conv1d_and_conv3d_calls_are_found_and_corrected():
    torch.manual_seed(0)
    plain, model = Functional1d3d().double(), copy.deepcopy(Functional1d3d().double())
    model.load_state_dict(plain.state_dict())
    x = torch.randn(2, 2, 6, 6, 6, dtype=torch.float64)
    strideconv.convert(model)  # no example input: the functional calls are not known yet
    assert type(model) is Functional1d3d
    strideconv.convert(model, example_input=x)
    assert isinstance(model, Functional1d3d) and type(model) is not Functional1d3d
    rows = strideconv.report(model, x)
    assert [(r.op, r.input_size, r.correction) for r in rows] == [
        ("conv3d", (6, 6, 6), "position (corrected())"), ("conv1d", (27,), "position (corrected())")]
    # the gradient at the module's input: the conv3d's, corrected, under the corrected conv1d's
    xr = x.clone().requires_grad_()
    y = model(xr)
    gy = torch.randn_like(y)
    (got,) = torch.autograd.grad(y, xr, gy)
    y3 = F.conv3d(xr, plain.w3, stride=2, padding=1)
    z = y3.flatten(2)
    (gz,) = torch.autograd.grad(F.conv1d(z, plain.w1, stride=3), z, gy)
    gz = gz * factor_1d(27, 3, 3)
    (true,) = torch.autograd.grad(y3, xr, gz.reshape(y3.shape))
    C = count_map_by_autograd((6, 6, 6), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1))
    torch.testing.assert_close(got, true * torch.where(C > 0, (27 / C.clamp(min=1)) ** 0.5, torch.zeros_like(C)))


def factor_1d(length, k, s):
    C = count_map_by_autograd((length,), (k,), (s,), (0,), (1,))
    return torch.where(C > 0, (k / C.clamp(min=1)) ** 0.5, torch.zeros_like(C))


# ----- report -------------------------------------------------------------------------------------

def parse_cell(text):
    return [[int(v) for v in row.split()] for row in text.strip("[]").split(";")]


def test_report_lists_every_call_with_its_own_geometry_and_cell():
    rows = strideconv.report(chain(), X)
    assert [(r.name, r.kind, r.op) for r in rows] == [
        ("0", "StdConv2d", "conv2d"), ("2", "Conv2dSame", "conv2d"), ("3", "ConvNormAct", "conv2d"),
        ("4", "BlurPool", "conv2d"), ("5", "Conv2d", "conv2d")]
    for row, (name, (size, padded, lead, kernel, stride, padding)) in zip(rows, CALLS.items()):
        C = count_map_by_autograd(padded, kernel, stride, padding, (1, 1))
        own = C[lead[0]:lead[0] + size[0], lead[1]:lead[1] + size[1]]
        assert row.input_size == size and row.kernel == kernel and row.stride == stride, name
        assert row.deficit == pytest.approx(own.mean().item() / math.prod(kernel)), name
        # one stride period, anchored at the layer's own input, away from the borders
        start = [s * math.ceil(k / s) for k, s in zip(kernel, stride)]
        if all(st + s <= L for st, s, L in zip(start, stride, size)):
            period = own[start[0]:start[0] + stride[0], start[1]:start[1] + stride[1]].long().tolist()
            assert parse_cell(row.cell) == period, name
    same = rows[1]
    assert same.padding == ((1, 2), (1, 2)) and same.cell == "[4 6; 6 9]"  # not [9 6; 6 4]
    assert "| 2 | Conv2dSame | conv2d | 16x16 | 5x5 | 2x2 | 1:2x1:2 | [4 6; 6 9] |" in str(rows)


def test_report_says_which_corrections_change_a_call():
    rows = strideconv.report(chain(), X)
    assert rows[4].effects == "none / none / x2.00"  # 1x1 stride 2: only map rescales it
    assert rows[0].effects.startswith("varies / varies / x")
    (patch,) = strideconv.report(nn.Conv2d(3, 4, 4, 4), torch.zeros(1, 3, 16, 16))
    assert patch.effects == "x4.00 / x4.00 / x4.00"  # kernel = stride: every correction is one factor


def test_report_reads_the_setting_of_each_call():
    model = chain()
    assert {r.correction for r in strideconv.report(model, X)} == {"none"}
    with strideconv.corrected("kernel"):
        rows = strideconv.report(model, X)
    assert {r.correction for r in rows} == {"kernel (corrected())"}
    with strideconv.corrected("kernel", min_stride=3):
        assert {r.correction for r in strideconv.report(model, X)} == {"none"}
    strideconv.convert(model, correction="map", example_input=X)
    assert [r.correction for r in strideconv.report(model, X)] == ["map (corrected())"] * 4 + ["map"]


def test_report_keeps_the_models_buffers():
    model = chain().train()
    before = copy.deepcopy(model.state_dict())
    strideconv.report(model, X, gradients=True)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def phase_ratio_by_hand(grad, stride, border):
    """max / min over stride phases of the mean squared gradient, over the interior."""
    g = grad[..., border:grad.shape[-2] - border, border:grad.shape[-1] - border].square()
    energies = []
    for i in range(stride):
        for j in range(stride):
            # phases counted from the map's first position: the interior starts at `border`
            energies.append(g[..., (i - border) % stride::stride, (j - border) % stride::stride].mean().item())
    return max(energies) / min(energies)


@pytest.mark.parametrize("correction", ["position", "kernel"])
def test_report_measures_each_calls_phase_ratio(correction):
    rows = strideconv.report(chain().eval(), X, gradients=correction if correction != "position" else True)
    assert all(r.measured == correction for r in rows)
    generator = torch.Generator().manual_seed(0)  # the report's output gradient: N(0, 1), seed 0
    for index, context in ((0, strideconv.corrected("none")), (1, strideconv.corrected(correction))):
        model = chain().eval()
        x = X.clone().requires_grad_()
        with context:
            y, kept = module_io(model, list(CALLS), x)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
        for row, name in zip(rows, CALLS):
            size, _, _, kernel, stride, _ = CALLS[name]
            border = kernel[0] - 1 if size[0] >= 2 * (kernel[0] - 1) + stride[0] else 0
            want = phase_ratio_by_hand(kept[name][0].grad, stride[0], border) if kernel != (1, 1) else math.inf
            got = row.phase_plain if index == 0 else row.phase_corrected
            assert got == pytest.approx(want, rel=1e-9), (name, index)
    assert rows[0].phase_plain > 1.5 and rows[0].phase_corrected < rows[0].phase_plain
    assert "phase ratio, plain" in str(rows) and f"phase ratio, {correction}" in str(rows)
    del generator


def test_a_paused_generators_block_reaches_the_caller_until_closed():
    """A paused generator that entered corrected() leaks the mode to its caller (a property of
    torch's function modes, documented in docs/design.md): the report sees and says so."""
    def steps():
        with strideconv.corrected():
            yield

    gen = steps()
    next(gen)
    try:
        assert strideconv.report(chain(), X)[0].correction == "position (corrected())"
    finally:
        gen.close()
    assert strideconv.report(chain(), X)[0].correction == "none"


def test_warning_is_short_grouped_and_only_about_strided_modules():
    model = nn.Sequential(*[nn.LazyConv2d(4, 3, 1) for _ in range(50)], *[nn.LazyConv2d(4, 3, 2) for _ in range(3)],
                          nn.LazyConv1d(4, 3, 2))
    with pytest.warns(UserWarning) as record:
        strideconv.convert(model)
    (message,) = [str(w.message) for w in record]
    assert len(message) <= 300
    assert "4 strided convolutions" in message and "3 LazyConv2d" in message and "1 LazyConv1d" in message
    assert "lazy" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strideconv.convert(chain())  # nothing left over, no warning
    assert re.search(r"strideconv\.report", message)


def test_convert_with_correction_none_scopes_no_strideconv_layer():
    model = strideconv.convert(chain(), correction="none", example_input=X)
    assert type(model[5]) is strideconv.Conv2d and model[5].correction == "none"
    assert isinstance(model[4], BlurPool) and type(model[4]) is not BlurPool  # its functional call: scoped
    assert {r.correction for r in strideconv.report(model, X)} == {"none", "none (corrected())"}
