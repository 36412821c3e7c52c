"""Where the input gradient is the product: the stride pattern of image-space gradients of a
strided CNN trained on real 28x28 digits, plain and corrected.

    python benchmarks/image_gradients.py           # 3 seeds, a few minutes on two CPU cores
    python benchmarks/image_gradients.py --quick   # smoke run

A CNN with three 3x3/2 convolutions (28 -> 14 -> 7 -> 4) is trained plainly (Adam). The same
trained weights are then used with each correction (strideconv.convert: same forward, corrected
input gradient), and three studies measure the checkerboard of what the gradient makes:

(a) input gradients d loss / d x on the test images;
(b) feature visualisation: from noise, gradient ascent on each class logit (no jitter, no
    regulariser), what the ascent added to the image;
(c) adversarial perturbations: L_inf PGD on the test images; the perturbations and the attack
    success rate.

Metrics (strideconv.metrics): the stride-phase energy ratio (strides 2 and 4, border 2) and the
stride-2 harmonic energy ratio. Writes image_gradients.md, .json and pictures into --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

import strideconv
from strideconv.metrics import harmonic_energy_ratio, phase_energy_ratio

from common import describe, mean_std, tqdm
from digits import load_digits28

# label, correction, power (None: the plain network)
VARIANTS = [("plain", None, 0.5), ("position", "position", 0.5), ("position, power 1", "position", 1.0),
            ("kernel", "kernel", 0.5), ("map", "map", 0.5)]


def strided_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 4 * 4, 10),
    )


def train(seed, data, epochs, device, batch=64, lr=1e-3) -> nn.Module:
    torch.manual_seed(seed)
    model = strided_cnn().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    x, y = data.train.x.to(device), data.train.y.to(device)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def variant(model, correction, power) -> nn.Module:
    """The trained network with its convolutions' input gradient corrected (same forward)."""
    if correction is None:
        return model
    return strideconv.convert(copy.deepcopy(model), correction=correction, power=power)


def pattern(t: torch.Tensor) -> dict:
    return dict(phase2=phase_energy_ratio(t, 2, border=2), phase4=phase_energy_ratio(t, 4, border=2),
                harmonic2=harmonic_energy_ratio(t, 2))


def input_gradients(model, x, y):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return g


def feature_visualisation(model, steps, lr, seed, device):
    """One image per class, by normalised gradient ascent on the logit from N(0.5, 0.1) noise,
    clamped to [0, 1]; returns the change from the start (the sum of the steps the gradient
    made) and the final logits. The steps are small enough that few pixels reach the clamp."""
    g = torch.Generator().manual_seed(seed)
    start = (0.5 + 0.1 * torch.randn(10, 1, 28, 28, generator=g)).to(device)
    x = start.clone().requires_grad_(True)
    classes = torch.arange(10, device=device)
    for _ in range(steps):
        logit = model(x).gather(1, classes[:, None]).sum()
        (grad,) = torch.autograd.grad(logit, x)
        with torch.no_grad():
            x += lr * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            x.clamp_(0, 1)
    with torch.no_grad():
        return (x - start).detach(), model(x).gather(1, classes[:, None]).squeeze(1)


def pgd(model, x, y, eps, steps):
    """L_inf PGD from the clean image (no random start): the perturbations and which succeed."""
    alpha = 2.5 * eps / steps
    delta = torch.zeros_like(x, requires_grad=True)
    for _ in range(steps):
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y, reduction="sum"), delta)
        with torch.no_grad():
            delta += alpha * grad.sign()
            delta.clamp_(-eps, eps)
            delta.copy_((x + delta).clamp(0, 1) - x)
    with torch.no_grad():
        fooled = model(x + delta).argmax(1) != y
    return delta.detach(), fooled


