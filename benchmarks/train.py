"""Training evidence: plain strided convolutions against strideconv's corrections.

    python benchmarks/train.py                # the default set, CPU (about 15 minutes on 2 cores)
    python benchmarks/train.py --quick        # smoke run (a test runs it)
    python benchmarks/train.py --device cuda
    python benchmarks/train.py --tune         # the plain-only learning-rate sweep behind SETTINGS

Every setting trains one network with plain convolutions (torch.nn.ConvNd) and with each
correction ("position", "kernel", "map"; power 0.5 and 1), from PyTorch's default init, from
Kaiming init (torch.nn.init, fan_out, as torchvision's ResNets) and from stride-aware Kaiming
init (strideconv.init.init_convs_, the effective fan_out), over several seeds. A seed fixes the
initial weights and the order of the minibatches, so every variant sees the same ones: the
comparison is paired.

The hyperparameters are fixed per setting in SETTINGS and shared by every variant. MNIST-1D's
reference CNN uses its authors' settings. The other learning rates were picked with --tune (plain
convolutions only, the mean of both Kaiming inits and the default init, on a validation split
carved out of the training set) before any corrected run; the sweep's output is quoted next to
each setting.

The seeds of one (setting, variant) train side by side in a single network whose convolutions
have groups = number of runs: group g of every layer is run g's layer, and the head is a batched
matmul. Every run has its own parameters, minibatches and optimizer state (Adam and SGD act
element-wise), so it is exactly the network trained alone (tests/test_train.py checks the
gradients against separate networks); small networks train several times faster this way.

Writes train.md, train.json and PNG plots into --out (default benchmarks/out).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import strideconv
from common import accuracy_table, describe, mean_std, tqdm

VARIANTS: List[Tuple[str, Optional[str], float]] = [  # (name, correction, power); None = torch.nn
    ("plain", None, 0.5),
    ("position", "position", 0.5),
    ("kernel", "kernel", 0.5),
    ("map", "map", 0.5),
    ("position p=1", "position", 1.0),
    ("kernel p=1", "kernel", 1.0),
    ("map p=1", "map", 1.0),
]
INITS = ["default", "kaiming", "kaiming-stride"]

Layer = Tuple[int, int, int, int, int]  # in_channels, out_channels, kernel, stride, padding


@dataclass(frozen=True)
class Setting:
    name: str
    data: str  # "mnist1d" or "digits"
    dim: int  # 1 or 2 spatial dimensions
    layers: Tuple[Layer, ...]
    optimizer: str  # "adam" or "sgd" (momentum 0.9)
    lr: float
    batch: int
    steps: int
    eval_every: int
    note: str


MNIST1D_CNN = ((1, 25, 5, 2, 1), (25, 25, 3, 2, 1), (25, 25, 3, 2, 1))  # the authors' ConvBase: 40 -> 19 -> 10 -> 5
DIGITS_CNN = ((1, 16, 3, 1, 1), (16, 32, 2, 2, 0), (32, 32, 3, 2, 1))  # 8x8 -> 8x8 -> 4x4 (patchify) -> 2x2
DEEP_CNN = ((1, 16, 5, 2, 2),) + ((16, 16, 3, 1, 1), (16, 16, 3, 2, 1)) * 3 + ((16, 16, 3, 1, 1),)  # 40->20->10->5->3

SETTINGS = [
    Setting("mnist1d-cnn", "mnist1d", 1, MNIST1D_CNN, "adam", 1e-2, 100, 4000, 250,
            "the MNIST-1D authors' CNN and optimiser (Adam 1e-2, batch 100); they train 8000 steps, the "
            "plain baseline's test accuracy is flat from 4000 on"),
    Setting("digits-cnn", "digits", 2, DIGITS_CNN, "adam", 1e-2, 64, 1000, 100,
            "3x3 conv, 2x2/2 patchify, 3x3/2; Adam, lr from --tune (plain validation accuracy 96.6 / 97.3 / "
            "97.4 / 97.9 / 95.1% at lr 3e-4 / 1e-3 / 3e-3 / 1e-2 / 3e-2)"),
    Setting("deep-sgd", "mnist1d", 1, DEEP_CNN, "sgd", 3e-2, 100, 2000, 200,
            "8 plain conv layers (4 strided), no normalisation, no residuals; SGD momentum 0.9, lr from --tune "
            "(plain validation accuracy 50.8 / 64.9 / 73.3 / 15.2% at lr 3e-3 / 1e-2 / 3e-2 / 1e-1)"),
    Setting("deep-adam", "mnist1d", 1, DEEP_CNN, "adam", 1e-2, 100, 2000, 200,
            "the same network with Adam, lr from --tune (plain validation accuracy 56.2 / 73.2 / 83.6 / 89.1 / "
            "66.6% at lr 3e-4 / 1e-3 / 3e-3 / 1e-2 / 3e-2)"),
]
TUNE_LRS = {"adam": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2], "sgd": [3e-3, 1e-2, 3e-2, 1e-1]}


# ----- data: generated or bundled by a package, nothing downloaded ----------------------------

def load_data(name: str):
    """(x_train, y_train, x_test, y_test) as float32 / int64 tensors, channels first."""
    if name == "mnist1d":
        from mnist1d.data import get_dataset_args, make_dataset

        d = make_dataset(get_dataset_args())  # generated locally: 4000 train / 1000 test, length 40
        x, xt = (torch.tensor(d[k], dtype=torch.float32).unsqueeze(1) for k in ("x", "x_test"))
        return x, torch.tensor(d["y"]), xt, torch.tensor(d["y_test"])
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()  # 1797 8x8 images, bundled with scikit-learn
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)
        y = torch.tensor(d.target)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        x, y = x[order], y[order]
        n = int(0.8 * len(y))
        x = (x - x[:n].mean()) / x[:n].std()
        return split(x, y)
    raise ValueError(f"unknown data set {name!r}")


def split(x: torch.Tensor, y: torch.Tensor):
    """The first four fifths to train on, the last fifth to test on."""
    n = int(0.8 * len(y))
    return x[:n], y[:n], x[n:], y[n:]


def validation_split(data):
    """The training set split again (for --tune: the real test set stays unseen)."""
    return split(*data[:2])


# ----- networks ---------------------------------------------------------------------------------

def make_convs(setting: Setting, correction: Optional[str], power: float, groups: int = 1) -> List[nn.Module]:
    """The setting's convolutions, torch.nn's (correction None) or strideconv's, each `groups` wide."""
    if correction is None:
        conv, extra = (nn.Conv1d, nn.Conv2d)[setting.dim - 1], {}
    else:
        conv, extra = (strideconv.Conv1d, strideconv.Conv2d)[setting.dim - 1], dict(correction=correction, power=power)
    return [conv(groups * cin, groups * cout, k, stride=s, padding=p, groups=groups, **extra)
            for cin, cout, k, s, p in setting.layers]


