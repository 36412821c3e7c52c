"""benchmarks/train.py: the side-by-side runs are separate networks, and --quick runs end to end."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip("mnist1d", reason="benchmarks/train.py needs mnist1d (requirements-dev.txt)")
pytest.importorskip("sklearn", reason="benchmarks/train.py needs scikit-learn (requirements-dev.txt)")


sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import train as T  # noqa: E402  benchmarks/train.py


@pytest.mark.parametrize("name", ["digits-cnn", "deep-sgd"])
@pytest.mark.parametrize("correction,power", [(None, 0.5), ("position", 0.5), ("kernel", 1.0), ("map", 0.5)])
def test_side_by_side_equals_separate_networks(name, correction, power):
    setting = next(s for s in T.SETTINGS if s.name == name)
    runs = [("default", 0), ("kaiming-stride", 1), ("default", 2)]
    side = T.make_runs(setting, correction, power, runs).double()
    separate = []
    for init, seed in runs:  # what a user writes: one network, the layers of this correction
        torch.manual_seed(seed)
        net = T.initialise(T.single_network(setting), init)
        user = T.single_network(setting, correction, power)
        user.load_state_dict(net.state_dict())
        separate.append(user.double())
    size = (8, 8) if setting.data == "digits" else (40,)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(len(runs), 6, 1, *size, generator=gen, dtype=torch.float64)  # a minibatch per run
    y = torch.randint(0, 10, (len(runs), 6), generator=gen)

    logits = side(T.side_input(x))
    T.run_losses(logits, y.t()).sum().backward()
    convs = list(side.convs)
    for g, net in enumerate(separate):
        out = net(x[g])
        torch.testing.assert_close(logits[:, g], out)
        F.cross_entropy(out, y[g]).backward()
        for i, conv in enumerate(T.conv_layers(net)):
            rows = slice(g * conv.out_channels, (g + 1) * conv.out_channels)
            torch.testing.assert_close(convs[i].weight.grad[rows], conv.weight.grad)
            torch.testing.assert_close(convs[i].bias.grad[rows], conv.bias.grad)
        torch.testing.assert_close(side.head_w.grad[g], net[-1].weight.grad.t())
        torch.testing.assert_close(side.head_b.grad[g], net[-1].bias.grad)


def test_input_grad_rms_is_the_corrected_gradient():
    """The reported first-layer value is the RMS of the data gradient each layer passes back."""
    setting = next(s for s in T.SETTINGS if s.name == "deep-sgd")
    runs = [("kaiming", 0), ("kaiming", 1)]
    side = T.make_runs(setting, "position", 0.5, runs)
    x, y = torch.randn(16, 1, 40), torch.randint(0, 10, (16,))
    rms = T.input_grad_rms(side, x, y)
    assert len(rms) == len(setting.layers) and all(len(r) == len(runs) for r in rms)
    for g, (init, seed) in enumerate(runs):
        torch.manual_seed(seed)
        plain = T.initialise(T.single_network(setting), init)
        net = T.single_network(setting, "position", 0.5)
        net.load_state_dict(plain.state_dict())
        xg = x.clone().requires_grad_(True)
        F.cross_entropy(net(xg), y).backward()
        assert abs(rms[0][g] - xg.grad.pow(2).mean().sqrt().item()) < 1e-5 * rms[0][g]


def test_train_quick_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "train.py"), "--quick", "--jobs", "1",
         "--inits", "kaiming", "kaiming-stride", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "train.md").read_text()
    data = json.loads((tmp_path / "train.json").read_text())
    names = {s.name for s in T.SETTINGS}
    assert {r["setting"] for r in data["results"]} == names
    assert len(data["results"]) == len(names) * len(T.VARIANTS) * 2
    for r in data["results"]:
        assert len(r["final_acc"]) == 2 and all(0.0 <= a <= 1.0 for a in r["final_acc"])
        assert all(v > 0 for layer in r["grad_rms_init"] for v in layer)
    for name in names:
        assert f"## {name}" in text
        assert (tmp_path / f"train_{name}.png").stat().st_size > 10_000
    (tmp_path / "train.md").unlink()
    again = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "train.py"), "--from-json",
                            str(tmp_path / "train.json")], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "train.md").read_text() == text

    # Kaiming's intent, checked on the 8-layer net at initialisation: with PyTorch's fan_out the
    # first layer gets a small fraction of the last one's gradient; with the stride-aware fan_out,
    # or with "position" under PyTorch's fan_out, every layer gets about the same.
    profile = {(r["variant"], r["init"]): T.relative_profile(r["grad_rms_init"])
               for r in data["results"] if r["setting"] == "deep-sgd"}
    assert profile[("plain", "kaiming")][0] < 0.4
    for key in [("plain", "kaiming-stride"), ("position", "kaiming")]:
        assert all(0.6 < v < 1.4 for v in profile[key]), (key, profile[key])
