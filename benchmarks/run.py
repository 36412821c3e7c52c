"""strideconv benchmark: gradient variance, pictures, speed and memory against F.conv2d.

    python benchmarks/run.py                 # CPU, a few minutes on two cores
    python benchmarks/run.py --device cuda   # GPU suite: float32 and bf16 autocast, channels_last
    python benchmarks/run.py --quick         # smoke run

Writes report.md, results.json and PNG pictures into --out (default benchmarks/out).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

import strideconv
from strideconv.functional import conv2d

try:
    from tqdm import tqdm
except ImportError:  # progress bar is optional
    def tqdm(iterable=None, **kwargs):
        return iterable

CORRECTIONS = ["none", "map", "kernel", "position"]


# ----- 1. gradient variance (one strided layer, Kaiming's prediction) ----------------------

def grouped_conv(x, w, stride, padding, groups, correction, power=0.5):
    """Independent draws side by side as groups; correction None is plain F.conv2d."""
    if correction is None:
        return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)
    return conv2d(x, w, stride=stride, padding=padding, groups=groups, correction=correction, power=power)


def variance_run(c, k, stride, size, layers, correction, power, draws, batch, device, seed):
    """Mean Var[y_L] and Var[dx_1] over `draws` independent draws, run side by side as groups."""
    gen = torch.Generator(device=device).manual_seed(seed)
    sums = {"y": 0.0, "dx": 0.0}
    done = 0
    while done < draws:
        d = min(batch, draws - done)
        x = torch.randn(1, d * c, size, size, generator=gen, device=device, requires_grad=True)
        h = x
        for layer in range(layers):
            w = torch.randn(d * c, c, k, k, generator=gen, device=device)
            y = grouped_conv(h, w, stride, 0, d, correction, power)
            h = torch.relu(y) if layer < layers - 1 else y
        grad = torch.randn(y.shape, generator=gen, device=device)
        (dx,) = torch.autograd.grad(y, x, grad)
        sums["y"] += y.detach().double().pow(2).mean().item() * d
        sums["dx"] += dx.double().pow(2).mean().item() * d
        done += d
    return sums["y"] / draws, sums["dx"] / draws


def variance_table(device, quick):
    draws = 64 if quick else 1000
    settings = []
    for s in (4, 3, 2, 1):
        settings.append(("1 layer, c=3, k=4, image 100", 3, 4, s, 100, 1))
    for size in (100, 7, 3):
        settings.append((f"1 layer, c=3, k=3, image {size}", 3, 3, 1, size, 1))
    for s in (3, 2, 1):
        settings.append(("3 layers, c=3, k=3, image 100", 3, 3, s, 100, 3))
    variants = [("F.conv2d", None, 0.5)] + [(c, c, 0.5) for c in CORRECTIONS[1:]]
    variants += [("position, power=1", "position", 1.0), ("map, power=1", "map", 1.0)]
    rows = []
    for name, c, k, s, size, layers in tqdm(settings, desc="variance", file=sys.stdout):
        n = k * k * c
        kaiming = n**layers / 2 ** (layers - 1)
        for label, correction, power in variants:
            vy, vdx = variance_run(c, k, s, size, layers, correction, power, draws, 250, device, seed=17)
            rows.append(dict(setting=name, stride=s, variant=label, var_y=vy, var_dx=vdx, kaiming=kaiming))
    return rows, draws


# ----- 2. pictures ----------------------------------------------------------------------------

def variance_map(k, s, p, size, correction, draws, device):
    gen = torch.Generator(device=device).manual_seed(5)
    c = 3
    x = torch.randn(1, draws * c, size, size, generator=gen, device=device, requires_grad=True)
    w = torch.randn(draws * c, c, k, k, generator=gen, device=device)
    y = grouped_conv(x, w, s, p, draws, correction)
    (dx,) = torch.autograd.grad(y, x, torch.randn(y.shape, generator=gen, device=device))
    return dx.reshape(draws * c, size, size).double().pow(2).mean(0).cpu()


def pictures(out_dir, device, quick):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    draws = 200 if quick else 2000
    files = []
    for k, s, p, size in [(3, 2, 1, 24), (4, 4, 0, 24)]:
        counts = strideconv.count_map((size, size), k, s, p).double()
        panels = [
            ("multiplication count C", counts),
            ("Var[dx], F.conv2d", variance_map(k, s, p, size, None, draws, device)),
            ('Var[dx], correction="position"', variance_map(k, s, p, size, "position", draws, device)),
        ]
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
        n = k * k * 3
        for ax, (title, data) in zip(axes, panels):
            vmax = None if title.startswith("multi") else 1.3 * n
            im = ax.imshow(data.numpy(), cmap="viridis", vmin=0, vmax=vmax)
            ax.set_title(title)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.suptitle(f"kernel {k}, stride {s}, padding {p}, {size}x{size} input, 3 channels: "
                     f"Kaiming assumes Var[dx] = k*k*c = {n} everywhere ({draws} draws)")
        fig.tight_layout()
        name = f"variance_k{k}_s{s}.png"
        fig.savefig(os.path.join(out_dir, name), dpi=110)
        plt.close(fig)
        files.append(name)
    return files


# ----- 3 and 4. speed and memory ----------------------------------------------------------------

# name, in, out, kernel, stride, padding, input size, input needs grad
SHAPES = [
    ("ResNet-50 stem 7x7/2", 3, 64, 7, 2, 3, 224, False),
    ("ResNet-50 3x3/2", 128, 128, 3, 2, 1, 56, True),
    ("ResNet-50 1x1/2 shortcut", 256, 512, 1, 2, 0, 56, True),
    ("ViT-B/16 patch 16x16/16", 3, 768, 16, 16, 0, 224, False),
    ("ViT-B/16 patch, input grad", 3, 768, 16, 16, 0, 224, True),
    ("ConvNeXt stem 4x4/4", 3, 96, 4, 4, 0, 224, False),
    ("ConvNeXt stem, input grad", 3, 96, 4, 4, 0, 224, True),
    ("CIFAR 3x3/2", 64, 128, 3, 2, 1, 32, True),
]


class Timer:
    """Wall time of a callable: CUDA events on the GPU, perf_counter after a sync elsewhere."""

    def __init__(self, device):
        self.cuda = device.startswith("cuda")

    def __call__(self, fn, reps):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / reps
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps


def make_variants(x, w, b, s, p, need_input, factor_map):
    inputs = (x, w, b) if need_input else (w, b)

    def plain_fwd():
        return F.conv2d(x, w, b, s, p)

    def ours_fwd(correction):
        return lambda: conv2d(x, w, b, s, p, correction=correction)

    def hook_fwd():
        xi = x.view_as(x)  # a fresh non-leaf each call, so hooks do not pile up
        if need_input:
            xi.register_hook(lambda g: g * factor_map)
        return F.conv2d(xi, w, b, s, p)

    fwds = {"F.conv2d": plain_fwd, "hook": hook_fwd}
    fwds.update({c: ours_fwd(c) for c in CORRECTIONS})

    def train_step(fwd):
        def step():
            y = fwd()
            return torch.autograd.grad(y, inputs, grad_out)
        return step

    def fwd_only(fwd):
        def step():
            with torch.no_grad():
                return fwd()
        return step

    grad_out = torch.randn_like(plain_fwd().detach())
    return {k: train_step(f) for k, f in fwds.items()}, {k: fwd_only(f) for k, f in fwds.items()}


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed buffers (up to 32 MiB) instead of returning them to the OS.

    Otherwise, after some rounds, every large allocation is a fresh mapping that page-faults
    again; which rounds depends on glibc's adaptive threshold, so CPU timings of the same code
    jump by 20-30% from round to round. It applies to every variant alike.
    """
    name = ctypes.util.find_library("c")
    if not name or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def interleaved_medians(train, fwd, timer, rounds, reps):
    """Median seconds per call of every variant, fwd+bwd ("train") and forward-only ("fwd"),
    after one warm-up call each (cuDNN picks its algorithms); rounds are interleaved, every
    variant once per round, so that drifts of the machine hit all variants alike."""
    for fn in list(train.values()) + list(fwd.values()):
        fn()
    times = {(kind, n): [] for kind in ("train", "fwd") for n in train}
    for _ in rounds:
        for n in train:
            times[("train", n)].append(timer(train[n], reps))
            times[("fwd", n)].append(timer(fwd[n], reps))
    return {key: statistics.median(v) for key, v in times.items()}