def conv_layers(net: nn.Module) -> List[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]


def head_features(setting: Setting) -> int:
    size = 40 if setting.data == "mnist1d" else 8
    for _, _, k, s, p in setting.layers:
        size = (size + 2 * p - k) // s + 1
    return setting.layers[-1][1] * size ** setting.dim


def single_network(setting: Setting, correction: Optional[str] = None, power: float = 0.5) -> nn.Sequential:
    """The network as a user writes it: convolutions and ReLUs, then a linear head."""
    mods: List[nn.Module] = []
    for conv in make_convs(setting, correction, power):
        mods += [conv, nn.ReLU()]
    return nn.Sequential(*mods, nn.Flatten(), nn.Linear(head_features(setting), 10))


def initialise(net: nn.Sequential, init: str) -> nn.Sequential:
    if init == "kaiming":  # torchvision's ResNet init, PyTorch's fan_out
        for m in conv_layers(net):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    elif init == "kaiming-stride":
        strideconv.init.init_convs_(net)  # the same, with the effective fan_out of each conv
    elif init != "default":
        raise ValueError(f"unknown init {init!r}; choose from {INITS}")
    return net


class Side(nn.Module):
    """G copies of one network side by side: group g of every convolution is copy g's layer."""

    def __init__(self, setting: Setting, correction: Optional[str], power: float, nets: List[nn.Sequential]):
        super().__init__()
        self.groups = len(nets)
        self.convs = nn.ModuleList(make_convs(setting, correction, power, self.groups))
        singles = [conv_layers(net) for net in nets]
        heads = [net[-1] for net in nets]
        with torch.no_grad():
            for i, c in enumerate(self.convs):
                c.weight.copy_(torch.cat([s[i].weight for s in singles]))
                c.bias.copy_(torch.cat([s[i].bias for s in singles]))
            self.head_w = nn.Parameter(torch.stack([h.weight.t() for h in heads]))  # (G, F, 10)
            self.head_b = nn.Parameter(torch.stack([h.bias for h in heads]))  # (G, 10)
        self.inputs: Optional[List[torch.Tensor]] = None  # set to a list to collect each conv's input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, G * C, *spatial), group g's channels from run g's minibatch. Returns (B, G, 10)."""
        for conv in self.convs:
            if self.inputs is not None:
                self.inputs.append(x)
            x = F.relu(conv(x))
        h = x.reshape(x.shape[0], self.groups, -1)
        return torch.einsum("bgf,gfo->bgo", h, self.head_w) + self.head_b


