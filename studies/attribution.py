"""Are corrected gradients better attributions, or only cleaner ones? Faithfulness tests of
saliency maps from a strided CNN on 28x28 digits, plain and corrected, computed with Captum.

    python studies/attribution.py              # 10 seeds, about 15 minutes on two CPU cores
    python studies/attribution.py --quick      # smoke run (2 seeds, tiny sizes)
    python studies/attribution.py --seeds 100-109

For every seed, a CNN with three 3x3/2 convolutions is trained plainly; its gradient variants
(digit_cnn.py: plain, position, kernel, and the post-hoc phase-equalised baseline) share its
weights, so every forward pass, and so every score below, is the same network's. Four Captum
methods on each variant: Saliency (|gradient|), InputXGradient, NoiseTunnel(Saliency)
(SmoothGrad) and IntegratedGradients (zero baseline); plus a random ranking as the floor.

(1) Deletion and insertion (on the 28x28 test digits): pixels are ranked by attribution
    (largest first) and removed to a baseline image (deletion: the true class's probability
    should fall fast; lower AUC is more faithful) or revealed from it (insertion: higher AUC is
    more faithful), for two baselines: zeros and the image blurred (Gaussian, sigma 3).
(2) Energy pointing game (a task whose relevant pixels are known): each test digit pasted at a
    random place on a 48x48 canvas over shuffled-stroke clutter at half contrast
    (digits.pasted_digits), and a network trained on such canvases (the same three 3x3/2
    convolutions, then a 3x3 convolution and a global max: the digit may be anywhere); the share
    of the positive attribution that falls inside the digit's ink box (higher is better; the
    random floor is the box's share of the canvas).

Every comparison is paired by seed: the median over seeds, and the mean difference to plain with
its 95% t-interval. Writes attribution.md, .json and attribution.png into --out.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(1, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "benchmarks"))  # common.py, shared with the benchmark
from common import describe, meta_lines, paired, paired_cell, study_arguments, tqdm, write_study
from digit_cnn import accuracy, pooled_cnn, strided_cnn, train, variants
from digits import load_digits28, pasted_digits

VARIANTS = ["plain", "position", "kernel", "phase-equalised"]
METHODS = ["saliency", "gradient x input", "SmoothGrad", "integrated gradients"]
BLUR_SIGMA = 3.0
SMOOTHGRAD_STD = 0.15


def attribute(method: str, model, x, target, sizes) -> torch.Tensor:
    """One Captum attribution map per image (N, 1, H, W). SmoothGrad's noise is seeded, so every
    gradient variant sees the same noisy copies."""
    from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency

    if method == "saliency":
        return Saliency(model).attribute(x, target=target, abs=True)
    if method == "gradient x input":
        return InputXGradient(model).attribute(x, target=target)
    if method == "SmoothGrad":
        torch.manual_seed(0)
        return NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=sizes["samples"],
                                                      stdevs=SMOOTHGRAD_STD, target=target, abs=True)
    if method == "integrated gradients":
        return IntegratedGradients(model).attribute(x, baselines=0.0, target=target, n_steps=sizes["steps"],
                                                    internal_batch_size=len(x) * sizes["steps"])
    raise ValueError(f"unknown method {method!r}")


def blurred(x: torch.Tensor, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    y = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))


def ranks(attribution: torch.Tensor) -> torch.Tensor:
    """Each pixel's rank (0 = largest attribution) per image, (N, H*W)."""
    order = attribution.flatten(1).argsort(dim=1, descending=True, stable=True)
    out = torch.empty_like(order)
    out.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return out


@torch.no_grad()
def deletion_insertion(model, x, y, rank, baseline, points) -> tuple:
    """AUCs (trapezoid over the removed fraction 0..1) of the true class's probability, mean over
    images: (deletion, insertion)."""
    n, pixels = rank.shape
    counts = torch.linspace(0, pixels, points, device=x.device).round().long()
    masks = (rank[:, None, :] < counts[None, :, None]).to(x.dtype).view(n, points, 1, *x.shape[2:])
    xs, bs = x[:, None], baseline[:, None]
    aucs = []
    for images in (xs * (1 - masks) + bs * masks, bs * (1 - masks) + xs * masks):
        prob = F.softmax(model(images.flatten(0, 1)), 1).view(n, points, -1)
        prob = prob.gather(2, y[:, None, None].expand(n, points, 1))[..., 0]
        aucs.append(((prob[:, 1:] + prob[:, :-1]) / 2).mean(1).mean().item())
    return tuple(aucs)


