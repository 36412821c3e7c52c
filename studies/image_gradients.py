"""The stride pattern of what image-space gradients make: input gradients (plain, SmoothGrad,
gradient x input) and adversarial perturbations (L_inf and L2 PGD) of a strided CNN trained on
real 28x28 digits, plain and corrected.

    python studies/image_gradients.py                   # 10 seeds, about 5 minutes on two CPU cores
    python studies/image_gradients.py --seeds 100-109   # other seeds (a count, a range or a list)
    python studies/image_gradients.py --quick           # smoke run

Per seed, a CNN with three 3x3/2 convolutions (digit_cnn.py) is trained plainly; every gradient
variant uses its weights (same forward). The pattern metrics (strideconv.metrics: stride-phase
energy ratio at strides 2 and 4, stride-2 harmonic energy ratio; 1 = no stride pattern) show
whether the stride pattern is gone. They cannot show that the result is better: the post-hoc
phase-equalised baseline removes the pattern too, and attribution.py and image_optimisation.py
measure the tasks. PGD's success rate is a task measure: a corrected gradient that is not the
steepest ascent makes a weaker attack.

Every comparison is paired by seed: the median over seeds and the mean difference to plain with
its 95% t-interval. Writes image_gradients.md, .json and image_gradients.png into --out.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(1, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "benchmarks"))  # common.py, shared with the benchmark
from common import describe, meta_lines, paired, paired_cell, study_arguments, tqdm, write_study
from digit_cnn import GRADIENTS, accuracy, corrected, pattern, phase_equalised, strided_cnn, train
from digits import load_digits28

GRADIENTS = dict(GRADIENTS, **{"position, power 1": ("position", 1.0), "map": ("map", 0.5)})
VARIANTS = ["plain", "position", "kernel", "position, power 1", "map", "phase-equalised"]
SMOOTHGRAD = dict(samples=16, std=0.15)
PGD = {"L_inf": dict(eps=0.1, steps=20), "L2": dict(eps=1.5, steps=20)}


def loss_gradient(model, x, y):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return g


def smoothgrad(model, x, y, samples, std, seed):
    g = torch.Generator().manual_seed(seed)
    total = torch.zeros_like(x)
    for _ in range(samples):
        noise = std * torch.randn(x.shape, generator=g).to(x.device)
        total += loss_gradient(model, x + noise, y)
    return total / samples


def pgd(model, x, y, norm, eps, steps):
    """PGD from the clean image (no random start), steps of 2.5 eps / steps along the sign of
    the gradient (L_inf) or its direction (L2), projected onto the ball and into [0, 1]; the
    perturbations and which succeed."""
    step = 2.5 * eps / steps
    delta = torch.zeros_like(x, requires_grad=True)
    for _ in range(steps):
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y, reduction="sum"), delta)
        with torch.no_grad():
            if norm == "L_inf":
                delta += step * grad.sign()
                delta.clamp_(-eps, eps)
            else:
                delta += step * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                delta *= (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1).view(-1, 1, 1, 1)
            delta.copy_((x + delta).clamp(0, 1) - x)
    with torch.no_grad():
        fooled = model(x + delta).argmax(1) != y
    return delta.detach(), fooled


def one_seed(seed, data, sizes, dev):
    model = train(strided_cnn(28).to(dev), data.train.x.to(dev), data.train.y.to(dev), sizes["epochs"], seed)
    x, y = data.test.x[: sizes["images"]].to(dev), data.test.y[: sizes["images"]].to(dev)
    rec = dict(seed=seed, accuracy=accuracy(model, data.test.x.to(dev), data.test.y.to(dev)))
    with torch.no_grad():
        right = model(x).argmax(1) == y
    shown = {}
    for name in VARIANTS:
        if name == "phase-equalised":
            net = phase_equalised(model, data.train.x[:500].to(dev), data.train.y[:500].to(dev))
        else:
            net = model if GRADIENTS.get(name) is None else corrected(model, *GRADIENTS[name])
        grad = loss_gradient(net, x, y)
        shown[name] = grad[:4].cpu()
        rec[f"gradient|{name}"] = pattern(grad)
        rec[f"SmoothGrad|{name}"] = pattern(smoothgrad(net, x, y, sizes["samples"], SMOOTHGRAD["std"], seed))
        rec[f"gradient x input|{name}"] = pattern(grad * x)
        for norm, p in PGD.items():
            delta, fooled = pgd(net, x[right], y[right], norm, p["eps"], p["steps"])
            rec[f"PGD {norm}|{name}"] = dict(pattern(delta), success=100 * fooled.float().mean().item())
    return rec, (x[:4].cpu(), shown)


def picture(path, example):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, grads = example
    cols = [("image", x)] + list(grads.items())
    fig, axes = plt.subplots(len(x), len(cols), figsize=(1.6 * len(cols), 1.6 * len(x)))
    for j, (title, t) in enumerate(cols):
        for i in range(len(x)):
            img = t[i, 0]
            if j == 0:
                axes[i, j].imshow(img, cmap="gray", vmin=0, vmax=1)
            else:
                m = img.abs().max().item() or 1.0
                axes[i, j].imshow(img, cmap="RdBu_r", vmin=-m, vmax=m)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[0, j].set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def statistics_of(records) -> dict:
    """Per study and measure, the paired statistics of every variant."""
    out = {}
    studies = sorted({k.split("|")[0] for k in records[0] if "|" in k})
    for study in studies:
        measures = records[0][f"{study}|plain"].keys()
        out[study] = {m: paired({v: [r[f"{study}|{v}"][m] for r in records] for v in VARIANTS}, "plain",
                                ratio=m != "success") for m in measures}
    return out


def report(meta, sizes, seeds, records, stats, real) -> str:
    acc = sorted(100 * r["accuracy"] for r in records)
    lines = [
        "# Image-space gradients of a strided CNN on 28x28 digits: the stride pattern", "",
        *meta_lines(meta),
        f"- {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}); per seed a CNN with three 3x3/2 convolutions (32, 64, 64 "
        f"channels; 28 -> 14 -> 7 -> 4) trained plainly with Adam ({sizes['epochs']} epochs, 3,500 images; test "
        f"accuracy {acc[0]:.1f}-{acc[-1]:.1f} %); every variant uses its weights (same forward). {sizes['images']} test "
        "images.",
        "- metrics (`strideconv.metrics`): stride-phase energy ratio at strides 2 and 4 (border 2), stride-2 harmonic "
        "energy ratio; 1 = no stride pattern. Real test images (mean removed): "
        f"phase 2: {real['phase2']:.2f}, phase 4: {real['phase4']:.2f}, harmonic 2: {real['harmonic2']:.3f}.",
        "- cells: median over seeds, then against plain on the same seeds: for the pattern ratios the geometric-mean "
        "factor (x) with its 95% t-interval (paired logarithms), for success rates the mean difference in points "
        "[95% t-interval]. phase-equalised: the plain "
        "gradient with each stride-4 phase rescaled to equal mean energy (no strideconv); it removes the pattern by "
        "construction, which is why a pattern metric is no evidence of a better gradient.", "",
    ]
    titles = {
        "gradient": "Input gradient d loss / d x",
        "SmoothGrad": f"SmoothGrad (mean of {sizes['samples']} gradients at noise std {SMOOTHGRAD['std']})",
        "gradient x input": "Gradient x input",
        "PGD L_inf": f"PGD perturbation, L_inf eps {PGD['L_inf']['eps']}, {PGD['L_inf']['steps']} steps "
                     "(correctly classified images)",
        "PGD L2": f"PGD perturbation, L2 eps {PGD['L2']['eps']}, {PGD['L2']['steps']} steps (correctly classified "
                  "images)",
    }
    for study in ("gradient", "SmoothGrad", "gradient x input", "PGD L_inf", "PGD L2"):
        measures = list(stats[study])
        lines += [f"## {titles[study]}", "", "| variant | " + " | ".join(measures) + " |",
                  "|---" * (len(measures) + 1) + "|"]
        for v in VARIANTS:
            lines.append(f"| {v} | " + " | ".join(paired_cell(stats[study][m][v], 2) for m in measures) + " |")
        lines.append("")
        if study == "gradient":
            lines += ["![input gradients](image_gradients.png)", ""]
    return "\n".join(lines)


def main(argv=None):
    args, seeds = study_arguments(__doc__, argv, __file__, "image_gradients")
    sizes = dict(epochs=1, images=64, samples=4) if args.quick else dict(epochs=6, images=1000, samples=SMOOTHGRAD["samples"])
    data = load_digits28()
    records, example = [], None
    for seed in tqdm(seeds, desc="image-gradient seeds", file=sys.stdout):
        rec, shown = one_seed(seed, data, sizes, args.device)
        records.append(rec)
        example = example or shown
    stats = statistics_of(records)
    x = data.test.x[: sizes["images"]]
    real = pattern(x - x.mean(dim=(2, 3), keepdim=True))
    meta = describe(args.device, "studies/image_gradients.py", argv)
    picture(os.path.join(args.out, "image_gradients.png"), example)
    text = report(meta, sizes, seeds, records, stats, real)
    write_study(args.out, "image_gradients", text, dict(meta=meta, sizes=sizes, seeds=seeds, variants=VARIANTS,
                                                       records=records, stats=stats, real=real))


if __name__ == "__main__":
    main()