def speed_suite(device, quick):
    cuda = device.startswith("cuda")
    kept = False if cuda else keep_freed_memory()
    batch = (8 if quick else 32) if cuda else (1 if quick else 2)
    rounds, reps = (3, 2) if quick else ((15, 10) if cuda else (15, 3))
    modes = [("float32", False, torch.contiguous_format)]
    if cuda:
        modes += [("bf16 autocast", True, torch.contiguous_format), ("float32", False, torch.channels_last),
                  ("bf16 autocast", True, torch.channels_last)]
    shapes = SHAPES[:3] if quick else SHAPES
    rows = []
    timer = Timer(device)
    for dtype_name, autocast, fmt in modes:
        for name, cin, cout, k, s, p, size, need_input in tqdm(
            shapes, desc=f"speed {dtype_name} {'channels_last' if fmt is torch.channels_last else ''}",
            file=sys.stdout,
        ):
            if quick:
                size = min(size, 64)
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(batch, cin, size, size, generator=gen).to(device, memory_format=fmt)
            w = torch.randn(cout, cin, k, k, generator=gen).div_((cin * k * k) ** 0.5)
            w = w.to(device, memory_format=fmt).requires_grad_()
            b = torch.zeros(cout, device=device, requires_grad=True)
            x.requires_grad_(need_input)
            factor_map = strideconv.correction_factors((size, size), k, s, p).position
            factor_map = factor_map.to(device, torch.bfloat16 if autocast else torch.float32)
            ctx = torch.autocast(device.split(":")[0], torch.bfloat16) if autocast else nullcontext()
            with ctx:
                train, fwd = make_variants(x, w, b, s, p, need_input, factor_map)
                names = list(train)
                med = interleaved_medians(train, fwd, timer, range(rounds), reps)
                memory = peak_memory(train, names, device) if cuda else {}
            for n in names:
                rows.append(dict(
                    shape=name, dtype=dtype_name,
                    layout="channels_last" if fmt is torch.channels_last else "contiguous",
                    batch=batch, variant=n, input_grad=need_input,
                    train_s=med[("train", n)], fwd_s=med[("fwd", n)],
                    train_ratio=med[("train", n)] / med[("train", "F.conv2d")],
                    fwd_ratio=med[("fwd", n)] / med[("fwd", "F.conv2d")],
                    peak_mem_ratio=memory.get(n),
                ))
    return rows, dict(batch=batch, rounds=rounds, reps=reps, malloc_kept=kept)


