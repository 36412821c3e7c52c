"""Whole training steps: converted models against the same models plain, as the user pays for
them (forward, loss, backward and an SGD step), in eager mode, under torch.compile and, on a
GPU, with the whole step captured in a CUDA graph (where no host cost is left).

    python benchmarks/models.py                    # CPU: small widths, one thread
    python benchmarks/models.py --device cuda      # GPU: full widths, channels_last, bf16 autocast
    python benchmarks/models.py --quick            # smoke run

The models are built here (no torchvision needed): ResNet-18 and ResNet-50 in torchvision's
layout (7x7/2 stem, 3x3/2 convolutions in the first block of each stage, 1x1/2 shortcuts), a
DCGAN-style generator (3x3/2 transposed convolutions with BatchNorm) and a small U-Net (3x3/2
convolutions down, 3x3/2 transposed convolutions up); and three model-zoo patterns (zoo.py): a
weight-standardised ResNet stage, an EfficientNet-like stem and blocks with TensorFlow "same"
padding, a blur-pool downsample. `strideconv.convert` (with ``transposed=True`` for the generator
and the U-Net, with ``example_input`` for the zoo patterns) gives the converted twin, with the
same weights. Plain and converted steps alternate in shuffled rounds; the ratio is the median
converted step over the median plain step, with the quartiles of the per-round ratios. Writes
models.md and models.json into --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

import strideconv

import speed
import zoo
from common import calls_lasting, describe, keep_freed_memory, meta_lines, one_thread, paired_rounds, per_call_clock, record_folder, tqdm


# ----- the models -----------------------------------------------------------------------------

class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.shortcut = _shortcut(cin, width, stride)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride):
        super().__init__()
        out = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)  # torchvision's (v1.5) stride place
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut = _shortcut(cin, out, stride)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


def _shortcut(cin, cout, stride):
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


def resnet(block, depths, width=64, classes=1000) -> nn.Module:
    layers = [nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = width
    for i, depth in enumerate(depths):
        for j in range(depth):
            layers.append(block(cin, width * 2 ** i, 2 if (i > 0 and j == 0) else 1))
            cin = width * 2 ** i * block.expansion
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


def generator(latent=128, width=64) -> nn.Module:
    """DCGAN-style: 4x4 from the latent, then three 3x3/2 transposed convolutions to 32x32."""
    def up(cin, cout):
        return [nn.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        nn.Unflatten(1, (latent, 1, 1)), nn.ConvTranspose2d(latent, width * 4, 4, 1, 0, bias=False),
        nn.BatchNorm2d(width * 4), nn.ReLU(), *up(width * 4, width * 2), *up(width * 2, width),
        nn.ConvTranspose2d(width, 3, 3, 2, 1, output_padding=1), nn.Tanh(),
    )


class UNet(nn.Module):
    """Two 3x3/2 convolutions down, two 3x3/2 transposed convolutions up, with skips."""

    def __init__(self, width=32):
        super().__init__()
        def block(cin, cout, stride=1):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.inc = block(3, width)
        self.down1, self.down2 = block(width, 2 * width, 2), block(2 * width, 4 * width, 2)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 3, 2, 1, output_padding=1)
        self.dec2 = block(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 3, 2, 1, output_padding=1)
        self.dec1 = block(2 * width, width)
        self.out = nn.Conv2d(width, 3, 1)

    def forward(self, x):
        a = self.inc(x)
        b = self.down1(a)
        c = self.down2(b)
        y = self.dec2(torch.cat([self.up2(c), b], 1))
        return self.out(self.dec1(torch.cat([self.up1(y), a], 1)))


ZOO = ["WS-ResNet stage", "EfficientNet stem+blocks", "Blur-pool downsample"]


# (name, build, input shape without batch, loss kind, convert transposed layers, convert with an example input)
def model_specs(cuda: bool, quick: bool):
    w = 64 if cuda else (8 if quick else 16)
    size = 224 if cuda else (32 if quick else 64)
    specs = [
        ("ResNet-18", lambda: resnet(Basic, [2, 2, 2, 2], w), (3, size, size), "classify", False, False),
        ("ResNet-50", lambda: resnet(Bottleneck, [3, 4, 6, 3], w), (3, size, size), "classify", False, False),
        ("DCGAN generator", lambda: generator(128, w), (128,), "image", True, False),
        ("U-Net", lambda: UNet(w // 2), (3, size, size), "image", True, False),
        (ZOO[0], lambda: zoo.ws_resnet_stage(w // 2), (3, size // 2, size // 2), "classify", False, True),
        (ZOO[1], lambda: zoo.efficientnet_stem_block(w), (3, size, size), "classify", False, True),
        (ZOO[2], lambda: zoo.blurpool_downsample(w), (3, size, size), "classify", False, True),
    ]
    return [specs[0], specs[2], specs[5]] if quick else specs


# ----- one training step ----------------------------------------------------------------------

def make_step(model, x, target, kind, autocast, device):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ctx = (lambda: torch.autocast(device.split(":")[0], torch.bfloat16)) if autocast else nullcontext

    def step():
        with ctx():
            out = model(x)
            loss = F.cross_entropy(out, target) if kind == "classify" else (out.float() - target).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # keeps .grad buffers: a CUDA graph needs fixed addresses

    return step


def graphed(step, device):
    """The whole step captured in a CUDA graph (after warm-up on a side stream)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def build_pair(spec, batch, device, cuda):
    name, build, shape, kind, transposed, example = spec
    torch.manual_seed(0)
    plain = build().to(device)
    fmt = torch.channels_last if cuda and len(shape) == 3 else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=g).to(device)
    if len(shape) == 3:
        x = x.contiguous(memory_format=fmt)
    converted = strideconv.convert(copy.deepcopy(plain), transposed=transposed, example_input=x if example else None)
    plain, converted = plain.to(memory_format=fmt), converted.to(memory_format=fmt)
    with torch.no_grad():
        out_shape = plain.eval()(x[:1]).shape[1:]
    plain.train()
    target = (torch.randint(out_shape[0], (batch,), generator=g) if kind == "classify"
              else torch.randn(batch, *out_shape, generator=g)).to(device)
    return plain, converted, x, target, kind


