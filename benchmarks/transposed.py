"""Transposed convolutions: speed and memory of strideconv.ConvTranspose2d's normalised forward
against F.conv_transpose2d and against the plain-op normalisation a user would write; and the
output-variance map at random initialisation, plain and normalised."""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from typing import List

import torch
import torch.nn.functional as F

import strideconv
from strideconv.functional import conv_transpose2d
from strideconv.metrics import phase_energy_ratio

from common import (
    CORRECTIONS, ROUND_S, count_and_variance_figure, fmt, keep_freed_memory, one_thread, paired_rounds,
    peak_memory, per_call_clock, round_calls, table_rounds, tqdm,
)

# name, in, out, kernel, stride, padding, output padding, input size
SHAPES = [
    ("DCGAN 4x4/2, 8->16", 256, 128, 4, 2, 1, 0, 8),
    ("DCGAN 4x4/2, 16->32", 128, 64, 4, 2, 1, 0, 16),
    ("DCGAN 4x4/2, 32->64", 64, 3, 4, 2, 1, 0, 32),
    ("3x3/2 up, 8->16", 256, 128, 3, 2, 1, 1, 8),
    ("3x3/2 up, 16->32", 128, 64, 3, 2, 1, 1, 16),
    ("3x3/2 up, 32->64", 64, 32, 3, 2, 1, 1, 32),
    ("U-Net decoder 2x2/2, 32->64", 128, 64, 2, 2, 0, 0, 32),
    ("ConvNeXt-style 4x4/4, 56->224", 96, 3, 4, 4, 0, 0, 56),
]
PLAIN = "F.conv_transpose2d"
PLAIN_OPS = "plain ops"  # F.conv_transpose2d, times a precomputed factor map, plus the bias


def make_variants(x, w, b, s, p, a, factor_map):
    inputs = (x, w, b)
    bias_view = b.view(1, -1, 1, 1)

    calls = {
        PLAIN: lambda: F.conv_transpose2d(x, w, b, s, p, a),
        "control": lambda: F.conv_transpose2d(x, w, b, s, p, a),  # A/A: how far from 1.00 noise alone reads
        PLAIN_OPS: lambda: F.conv_transpose2d(x, w, None, s, p, a) * factor_map + bias_view,
    }
    calls.update({c: (lambda c: lambda: conv_transpose2d(x, w, b, s, p, a, correction=c))(c) for c in CORRECTIONS})
    grad_out = torch.randn_like(calls[PLAIN]().detach())

    # A ReLU follows, as in a decoder: the gradient then reaches the layer as it does in training,
    # a fresh tensor that nothing else holds (which a corrected backward may scale in place).
    def train_step(fwd):
        return lambda: torch.autograd.grad(torch.relu(fwd()), inputs, grad_out)

    def fwd_only(fwd):
        def step():
            with torch.no_grad():
                return fwd()
        return step

    return {k: train_step(f) for k, f in calls.items()}, {k: fwd_only(f) for k, f in calls.items()}


BAND = "band passes"  # position's in-place scaling of the output's border band, alone


def _band_pass(x, w, b, k, s, p, a):
    """One in-place pass of ``strideconv.scale_border_`` over a buffer of the layer's output size,
    with the bias: what ``position`` adds to the plain layer in the forward (and once more, on
    the output gradient, in the backward). The buffer holds zeros, which the pass keeps."""
    with torch.no_grad():
        out = torch.zeros_like(F.conv_transpose2d(x, w, b, s, p, a))
    scale = torch.ops.strideconv.scale_border_
    return lambda: scale(out, [k, k], [s, s], [p, p], [1, 1], 0.5, [a, a], b.detach())


