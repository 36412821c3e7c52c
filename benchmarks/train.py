"""Training evidence: plain strided convolutions against strideconv's corrections.

    python benchmarks/train.py                # the default set, CPU (about 15 minutes on 2 cores)
    python benchmarks/train.py --quick        # smoke run (a test runs it)
    python benchmarks/train.py --device cuda
    python benchmarks/train.py --tune         # the plain-only learning-rate sweep behind SETTINGS

Every setting trains one network with plain convolutions (torch.nn.ConvNd) and with each
correction ("position", "kernel", "map"; power 0.5 and 1), from PyTorch's default init, from
Kaiming init (torch.nn.init, fan_out, as torchvision's ResNets) and from stride-aware Kaiming
init (strideconv.init.init_convs_, the effective fan_out), over several seeds. A seed fixes the
initial weights and the order of the minibatches, so every variant sees the same ones: the
comparison is paired.

The hyperparameters are fixed per setting in SETTINGS and shared by every variant. MNIST-1D's
reference CNN uses its authors' settings. The other learning rates were picked with --tune (plain
convolutions only, the mean of both Kaiming inits and the default init, on a validation split
carved out of the training set) before any corrected run; the sweep's output is quoted next to
each setting.

The seeds of one (setting, variant) train side by side in a single network whose convolutions
have groups = number of runs: group g of every layer is run g's layer, and the head is a batched
matmul. Every run has its own parameters, minibatches and optimizer state (Adam and SGD act
element-wise), so it is exactly the network trained alone (tests/test_benchmarks.py checks the
gradients against separate networks); small networks train several times faster this way.

Writes train.md, train.json and PNG plots into --out (default benchmarks/out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, replace

import torch

from common import describe, tqdm
from training_loop import run_jobs
from training_report import as_rows, collect, rerender, write_report
from training_setup import INITS, SETTINGS, TUNE_LRS, VARIANTS, load_data, validation_split


# ----- --tune: the plain-only learning-rate sweep -----------------------------------------------

def tune(settings, seeds, device, workers):
    jobs = []
    for s in settings:
        data = validation_split(load_data(s.data))
        for lr in TUNE_LRS[s.optimizer]:
            jobs.append((replace(s, lr=lr), "plain", [(i, sd) for i in INITS for sd in seeds], data))
    print("plain-only sweep, validation accuracy (%) at the last step, mean over seeds:")
    results = run_jobs(jobs, device, workers)
    for (s, _, runs, _), (_, _, _, res) in zip(jobs, tqdm(results, total=len(jobs))):
        by_init = {i: statistics.fmean(a for (ini, _), a in zip(runs, res["final_acc"]) if ini == i) for i in INITS}
        print(f"  {s.name} {s.optimizer} lr={s.lr:g}: " + ", ".join(f"{i} {100 * a:.1f}" for i, a in by_init.items())
              + f"; mean {100 * statistics.fmean(by_init.values()):.1f}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, a few dozen steps")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--settings", nargs="*", default=[s.name for s in SETTINGS],
                        choices=[s.name for s in SETTINGS])
    parser.add_argument("--inits", nargs="*", default=INITS, choices=INITS, help="a subset of the inits")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes on CPU")
    parser.add_argument("--tune", action="store_true", help="run the plain-only learning-rate sweep and stop")
    parser.add_argument("--from-json", metavar="FILE", help="write train.md and the plots again from FILE")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    settings = [s for s in SETTINGS if s.name in args.settings]
    seeds = list(range(2 if args.quick else args.seeds))
    if args.quick:
        settings = [replace(s, steps=30, eval_every=10) for s in settings]
    if args.from_json:
        return rerender(args.from_json)
    if args.tune:
        return tune(settings, list(range(3)) if not args.quick else seeds, args.device, args.jobs)

    t0 = time.perf_counter()
    datasets = {name: load_data(name) for name in {s.data for s in settings}}
    inits = [i for i in INITS if i in args.inits]
    runs = [(init, seed) for init in inits for seed in seeds]
    jobs = [(s, v, runs, datasets[s.data]) for s in settings for v, _, _ in VARIANTS]
    raw = {}
    for name, variant, job_runs, res in tqdm(run_jobs(jobs, args.device, args.jobs), total=len(jobs), desc="training"):
        raw[(name, variant)] = (job_runs, res)
    table = collect(raw, settings, inits)
    os.makedirs(args.out, exist_ok=True)
    meta = dict(describe(args.device, "benchmarks/train.py", argv), wall_s=time.perf_counter() - t0)
    with open(os.path.join(args.out, "train.json"), "w") as f:
        json.dump(dict(meta=meta, settings=[asdict(s) for s in settings], variants=VARIANTS, inits=inits,
                       results=as_rows(table)),
                  f, indent=1)
    write_report(args.out, meta, settings, inits, table, len(seeds))


if __name__ == "__main__":
    main()
