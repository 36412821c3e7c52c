"""Where a compiled training step spends its time, converted against plain (CPU).

    python benchmarks/compiled_profile.py                     # the four models and the zoo patterns
    python benchmarks/compiled_profile.py --models ResNet-18  # a subset

For each model of models.py, the plain and the converted model are compiled with
``torch.compile`` (inductor), and their steps (forward, loss, backward, SGD) are profiled with
torch's profiler, with inductor's generated CPU kernels recorded as events
(``torch._inductor.config.cpp.enable_kernel_profile``). Plain and converted alternate over
--rounds profiles of --steps steps each; every category below is the median over the rounds
of its time per step (self CPU time, one thread):

- generated kernels of the forward graph and of the backward graph (inductor's fused loops);
- the two graphs' wrappers (the self time of their calls: Python, allocations);
- ATen's convolutions (``mkldnn_convolution``, ``convolution_backward`` and what they run);
- strideconv's ops (any ``strideconv::`` event; none is left in a compiled position step);
- everything else (the optimizer, autograd's engine, dynamo's guards).

Writes compiled_profile.md and compiled_profile.json into --out (a new folder; a run never
overwrites a record).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

import models
from common import describe, keep_freed_memory, meta_lines, one_thread, record_folder, tqdm

CATEGORIES = ["forward kernels", "backward kernels", "graph wrappers", "ATen convolutions", "strideconv ops",
              "everything else", "total"]
_CONVOLUTIONS = ("aten::convolution", "aten::_convolution", "aten::mkldnn_convolution", "aten::convolution_backward",
                 "aten::_slow_conv2d", "aten::mkldnn_convolution_backward")


def _ancestor(event, match) -> str | None:
    """The name of the nearest enclosing event whose name ``match`` accepts, or None."""
    parent = event.cpu_parent
    while parent is not None:
        if match(parent.name):
            return parent.name
        parent = parent.cpu_parent
    return None


def _category(event) -> str:
    name = event.name
    if name.startswith("strideconv::"):
        return "strideconv ops"
    if "cpp_fused" in name or name.startswith("graph_") and "kernel" in name:
        graph = _ancestor(event, lambda n: n in ("CompiledFunction", "CompiledFunctionBackward"))
        return "backward kernels" if graph == "CompiledFunctionBackward" else "forward kernels"
    if "CompiledFxGraph" in name:
        return "graph wrappers"
    if name.startswith(_CONVOLUTIONS) or _ancestor(event, lambda n: n.startswith(_CONVOLUTIONS)) is not None:
        return "ATen convolutions"
    return "everything else"


def profile_steps(step, steps: int) -> dict:
    """Self CPU time per step (us) of each category over ``steps`` steps."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    out = defaultdict(float)
    for event in prof.events():
        out[_category(event)] += event.self_cpu_time_total / steps
    out["total"] = sum(v for k, v in out.items() if k != "total")
    return out


def run(names, rounds: int, steps: int) -> list:
    import torch._inductor.config as inductor_config

    inductor_config.cpp.enable_kernel_profile = True
    keep_freed_memory()
    rows = []
    with one_thread():
        specs = [s for s in models.model_specs(False, False) if names is None or s[0] in names]
        for spec in tqdm(specs, desc="models", file=sys.stdout):
            plain, converted, x, target, kind = models.build_pair(spec, 8, "cpu", False)
            torch._dynamo.reset()
            train = {n: models.make_step(torch.compile(m), x, target, kind, False, "cpu")
                     for n, m in (("plain", plain), ("converted", converted))}
            for step in train.values():
                for _ in range(5):  # compile, then warm up
                    step()
            times = {n: defaultdict(list) for n in train}
            for _ in range(rounds):
                for n, step in train.items():
                    for category, us in profile_steps(step, steps).items():
                        times[n][category].append(us)
            med = {n: {c: statistics.median(times[n][c]) if times[n][c] else 0.0 for c in CATEGORIES} for n in train}
            rows.append(dict(model=spec[0], plain=med["plain"], converted=med["converted"]))
    return rows


def report(meta, rows, rounds, steps) -> str:
    lines = ["# Where a compiled step's time goes: converted against plain", "", *meta_lines(meta),
             f"- batch 8; one thread; inductor's CPU kernels profiled as events; {rounds} alternating profiles of "
             f"{steps} steps per model; each cell: the median over the profiles of the self CPU time per step, in us.",
             ""]
    for r in rows:
        lines += [f"## {r['model']}", "", "| | plain us | converted us | difference us |", "|---|---|---|---|"]
        lines += [f"| {c} | {r['plain'][c]:.1f} | {r['converted'][c]:.1f} | {r['converted'][c] - r['plain'][c]:+.1f} |"
                  for c in CATEGORIES]
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=None, help="a subset of models.py's models, by name")
    parser.add_argument("--rounds", type=int, default=5, help="alternating profiles per variant")
    parser.add_argument("--steps", type=int, default=10, help="steps per profile")
    parser.add_argument("--out", default=None, help="the record's folder (default: a new one under out/)")
    args = parser.parse_args(argv)
    args.out = record_folder(args.out, __file__, "cpu", ["compiled_profile.md", "compiled_profile.json"])
    meta = describe("cpu", "benchmarks/compiled_profile.py", argv)
    rows = run(args.models, args.rounds, args.steps)
    text = report(meta, rows, args.rounds, args.steps)
    with open(os.path.join(args.out, "compiled_profile.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "compiled_profile.json"), "w") as f:
        json.dump(dict(meta=meta, rounds=args.rounds, steps=args.steps, categories=CATEGORIES, rows=rows), f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