def speed_table(device, quick, rounds=None):
    """fwd+bwd and forward time of every variant on every shape against F.conv_transpose2d, as the
    convolution's speed suite times them: shuffled paired rounds, the ratio of the medians, the
    quartiles of the per-round ratios, an A/A control per shape; on CPU one thread, thread CPU
    time, as many calls per round as last ROUND_S."""
    cuda = device.startswith("cuda")
    kept = False if cuda else keep_freed_memory()
    batch = (8 if quick else 32) if cuda else (1 if quick else 4)
    rounds = table_rounds(rounds, cuda, quick)
    modes = [("float32", False)] + ([("bf16 autocast", True)] if cuda else [])
    shapes = [SHAPES[1], SHAPES[4]] if quick else SHAPES
    clock, rows = per_call_clock(device), []
    for dtype_name, autocast in modes:
        for name, cin, cout, k, s, p, a, size in tqdm(shapes, desc=f"transposed {dtype_name}", file=sys.stdout):
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(batch, cin, size, size, generator=gen).to(device).requires_grad_()
            w = torch.randn(cin, cout, k, k, generator=gen).div_((cin * k * k) ** 0.5).to(device).requires_grad_()
            b = torch.zeros(cout, device=device, requires_grad=True)
            factor_map = strideconv.transposed_factors((size, size), k, s, p, a).position
            factor_map = factor_map.to(device, torch.bfloat16 if autocast else torch.float32)
            ctx = torch.autocast(device.split(":")[0], torch.bfloat16) if autocast else nullcontext()
            with ctx, one_thread(enabled=not cuda):
                train, fwd = make_variants(x, w, b, s, p, a, factor_map)
                if not autocast:  # what position's band passes cost alone (its floor), fwd and fwd+bwd
                    band = _band_pass(x, w, b, k, s, p, a)
                    train[BAND], fwd[BAND] = (lambda: (band(), band())), band
                rt = paired_rounds(train, PLAIN, clock, rounds, round_calls(train[PLAIN], clock, cuda, quick))
                rf = paired_rounds(fwd, PLAIN, clock, rounds, round_calls(fwd[PLAIN], clock, cuda, quick), seed=1)
                memory = peak_memory(train, device, PLAIN) if cuda else {}
            for n in train:
                rows.append(dict(
                    shape=name, dtype=dtype_name, batch=batch, variant=n,
                    train_s=rt[n]["median"], fwd_s=rf[n]["median"],
                    train_ratio=rt[n]["ratio"], train_q1=rt[n]["ratio_q1"], train_q3=rt[n]["ratio_q3"],
                    fwd_ratio=rf[n]["ratio"], fwd_q1=rf[n]["ratio_q1"], fwd_q3=rf[n]["ratio_q3"],
                    vs_plain_ops=rt[n]["median"] / rt[PLAIN_OPS]["median"],
                    peak_mem_ratio=memory.get(n),
                ))
    return rows, dict(batch=batch, rounds=rounds, malloc_kept=kept,
                      clock="CUDA events" if cuda else "thread CPU time, one thread")


def output_variance_map(k, s, p, a, size, correction, draws, device):
    """Var[y(j)] at random init (input and weight N(0, 1), no bias), per output position, over
    independent draws run side by side as groups; correction None is plain F.conv_transpose2d."""
    gen = torch.Generator(device=device).manual_seed(11)
    c = 3
    x = torch.randn(1, draws * c, size, size, generator=gen, device=device)
    w = torch.randn(draws * c, 1, k, k, generator=gen, device=device)
    if correction is None:
        y = F.conv_transpose2d(x, w, None, s, p, a, groups=draws)
    else:
        y = conv_transpose2d(x, w, None, s, p, a, groups=draws, correction=correction)
    return y.reshape(draws, *y.shape[-2:]).double().pow(2).mean(0).cpu()


