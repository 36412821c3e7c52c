"""strideconv benchmark: gradient variance, pictures, speed and memory against F.conv2d.

    python benchmarks/run.py                 # CPU, a few minutes on two cores
    python benchmarks/run.py --device cuda   # GPU suite: float32 and bf16 autocast, channels_last
    python benchmarks/run.py --quick         # smoke run

Writes report.md, results.json and PNG pictures into --out (default benchmarks/out). The
studies live in variance.py and speed.py; common.py has what they share.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

import speed
import variance
from common import accuracy_table, describe


def training_section(out_dir: str) -> list:
    """The accuracy table of benchmarks/train.py when its train.json is in the same directory."""
    path = os.path.join(out_dir, "train.json")
    lines = ["", "## Training", ""]
    if not os.path.exists(path):
        return lines + ["Not run here: `python benchmarks/train.py` with the same `--out` trains plain and corrected "
                        "networks (MNIST-1D, scikit-learn digits, a deep plain CNN) and writes train.md."]
    with open(path) as f:
        data = json.load(f)
    return lines + [f"From [train.md](train.md) (`{data['meta']['command']}`): final test accuracy (%), "
                    f"mean ± std over {len(data['results'][0]['final_acc'])} seeds.", ""] + accuracy_table(data["results"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few draws, small shapes")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    parser.add_argument("--skip", nargs="*", default=[], choices=["variance", "pictures", "speed", "pool", "overhead"])
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    meta = describe(args.device, "benchmarks/run.py", argv)
    var_rows, draws = variance.variance_table(args.device, args.quick) if "variance" not in args.skip else ([], 0)
    pics = variance.pictures(args.out, args.device, args.quick) if "pictures" not in args.skip else []
    speed_rows, speed_meta = (speed.speed_suite(args.device, args.quick) if "speed" not in args.skip
                              else ([], dict(batch=0, rounds=0, reps=0)))
    pool_rows = speed.pool_table(args.device, args.quick) if "pool" not in args.skip else []
    overhead_rows, overhead_meta = (speed.overhead_table(args.device, args.quick) if "overhead" not in args.skip
                                    else ([], None))
    lines = [
        "# strideconv benchmark report", "",
        f"- date: {meta['date']}", f"- machine: {meta['machine']}", f"- torch {meta['torch']}",
        f"- device: {meta['device']}", f"- command: `{meta['command']}`", "",
    ]
    lines += variance.report_section(var_rows, draws, pics) + [""]
    lines += speed.report_section(speed_rows, speed_meta, overhead_rows, overhead_meta, pool_rows)
    text = "\n".join(lines + training_section(args.out)) + "\n"
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(dict(meta=meta, variance=var_rows, draws=draws, speed=speed_rows, speed_meta=speed_meta,
                       pool=pool_rows, overhead=overhead_rows, overhead_meta=overhead_meta), f, indent=1)
    print(text)
    print(f"wrote {args.out}/report.md, results.json and {len(pics)} pictures")


if __name__ == "__main__":
    main()
