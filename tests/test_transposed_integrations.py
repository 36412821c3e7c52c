"""Transposed convolutions with torch's machinery: gradcheck and gradgradcheck, opcheck,
torch.compile and torch.export, channels_last and autocast, TorchScript, ONNX export, devices,
convert / revert, report, meta tensors and settings changed after construction. The reference
and the operands are those of tests/test_transposed.py."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import strideconv
from helpers import DEVICES
from reference import expected_conv_transpose, transposed_count_map_by_ones
from test_transposed import CORRECTED, OURS_M, operands


@pytest.mark.parametrize("correction", CORRECTED + ("none",))
def test_gradcheck_and_gradgradcheck(correction):
    x, w, b = operands(2, (3, 2), (3, 4), 1, seed=1)
    for t in (x, w, b):
        t.requires_grad_()
    fn = lambda x, w, b: strideconv.functional.conv_transpose2d(  # noqa: E731
        x, w, b, (2, 3), (1, 0), (1, 2), 1, (1, 2), correction=correction, power=0.7)
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("correction", CORRECTED + ("none",))
def test_opcheck(correction):
    x, w, b = operands(2, (3, 3), (4, 5), 1, seed=2, dtype=torch.float32)
    for args in [
        (x, w, b, [2, 2], [1, 1], [1, 1], [1, 1], 1, correction, 0.5),
        (x.requires_grad_(), w.requires_grad_(), None, [2], [0], [0], [1], 1, correction, 1.0),
    ]:
        torch.library.opcheck(torch.ops.strideconv.conv_transpose.default, args)


@pytest.mark.parametrize("correction", CORRECTED)
def test_compile_and_export(correction):
    m = strideconv.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1, correction=correction)
    x = torch.randn(2, 4, 6, 5, requires_grad=True)
    eager = m(x)
    compiled = torch.compile(m, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager)
    (g0,) = torch.autograd.grad(eager.sum(), x)
    (g1,) = torch.autograd.grad(compiled.sum(), x)
    torch.testing.assert_close(g1, g0)
    exported = torch.export.export(m, (x.detach(),))
    torch.testing.assert_close(exported.module()(x.detach()), eager.detach())


def test_channels_last_and_autocast():
    m = strideconv.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
    x = torch.randn(2, 8, 6, 6)
    y = m(x)
    y_cl = m.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(y_cl, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_bf = m(x)
    assert y_bf.dtype == torch.bfloat16
    torch.testing.assert_close(y_bf.float(), y, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("correction", CORRECTED)
@pytest.mark.parametrize("regime", ["small weight", "large weight"])
def test_autocast_is_as_accurate_as_nn_where_the_weight_is_scaled(device, correction, regime):
    """Under autocast the weight path scales the weight before its cast (one rounding, as the
    plain weight): the output and the input gradient are no further from their float64 values
    than nn.ConvTranspose2d's are from its own. The output path scales the rounded output once
    more in float32 factors: within 1.25x of nn's error there (an extra rounding is inherent)."""
    c_in, c_out, size = (8, 4, 32) if regime == "small weight" else (64, 32, 16)
    bound = {"small weight": 1.05, "large weight": 1.25}[regime]
    dtype = torch.bfloat16
    errors = {"nn": [0.0, 0.0], "ours": [0.0, 0.0]}
    for seed in range(3):
        torch.manual_seed(seed)
        plain = nn.ConvTranspose2d(c_in, c_out, 3, 2, 1, output_padding=1).to(device)
        ours = strideconv.ConvTranspose2d(c_in, c_out, 3, 2, 1, output_padding=1, correction=correction).to(device)
        ours.load_state_dict(plain.state_dict())
        x = torch.randn(4, c_in, size, size, device=device)
        g = torch.randn(4, c_out, 2 * size, 2 * size, device=device)
        for name, m in (("nn", plain), ("ours", ours)):
            xx = x.clone().requires_grad_()
            with torch.autocast(device, dtype=dtype):
                y = m(xx)
            (gx,) = torch.autograd.grad(y, xx, g.to(y.dtype))
            x64 = x.double().requires_grad_()
            y64 = m.double()(x64)
            (gx64,) = torch.autograd.grad(y64, x64, g.double())
            m.float()
            errors[name][0] += ((y.double() - y64).norm() / y64.norm()).item()
            errors[name][1] += ((gx.double() - gx64).norm() / gx64.norm()).item()
    if correction == "map" and regime == "large weight":
        # alpha times the rounded output, plus the bias, rounds twice: its output error is about
        # 1.4x nn's (documented); only its input gradient is held to the bound
        assert errors["ours"][1] <= bound * errors["nn"][1], errors
        return
    for k in range(2):
        assert errors["ours"][k] <= bound * errors["nn"][k], errors


def test_torchscript():
    m = strideconv.ConvTranspose2d(4, 3, 3, stride=2, padding=1, correction="position")
    x = torch.randn(2, 4, 5, 5)
    scripted = torch.jit.script(m)
    torch.testing.assert_close(scripted(x), m(x))
    torch.testing.assert_close(scripted(x[0]), m(x[0]))
    torch.testing.assert_close(scripted(x, [10, 10]), m(x, output_size=[10, 10]))


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("correction", CORRECTED)
def test_onnx_export_keeps_the_normalisation(tmp_path, correction, dynamo):
    onnxruntime = pytest.importorskip("onnxruntime")
    m = strideconv.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1, correction=correction).eval()
    x = torch.randn(1, 4, 5, 6)
    path = str(tmp_path / "m.onnx")
    torch.onnx.export(m, (x,), path, dynamo=dynamo)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), m(x).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("correction", CORRECTED)
