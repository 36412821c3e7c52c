"""The average-pooling benchmark: strideconv.functional.avg_pool2d against F.avg_pool2d, fwd+bwd
on pooling layers of real networks, and the per-call cost of strideconv.AvgPool2d against
nn.AvgPool2d, timed as speed.py times the convolutions (run.py runs both and writes their
tables)."""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

import strideconv

from common import CORRECTIONS, fmt, keep_freed_memory, one_thread, paired_rounds, per_call_clock, round_calls, table_rounds


# name, channels, kernel, stride, padding, input size
POOLS = [
    ("DenseNet transition 2x2/2", 128, 2, 2, 0, 56),
    ("ResNet-D shortcut 2x2/2", 256, 2, 2, 0, 56),
    ("3x3/2, padding 1", 64, 3, 2, 1, 56),
]


def table(device, quick, rounds=None):
    """fwd+bwd time of strideconv.functional.avg_pool2d against F.avg_pool2d (the corrected
    backward applies a factor per input position as it writes the input gradient), timed as
    speed_suite times: shuffled paired rounds, quartiles of the per-round ratios, an A/A control
    per shape; on CPU one thread, thread CPU time, as many calls per round as last ROUND_S."""
    cuda = device.startswith("cuda")
    if not cuda:
        keep_freed_memory()  # as speed_suite: no page faults that depend on the round
    batch = (8 if quick else 32) if cuda else (1 if quick else 2)
    rounds = table_rounds(rounds, cuda, quick)
    clock, rows = per_call_clock(device), []
    for name, c, k, s, p, size in (POOLS[:1] if quick else POOLS):
        x = torch.randn(batch, c, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        x.requires_grad_()
        grad_out = torch.randn_like(F.avg_pool2d(x.detach(), k, s, p))
        calls = {"F.avg_pool2d": lambda: F.avg_pool2d(x, k, s, p), "control": lambda: F.avg_pool2d(x, k, s, p)}
        calls.update({c_: (lambda c_: lambda: strideconv.functional.avg_pool2d(x, k, s, p, correction=c_))(c_)
                      for c_ in CORRECTIONS})
        train = {n: (lambda f: lambda: torch.autograd.grad(f(), x, grad_out))(f) for n, f in calls.items()}
        with one_thread(enabled=not cuda):
            r = paired_rounds(train, "F.avg_pool2d", clock, rounds, round_calls(train["F.avg_pool2d"], clock, cuda, quick))
        rows += [dict(shape=name, batch=batch, variant=n, train_s=r[n]["median"], train_ratio=r[n]["ratio"],
                      train_q1=r[n]["ratio_q1"], train_q3=r[n]["ratio_q3"], rounds=rounds) for n in calls]
    return rows


def overhead(device, quick):
    """Per-call cost of the pooling modules where the arithmetic is negligible (a 1x1x6x6 input,
    2x2/2): strideconv.AvgPool2d with each correction against nn.AvgPool2d, fwd+bwd and fwd (no_grad),
    timed as overhead_table times (one thread, thread CPU time or CUDA events, shuffled rounds,
    medians of the per-round differences); the control is nn.AvgPool2d against itself. More
    rounds than overhead_table's: a step of about 60 us spreads by several us between rounds
    here, and the claim to check is a bound of 1.5 us."""
    rounds, reps = (5, 20) if quick else (201, 200)
    x = torch.randn(1, 1, 6, 6, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_()
    grad_out = torch.ones(1, 1, 3, 3, device=device)
    plain = torch.nn.AvgPool2d(2)
    modules = {"nn.AvgPool2d": plain, "nn.AvgPool2d (control)": plain}
    modules.update({f"strideconv.AvgPool2d {c}": strideconv.AvgPool2d(2, correction=c) for c in CORRECTIONS})
    train = {n: (lambda m: lambda: torch.autograd.grad(m(x), x, grad_out))(m) for n, m in modules.items()}

    def no_grad(m):
        def run():
            with torch.no_grad():
                return m(x)
        return run

    fwd = {n: no_grad(m) for n, m in modules.items()}
    clock = per_call_clock(device)
    with one_thread():
        t = paired_rounds(train, "nn.AvgPool2d", clock, rounds, reps)
        f = paired_rounds(fwd, "nn.AvgPool2d", clock, rounds, reps, seed=1)
    return [dict(variant=n, fwd_us=f[n]["median"] * 1e6, train_us=t[n]["median"] * 1e6,
                 fwd_extra_us=f[n]["extra"] * 1e6, fwd_extra_q1_us=f[n]["extra_q1"] * 1e6,
                 fwd_extra_q3_us=f[n]["extra_q3"] * 1e6, train_extra_us=t[n]["extra"] * 1e6,
                 train_extra_q1_us=t[n]["extra_q1"] * 1e6, train_extra_q3_us=t[n]["extra_q3"] * 1e6,
                 rounds=rounds, reps=reps) for n in modules]


def table_section(rows) -> List[str]:
    """The pooling fwd+bwd table, as Markdown lines."""
    if not rows:
        return []
    lines = [
        "", "## Average pooling", "",
        "`strideconv.functional.avg_pool2d` against `F.avg_pool2d`, fwd+bwd with the input gradient, timed "
        f"as above ({rows[0]['rounds']} rounds; ratio of the medians, quartiles of "
        "the per-round ratios; `control` is `F.avg_pool2d` against itself). Pooling has no weight to "
        "tap-scale: every correction is a factor per input position, which the backward applies as it "
        "writes the input gradient (one pass).", "",
        "| shape | batch | variant | fwd+bwd ms | ratio (quartiles) |",
        "|---|---|---|---|---|",
    ]
    return lines + [f"| {r['shape']} | {r['batch']} | {r['variant']} | {r['train_s'] * 1e3:.3f} | "
                    f"{r['train_ratio']:.3f} ({fmt(r.get('train_q1'), 3)}-{fmt(r.get('train_q3'), 3)}) |" for r in rows]


def overhead_section(rows) -> List[str]:
    """The per-call pooling table, as Markdown lines."""
    if not rows:
        return []
    lines = [
        "", "## Per-call overhead of pooling", "",
        f"`strideconv.AvgPool2d` against `nn.AvgPool2d` on a 1x1x6x6 input, 2x2/2: the fixed cost per call. "
        f"One thread; {rows[0]['rounds']} shuffled rounds of {rows[0]['reps']} calls; extra = the median of the "
        "per-round differences to `nn.AvgPool2d`, with the quartiles; the control is `nn.AvgPool2d` against "
        "itself.", "",
        "| variant | fwd us | fwd+bwd us | fwd extra us [quartiles] | fwd+bwd extra us [quartiles] |",
        "|---|---|---|---|---|",
    ]
    return lines + [f"| {r['variant']} | {r['fwd_us']:.1f} | {r['train_us']:.1f} | {r['fwd_extra_us']:+.2f} "
                    f"[{r['fwd_extra_q1_us']:+.2f}, {r['fwd_extra_q3_us']:+.2f}] | {r['train_extra_us']:+.2f} "
                    f"[{r['train_extra_q1_us']:+.2f}, {r['train_extra_q3_us']:+.2f}] |" for r in rows]
