"""Whole training steps under valgrind's callgrind: instructions and simulated cache misses per
step, converted against plain (CPU, one thread, eager).

On a shared machine, the time of a step drifts by several percent from round to round, so a
cost of one or two percent needs hundreds of rounds to show. Callgrind counts instead: each
variant runs in its own process under callgrind with its cache simulation (first-level
instruction and data caches, last level), once with warm-up steps only and once with ``--steps``
more; the difference over ``--steps`` is the cost of one step. What differs between two
processes before the steps (imports, warm-up) is divided by ``--steps`` too, so a control, plain
measured a second time, shows what is left of it. The counts are a model of the machine, not
time: they say where extra time can come from (code that runs, code that does not fit the
instruction cache, data that misses), not how much of it there is.

    python benchmarks/callgrind_steps.py --models 'DCGAN generator' --out benchmarks/results/<new folder>

Needs ``valgrind`` on the PATH; takes about ten minutes per model (six processes, two at a time).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import describe, meta_lines, record_folder  # noqa: E402
from models import build_pair, make_step, model_specs  # noqa: E402

WARMUP = 5
# callgrind's events with --cache-sim=yes, in the order of its "Collected" line
EVENTS = ["Ir", "Dr", "Dw", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw"]
SHOWN = {"Ir": "instructions", "I1mr": "L1 instruction misses", "D1mr": "L1 data read misses",
         "D1mw": "L1 data write misses"}  # the last-level misses (in the JSON) are a few per step
VARIANTS = ("plain", "converted", "control")  # control: plain again, in its own processes


def child(model: str, variant: str, steps: int) -> None:
    """Build the pair as models.py does, then run WARMUP + steps steps of one of them."""
    torch.set_num_threads(1)
    spec = next(s for s in model_specs(False, False) if s[0] == model)
    plain, converted, x, target, kind = build_pair(spec, 8, "cpu", False)
    step = make_step(converted if variant == "converted" else plain, x, target, kind, False, "cpu")
    for _ in range(WARMUP + steps):
        step()


def parse_collected(text: str) -> dict:
    """The event totals of callgrind's summary ("==pid== Collected : n n n ...")."""
    found = re.findall(r"==\d+== Collected : ([\d ]+)", text)
    if not found:
        raise RuntimeError("no callgrind summary in its output:\n" + text[-2000:])
    values = [int(v) for v in found[-1].split()]
    if len(values) != len(EVENTS):
        raise RuntimeError(f"expected {len(EVENTS)} events (run with --cache-sim=yes), got {len(values)}")
    return dict(zip(EVENTS, values))


def counted(model: str, variant: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["valgrind", "--tool=callgrind", "--cache-sim=yes", f"--callgrind-out-file={tmp}/out",
               sys.executable, os.path.abspath(__file__), "--child", model, variant, str(steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return parse_collected(proc.stderr)


def per_step(counts: dict, steps: int) -> dict:
    """Per event, (count after warm-up and `steps` steps - count after warm-up only) / steps."""
    return {e: (counts[steps][e] - counts[0][e]) / steps for e in EVENTS}


def run(models, steps: int) -> list:
    jobs = [(m, v, n) for m in models for v in VARIANTS for n in (0, steps)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(jobs, pool.map(lambda job: counted(*job), jobs)))
    rows = []
    for m in models:
        rows.append(dict(model=m, **{v: per_step({n: results[(m, v, n)] for n in (0, steps)}, steps) for v in VARIANTS}))
    return rows


def report(meta: dict, rows: list, steps: int) -> str:
    lines = ["# Whole training steps under callgrind: converted against plain", "", *meta_lines(meta),
             f"- batch 8, one thread, eager; each variant in its own process under `valgrind --tool=callgrind "
             f"--cache-sim=yes`, once with {WARMUP} warm-up steps and once with {steps} more: the difference over "
             f"{steps} is one step. Converted: `strideconv.convert` as in `benchmarks/models.py`. Control: plain again, "
             "in its own processes (what the method's scatter alone reads). Counts of a simulated machine, not "
             "times.", ""]
    for r in rows:
        lines += [f"## {r['model']}", "", "| per step | plain | converted | extra | extra / plain | control's extra |",
                  "|---|---|---|---|---|---|"]
        for e, name in SHOWN.items():
            p, c, a = r["plain"][e], r["converted"][e], r["control"][e]
            lines.append(f"| {name} | {p:,.0f} | {c:,.0f} | {c - p:+,.0f} | {(c - p) / p:+.1%} | {a - p:+,.0f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["DCGAN generator"], help="models of benchmarks/models.py")
    parser.add_argument("--steps", type=int, default=100, help="measured steps per process (after the warm-up)")
    parser.add_argument("--out", default=None, help="the record's folder (default: a new one under out/)")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "VARIANT", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child[0], args.child[1], int(args.child[2]))
    known = [s[0] for s in model_specs(False, False)]
    unknown = [m for m in args.models if m not in known]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {known}")
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not on the PATH (Debian: apt-get install valgrind)")
    args.out = record_folder(args.out, __file__, "cpu", ["callgrind.md", "callgrind.json"])
    meta = describe("cpu", "benchmarks/callgrind_steps.py", argv)
    rows = run(args.models, args.steps)
    text = report(meta, rows, args.steps)
    with open(os.path.join(args.out, "callgrind.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "callgrind.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows, steps=args.steps, warmup=WARMUP), f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