def inside_share(attribution: torch.Tensor, box: torch.Tensor) -> float:
    """Mean over images of the positive attribution's share inside the box."""
    a = attribution.clamp_min(0).sum(1)  # (N, H, W)
    h, w = a.shape[-2:]
    rows = torch.arange(h, device=a.device)[None, :, None]
    cols = torch.arange(w, device=a.device)[None, None, :]
    t, left, b, r = (box[:, i, None, None] for i in range(4))
    inside = (rows >= t) & (rows < b) & (cols >= left) & (cols < r)
    total = a.flatten(1).sum(1).clamp_min(1e-30)
    return ((a * inside).flatten(1).sum(1) / total).mean().item()


def box_share(box: torch.Tensor, size: int) -> float:
    return ((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])).float().div(size * size).mean().item()


def one_seed(seed, data, pasted, sizes, dev) -> dict:
    """Every measure of one trained network (and one trained on the canvases), by key."""
    out = {}
    model = train(strided_cnn(28).to(dev), data.train.x.to(dev), data.train.y.to(dev), sizes["epochs"], seed)
    x, y = data.test.x[: sizes["images"]].to(dev), data.test.y[: sizes["images"]].to(dev)
    out["accuracy"] = accuracy(model, data.test.x.to(dev), data.test.y.to(dev))
    nets = variants(model, data.train.x[:500].to(dev), data.train.y[:500].to(dev), VARIANTS)
    baselines = {"zeros": torch.zeros_like(x), "blurred": blurred(x)}
    g = torch.Generator().manual_seed(seed)
    random_rank = ranks(torch.rand(x.shape, generator=g).to(dev))
    maps = {}
    for method in METHODS:
        for name, net in nets.items():
            maps[(method, name)] = attribute(method, net, x, y, sizes).detach()
    for base, b in baselines.items():
        d, i = deletion_insertion(model, x, y, random_rank, b, sizes["points"])
        out[f"deletion|{base}|random"], out[f"insertion|{base}|random"] = d, i
        for (method, name), a in maps.items():
            d, i = deletion_insertion(model, x, y, ranks(a), b, sizes["points"])
            out[f"deletion|{base}|{method}|{name}"], out[f"insertion|{base}|{method}|{name}"] = d, i

    # (2) the pointing game on canvases
    tr, te = pasted
    canvas_model = train(pooled_cnn().to(dev), tr.x.to(dev), tr.y.to(dev), sizes["canvas_epochs"], seed, lr=2e-3)
    out["canvas_accuracy"] = accuracy(canvas_model, te.x.to(dev), te.y.to(dev))
    cx, cy, box = te.x[: sizes["images"]].to(dev), te.y[: sizes["images"]].to(dev), te.box[: sizes["images"]].to(dev)
    canvas_nets = variants(canvas_model, tr.x[:500].to(dev), tr.y[:500].to(dev), VARIANTS)
    shown = {}
    for method in METHODS:
        for name, net in canvas_nets.items():
            a = attribute(method, net, cx, cy, sizes).detach()
            out[f"pointing|{method}|{name}"] = inside_share(a, box)
            shown[(method, name)] = a[:1].cpu()
    out["pointing|random"] = box_share(box, cx.shape[-1])
    return out, (cx[:1].cpu(), box[:1].cpu(), shown)


