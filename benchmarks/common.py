"""What every benchmark script shares: the description of a run, timing, and table helpers.

No benchmark module imports another's script; they all import this one.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import datetime
import json
import math
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Sequence, Tuple

import torch

try:
    from tqdm import tqdm
except ImportError:  # progress bar is optional
    def tqdm(iterable=None, **kwargs):
        return iterable

CORRECTIONS = ["none", "map", "kernel", "position"]


# ----- description ----------------------------------------------------------------------------

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args) -> str:
    try:
        return subprocess.run(["git", "-C", _ROOT, *args], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def describe(device: str, script: str, argv) -> dict:
    """What identifies a run: the commit (full hash, and whether tracked files differed from it),
    the exact command, date and time (UTC), machine, torch / CUDA / cuDNN versions, device and
    torch's thread count."""
    args = list(argv if argv is not None else sys.argv[1:])
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "CPU"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    now = datetime.datetime.now(datetime.timezone.utc)
    return dict(date=now.date().isoformat(), time=now.strftime("%H:%M:%S UTC"),
                commit=_git("rev-parse", "HEAD") or None, dirty=bool(_git("status", "--porcelain", "--untracked-files=no")),
                machine=f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
                torch=torch.__version__, cuda=torch.version.cuda, cudnn=cudnn, threads=torch.get_num_threads(),
                device=f"{device}: {name}", command=" ".join(["python", script] + [shlex.quote(a) for a in args]))


def record_folder(out, runner_file: str, device: str, names) -> str:
    """The folder a run writes its record into, created: ``out`` when given (refused if it holds
    any of ``names`` already: a run never overwrites a record), else a new folder
    ``out/<UTC date>T<time>-<device>`` beside the runner, so that runs sort by date."""
    if out is None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%S")
        base = os.path.join(os.path.dirname(os.path.abspath(runner_file)), "out", f"{stamp}-{device.split(':')[0]}")
        out, n = base, 1
        while os.path.exists(out):
            n += 1
            out = f"{base}-{n}"
    taken = [n for n in names if os.path.exists(os.path.join(out, n))]
    if taken:
        raise SystemExit(f"{out} already holds {', '.join(taken)}: a run never overwrites a record; give a new --out")
    os.makedirs(out, exist_ok=True)
    return out


def meta_lines(meta: dict) -> list:
    """The lines that head every report: what identifies the run."""
    commit = (meta.get("commit") or "unknown") + (" (with uncommitted changes)" if meta.get("dirty") else "")
    versions = f"torch {meta['torch']}" + (f", CUDA {meta['cuda']}" if meta.get("cuda") else "") + (
        f", cuDNN {meta['cudnn']}" if meta.get("cudnn") else "")
    return [f"- commit: {commit}", f"- command: `{meta['command']}`",
            f"- date: {meta['date']} {meta.get('time', '')}".rstrip(), f"- machine: {meta['machine']}; {versions}; "
            f"device: {meta['device']}; torch's default threads: {meta.get('threads', '?')}"]


# ----- timing ---------------------------------------------------------------------------------

