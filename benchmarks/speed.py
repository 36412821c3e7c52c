"""Speed and peak memory of strideconv against F.conv2d and a hand-written hook, on the
strided layers of common networks; and the fixed cost per call."""

from __future__ import annotations

import copy
import sys
from contextlib import nullcontext
from typing import List

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import strideconv
from strideconv.functional import conv2d

from common import (CORRECTIONS, ROUND_S, fmt, keep_freed_memory, one_thread, paired_rounds,
                    peak_memory, per_call_clock, round_calls, table_rounds, tqdm)
from zoo import StdConv2d, standardised

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

    # control: F.conv2d timed against itself (A/A), how far from 1.00 the machine's noise reads
    fwds = {"F.conv2d": plain_fwd, "control": lambda: plain_fwd(), "hook": hook_fwd}
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


CONTROL_TOLERANCE = 0.02  # a shape whose control strays further is flagged


def speed_suite(device, quick, rounds=None):
    """fwd+bwd and forward time of every variant on every shape against F.conv2d, in shuffled
    interleaved rounds (common.paired_rounds): medians, the ratio of the medians, the quartiles of
    the per-round ratios, and an A/A control per shape. On CPU: one thread, thread CPU time."""
    cuda = device.startswith("cuda")
    kept = False if cuda else keep_freed_memory()
    batch = (8 if quick else 32) if cuda else (1 if quick else 2)
    rounds = table_rounds(rounds, cuda, quick)
    clock = per_call_clock(device)
    modes = [("float32", False, torch.contiguous_format)]
    if cuda:
        modes += [("bf16 autocast", True, torch.contiguous_format), ("float32", False, torch.channels_last),
                  ("bf16 autocast", True, torch.channels_last)]
    shapes = SHAPES[:3] if quick else SHAPES
    rows, flagged, all_reps = [], [], []
    for dtype_name, autocast, memory_format in modes:
        for name, cin, cout, k, s, p, size, need_input in tqdm(
            shapes, desc=f"speed {dtype_name} {'channels_last' if memory_format is torch.channels_last else ''}",
            file=sys.stdout,
        ):
            if quick:
                size = min(size, 64)
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(batch, cin, size, size, generator=gen).to(device, memory_format=memory_format)
            w = torch.randn(cout, cin, k, k, generator=gen).div_((cin * k * k) ** 0.5)
            w = w.to(device, memory_format=memory_format).requires_grad_()
            b = torch.zeros(cout, device=device, requires_grad=True)
            x.requires_grad_(need_input)
            factor_map = strideconv.correction_factors((size, size), k, s, p).position
            factor_map = factor_map.to(device, torch.bfloat16 if autocast else torch.float32)
            ctx = torch.autocast(device.split(":")[0], torch.bfloat16) if autocast else nullcontext()
            with ctx, one_thread(enabled=not cuda):
                train, fwd = make_variants(x, w, b, s, p, need_input, factor_map)
                reps = (round_calls(train["F.conv2d"], clock, cuda, quick), round_calls(fwd["F.conv2d"], clock, cuda, quick))
                rt = paired_rounds(train, "F.conv2d", clock, rounds, reps[0])
                rf = paired_rounds(fwd, "F.conv2d", clock, rounds, reps[1])
                memory = peak_memory(train, device, "F.conv2d") if cuda else {}
            layout = "channels_last" if memory_format is torch.channels_last else "contiguous"
            all_reps.append(reps)
            for n in train:
                rows.append(dict(
                    shape=name, dtype=dtype_name, layout=layout, batch=batch, variant=n, input_grad=need_input,
                    train_s=rt[n]["median"], fwd_s=rf[n]["median"],
                    train_ratio=rt[n]["ratio"], train_q1=rt[n]["ratio_q1"], train_q3=rt[n]["ratio_q3"],
                    fwd_ratio=rf[n]["ratio"], fwd_q1=rf[n]["ratio_q1"], fwd_q3=rf[n]["ratio_q3"],
                    peak_mem_ratio=memory.get(n), reps=reps,
                ))
            control = rows[-len(train) + 1]
            if max(abs(control["train_ratio"] - 1), abs(control["fwd_ratio"] - 1)) > CONTROL_TOLERANCE:
                flagged.append(f"{name} ({dtype_name}, {layout})")
    if flagged:
        print(f"WARNING: the control (F.conv2d against itself) strays more than {CONTROL_TOLERANCE:.0%} from 1.00 on: "
              + "; ".join(flagged) + ". The machine was busy there: rerun those shapes on an idle machine.",
              file=sys.stderr)
    return rows, dict(batch=batch, rounds=rounds, reps=f"{min(r[0] for r in all_reps)}-{max(r[0] for r in all_reps)}",
                      malloc_kept=kept, flagged=flagged, clock="CUDA events" if cuda else "thread CPU time, one thread")