def overhead_table(device, quick):
    """Per-call cost where the arithmetic is negligible (a 1x1x5x5 input, 3x3 kernel, stride 2):
    what the Python wrapper, the operator call, the autograd node and the extra kernels cost,
    in microseconds, next to F.conv2d. On a GPU, this is what small, launch-bound layers pay."""
    rounds, reps = (3, 20) if quick else (15, 200)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 5, 5, generator=gen).to(device).requires_grad_()
    w = torch.randn(1, 1, 3, 3, generator=gen).to(device).requires_grad_()
    b = torch.zeros(1, device=device, requires_grad=True)
    factor_map = strideconv.correction_factors((5, 5), 3, 2, 1).position.to(device, torch.float32)
    train, fwd = make_variants(x, w, b, 2, 1, True, factor_map)
    rounds_bar = tqdm(range(rounds), desc="per-call overhead", file=sys.stdout)
    med = {key: t * 1e6 for key, t in interleaved_medians(train, fwd, Timer(device), rounds_bar, reps).items()}
    return [dict(variant=n, fwd_us=med[("fwd", n)], train_us=med[("train", n)],
                 fwd_extra_us=med[("fwd", n)] - med[("fwd", "F.conv2d")],
                 train_extra_us=med[("train", n)] - med[("train", "F.conv2d")]) for n in train], \
        dict(rounds=rounds, reps=reps)


def peak_memory(train, names, device):
    out = {}
    for n in names:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        train[n]()
        torch.cuda.synchronize(device)
        out[n] = torch.cuda.max_memory_allocated(device) - base
    ref = out["F.conv2d"]
    return {n: (v / ref if ref else None) for n, v in out.items()}


# ----- report ---------------------------------------------------------------------------------

def describe(device: str, script: str, argv) -> dict:
    """Date, machine, torch, device and the command line (less --out) of a benchmark run."""
    args = list(argv if argv is not None else sys.argv[1:])
    if "--out" in args:
        del args[args.index("--out"):args.index("--out") + 2]
    args = [a for a in args if not a.startswith("--out=")]
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "CPU"
    return dict(date=datetime.date.today().isoformat(),
                machine=f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
                torch=torch.__version__, device=f"{device}: {name}", command=" ".join(["python", script] + args))


def training_section(out_dir: str) -> list:
    """The accuracy table of benchmarks/train.py when its train.json is in the same directory."""
    path = os.path.join(out_dir, "train.json")
    lines = ["", "## Training", ""]
    if not os.path.exists(path):
        return lines + ["Not run here: `python benchmarks/train.py` with the same `--out` trains plain and corrected "
                        "networks (MNIST-1D, scikit-learn digits, a deep plain CNN) and writes train.md."]
    from train import summary  # benchmarks/train.py

    with open(path) as f:
        data = json.load(f)
    return lines + [f"From [train.md](train.md) (`{data['meta']['command']}`): final test accuracy (%), "
                    f"mean ± std over {len(data['results'][0]['final_acc'])} seeds.", ""] + summary(data["results"])


def fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


def report(meta, var_rows, draws, speed_rows, speed_meta, pics, overhead_rows=(), overhead_meta=None):
    lines = [
        "# strideconv benchmark report", "",
        f"- date: {meta['date']}", f"- machine: {meta['machine']}", f"- torch {meta['torch']}",
        f"- device: {meta['device']}", f"- command: `{meta['command']}`", "",
        "## Gradient variance (one strided layer)", "",
        f"Weights and inputs N(0, 1), no padding, ReLU between layers, upstream gradient N(0, 1); "
        f"mean over {draws} independent draws. Kaiming predicts Var[y_L] = Var[dx_1] = n^L / 2^(L-1), "
        "n = k*k*c.", "",
        "| setting | stride | variant | Var[y_L] | Var[dx_1] | Kaiming | Var[dx_1] / Kaiming |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in var_rows:
        lines.append(f"| {r['setting']} | {r['stride']} | {r['variant']} | {r['var_y']:.4g} | "
                     f"{r['var_dx']:.4g} | {r['kaiming']:.4g} | {r['var_dx'] / r['kaiming']:.3f} |")
    lines += ["", "## Pictures", ""] + [f"![{p}]({p})" for p in pics]
    lines += [
        "", "## Speed and memory", "",
        f"Batch {speed_meta['batch']}; medians of {speed_meta['rounds']} interleaved rounds of "
        f"{speed_meta['reps']} calls each. Ratios are to `F.conv2d` in the same run (1.00 = same "
        "time). fwd+bwd computes every gradient that is needed (no input gradient for a first "
        "layer). `hook` = F.conv2d plus a tensor hook multiplying the input gradient by the "
        "precomputed position factor map. Peak memory: CUDA allocator peak during fwd+bwd, relative "
        "to F.conv2d (not measured on CPU)."
        + (" On CPU, glibc was asked (mallopt) to keep freed buffers, so that no round pays for "
           "fresh page faults that others do not." if speed_meta.get("malloc_kept") else ""), "",
        "| shape | dtype | layout | input grad | variant | fwd+bwd ms | fwd+bwd ratio | fwd ratio | peak mem ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in speed_rows:
        lines.append(f"| {r['shape']} | {r['dtype']} | {r['layout']} | {'yes' if r['input_grad'] else 'no'} | "
                     f"{r['variant']} | {r['train_s'] * 1e3:.3f} | {fmt(r['train_ratio'], 3)} | "
                     f"{fmt(r['fwd_ratio'], 3)} | {fmt(r['peak_mem_ratio'], 3)} |")
    if overhead_rows:
        lines += [
            "", "## Per-call overhead", "",
            "A 1x1x5x5 input, 3x3 kernel, stride 2, padding 1: the arithmetic is negligible, so this is "
            "the fixed cost of each call (Python wrapper, operator dispatch, autograd node, extra kernel "
            f"launches). Microseconds per call, medians of {overhead_meta['rounds']} interleaved rounds "
            f"of {overhead_meta['reps']} calls; fwd is under no_grad, fwd+bwd computes all three gradients.", "",
            "| variant | fwd us | fwd+bwd us | fwd extra us | fwd+bwd extra us |",
            "|---|---|---|---|---|",
        ]
        for r in overhead_rows:
            lines.append(f"| {r['variant']} | {r['fwd_us']:.1f} | {r['train_us']:.1f} | "
                         f"{r['fwd_extra_us']:+.1f} | {r['train_extra_us']:+.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few draws, small shapes")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    parser.add_argument("--skip", nargs="*", default=[], choices=["variance", "pictures", "speed", "overhead"])
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    meta = describe(args.device, "benchmarks/run.py", argv)
    var_rows, draws = variance_table(args.device, args.quick) if "variance" not in args.skip else ([], 0)
    pics = pictures(args.out, args.device, args.quick) if "pictures" not in args.skip else []
    speed_rows, speed_meta = speed_suite(args.device, args.quick) if "speed" not in args.skip else ([], dict(batch=0, rounds=0, reps=0))
    overhead_rows, overhead_meta = overhead_table(args.device, args.quick) if "overhead" not in args.skip else ([], None)
    text = (report(meta, var_rows, draws, speed_rows, speed_meta, pics, overhead_rows, overhead_meta)
            + "\n".join(training_section(args.out)) + "\n")
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(dict(meta=meta, variance=var_rows, draws=draws, speed=speed_rows, speed_meta=speed_meta,
                       overhead=overhead_rows, overhead_meta=overhead_meta), f, indent=1)
    print(text)
    print(f"wrote {args.out}/report.md, results.json and {len(pics)} pictures")


if __name__ == "__main__":
    main()