class Timer:
    """Wall time of a callable: CUDA events on the GPU, perf_counter after a sync elsewhere."""

    def __init__(self, device):
        self.cuda = device.startswith("cuda")

    def __call__(self, fn, reps):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / reps
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed buffers (up to 32 MiB) instead of returning them to the OS.

    Otherwise, after some rounds, every large allocation is a fresh mapping that page-faults
    again; which rounds depends on glibc's adaptive threshold, so CPU timings of the same code
    jump by 20-30% from round to round. It applies to every variant alike.
    """
    name = ctypes.util.find_library("c")
    if not name or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


class ThreadCPUClock:
    """CPU seconds of the calling thread per call: host cost, blind to other processes' load
    (which a wall clock on a shared machine is not)."""

    def __call__(self, fn, reps):
        t0 = time.thread_time()
        for _ in range(reps):
            fn()
        return (time.thread_time() - t0) / reps


def per_call_clock(device: str):
    """The clock of the per-call measurements: CUDA events on a GPU, the calling thread's CPU time
    on CPU (other processes' load does not count)."""
    return Timer(device) if device.startswith("cuda") else ThreadCPUClock()


@contextlib.contextmanager
def one_thread(enabled: bool = True):
    """torch on one intra-op thread for the block (when enabled), then the previous setting."""
    threads = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def calls_lasting(fn, clock, seconds: float) -> int:
    """How many calls of ``fn`` last at least ``seconds`` on ``clock`` (at least 2), timed on two
    calls after a warm-up call."""
    fn()
    return max(2, math.ceil(seconds / clock(fn, 2)))


ROUND_S = 0.05  # on CPU, each variant's calls in a round of a speed table last at least this long


def table_rounds(rounds, cuda: bool, quick: bool) -> int:
    """Rounds of a speed table: ``rounds`` when given, else 3 in a quick run, 15 on a GPU, 21 on CPU."""
    return rounds or (3 if quick else (15 if cuda else 21))


def round_calls(fn, clock, cuda: bool, quick: bool) -> int:
    """Calls of each variant per round of a speed table: 10 on a GPU (CUDA events), 2 in a quick
    run, else (CPU) as many as last ROUND_S of thread CPU time, so that the clock's step is far
    below a round."""
    if cuda or quick:
        return 10 if cuda and not quick else 2
    return calls_lasting(fn, clock, ROUND_S)


def paired_rounds(calls: Dict[str, object], reference: str, clock, rounds: int, reps: int, seed: int = 0) -> dict:
    """Per variant, the median seconds per call and, against `reference`, the median and quartiles
    of the per-round differences, the ratio of the medians and the quartiles of the per-round
    ratios. Every round times each variant once, in a freshly
    shuffled order, so drifts of the machine and position in the round hit all variants alike."""
    for fn in calls.values():
        fn()
    order, rng = list(calls), random.Random(seed)
    times = {n: [] for n in calls}
    for _ in range(rounds):
        rng.shuffle(order)
        for n in order:
            times[n].append(clock(calls[n], reps))
    def quartiles(values):
        return statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3

    out = {}
    for n, ts in times.items():
        diffs = [t - r for t, r in zip(ts, times[reference])]
        ratios = [t / r for t, r in zip(ts, times[reference])]
        dq, rq = quartiles(diffs), quartiles(ratios)
        out[n] = dict(median=statistics.median(ts), extra=statistics.median(diffs), extra_q1=dq[0], extra_q3=dq[2],
                      ratio=statistics.median(ts) / statistics.median(times[reference]), ratio_q1=rq[0], ratio_q3=rq[2])
    return out


def peak_memory(train, device, reference):
    """CUDA allocator peak of one call of each variant, relative to `reference`'s."""
    out = {}
    for n, step in train.items():
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        out[n] = torch.cuda.max_memory_allocated(device) - base
    ref = out[reference]
    return {n: (v / ref if ref else None) for n, v in out.items()}


# ----- pictures -------------------------------------------------------------------------------

def count_and_variance_figure(path, counts, variances, vmax, suptitle):
    """One row of panels: a count map, then variance maps (title, 2-d tensor) on a common
    colour scale from 0 to `vmax`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [counts] + list(variances)
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 4.2))
    for i, (ax, (title, data)) in enumerate(zip(axes, panels)):
        im = ax.imshow(data.numpy(), cmap="viridis", vmin=0, vmax=None if i == 0 else vmax)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(suptitle)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----- tables ---------------------------------------------------------------------------------

def fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


def mean_std(values: List[float]) -> Tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# ----- seeds and paired statistics ------------------------------------------------------------

def study_arguments(doc: str, argv, runner_file: str, name: str) -> tuple:
    """The command line every seeded study shares (--device, --quick, --seeds, --out): the parsed
    arguments, with --out the new record's folder (``record_folder``), and the seed list (10
    seeds, 2 with --quick)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", default=None, help="a count (10), a range (100-109) or a list (0,4,7); "
                        "default 10, 2 with --quick")
    parser.add_argument("--out", default=None, help="the record's folder (default: a new one under out/)")
    args = parser.parse_args(argv)
    args.out = record_folder(args.out, runner_file, args.device, [f"{name}.md", f"{name}.json", f"{name}.png"])
    return args, parse_seeds(args.seeds or ("2" if args.quick else "10"))


def write_study(out_dir: str, name: str, text: str, record: dict) -> None:
    """A study's report (name.md) and record (name.json) into out_dir; the report is printed too."""
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(text)


def parse_seeds(text: str) -> List[int]:
    """A seed list from the command line: "10" (seeds 0-9), "100-109" (inclusive) or "0,4,7"."""
    text = str(text).strip()
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        elif "-" in text.lstrip("-"):
            first, last = text.split("-", 1)
            seeds = list(range(int(first), int(last) + 1))
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise ValueError(f"seeds: expected a count (10), a range (100-109) or a list (0,4,7), got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: expected distinct seeds, got {text!r}")
    return seeds


def t_interval(diffs: Sequence[float], level: float = 0.95) -> float:
    """Half-width of the t confidence interval of the mean of paired differences."""
    from scipy.stats import t

    n = len(diffs)
    if n < 2:
        return float("nan")
    return t.ppf(0.5 + level / 2, n - 1) * statistics.stdev(diffs) / math.sqrt(n)


def paired(values: Dict[str, List[float]], reference: str, ratio: bool = False) -> Dict[str, dict]:
    """Per variant: the median over seeds, the per-seed values, and against `reference` (the same
    seeds, in the same order) the mean paired difference with its 95% t-interval and how many
    seeds went up or down. With `ratio`, for positive measures whose spread grows with their size
    (the pattern ratios), the differences are taken of the logarithms and reported as the
    geometric-mean factor variant / reference with its interval."""
    ref = values[reference]
    out = {}
    for name, vs in values.items():
        row = dict(median=statistics.median(vs), per_seed=list(vs))
        if name != reference:
            if ratio:
                diffs = [math.log(v / r) for v, r in zip(vs, ref)]
                m, h = statistics.fmean(diffs), t_interval(diffs)
                row.update(factor=math.exp(m), low=math.exp(m - h), high=math.exp(m + h))
            else:
                diffs = [v - r for v, r in zip(vs, ref)]
                row.update(diff=statistics.fmean(diffs), half_width=t_interval(diffs))
            row.update(up=sum(d > 0 for d in diffs), down=sum(d < 0 for d in diffs))
        out[name] = row
    return out


def paired_cell(row: dict, digits: int = 2) -> str:
    """ "median (paired difference [95% interval])", "median (x factor [95% interval])", or the
    median alone for the reference."""
    med = f"{row['median']:.{digits}f}"
    if "factor" in row:
        return f"{med} (x{row['factor']:.2f} [{row['low']:.2f}, {row['high']:.2f}])"
    if "diff" not in row:
        return med
    d, h = row["diff"], row["half_width"]
    return f"{med} ({d:+.{digits}f} [{d - h:+.{digits}f}, {d + h:+.{digits}f}])"