def overhead_table(device, quick):
    """Per-call cost where the arithmetic is negligible (a 1x1x5x5 input, 3x3 kernel, stride 2,
    padding 1): what the Python wrapper, the operator call, the autograd node and the extra kernels
    cost, next to F.conv2d (functional) and nn.Conv2d (modules). On a GPU this is what small,
    launch-bound layers pay.

    Measured on one thread, in the calling thread's CPU time on CPU (CUDA events on a GPU), in
    shuffled interleaved rounds; each variant's extra is the median of its per-round differences
    to the reference. A control must read 1.00: F.conv2d timed twice under two names; when it
    does not, the machine was too busy."""
    rounds, reps = (5, 20) if quick else (41, 200)
    cuda = device.startswith("cuda")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 5, 5, generator=gen).to(device).requires_grad_()
    w = torch.randn(1, 1, 3, 3, generator=gen).to(device).requires_grad_()
    b = torch.zeros(1, device=device, requires_grad=True)
    factor_map = strideconv.correction_factors((5, 5), 3, 2, 1).position.to(device, torch.float32)
    train, fwd = make_variants(x, w, b, 2, 1, True, factor_map)
    train["F.conv2d (control)"] = train.pop("control")
    fwd["F.conv2d (control)"] = fwd.pop("control")
    modules = {"nn.Conv2d": torch.nn.Conv2d(1, 1, 3, 2, 1)}
    modules.update({f"strideconv.Conv2d {c}": strideconv.Conv2d(1, 1, 3, 2, 1, correction=c) for c in CORRECTIONS})
    grad_out = torch.ones(1, 1, 3, 3, device=device)
    for name, m in modules.items():
        m.to(device).load_state_dict(modules["nn.Conv2d"].state_dict())
        params = (x, m.weight, m.bias)
        train[name] = (lambda m, params: lambda: torch.autograd.grad(m(x), params, grad_out))(m, params)
        fwd[name] = (lambda m: lambda: m(x).detach())(m)
    clock = per_call_clock(device)
    with one_thread():
        measured = {kind: paired_rounds(calls, "F.conv2d", clock, rounds, reps)
                    for kind, calls in (("train", train), ("fwd", fwd))}
        for kind, calls in (("train", train), ("fwd", fwd)):  # the modules against nn.Conv2d
            mods = {n: calls[n] for n in modules}
            for n, r in paired_rounds(mods, "nn.Conv2d", clock, rounds, reps, seed=1).items():
                measured[kind][n].update(module_extra=r["extra"], module_q1=r["extra_q1"], module_q3=r["extra_q3"])
    rows = []
    for n in train:
        t, f = measured["train"][n], measured["fwd"][n]
        row = dict(variant=n, fwd_us=f["median"] * 1e6, train_us=t["median"] * 1e6,
                   fwd_extra_us=f["extra"] * 1e6, train_extra_us=t["extra"] * 1e6,
                   train_extra_q1_us=t["extra_q1"] * 1e6, train_extra_q3_us=t["extra_q3"] * 1e6,
                   fwd_ratio=f["ratio"], train_ratio=t["ratio"])
        if "module_extra" in t:
            row.update(train_module_extra_us=t["module_extra"] * 1e6, train_module_q1_us=t["module_q1"] * 1e6,
                       train_module_q3_us=t["module_q3"] * 1e6)
        rows.append(row)
    control = measured["train"]["F.conv2d (control)"]["ratio"], measured["fwd"]["F.conv2d (control)"]["ratio"]
    busy = any(abs(c - 1) > 0.03 for c in control)
    if busy:
        print(f"WARNING: the per-call overhead controls read {control[0]:.3f} (fwd+bwd) and {control[1]:.3f} (fwd) "
              "instead of 1.00: the machine was busy; rerun on an idle machine", file=sys.stderr)
    return rows, dict(rounds=rounds, reps=reps, clock="CUDA events" if cuda else "thread CPU time", threads=1,
                      control=control, busy=busy)