ROUND_S = 0.2  # on CPU, each variant's share of a round lasts at least this long (steps repeated)


def measure(steps, clock, rounds, reps):
    """Median ms per step of plain and converted, and the converted / plain ratio with the
    quartiles of the per-round ratios (shuffled interleaved rounds; common.paired_rounds). With
    ``reps`` None, as many steps per round as last ROUND_S seconds (at least 2)."""
    if reps is None:
        reps = calls_lasting(steps["plain"], clock, ROUND_S)
    r = paired_rounds(steps, "plain", clock, rounds, reps)
    c, a = r["converted"], r["control"]
    return dict(plain_ms=1e3 * r["plain"]["median"], converted_ms=1e3 * c["median"], ratio=c["ratio"],
                q1=c["ratio_q1"], q3=c["ratio_q3"], control=a["ratio"], control_q1=a["ratio_q1"],
                control_q3=a["ratio_q3"], reps=reps)


def run(device, quick, modes, names=None, compile_names=None, rounds=None):
    cuda = device.startswith("cuda")
    batch = (16 if quick else 64) if cuda else (2 if quick else 8)
    default_rounds, reps = (3, 1) if quick else ((11, 5) if cuda else (41, None))
    rounds = rounds or default_rounds
    clock = per_call_clock(device)
    # on CPU, glibc keeps freed buffers: otherwise some rounds pay fresh page faults for a step's
    # large temporaries and others do not (common.keep_freed_memory)
    malloc_kept = keep_freed_memory() if not cuda else False
    rows = []
    with one_thread(enabled=not cuda):
        specs = [s for s in model_specs(cuda, quick) if names is None or s[0] in names]
        for spec in tqdm(specs, desc="models", file=sys.stdout):
            for mode in modes:
                if (mode == "CUDA graph" and not cuda) or (
                        mode == "compile" and compile_names is not None and spec[0] not in compile_names):
                    continue
                plain, converted, x, target, kind = build_pair(spec, batch, device, cuda)
                # control: a second copy of the plain model, timed against the first (A/A)
                models = {"plain": plain, "converted": converted, "control": copy.deepcopy(plain)}
                if mode == "compile":
                    torch._dynamo.reset()
                    models = {n: torch.compile(m) for n, m in models.items()}
                steps = {n: make_step(m, x, target, kind, cuda, device) for n, m in models.items()}
                if mode == "CUDA graph":
                    steps = {n: graphed(s, device) for n, s in steps.items()}
                r = measure(steps, clock, rounds, reps)
                rows.append(dict(model=spec[0], mode=mode, batch=batch, **r))
    return rows, dict(batch=batch, rounds=rounds, malloc_kept=malloc_kept, reps=reps or f"as many as last {ROUND_S} s", clock="CUDA events" if cuda else "thread CPU time, one thread",
                      autocast="bf16" if cuda else None, layout="channels_last" if cuda else "contiguous")