def side_input(x: torch.Tensor) -> torch.Tensor:
    """(G, B, C, *spatial), a minibatch per run -> (B, G * C, *spatial)."""
    g, b = x.shape[:2]
    return x.transpose(0, 1).reshape(b, g * x.shape[2], *x.shape[3:])


def shared_batch(x: torch.Tensor, y: torch.Tensor, groups: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The same minibatch x (B, C, *spatial), y (B,) for every run: (B, G * C, *spatial), (B, G)."""
    return side_input(x.unsqueeze(0).expand(groups, *x.shape)), y.unsqueeze(1).expand(-1, groups)


def run_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each run's mean cross-entropy (G,); logits (B, G, 10), y (B, G). Their sum is the training
    loss: run g's parameters get exactly the gradient of run g's loss."""
    return F.cross_entropy(logits.permute(0, 2, 1), y, reduction="none").mean(0)


def per_run_rms(t: torch.Tensor, groups: int) -> List[float]:
    return t.reshape(t.shape[0], groups, -1).pow(2).mean(dim=(0, 2)).sqrt().tolist()


def input_grad_rms(model: Side, x: torch.Tensor, y: torch.Tensor) -> List[List[float]]:
    """RMS of the gradient reaching each conv's input (the data's for the first), per run: [layer][run].

    The gradient is the one each layer passes back: the corrected one for strideconv layers."""
    model.inputs = []
    try:
        x, y = shared_batch(x, y, model.groups)
        loss = run_losses(model(x.requires_grad_(True)), y).sum()
        grads = torch.autograd.grad(loss, model.inputs)
    finally:
        model.inputs = None
    return [per_run_rms(g, model.groups) for g in grads]


def evaluate(model: Side, x: torch.Tensor, y: torch.Tensor) -> Tuple[List[float], List[float]]:
    """Per-run test accuracy and test loss."""
    with torch.no_grad():
        x, y = shared_batch(x, y, model.groups)
        logits = model(x)
        acc = (logits.argmax(-1) == y).float().mean(0)
        loss = run_losses(logits, y)
    return acc.tolist(), loss.tolist()


def batch_order(seed: int, n: int, batch: int, steps: int) -> torch.Tensor:
    """Minibatch indices (steps, batch) of one seed: consecutive reshuffled epochs."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    epochs = math.ceil(steps * batch / n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(epochs)])[: steps * batch].view(steps, batch)


def make_runs(setting: Setting, correction, power, runs: List[Tuple[str, int]]) -> Side:
    nets = []
    for init, seed in runs:
        torch.manual_seed(seed)  # the same initial weights for every variant (strideconv draws as torch.nn)
        nets.append(initialise(single_network(setting), init))
    return Side(setting, correction, power, nets)


def train(setting: Setting, correction, power, runs: List[Tuple[str, int]], data, device="cpu"):
    """Train the runs (init, seed) of one variant side by side; returns per-run curves and results."""
    x, y, xt, yt = (t.to(device) for t in data)
    model = make_runs(setting, correction, power, runs).to(device)
    g = model.groups
    if setting.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=setting.lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=setting.lr, momentum=0.9)
    order = torch.stack([batch_order(seed, len(y), setting.batch, setting.steps) for _, seed in runs]).to(device)
    probe = (x[:500], y[:500])  # a fixed batch for the gradient norms
    out = dict(grad_rms_init=input_grad_rms(model, *probe), steps=[], train_loss=[], test_acc=[], test_loss=[])
    running = torch.zeros(g, device=device)
    for step in range(1, setting.steps + 1):
        idx = order[:, step - 1]  # (G, B)
        logits = model(side_input(x[idx]))
        per_run = run_losses(logits, y[idx].t())
        opt.zero_grad(set_to_none=True)
        per_run.sum().backward()
        opt.step()
        running += per_run.detach()
        if step % setting.eval_every == 0 or step == setting.steps:
            span = step - (out["steps"][-1] if out["steps"] else 0)
            acc, loss = evaluate(model, xt, yt)
            out["steps"].append(step)
            out["train_loss"].append((running / span).tolist())
            out["test_acc"].append(acc)
            out["test_loss"].append(loss)
            running.zero_()
    out["grad_rms_final"] = input_grad_rms(model, *probe)
    out["final_acc"] = out["test_acc"][-1]
    return out


def _job(args):
    setting, variant, runs, data, device, threads = args
    torch.set_num_threads(threads)
    _, correction, power = next(v for v in VARIANTS if v[0] == variant)
    t0 = time.perf_counter()
    res = train(setting, correction, power, runs, data, device)
    res["seconds"] = time.perf_counter() - t0
    return setting.name, variant, runs, res


def run_jobs(jobs, device, workers):
    """Yield the jobs' results in order: from a process pool on CPU, one after another on CUDA."""
    if device != "cpu" or workers <= 1:
        for job in jobs:
            yield _job(job + (device, torch.get_num_threads()))
        return
    ctx = multiprocessing.get_context("spawn")  # no forked OpenMP state
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = [pool.submit(_job, job + (device, 1)) for job in jobs]
        for f in futures:
            yield f.result()


# ----- summary, report, plots -------------------------------------------------------------------

def collect(raw, settings, inits):
    """raw[(setting, variant)] -> per run results; regroup per init, runs in seed order."""
    table = {}
    for s in settings:
        for variant, _, _ in VARIANTS:
            runs, res = raw[(s.name, variant)]
            for init in inits:
                cols = [i for i, (ini, _) in enumerate(runs) if ini == init]
                pick = lambda rows: [[row[i] for i in cols] for row in rows]  # noqa: E731
                table[(s.name, variant, init)] = dict(
                    seeds=[runs[i][1] for i in cols],
                    final_acc=[res["final_acc"][i] for i in cols],
                    steps=res["steps"],
                    train_loss=pick(res["train_loss"]),
                    test_acc=pick(res["test_acc"]),
                    grad_rms_init=pick(res["grad_rms_init"]),
                    grad_rms_final=pick(res["grad_rms_final"]),
                    seconds=res["seconds"],
                )
    return table


def as_rows(table) -> List[dict]:
    """The table as train.json stores it: one dict per (setting, variant, init)."""
    return [dict(setting=k[0], variant=k[1], init=k[2], **v) for k, v in table.items()]


def relative_profile(rows: List[List[float]]) -> List[float]:
    """Per layer: mean over runs of RMS(dx_l) / RMS(dx_L), the last conv's input gradient.

    Runs whose last layer passes back no gradient at all (every ReLU dead) are left out; NaN if all are."""
    alive = [i for i, top in enumerate(rows[-1]) if top > 0]
    return [statistics.fmean(row[i] / rows[-1][i] for i in alive) if alive else math.nan for row in rows]


def report(meta, settings, inits, table, seeds, plots) -> str:
    lines = [
        "# strideconv training report", "",
        f"- date: {meta['date']}", f"- machine: {meta['machine']}", f"- torch {meta['torch']}",
        f"- device: {meta['device']}", f"- command: `{meta['command']}`", f"- wall time: {meta['wall_s']:.0f} s",
        "",
        f"Final test accuracy (%), mean ± standard deviation over {seeds} seeds. A seed fixes the initial "
        "weights and the minibatch order, the same for every variant; `Δ` is the mean paired difference "
        "to `plain` (same seed, same init) ± its standard deviation. Hyperparameters are fixed per "
        "setting and shared by all variants.", "",
    ] + accuracy_table(as_rows(table))
    for s in settings:
        lines += ["", f"## {s.name}", "", f"{s.note}. Layers (in, out, kernel, stride, padding): "
                  f"{', '.join(str(l) for l in s.layers)}; {s.steps} steps, batch {s.batch}.", ""]
        lines.append("| variant | " + " | ".join(f"{i} | Δ {i}" for i in inits) + " |")
        lines.append("|---" * (1 + 2 * len(inits)) + "|")
        for variant, _, _ in VARIANTS:
            cells = []
            for init in inits:
                acc = [100 * a for a in table[(s.name, variant, init)]["final_acc"]]
                base = [100 * a for a in table[(s.name, "plain", init)]["final_acc"]]
                m, sd = mean_std(acc)
                cells.append(f"{m:.1f} ± {sd:.1f}")
                dm, dsd = mean_std([a - b for a, b in zip(acc, base)])
                cells.append("" if variant == "plain" else f"{dm:+.1f} ± {dsd:.1f}")
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines += ["", "Input-gradient RMS of each conv layer relative to the last conv's, on a fixed batch of "
                  "500 training examples, mean over seeds, at initialisation → after training (Kaiming's "
                  "fan_out analysis intends 1 for every layer at initialisation; runs whose last layer passes back no "
                  "gradient, every ReLU dead, are left out, nan if all are):", "",
                  "| variant | init | " + " | ".join(f"layer {i + 1}" for i in range(len(s.layers) - 1)) + " |",
                  "|---|---|" + "---|" * (len(s.layers) - 1)]
        for variant, _, _ in VARIANTS:
            for init in inits:
                r = table[(s.name, variant, init)]
                a, b = relative_profile(r["grad_rms_init"]), relative_profile(r["grad_rms_final"])
                lines.append(f"| {variant} | {init} | " +
                             " | ".join(f"{u:.2f} → {v:.2f}" for u, v in list(zip(a, b))[:-1]) + " |")
        lines += ["", f"![{s.name}]({plots[s.name]})"]
    return "\n".join(lines) + "\n"


def plot(setting, inits, table, out_dir) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(inits), figsize=(5 * len(inits), 7.5), squeeze=False, sharex=True)
    colours = plt.cm.tab10(np.arange(len(VARIANTS)))
    for col, init in enumerate(inits):
        for (variant, _, _), colour in zip(VARIANTS, colours):
            r = table[(setting.name, variant, init)]
            style = "--" if "p=1" in variant else "-"
            colour = "black" if variant == "plain" else colour
            for row, key in enumerate(("train_loss", "test_acc")):
                vals = np.array(r[key])  # (evals, seeds)
                m, sd = vals.mean(1), vals.std(1)
                ax = axes[row, col]
                ax.plot(r["steps"], m, style, color=colour, lw=2 if variant == "plain" else 1.2, label=variant)
                ax.fill_between(r["steps"], m - sd, m + sd, color=colour, alpha=0.12)
        axes[0, col].set_title(f"{setting.name}, init: {init}")
        axes[0, col].set_yscale("log")
        axes[0, col].set_ylabel("training loss (mean of each interval)")
        axes[1, col].set_ylabel("test accuracy")
        axes[1, col].set_xlabel("step")
    axes[1, 0].legend(fontsize=8)
    fig.tight_layout()
    name = f"train_{setting.name}.png"
    fig.savefig(os.path.join(out_dir, name), dpi=90)
    plt.close(fig)
    return name