@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_export_with_dynamic_sizes_normalises_every_size(tmp_path, nd, correction, dynamo):
    """Exported with dynamic spatial sizes (and batch), the model normalises inputs of other sizes
    as PyTorch does: the count map is computed in the graph, not baked in at the traced size."""
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(nd)
    m = OURS_M[nd](4, 3, 3, stride=2, padding=1, output_padding=1, correction=correction).eval()
    traced = torch.randn((2, 4) + (5, 6, 4)[:nd])
    path = str(tmp_path / "m.onnx")
    spatial = [f"s{d}" for d in range(nd)]
    if dynamo:
        dims = {0: torch.export.Dim("batch", min=1, max=64)}
        dims.update({2 + d: torch.export.Dim(spatial[d], min=2, max=64) for d in range(nd)})
        torch.onnx.export(m, (traced,), path, dynamo=True, dynamic_shapes=({**dims},), input_names=["x"])
    else:
        axes = {0: "batch", **{2 + d: spatial[d] for d in range(nd)}}
        torch.onnx.export(m, (traced,), path, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": axes, "y": axes})
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for size in [(5, 6, 4), (8, 13, 7), (3, 2, 5)]:
        x = torch.randn((3, 4) + size[:nd])
        (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        torch.testing.assert_close(torch.from_numpy(out), m(x).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_devices_agree_with_the_reference(device):
    x, w, b = operands(2, (4, 3), (5, 6), 2, seed=4, device=device, dtype=torch.float32)
    for correction, power in itertools.product(CORRECTED, (0.5, 1.0)):
        y = strideconv.functional.conv_transpose2d(x, w, b, 2, 1, 0, 2, 1, correction=correction, power=power)
        ref = expected_conv_transpose(correction, power, x.cpu().double(), w.cpu().double(), b.cpu().double(),
                                      (2, 2), (1, 1), (0, 0), 2, (1, 1))
        torch.testing.assert_close(y.cpu().double(), ref, rtol=1e-5, atol=1e-5)


def test_convert_and_revert_transposed_layers():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ConvTranspose2d(4, 2, 3, 2, 1, 1), nn.ConvTranspose2d(2, 2, 3))
    weight = model[1].weight
    strideconv.convert(model)
    assert type(model[1]) is nn.ConvTranspose2d  # off by default: it would change the forward
    strideconv.convert(model, transposed=True, power=1.0)
    assert type(model[1]) is strideconv.ConvTranspose2d and model[1].weight is weight and model[1].power == 1.0
    assert type(model[2]) is nn.ConvTranspose2d  # stride 1
    strideconv.revert(model)
    assert type(model[1]) is nn.ConvTranspose2d and type(model[0]) is nn.Conv2d
    with pytest.raises(ValueError, match="transposed"):
        strideconv.convert(model, transposed="yes")


def test_report_lists_transposed_layers_over_their_output():
    model = nn.Sequential(nn.ConvTranspose2d(1, 2, 3, 2, 1, 1), nn.ConvTranspose2d(2, 2, 4, 2, 1))
    rows = strideconv.report(model, torch.zeros(1, 1, 8, 8))
    assert [r.input_size for r in rows] == [(16, 16), (32, 32)]
    assert rows[0].cell == "[1 2; 2 4]" and rows[1].cell == "uniform: 4"
    C = transposed_count_map_by_ones((8, 8), (3, 3), (2, 2), (1, 1), (1, 1), (1, 1))
    assert rows[0].deficit == pytest.approx(C.mean().item() / 9)


def test_meta_tensors_give_torch_shapes():
    x = torch.empty(2, 4, 5, 6, device="meta")
    w = torch.empty(4, 3, 3, 3, device="meta")
    y = torch.ops.strideconv.conv_transpose(x, w, None, [2], [1], [1], [1], 1, "position", 0.5)
    assert y.shape == F.conv_transpose2d(torch.zeros(2, 4, 5, 6), torch.zeros(4, 3, 3, 3), None, 2, 1, 1).shape


def test_settings_changed_after_construction_are_followed():
    """The modules normalise their arguments once, and again when a setting changes: the output
    stays the reference's after each change (with output_size too)."""
    torch.manual_seed(0)
    m = strideconv.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1).double()
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    changes = [{}, dict(stride=(3, 2)), dict(output_padding=(0, 1)), dict(padding=0), dict(dilation=2),
               dict(correction="kernel"), dict(power=1.0), dict(correction="none"), dict(stride=[2], correction="map")]
    for change in changes:
        for name, value in change.items():
            setattr(m, name, value)
        nd2 = lambda v: tuple(v) * (2 // len(v)) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
        want = expected_conv_transpose(m.correction, m.power, x, m.weight, m.bias, nd2(m.stride), nd2(m.padding),
                                       nd2(m.output_padding), 1, nd2(m.dilation))
        torch.testing.assert_close(m(x), want, rtol=1e-12, atol=1e-12, msg=str(change))
    m.stride, m.padding, m.dilation = (2, 2), (0, 0), (2, 2)  # torch's output_size path indexes these
    size = [2 * (5 - 1) + 1 + 2 * 2, 2 * (6 - 1) + 1 + 2 * 2]  # output_size overrides output_padding: 0 here
    want = expected_conv_transpose(m.correction, m.power, x, m.weight, m.bias, (2, 2), (0, 0), (0, 0), 1, (2, 2))
    torch.testing.assert_close(m(x, output_size=size), want, rtol=1e-12, atol=1e-12)
