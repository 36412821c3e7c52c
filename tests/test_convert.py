"""strideconv.convert / revert on a ResNet-style model written here."""

import copy
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import strideconv


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def resnet():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 7, 2, 3), nn.BatchNorm2d(8), nn.ReLU(),
        Block(8, 16, 2), Block(16, 16, 1), Block(16, 32, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).double()


X = torch.randn(4, 3, 32, 32, dtype=torch.float64)

STRIDED = ["0", "3.conv1", "3.shortcut.0", "5.conv1", "5.shortcut.0"]


def kinds(model):
    return {n: type(m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_convert_swaps_the_strided_convs_and_shares_parameters():
    model = resnet()
    params = dict(model.named_parameters())
    hook_calls = []
    model[3].conv1.register_forward_hook(lambda *a: hook_calls.append(1))
    model.eval()
    out = strideconv.convert(model, correction="kernel", power=1)
    assert out is model and not model.training
    for name, cls in kinds(model).items():
        assert cls is (strideconv.Conv2d if name in STRIDED else nn.Conv2d), name
    assert model[3].conv1.correction == "kernel" and model[3].conv1.power == 1.0
    for name, p in model.named_parameters():
        assert p is params[name]  # the same Parameter objects: optimisers keep working
    model(X)
    assert hook_calls == [1]  # hooks travel with the module


def test_outputs_and_weight_gradients_identical_when_only_the_first_layer_is_converted():
    plain, ours = resnet(), resnet()
    ours[0] = strideconv.convert(ours[0])  # only the stem: nothing downstream is corrected
    assert type(ours[0]) is strideconv.Conv2d and type(ours[3].conv1) is nn.Conv2d
    x = X.clone().requires_grad_()
    y0, y = plain(x), ours(x)
    assert torch.equal(y0, y)
    g = torch.randn_like(y)
    grads0 = torch.autograd.grad(y0, [x] + list(plain.parameters()), g)
    grads = torch.autograd.grad(y, [x] + list(ours.parameters()), g)
    for a, b in zip(grads0[1:], grads[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # the model's input gradient is the stem's: corrected by the stem's factor map
    factor = strideconv.correction_factors((32, 32), 7, 2, 3).position
    torch.testing.assert_close(grads[0], grads0[0] * factor, rtol=1e-12, atol=1e-12)


def test_full_conversion_same_outputs_state_dict_and_revert():
    plain, ours = resnet(), strideconv.convert(resnet())
    assert torch.equal(plain(X), ours(X))
    sd = ours.state_dict()
    assert list(sd) == list(plain.state_dict())
    fresh = resnet()
    fresh.load_state_dict(sd, strict=True)
    assert torch.equal(fresh(X), ours(X))
    # gradients are corrected upstream of the strided layers, not after the last one
    g = torch.randn(4, 10, dtype=torch.float64)
    plain(X).backward(g)
    ours(X).backward(g)
    torch.testing.assert_close(plain[8].weight.grad, ours[8].weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(plain[5].conv2.weight.grad, ours[5].conv2.weight.grad, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(plain[0].weight.grad, ours[0].weight.grad)
    back = strideconv.revert(ours)
    assert all(cls is nn.Conv2d for cls in kinds(back).values())
    assert not hasattr(back[0], "correction")
    assert torch.equal(back(X), plain(X))
    assert "correction" not in repr(back)


def test_min_stride_and_nd_and_root_module():
    model = nn.Sequential(nn.Conv1d(2, 2, 3), nn.Conv1d(2, 2, 2, 2), nn.Conv3d(1, 1, (1, 2, 2), (1, 2, 2)))
    strideconv.convert(model)
    assert [type(m) for m in model] == [nn.Conv1d, strideconv.Conv1d, strideconv.Conv3d]
    strideconv.convert(model, min_stride=1)
    assert type(model[0]) is strideconv.Conv1d
    root = strideconv.convert(nn.Conv2d(1, 1, 2, 2))
    assert type(root) is strideconv.Conv2d
    assert type(strideconv.revert(root)) is nn.Conv2d


def test_convert_keeps_device_dtype_and_subclasses():
    class MyConv(nn.Conv2d):  # a subclass may have its own forward: left alone
        pass

    model = nn.Sequential(MyConv(1, 1, 2, 2), nn.Conv2d(1, 1, 2, 2, dtype=torch.float16))
    strideconv.convert(model)
    assert type(model[0]) is MyConv
    assert model[1].weight.dtype == torch.float16


def test_bad_arguments():
    with pytest.raises(ValueError, match="correction"):
        strideconv.convert(resnet(), correction="border")
    with pytest.raises(ValueError, match="min_stride"):
        strideconv.convert(resnet(), min_stride=0)


def test_convert_deepcopy_and_pickle_round_trip(tmp_path):
    model = strideconv.convert(resnet())
    clone = copy.deepcopy(model)
    assert torch.equal(clone(X), model(X))
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert type(loaded[0]) is strideconv.Conv2d and torch.equal(loaded(X), model(X))


# ----- report -------------------------------------------------------------------------------

def test_report_rows():
    model = nn.Sequential(
        strideconv.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 1, 1), nn.Conv2d(8, 8, 4, 4),
        strideconv.AvgPool2d(2, correction="kernel"), nn.Conv2d(8, 8, 1, 2),
    )
    rows = strideconv.report(model, torch.zeros(1, 3, 32, 32))
    assert [r.name for r in rows] == ["0", "2", "3", "4"]  # the stride-1 conv is left out
    stem, patch, pool, pointwise = rows
    assert stem.input_size == (32, 32) and patch.input_size == (16, 16) and pointwise.input_size == (2, 2)
    assert stem.cell == "[1 2; 2 4]"  # padding 1 shifts [4 2; 2 1] by one position
    assert patch.cell == "[1 1 1 1; 1 1 1 1; 1 1 1 1; 1 1 1 1]"
    for row, (size, k, s, p) in zip((stem, patch, pointwise), (((32, 32), 3, 2, 1), ((16, 16), 4, 4, 0), ((2, 2), 1, 2, 0))):
        f = strideconv.correction_factors(size, k, s, p)
        assert row.deficit == pytest.approx(f.counts.double().mean().item() / k**2)
        assert row.alpha == pytest.approx(f.map)
    assert patch.deficit == pytest.approx(1 / 16)
    assert stem.correction == "position" and patch.correction.startswith("none")
    assert pool.correction == "kernel" and pool.kind == "AvgPool2d"
    table = str(rows)
    assert table.count("\n") == 1 + len(rows) and "| 0 | Conv2d | 32x32 | 3x3 | 2x2 | 1x1 | [1 2; 2 4] |" in table


def test_report_command_line(tmp_path):
    src = tmp_path / "net.py"
    src.write_text(textwrap.dedent("""
        from torch import nn
        def make():
            return nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 4, 2, 2))
    """))
    out = subprocess.run(
        [sys.executable, "-m", "strideconv.report", f"{src}:make", "--input-size", "1", "3", "16", "16"],
        capture_output=True, text=True, check=True,
    ).stdout
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(lines) == 3  # header and two strided layers
    assert "| 2 | Conv2d | 8x8 | 2x2 | 2x2 | 0x0 | [1 1; 1 1] | 0.250 |" in out