def variance_pictures(out_dir, device, quick):
    """The output-variance map plain vs normalised, with the stride-phase ratio of each (border
    excluded); returns the picture names and the ratios."""
    draws = 200 if quick else 2000
    files, ratios = [], []
    for k, s, p, a, size in [(3, 2, 1, 1, 12), (4, 2, 1, 0, 12)]:
        n = k * k * 3
        maps = [("F.conv_transpose2d", output_variance_map(k, s, p, a, size, None, draws, device)),
                ('correction="position"', output_variance_map(k, s, p, a, size, "position", draws, device))]
        name = f"transposed_variance_k{k}_s{s}.png"
        count_and_variance_figure(
            os.path.join(out_dir, name),
            ("output count C", strideconv.transposed_count_map((size, size), k, s, p, a).double()),
            [(f"Var[y], {t}", m) for t, m in maps], 1.3 * n,
            f"ConvTranspose2d kernel {k}, stride {s}, padding {p}, output padding {a}, {size}x{size} input, "
            f"3 channels: a stride-1 layer gives Var[y] = k*k*c = {n} ({draws} draws)")
        files.append(name)
        for label, m in maps:
            inner = m[None, None, 2 * k:-2 * k, 2 * k:-2 * k]
            ratios.append(dict(geometry=f"k{k} s{s} p{p} a{a}", variant=label,
                               phase_ratio_interior=phase_energy_ratio(inner.sqrt(), s),
                               phase_ratio_all=phase_energy_ratio(m[None, None].sqrt(), s),
                               mean_var_over_stride1=m.mean().item() / n))
    return files, ratios, draws


def report_section(rows, meta, pics, ratios, draws) -> List[str]:
    lines = [
        "## Transposed convolutions", "",
        "### Output variance at random initialisation", "",
        f"Input and weight N(0, 1), 3 input channels, no bias, {draws} draws. `phase ratio` is the "
        "stride-phase energy ratio (`strideconv.metrics.phase_energy_ratio`) of the standard deviation map: "
        "max over min of the mean Var[y] of each stride phase, inside (2k from the borders) and over the whole "
        "output. `mean Var / stride-1` is the mean output variance over that of a stride-1 layer with K taps.", "",
        "| geometry | variant | phase ratio, interior | phase ratio, whole output | mean Var / stride-1 |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['geometry']} | {r['variant']} | {r['phase_ratio_interior']:.3f} | {r['phase_ratio_all']:.3f} | "
              f"{r['mean_var_over_stride1']:.3f} |" for r in ratios]
    lines += [""] + [f"![{p}]({p})" for p in pics] + [
        "", "### Speed and memory", "",
        f"Batch {meta['batch']}; {meta.get('clock', 'wall clock')}; {meta['rounds']} shuffled paired rounds "
        f"(on CPU as many calls per round as last {ROUND_S} s); the ratio of the medians, with the quartiles of the "
        "per-round ratios; `control` is `F.conv_transpose2d` timed against itself; "
        "fwd+bwd computes the input, weight and bias gradients of the layer followed by a ReLU (the gradient "
        "reaches the layer as in training: a fresh tensor). Ratios are to `F.conv_transpose2d` in the same "
        "run; `vs plain ops` is the fwd+bwd time over that of `plain ops` (F.conv_transpose2d, times a "
        "precomputed position factor map, plus the bias: the normalisation written by hand). Peak memory: "
        "CUDA allocator peak during fwd+bwd relative to F.conv_transpose2d (not measured on CPU).", "",
        "| shape | dtype | variant | fwd+bwd ms | fwd+bwd ratio (quartiles) | fwd ratio (quartiles) | vs plain ops "
        "| peak mem ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['shape']} | {r['dtype']} | {r['variant']} | {r['train_s'] * 1e3:.3f} | {r['train_ratio']:.3f} "
              f"({fmt(r.get('train_q1'), 3)}-{fmt(r.get('train_q3'), 3)}) | {r['fwd_ratio']:.3f} "
              f"({fmt(r.get('fwd_q1'), 3)}-{fmt(r.get('fwd_q3'), 3)}) | {r['vs_plain_ops']:.3f} | "
              f"{fmt(r['peak_mem_ratio'], 3)} |" for r in rows]
    return lines
