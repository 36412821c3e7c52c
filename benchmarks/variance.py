"""The gradient-variance study: Var[y_L] and Var[dx_1] of random strided layers against
Kaiming's prediction, and pictures of the per-position variance of the input gradient."""

from __future__ import annotations

import os
import sys
from typing import List

import torch
import torch.nn.functional as F

import strideconv
from strideconv.functional import conv2d

from common import CORRECTIONS, count_and_variance_figure, tqdm

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


def variance_map(k, s, p, size, correction, draws, device):
    gen = torch.Generator(device=device).manual_seed(5)
    c = 3
    x = torch.randn(1, draws * c, size, size, generator=gen, device=device, requires_grad=True)
    w = torch.randn(draws * c, c, k, k, generator=gen, device=device)
    y = grouped_conv(x, w, s, p, draws, correction)
    (dx,) = torch.autograd.grad(y, x, torch.randn(y.shape, generator=gen, device=device))
    return dx.reshape(draws * c, size, size).double().pow(2).mean(0).cpu()


def pictures(out_dir, device, quick):
    draws = 200 if quick else 2000
    files = []
    for k, s, p, size in [(3, 2, 1, 24), (4, 4, 0, 24)]:
        n = k * k * 3
        name = f"variance_k{k}_s{s}.png"
        count_and_variance_figure(
            os.path.join(out_dir, name),
            ("multiplication count C", strideconv.count_map((size, size), k, s, p).double()),
            [("Var[dx], F.conv2d", variance_map(k, s, p, size, None, draws, device)),
             ('Var[dx], correction="position"', variance_map(k, s, p, size, "position", draws, device))],
            1.3 * n,
            f"kernel {k}, stride {s}, padding {p}, {size}x{size} input, 3 channels: "
            f"Kaiming assumes Var[dx] = k*k*c = {n} everywhere ({draws} draws)")
        files.append(name)
    return files


def report_section(rows, draws, pics) -> List[str]:
    """The variance table and the pictures, as Markdown lines."""
    lines = [
        "## Gradient variance (one strided layer)", "",
        f"Weights and inputs N(0, 1), no padding, ReLU between layers, upstream gradient N(0, 1); "
        f"mean over {draws} independent draws. Kaiming predicts Var[y_L] = Var[dx_1] = n^L / 2^(L-1), "
        "n = k*k*c.", "",
        "| setting | stride | variant | Var[y_L] | Var[dx_1] | Kaiming | Var[dx_1] / Kaiming |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['stride']} | {r['variant']} | {r['var_y']:.4g} | "
                     f"{r['var_dx']:.4g} | {r['kaiming']:.4g} | {r['var_dx'] / r['kaiming']:.3f} |")
    return lines + ["", "## Pictures", ""] + [f"![{p}]({p})" for p in pics]