def pictures(out_dir, shown):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    # (a) image, plain gradient, corrected gradients
    x, grads = shown["a"]
    cols = [("image", x)] + list(grads.items())
    fig, axes = plt.subplots(len(x), len(cols), figsize=(1.6 * len(cols), 1.6 * len(x)))
    for j, (title, t) in enumerate(cols):
        for i in range(len(x)):
            img = t[i, 0]
            if title == "image":
                axes[i, j].imshow(img, cmap="gray", vmin=0, vmax=1)
            else:
                m = img.abs().max().item() or 1.0
                axes[i, j].imshow(img, cmap="RdBu_r", vmin=-m, vmax=m)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[0, j].set_title(title if title == "image" else f"d loss/dx, {title}", fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "image_gradients_a.png"), dpi=110)
    plt.close(fig)
    files.append("image_gradients_a.png")
    # (b) feature visualisation, 10 classes per variant: what the ascent added to the start
    vis = shown["b"]
    fig, axes = plt.subplots(len(vis), 10, figsize=(12, 1.3 * len(vis)))
    for i, (title, imgs) in enumerate(vis.items()):
        for c in range(10):
            m = imgs[c, 0].abs().max().item() or 1.0
            axes[i, c].imshow(imgs[c, 0], cmap="RdBu_r", vmin=-m, vmax=m)
            axes[i, c].set_xticks([])
            axes[i, c].set_yticks([])
        axes[i, 0].set_ylabel(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "image_gradients_b.png"), dpi=110)
    plt.close(fig)
    files.append("image_gradients_b.png")
    return files


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=None, help="trained networks (default 3; 1 with --quick)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    args = parser.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 3)
    epochs, vis_steps, pgd_steps, n_test = (1, 20, 5, 200) if args.quick else (6, 100, 20, 1000)
    vis_lr = 0.05
    eps = 0.1
    os.makedirs(args.out, exist_ok=True)
    data = load_digits28()
    dev = args.device
    x_test, y_test = data.test.x[:n_test].to(dev), data.test.y[:n_test].to(dev)
    records, shown = [], {}
    for seed in tqdm(range(seeds), desc="image-gradient seeds", file=sys.stdout):
        model = train(seed, data, epochs, dev)
        with torch.no_grad():
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        correct = model(x_test).argmax(1) == y_test
        for label, correction, power in VARIANTS:
            net = variant(model, correction, power)
            grads = input_gradients(net, x_test, y_test)
            change, logits = feature_visualisation(net, vis_steps, vis_lr, seed, dev)
            delta, fooled = pgd(net, x_test[correct], y_test[correct], eps, pgd_steps)
            records.append(dict(
                seed=seed, variant=label, test_accuracy=accuracy,
                gradients=pattern(grads), visualisation=pattern(change),
                visualisation_logit=logits.mean().item(),
                perturbation=pattern(delta), attack_success=fooled.float().mean().item(),
            ))
            if seed == 0:
                shown.setdefault("a", (x_test[:5].cpu(), {}))[1][label] = grads[:5].cpu()
                shown.setdefault("b", {})[label] = change.cpu()
    real = pattern(data.test.x[:n_test] - data.test.x[:n_test].mean(dim=(2, 3), keepdim=True))
    rows = []
    for label, _, _ in VARIANTS:
        rs = [r for r in records if r["variant"] == label]
        row = dict(variant=label)
        for study in ("gradients", "visualisation", "perturbation"):
            for key in ("phase2", "phase4", "harmonic2"):
                row[f"{study}_{key}"] = mean_std([r[study][key] for r in rs])
        row["visualisation_logit"] = mean_std([r["visualisation_logit"] for r in rs])
        row["attack_success"] = mean_std([100 * r["attack_success"] for r in rs])
        rows.append(row)
    files = pictures(args.out, shown)
    meta = describe(dev, "benchmarks/image_gradients.py", argv)
    acc = mean_std([100 * r["test_accuracy"] for r in records if r["variant"] == "plain"])
    f2 = lambda v: f"{v[0]:.2f} ± {v[1]:.2f}"  # noqa: E731
    lines = [
        "# Image-space gradients of a strided CNN on 28x28 digits", "",
        f"- date: {meta['date']}; machine: {meta['machine']}; torch {meta['torch']}; device: {meta['device']}",
        f"- command: `{meta['command']}`",
        f"- network: three 3x3/2 convolutions (32, 64, 64 channels; 28 -> 14 -> 7 -> 4), ReLU, a linear head; "
        f"trained plainly with Adam ({epochs} epochs, 3,500 images); test accuracy {acc[0]:.1f} ± {acc[1]:.1f} % "
        f"over {seeds} seeds. Every variant uses the same trained weights (same forward); only the input "
        "gradient differs.",
        "- metrics (`strideconv.metrics`): stride-phase energy ratio at strides 2 and 4 (border 2), stride-2 "
        "harmonic energy ratio; 1 = no stride pattern. Mean ± std over the seeds. Real test images (mean removed): "
        f"phase 2: {real['phase2']:.2f}, phase 4: {real['phase4']:.2f}, harmonic 2: {real['harmonic2']:.3f}.", "",
        f"## (a) Input gradients d loss / d x ({n_test} test images)", "",
        "| variant | phase ratio, stride 2 | phase ratio, stride 4 | harmonic ratio, stride 2 |", "|---|---|---|---|",
    ]
    lines += [f"| {r['variant']} | {f2(r['gradients_phase2'])} | {f2(r['gradients_phase4'])} | "
              f"{f2(r['gradients_harmonic2'])} |" for r in rows]
    lines += ["", "![input gradients](image_gradients_a.png)", "",
              f"## (b) Feature visualisation ({vis_steps} normalised ascent steps of L2 size {vis_lr} on each class "
              "logit from N(0.5, 0.1) noise, clamped to [0, 1]; no jitter, no regulariser; metrics of the change "
              "from the start, which is what the gradient drew)", "",
              "| variant | phase ratio, stride 2 | phase ratio, stride 4 | harmonic ratio, stride 2 | final logit |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {f2(r['visualisation_phase2'])} | {f2(r['visualisation_phase4'])} | "
              f"{f2(r['visualisation_harmonic2'])} | {f2(r['visualisation_logit'])} |" for r in rows]
    lines += ["", "![feature visualisation](image_gradients_b.png)", "",
              f"## (c) PGD, L_inf eps = {eps}, {pgd_steps} steps of 2.5 eps / steps, on the correctly classified "
              "test images", "",
              "| variant | phase ratio, stride 2 | phase ratio, stride 4 | harmonic ratio, stride 2 | attack success % |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {f2(r['perturbation_phase2'])} | {f2(r['perturbation_phase4'])} | "
              f"{f2(r['perturbation_harmonic2'])} | {f2(r['attack_success'])} |" for r in rows]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "image_gradients.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "image_gradients.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows, records=records, real=real, files=files), f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