def report(meta, rows, info) -> str:
    lines = [
        "# Whole training steps: converted against plain", "",
        *meta_lines(meta),
        f"- batch {info['batch']}; {info['clock']}; {info['rounds']} shuffled rounds, each variant's steps in a round: {info['reps']}; "
        f"layout {info['layout']}" + (f", {info['autocast']} autocast" if info["autocast"] else "")
        + ("; glibc keeps freed buffers (no page faults that depend on the round)" if info.get("malloc_kept") else "") + ". A step: "
        "forward, loss, backward, SGD with momentum. Converted: `strideconv.convert` (position, power 0.5; "
        "transposed layers too for the generator and the U-Net; with `example_input` for the zoo patterns, whose "
        "subclasses and functional calls run inside the mode). Ratio: median converted step over median plain "
        "step; quartiles of the per-round ratios. Control: a second copy of the plain model timed against the "
        "first the same way (how far from 1.000 the machine's noise alone reads).", "",
        "| model | mode | plain ms | converted ms | ratio | per-round quartiles | control (A/A) | steps per round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['model']} | {r['mode']} | {r['plain_ms']:.2f} | {r['converted_ms']:.2f} | {r['ratio']:.3f} | "
              f"{r['q1']:.3f}-{r['q3']:.3f} | {r['control']:.3f} ({r['control_q1']:.3f}-{r['control_q3']:.3f}) | "
              f"{r.get('reps', info['reps'])} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--modes", nargs="*", default=["eager", "compile", "CUDA graph"],
                        choices=["eager", "compile", "CUDA graph"], help="CUDA graph runs on a GPU only")
    parser.add_argument("--models", nargs="*", default=None, help="a subset of the models, by name")
    parser.add_argument("--compile-models", nargs="*", default=None,
                        help="the models that also run under torch.compile (default: all; compiling takes minutes)")
    parser.add_argument("--rounds", type=int, default=None, help="shuffled rounds (default 41 on CPU, 11 on a GPU)")
    parser.add_argument("--out", default=None, help="the record's folder (default: a new one under out/)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    args.out = record_folder(args.out, __file__, args.device, ["models.md", "models.json"])
    meta = describe(args.device, "benchmarks/models.py", argv)
    rows, info = run(args.device, args.quick, args.modes, args.models, args.compile_models, args.rounds)
    info["context"] = speed.context_overhead(args.device, args.quick)  # what the zoo patterns' scoped modules pay
    text = report(meta, rows, info) + "\n".join(speed.context_section(info["context"])) + "\n"
    with open(os.path.join(args.out, "models.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "models.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows, **info), f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