def picture(path, example):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    x, box, shown = example
    fig, axes = plt.subplots(len(METHODS), len(VARIANTS) + 1, figsize=(1.9 * (len(VARIANTS) + 1), 1.9 * len(METHODS)))
    t, left, b, r = box[0].tolist()
    for i, method in enumerate(METHODS):
        panels = [("image", x[0, 0])] + [(name, shown[(method, name)][0, 0]) for name in VARIANTS]
        for j, (title, img) in enumerate(panels):
            ax = axes[i, j]
            if j == 0:
                ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.clamp_min(0), cmap="magma")
            ax.add_patch(patches.Rectangle((left - 0.5, t - 0.5), r - left, b - t, fill=False, ec="cyan", lw=0.8))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
        axes[i, 0].set_ylabel(method, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tables(records: list) -> dict:
    """Per measure (key without the variant), the paired statistics of every variant."""
    keys = records[0].keys()
    out = {}
    for key in keys:
        parts = key.split("|")
        if parts[-1] not in VARIANTS:
            continue
        stem = "|".join(parts[:-1])
        out.setdefault(stem, {})[parts[-1]] = [r[key] for r in records]
    return {stem: paired(values, "plain") for stem, values in out.items()}


def report(meta, sizes, seeds, records, stats, floors) -> str:
    acc = sorted(100 * r["accuracy"] for r in records)
    cacc = sorted(100 * r["canvas_accuracy"] for r in records)
    n = len(seeds)
    lines = [
        "# Faithfulness of corrected gradients as attributions", "",
        *meta_lines(meta),
        f"- {n} seeds ({seeds[0]}..{seeds[-1]}); per seed, a CNN with three 3x3/2 convolutions trained plainly (Adam, "
        f"{sizes['epochs']} epochs on 3,500 digits; test accuracy {acc[0]:.1f}-{acc[-1]:.1f} %) and one on 48x48 "
        f"canvases (the same convolutions, then a 3x3 convolution and a global max; Adam at 2e-3, "
        f"{sizes['canvas_epochs']} epochs; {cacc[0]:.1f}-{cacc[-1]:.1f} %). The variants share "
        "the trained weights: same forward, so every curve is scored by the same network.",
        f"- methods (Captum): Saliency (abs), InputXGradient, NoiseTunnel(Saliency) ({sizes['samples']} samples, "
        f"std {SMOOTHGRAD_STD}), IntegratedGradients (zero baseline, {sizes['steps']} steps); {sizes['images']} test "
        f"images; curves at {sizes['points']} points.",
        "- cells: median over seeds (mean paired difference to plain [95% t-interval]). The phase-equalised baseline "
        "is the plain gradient with each stride-4 phase rescaled to equal mean energy (no strideconv).", "",
    ]
    for curve, better in (("deletion", "lower is more faithful"), ("insertion", "higher is more faithful")):
        for base in ("zeros", "blurred"):
            lines += [f"## {curve.capitalize()} AUC, baseline {base} ({better}; random ranking: "
                      f"{floors[f'{curve}|{base}|random']:.3f})", "",
                      "| method | " + " | ".join(VARIANTS) + " |", "|---" * (len(VARIANTS) + 1) + "|"]
            for method in METHODS:
                row = stats[f"{curve}|{base}|{method}"]
                lines.append(f"| {method} | " + " | ".join(paired_cell(row[v], 3) for v in VARIANTS) + " |")
            lines.append("")
    lines += [f"## Energy pointing game on 48x48 canvases (share of positive attribution inside the digit's ink box; "
              f"higher is better; random: {floors['pointing|random']:.3f})", "",
              "| method | " + " | ".join(VARIANTS) + " |", "|---" * (len(VARIANTS) + 1) + "|"]
    for method in METHODS:
        row = stats[f"pointing|{method}"]
        lines.append(f"| {method} | " + " | ".join(paired_cell(row[v], 3) for v in VARIANTS) + " |")
    lines += ["", "![attributions on a canvas](attribution.png)", ""]
    return "\n".join(lines)


def main(argv=None):
    args, seeds = study_arguments(__doc__, argv, __file__, "attribution")
    if args.quick:
        sizes = dict(epochs=1, canvas_epochs=1, images=24, samples=4, steps=4, points=9, canvas_train=700)
    else:
        sizes = dict(epochs=6, canvas_epochs=12, images=300, samples=16, steps=16, points=17, canvas_train=3500)
    data = load_digits28()
    train_split = data.train._replace(x=data.train.x[: sizes["canvas_train"]], y=data.train.y[: sizes["canvas_train"]])
    pasted = (pasted_digits(train_split, data.train, seed=1), pasted_digits(data.test, data.val, seed=2))
    records, example = [], None
    for seed in tqdm(seeds, desc="attribution seeds", file=sys.stdout):
        rec, shown = one_seed(seed, data, pasted, sizes, args.device)
        records.append(dict(seed=seed, **rec))
        example = example or shown
    stats = tables(records)
    floors = {k: paired({"random": [r[k] for r in records]}, "random")["random"]["median"]
              for k in records[0] if k.endswith("random")}
    meta = describe(args.device, "studies/attribution.py", argv)
    picture(os.path.join(args.out, "attribution.png"), example)
    text = report(meta, sizes, seeds, records, stats, floors)
    write_study(args.out, "attribution", text, dict(meta=meta, sizes=sizes, seeds=seeds, records=records, stats=stats,
                                                   floors=floors, variants=VARIANTS, methods=METHODS))


if __name__ == "__main__":
    main()
