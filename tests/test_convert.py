"""strideconv.convert / revert on a ResNet-style model written here."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import strideconv
from reference import expected_grad_input


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
    class MyConv(nn.Conv2d):  # a subclass keeps its class: its forward runs inside the mode
        pass

    model = nn.Sequential(MyConv(1, 1, 2, 2), nn.Conv2d(1, 1, 2, 2, dtype=torch.float16))
    strideconv.convert(model)
    assert isinstance(model[0], MyConv) and type(model[0]).__name__ == "MyConv" and repr(model[0]).startswith("MyConv(")
    assert model[1].weight.dtype == torch.float16
    strideconv.revert(model)
    assert type(model[0]) is MyConv


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


def test_a_module_used_twice_stays_one_module():
    shared = nn.Conv2d(3, 3, 3, 2, 1)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    strideconv.convert(model)
    assert isinstance(model[0], strideconv.Conv2d) and model[0] is model[2]
    assert len(list(model.parameters())) == 2  # one weight, one bias
    strideconv.revert(model)
    assert type(model[0]) is nn.Conv2d and model[0] is model[2]


def test_parametrized_convolution_is_converted_and_keeps_its_parametrization():
    torch.manual_seed(0)
    plain = nn.utils.parametrizations.weight_norm(nn.Conv2d(2, 3, 3, 2, 1))
    model = nn.Sequential(plain)
    x = torch.randn(1, 2, 9, 9)
    y0 = model(x)
    strideconv.convert(model, correction="kernel")
    conv = model[0]
    assert isinstance(conv, strideconv.Conv2d) and nn.utils.parametrize.is_parametrized(conv, "weight")
    assert conv.parametrizations.weight is plain.parametrizations.weight  # the same objects
    assert torch.equal(model(x), y0)
    xr = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(model(xr).sum(), xr)
    # the parametrized weight's gradient path is the plain one; grad_input is corrected
    w = conv.weight.detach()
    expected = expected_grad_input("kernel", 0.5, x, w, torch.ones(1, 3, 5, 5), (2, 2), (1, 1), (1, 1), 1)
    torch.testing.assert_close(g.double(), expected, rtol=1e-5, atol=1e-6)
    strideconv.revert(model)
    assert type(model[0]).__bases__[0] is nn.Conv2d and torch.equal(model(x), y0)


def test_lazy_convolution_is_named_until_materialised_then_converted():
    model = nn.Sequential(nn.LazyConv2d(4, 3, 2))
    with pytest.warns(UserWarning, match=r"1 LazyConv2d \(lazy ones convert after their first forward pass\)"):
        strideconv.convert(model)
    assert isinstance(model[0], nn.LazyConv2d)
    model(torch.randn(1, 3, 8, 8))  # materialises: the module becomes an nn.Conv2d
    strideconv.convert(model)
    assert type(model[0]) is strideconv.Conv2d


def test_subclass_without_a_forward_of_its_own_is_corrected_too():
    class MyConv(nn.Conv2d):
        pass

    torch.manual_seed(0)
    model = nn.Sequential(MyConv(3, 3, 3, 2).double())
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    y0 = model(x)
    strideconv.convert(model, correction="kernel")
    y = model(x)
    assert torch.equal(y, y0)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    expected = expected_grad_input("kernel", 0.5, x, model[0].weight, torch.ones_like(y), (2, 2), (0, 0), (1, 1), 1)
    torch.testing.assert_close(g, expected)