class _PassThrough(TorchFunctionMode):
    """A torch function mode that passes every call on: the cost any such mode adds."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def context_overhead(device, quick):
    """What ``strideconv.corrected()`` costs in eager mode: per strided ``F.conv2d`` call made inside
    the block (fwd+bwd, the call corrected), per other op inside the block (the five tensor ops of a
    weight standardisation, passed through untouched; the cost any torch function mode adds
    included, and measured alone with a mode that only passes calls on), per entry and exit of the
    block, and per call of a weight-standardised subclass of nn.Conv2d that ``convert`` covers
    (its forward inside the mode), fwd+bwd. Measured as overhead_table measures (one thread,
    thread CPU time or CUDA events, shuffled rounds, medians of per-round differences)."""
    rounds, reps = (5, 20) if quick else (41, 200)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 5, 5, generator=gen).to(device).requires_grad_()
    w = torch.randn(1, 1, 3, 3, generator=gen).to(device).requires_grad_()
    t = torch.randn(4, 4, 3, 3, generator=gen).to(device)
    grad_out = torch.ones(1, 1, 3, 3, device=device)
    mode, bare = strideconv.corrected(), _PassThrough()
    torch.manual_seed(0)
    plain_ws = StdConv2d(1, 1, 3, 2, 1).to(device)
    covered_ws = strideconv.convert(copy.deepcopy(plain_ws))
    ops = 5

    def conv_step():
        torch.autograd.grad(F.conv2d(x, w, None, 2, 1), (x, w), grad_out)

    def conv_step_inside():
        with mode:
            y = F.conv2d(x, w, None, 2, 1)
        torch.autograd.grad(y, (x, w), grad_out)

    def inside(m):
        def run():
            with m:
                standardised(t)
        return run

    def empty(m):
        def run():
            with m:
                pass
        return run

    def ws_step(module):
        return lambda: torch.autograd.grad(module(x).sum(), (x, module.weight))

    calls = {"nothing": lambda: None, "empty block": empty(mode), "empty bare block": empty(bare),
             "F.conv2d": conv_step, "F.conv2d inside": conv_step_inside,
             "ops": lambda: standardised(t), "ops inside": inside(mode), "ops inside bare": inside(bare),
             "strideconv.functional.conv2d": lambda: torch.autograd.grad(conv2d(x, w, None, 2, 1), (x, w), grad_out),
             "subclass plain": ws_step(plain_ws), "subclass covered": ws_step(covered_ws)}
    with one_thread():
        m = paired_rounds(calls, "nothing", per_call_clock(device), rounds, reps)
    block, bare_block = m["empty block"]["extra"], m["empty bare block"]["extra"]
    us = 1e6
    return dict(
        block_us=block * us,
        strided_us=(m["F.conv2d inside"]["median"] - m["F.conv2d"]["median"] - block) * us,
        functional_us=(m["strideconv.functional.conv2d"]["median"] - m["F.conv2d"]["median"]) * us,
        other_op_us=(m["ops inside"]["median"] - m["ops"]["median"] - block) / ops * us,
        bare_op_us=(m["ops inside bare"]["median"] - m["ops"]["median"] - bare_block) / ops * us,
        op_us=m["ops"]["median"] / ops * us, conv_us=m["F.conv2d"]["median"] * us,
        subclass_us=(m["subclass covered"]["median"] - m["subclass plain"]["median"]) * us,
        subclass_plain_us=m["subclass plain"]["median"] * us,
        rounds=rounds, reps=reps)


def context_section(c) -> List[str]:
    return [
        "", "## `strideconv.corrected()` in eager mode", "",
        f"One thread; {c['rounds']} shuffled rounds of {c['reps']} calls; a 3x3/2 layer on a 1x1x5x5 input; medians. "
        "Every torch call inside the block passes through the mode's `__torch_function__`; strided convolutions "
        "are then corrected. Under `torch.compile` the mode is traced away and costs nothing at run time.", "",
        "| what | extra us per call |", "|---|---|",
        f"| entering and leaving the block | {c['block_us']:+.2f} |",
        f"| a strided `F.conv2d` inside the block, fwd+bwd (F.conv2d alone: {c['conv_us']:.1f} us) | "
        f"{c['strided_us']:+.2f} |",
        f"| the same call made directly with `strideconv.functional.conv2d` | {c['functional_us']:+.2f} |",
        f"| any other op inside the block (a weight standardisation's 5 ops: {c['op_us']:.2f} us per op alone) | "
        f"{c['other_op_us']:+.2f} |",
        f"| the same op inside a torch function mode that only passes calls on (what any mode costs) | "
        f"{c.get('bare_op_us', float('nan')):+.2f} |",
        f"| a weight-standardised `nn.Conv2d` subclass 3x3/2 covered by `convert` (its forward inside the mode), "
        f"fwd+bwd ({c.get('subclass_plain_us', float('nan')):.1f} us plain) | {c.get('subclass_us', float('nan')):+.2f} |",
    ]


def report_section(rows, meta) -> List[str]:
    """The speed and memory table, as Markdown lines."""
    lines = [
        "## Speed and memory", "",
        f"Batch {meta['batch']}; {meta.get('clock', '')}; {meta['rounds']} shuffled interleaved rounds, "
        f"{meta['reps']} fwd+bwd calls of each variant per round (on CPU as many as last {ROUND_S} s). Ratios are "
        "the variant's median over `F.conv2d`'s in the same run (1.00 = same time), with the quartiles of the "
        "per-round ratios. `control` is `F.conv2d` timed against itself: how far from 1.00 noise alone reads; "
        f"shapes where it strays more than {CONTROL_TOLERANCE:.0%} are flagged. fwd+bwd computes every gradient "
        "that is needed (no input gradient for a first layer). `hook` = F.conv2d plus a tensor hook multiplying "
        "the input gradient by the precomputed position factor map. Peak memory: CUDA allocator peak during "
        "fwd+bwd, relative to F.conv2d (not measured on CPU)."
        + (" On CPU, glibc was asked (mallopt) to keep freed buffers, so that no round pays for "
           "fresh page faults that others do not." if meta.get("malloc_kept") else ""),
        *([""] + [f"**Control off by more than {CONTROL_TOLERANCE:.0%} (the machine was busy) on: "
                  + "; ".join(meta["flagged"]) + ".**"] if meta.get("flagged") else []), "",
        "| shape | dtype | layout | input grad | variant | fwd+bwd ms | fwd+bwd ratio (quartiles) | fwd ratio (quartiles) "
        "| peak mem ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['dtype']} | {r['layout']} | {'yes' if r['input_grad'] else 'no'} | "
                     f"{r['variant']} | {r['train_s'] * 1e3:.3f} | {fmt(r['train_ratio'], 3)} "
                     f"({fmt(r.get('train_q1'), 3)}-{fmt(r.get('train_q3'), 3)}) | {fmt(r['fwd_ratio'], 3)} "
                     f"({fmt(r.get('fwd_q1'), 3)}-{fmt(r.get('fwd_q3'), 3)}) | {fmt(r['peak_mem_ratio'], 3)} |")
    return lines


def overhead_section(overhead_rows, m) -> List[str]:
    """The per-call overhead table, as Markdown lines."""
    lines = []
    if overhead_rows:
        lines += [
            "", "## Per-call overhead", "",
            "A 1x1x5x5 input, 3x3 kernel, stride 2, padding 1: the arithmetic is negligible, so this is "
            "the fixed cost of each call (Python wrapper, operator dispatch, autograd node, extra kernel "
            f"launches). One thread, {m['clock']}; {m['rounds']} rounds of {m['reps']} calls, every variant once per "
            "round in a shuffled order. Extra: the median of the per-round differences to `F.conv2d` (modules: "
            "also to `nn.Conv2d`), with the quartiles. fwd runs under no_grad; fwd+bwd computes all three "
            f"gradients. Controls (must read 1.00): `F.conv2d` against itself, fwd+bwd {m['control'][0]:.3f}, fwd "
            f"{m['control'][1]:.3f}" + (" -- **the machine was busy: these numbers are not reliable**." if m["busy"]
                                        else "."), "",
            "| variant | fwd us | fwd+bwd us | fwd extra us | fwd+bwd extra us [quartiles] | over nn.Conv2d us [quartiles] |",
            "|---|---|---|---|---|---|",
        ]
        for r in overhead_rows:
            module = (f"{r['train_module_extra_us']:+.2f} [{r['train_module_q1_us']:+.2f}, {r['train_module_q3_us']:+.2f}]"
                      if "train_module_extra_us" in r else "")
            lines.append(f"| {r['variant']} | {r['fwd_us']:.1f} | {r['train_us']:.1f} | {r['fwd_extra_us']:+.2f} | "
                         f"{r['train_extra_us']:+.2f} [{r['train_extra_q1_us']:+.2f}, {r['train_extra_q3_us']:+.2f}] | "
                         f"{module} |")
    return lines