# ----- --tune: the plain-only learning-rate sweep -----------------------------------------------

def tune(settings, seeds, device, workers):
    jobs = []
    for s in settings:
        data = validation_split(load_data(s.data))
        for lr in TUNE_LRS[s.optimizer]:
            jobs.append((replace(s, lr=lr), "plain", [(i, sd) for i in INITS for sd in seeds], data))
    print("plain-only sweep, validation accuracy (%) at the last step, mean over seeds:")
    results = run_jobs(jobs, device, workers)
    for (s, _, runs, _), (_, _, _, res) in zip(jobs, tqdm(results, total=len(jobs))):
        by_init = {i: statistics.fmean(a for (ini, _), a in zip(runs, res["final_acc"]) if ini == i) for i in INITS}
        print(f"  {s.name} {s.optimizer} lr={s.lr:g}: " + ", ".join(f"{i} {100 * a:.1f}" for i, a in by_init.items())
              + f"; mean {100 * statistics.fmean(by_init.values()):.1f}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, a few dozen steps")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--settings", nargs="*", default=[s.name for s in SETTINGS],
                        choices=[s.name for s in SETTINGS])
    parser.add_argument("--inits", nargs="*", default=INITS, choices=INITS, help="a subset of the inits")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes on CPU")
    parser.add_argument("--tune", action="store_true", help="run the plain-only learning-rate sweep and stop")
    parser.add_argument("--from-json", metavar="FILE", help="write train.md and the plots again from FILE")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    settings = [s for s in SETTINGS if s.name in args.settings]
    seeds = list(range(2 if args.quick else args.seeds))
    if args.quick:
        settings = [replace(s, steps=30, eval_every=10) for s in settings]
    if args.from_json:
        return rerender(args.from_json)
    if args.tune:
        return tune(settings, list(range(3)) if not args.quick else seeds, args.device, args.jobs)

    t0 = time.perf_counter()
    datasets = {name: load_data(name) for name in {s.data for s in settings}}
    inits = [i for i in INITS if i in args.inits]
    runs = [(init, seed) for init in inits for seed in seeds]
    jobs = [(s, v, runs, datasets[s.data]) for s in settings for v, _, _ in VARIANTS]
    raw = {}
    for name, variant, job_runs, res in tqdm(run_jobs(jobs, args.device, args.jobs), total=len(jobs), desc="training"):
        raw[(name, variant)] = (job_runs, res)
    table = collect(raw, settings, inits)
    os.makedirs(args.out, exist_ok=True)
    meta = dict(describe(args.device, "benchmarks/train.py", argv), wall_s=time.perf_counter() - t0)
    with open(os.path.join(args.out, "train.json"), "w") as f:
        json.dump(dict(meta=meta, settings=[asdict(s) for s in settings], variants=VARIANTS, inits=inits,
                       results=as_rows(table)),
                  f, indent=1)
    write_report(args.out, meta, settings, inits, table, len(seeds))


def write_report(out_dir, meta, settings, inits, table, seeds):
    plots = {s.name: plot(s, inits, table, out_dir) for s in settings}
    text = report(meta, settings, inits, table, seeds, plots)
    with open(os.path.join(out_dir, "train.md"), "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {out_dir}/train.md, train.json and {len(plots)} plots")


def rerender(path: str) -> None:
    """Write train.md and the plots again from a train.json (no training)."""
    with open(path) as f:
        data = json.load(f)
    settings = [Setting(**dict(d, layers=tuple(tuple(l) for l in d["layers"]))) for d in data["settings"]]
    keys = ("setting", "variant", "init")
    table = {tuple(r[k] for k in keys): {k: v for k, v in r.items() if k not in keys} for r in data["results"]}
    write_report(os.path.dirname(os.path.abspath(path)), data["meta"], settings, data["inits"], table,
                 len(data["results"][0]["final_acc"]))


if __name__ == "__main__":
    main()
