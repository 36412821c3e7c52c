"""Training evidence: plain strided convolutions against strideconv's corrections, every variant
with its own tuned learning rate.

    python studies/train.py                # the default set, CPU (about 40 minutes on 2 cores)
    python studies/train.py --quick        # smoke run (a test runs it)
    python studies/train.py --device cuda
    python studies/train.py --settings deep28-cnn fixup28-resnet

Every setting (training_setup.SETTINGS) trains one network with plain convolutions
(torch.nn.ConvNd) and with the corrections ("position", "kernel", "map"; power 0.5, and
"position" with power 1), from the network's default init, from Kaiming init and from
strideconv.init's stride-aware Kaiming init (training_setup.VARIANTS).

Protocol, the same for every variant:

- each setting has one learning-rate grid, log-spaced (half decades, 5 values); every variant
  trains at every value of it with the same seeds (5 by default) on the training split;
- each variant's learning rate is the one with the best mean validation accuracy (the
  validation split is carved from the training data; the test set is never selected on);
- if any variant's best lies on an edge of the grid, the grid is widened there for every variant
  of the setting (up to --widen times) and the choice is made again;
- reported: test accuracy at each variant's own learning rate (mean ± std over the seeds), its
  paired difference to plain (same seed, same initial weights) with a 95% t-interval, and, from the
  same runs, each variant at the learning rate tuned for plain ("swap the layer, change nothing
  else"); the time per training step relative to plain, measured in the same runs.

A seed fixes the initial weights and the order of the minibatches, so every variant and every
learning rate sees the same ones. The runs of one (setting, variant), all learning rates and seeds,
train side by side in a single network whose convolutions have groups = number of runs: group g of
every layer is run g's layer, the head is a batched matmul, and the optimizer steps each run's
rows with that run's learning rate. Adam and SGD act element-wise, so every run is exactly the
network trained alone (tests/test_benchmarks.py checks gradients and optimizer steps against
separate networks and torch.optim); small networks train several times faster this way.

Writes train.md, train.json and PNG plots into --out (default benchmarks/out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace

import torch

sys.path.insert(1, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "benchmarks"))  # common.py, shared with the benchmark
from common import describe, record_folder, tqdm
from training_loop import run_jobs
from training_report import best_lrs, rerender, widened, write_report
from training_setup import SETTINGS, VARIANTS, load_data


def sweep(settings, seeds, device, workers, widen: int, datasets):
    """Train every variant of every setting at every learning rate of its grid, widening the
    grids where a best lands on an edge. Returns (grids, rows): one row per (setting, variant, lr)."""
    grids = {s.name: list(s.lrs) for s in settings}
    rows = []
    pending = [(s, v, list(s.lrs)) for s in settings for v in s.variants()]
    for round_ in range(widen + 1):
        jobs = [(s, v, [(lr, seed) for lr in lrs for seed in seeds], datasets[s.data]) for s, v, lrs in pending]
        desc = "training" if round_ == 0 else f"widening the grid ({round_})"
        for name, variant, runs, res in tqdm(run_jobs(jobs, device, workers), total=len(jobs), desc=desc):
            rows += split_runs(name, variant, runs, res, first_round=round_ == 0)
        pending = []
        for s in settings:
            if round_ == widen:
                break
            extra = widened(grids[s.name], best_lrs(rows, s.name, grids[s.name]))
            if extra:
                print(f"{s.name}: a best learning rate is on an edge of {grids[s.name]}; adding {extra}", flush=True)
                grids[s.name] = sorted(grids[s.name] + extra)
                pending += [(s, v, extra) for v in s.variants()]
        if not pending:
            break
    return grids, rows


def split_runs(setting: str, variant: str, runs, res, first_round: bool):
    """One job's results (its runs side by side) as one row per learning rate, seeds in order."""
    out = []
    for lr in dict.fromkeys(lr for lr, _ in runs):
        cols = [i for i, (r, _) in enumerate(runs) if r == lr]
        pick = lambda table: [[row[i] for i in cols] for row in table]  # noqa: E731
        out.append(dict(
            setting=setting, variant=variant, lr=lr, seeds=[runs[i][1] for i in cols],
            val_acc=[res["val_acc"][i] for i in cols], final_acc=[res["final_acc"][i] for i in cols],
            steps=res["steps"], train_loss=pick(res["train_loss"]), test_acc=pick(res["test_acc"]),
            grad_rms_init=pick(res["grad_rms_init"]), grad_rms_final=pick(res["grad_rms_final"]),
            # the time of one step of the whole job (all its runs side by side); only the first
            # round's jobs, which all hold the same number of runs, are compared
            job_step_seconds=res["step_seconds"] if first_round else None,
        ))
    return out


QUICK_EVAL = 100


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, 10 steps of at most 16 examples, 100 examples to validate "
                                                          "and test on, one thread")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--settings", nargs="*", default=[s.name for s in SETTINGS],
                        choices=[s.name for s in SETTINGS])
    parser.add_argument("--widen", type=int, default=2,
                        help="how many times a grid may be widened where a best is on its edge (default 2)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes on CPU")
    parser.add_argument("--from-json", metavar="FILE", help="write train.md and the plots again from FILE")
    parser.add_argument("--out", default=None, help="the record's folder (default: a new one under out/)")
    args = parser.parse_args(argv)
    if args.from_json:
        return rerender(args.from_json)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 (the report gives standard deviations and intervals)")
    settings = [s for s in SETTINGS if s.name in args.settings]
    seeds = list(range(2 if args.quick else args.seeds))
    if args.quick:
        settings = [replace(s, steps=10, eval_every=5, batch=min(s.batch, 16), probe=32) for s in settings]
        torch.set_num_threads(1)

    t0 = time.perf_counter()
    datasets = {name: load_data(name) for name in {s.data for s in settings}}
    if args.quick:  # a smoke run: validate and test on QUICK_EVAL examples each
        datasets = {name: (x, y, xv[:QUICK_EVAL], yv[:QUICK_EVAL], xt[:QUICK_EVAL], yt[:QUICK_EVAL])
                    for name, (x, y, xv, yv, xt, yt) in datasets.items()}
    grids, rows = sweep(settings, seeds, args.device, args.jobs, args.widen, datasets)
    args.out = record_folder(args.out, __file__, args.device, ["train.md", "train.json"])
    meta = dict(describe(args.device, "studies/train.py", argv), wall_s=time.perf_counter() - t0)
    data = dict(meta=meta, settings=[asdict(s) for s in settings], variants=[v._asdict() for v in VARIANTS],
                grids=grids, results=rows)
    with open(os.path.join(args.out, "train.json"), "w") as f:
        json.dump(data, f, indent=1)
    write_report(args.out, data)


if __name__ == "__main__":
    main()
