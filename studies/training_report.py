"""The training study's learning-rate choice, tables, report (train.md) and plots, all computed
from the rows train.json stores (one per setting, variant and learning rate)."""

from __future__ import annotations

import json
import math
import os
import sys
import statistics
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(1, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "benchmarks"))  # common.py, shared with the benchmark
from common import mean_std, meta_lines, t_interval


# ----- the learning-rate choice -----------------------------------------------------------------

def val_means(rows: List[dict], setting: str) -> Dict[str, Dict[float, float]]:
    """{variant: {lr: mean validation accuracy over the seeds}} of one setting."""
    out: Dict[str, Dict[float, float]] = {}
    for r in rows:
        if r["setting"] == setting:
            out.setdefault(r["variant"], {})[r["lr"]] = statistics.fmean(r["val_acc"])
    return out


def best_lrs(rows: List[dict], setting: str, grid: List[float]) -> Dict[str, Dict[float, float]]:
    """The validation means of each variant restricted to `grid` (what the choice sees)."""
    return {v: {lr: m[lr] for lr in grid if lr in m} for v, m in val_means(rows, setting).items()}


def chosen(means: Dict[float, float]) -> float:
    """The learning rate with the best mean validation accuracy (the smaller one on a tie)."""
    return max(sorted(means), key=lambda lr: means[lr])


def widened(grid: List[float], means_by_variant: Dict[str, Dict[float, float]]) -> List[float]:
    """The learning rates to add to `grid` where some variant's best is on its edge and strictly
    better than its neighbour (a tie, such as chance accuracy everywhere, does not point anywhere).
    The grid alternates 1 and 3 (half decades): one more value at that end keeps the pattern."""
    grid = sorted(grid)
    extra = []
    for means in means_by_variant.values():
        best = chosen(means)
        low, high = float(f"{grid[1] / 10:.12g}"), float(f"{grid[-2] * 10:.12g}")  # 3e-4, not 3.0000000000000003e-4
        if best == grid[0] and means[grid[0]] > means[grid[1]] and low not in extra:
            extra.append(low)
        if best == grid[-1] and means[grid[-1]] > means[grid[-2]] and high not in extra:
            extra.append(high)
    return sorted(extra)


def trains_nowhere(means: Dict[float, float]) -> bool:
    """The same validation accuracy (within 0.5 points) at every learning rate: chance everywhere."""
    return max(means.values()) - min(means.values()) < 0.005


def reference(variant: dict, variants: List[dict]) -> Optional[str]:
    """The plain variant a variant is compared with: plain with the same init for a correction
    (the same initial weights), plain from the default init for plain from another init."""
    if variant["name"] == "plain":
        return None
    if variant["correction"] is None:
        return "plain"
    return next(v["name"] for v in variants if v["correction"] is None and v["init"] == variant["init"])


class Study:
    """The rows of train.json, indexed, with each variant's chosen learning rate."""

    def __init__(self, data: dict):
        self.data = data
        self.rows = {(r["setting"], r["variant"], r["lr"]): r for r in data["results"]}
        self.variants = data["variants"]
        self.settings = data["settings"]
        self.lr = {}
        self.means = {}
        for s in self.settings:
            means = best_lrs(data["results"], s["name"], data["grids"][s["name"]])
            self.means[s["name"]] = means
            for v, m in means.items():
                self.lr[(s["name"], v)] = chosen(m)

    def names(self, setting: dict) -> List[str]:
        return [v["name"] for v in self.variants if v["init"] in setting["inits"]]

    def row(self, setting: str, variant: str, lr: Optional[float] = None) -> dict:
        return self.rows[(setting, variant, self.lr[(setting, variant)] if lr is None else lr)]

    def step_ratio(self, setting: str, variant: str) -> float:
        """Time per training step relative to plain, from the first round's jobs (same size)."""
        t = [r["job_step_seconds"] for (s, v, _), r in self.rows.items()
             if s == setting and v == variant and r["job_step_seconds"] is not None]
        base = [r["job_step_seconds"] for (s, v, _), r in self.rows.items()
                if s == setting and v == "plain" and r["job_step_seconds"] is not None]
        return t[0] / base[0]

    def comparison(self, setting: str, variant: dict, at_reference_lr: bool) -> dict:
        """Test accuracy (%) and the paired difference to the reference plain variant."""
        ref = reference(variant, self.variants)
        lr = self.lr[(setting, ref)] if at_reference_lr and ref else None
        acc = [100 * a for a in self.row(setting, variant["name"], lr)["final_acc"]]
        out = dict(lr=self.lr[(setting, variant["name"])] if lr is None else lr, acc=mean_std(acc), ref=ref)
        if ref is not None:
            base = [100 * a for a in self.row(setting, ref)["final_acc"]]
            diffs = [a - b for a, b in zip(acc, base)]
            out["delta"] = (statistics.fmean(diffs), t_interval(diffs))
        return out


# ----- tables ------------------------------------------------------------------------------------

def _delta(c: dict) -> str:
    if "delta" not in c:
        return ""
    m, h = c["delta"]
    mark = " *" if abs(m) > h else ""
    return f"{m:+.1f} [{m - h:+.1f}, {m + h:+.1f}]{mark}"


def summary_table(data: dict) -> List[str]:
    """Each variant at its own learning rate: the study's main table (also in run.py's report)."""
    st = Study(data)
    lines = ["| setting | variant | lr | validation % | test % | Δ test vs plain, 95% CI | step time vs plain |",
             "|---|---|---|---|---|---|---|"]
    for s in st.settings:
        for v in st.variants:
            if v["init"] not in s["inits"]:
                continue
            c = st.comparison(s["name"], v, at_reference_lr=False)
            means = st.means[s["name"]][v["name"]]
            lr = "none trains" if trains_nowhere(means) else f"{c['lr']:g}"
            lines.append(f"| {s['name']} | {v['name']} | {lr} | {100 * means[c['lr']]:.1f} | {c['acc'][0]:.1f} ± {c['acc'][1]:.1f} "
                         f"| {_delta(c)} | {st.step_ratio(s['name'], v['name']):.2f} |")
    return lines


def plain_lr_table(st: Study) -> List[str]:
    lines = ["| setting | variant | lr (plain's) | test % | Δ test vs plain, 95% CI |", "|---|---|---|---|---|"]
    for s in st.settings:
        for v in st.variants:
            if v["init"] not in s["inits"] or v["correction"] is None:
                continue
            c = st.comparison(s["name"], v, at_reference_lr=True)
            lines.append(f"| {s['name']} | {v['name']} | {c['lr']:g} | {c['acc'][0]:.1f} ± {c['acc'][1]:.1f} | {_delta(c)} |")
    return lines


def relative_profile(rows: List[List[float]]) -> List[float]:
    """Per layer: mean over runs of RMS(dx_l) / RMS(dx_L), the last measured layer's input gradient.

    Runs whose last layer passes back no gradient at all (every ReLU dead) are left out; NaN if all are."""
    alive = [i for i, top in enumerate(rows[-1]) if top > 0]
    return [statistics.fmean(row[i] / rows[-1][i] for i in alive) if alive else math.nan for row in rows]


def setting_section(st: Study, s: dict, plot_name: str) -> List[str]:
    name, grid = s["name"], st.data["grids"][s["name"]]
    layers = (f"Layers (in, out, kernel, stride, padding): {', '.join(str(tuple(l)) for l in s['layers'])}; "
              if s["layers"] else "")
    lines = ["", f"## {name}", "", f"{s['note']}. {layers}{s['steps']} steps, batch {s['batch']}, "
             f"{s['optimizer'].upper() if s['optimizer'] == 'sgd' else 'Adam'}.", "",
             "Validation accuracy (%) over the learning-rate grid, mean over the seeds; **bold**: each variant's choice.", "",
             "| variant | " + " | ".join(f"{lr:g}" for lr in grid) + " |", "|---" * (len(grid) + 1) + "|"]
    for v in st.names(s):
        means = st.means[name][v]
        cells = [(f"**{100 * means[lr]:.1f}**" if lr == st.lr[(name, v)] else f"{100 * means[lr]:.1f}") for lr in grid]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    flat = [v for v in st.names(s) if trains_nowhere(st.means[name][v])]
    ends = [v for v in st.names(s) if st.lr[(name, v)] in (grid[0], grid[-1]) and v not in flat]
    if flat:
        lines += ["", f"Trained at no learning rate of the grid (the same, chance, validation accuracy at every value; "
                  f"reported at the smallest): {', '.join(flat)}."]
    if ends:
        lines += ["", f"Still on an edge of the widened grid: {', '.join(ends)}."]
    first = st.row(name, "plain")["grad_rms_init"]
    lines += ["", "Input-gradient RMS of each measured layer (convolutions; for the residual net the stem and each "
              "block) relative to the last one's, on a fixed batch of training examples, mean over the seeds, at "
              "initialisation → after training at the chosen learning rate (Kaiming's analysis intends 1 for every "
              "layer at initialisation; runs whose last layer passes back no gradient are left out, nan if all are: "
              "Fixup starts its classifier at zero, so no layer gets a gradient at initialisation):", "",
              "| variant | " + " | ".join(f"layer {i + 1}" for i in range(len(first) - 1)) + " |",
              "|---|" + "---|" * (len(first) - 1)]
    for v in st.names(s):
        r = st.row(name, v)
        a, b = relative_profile(r["grad_rms_init"]), relative_profile(r["grad_rms_final"])
        lines.append(f"| {v} | " + " | ".join(f"{x:.2f} → {y:.2f}" for x, y in list(zip(a, b))[:-1]) + " |")
    return lines + ["", f"![{name}]({plot_name})"]


def report(data: dict, plots: Dict[str, str]) -> str:
    st, meta = Study(data), data["meta"]
    seeds = len(data["results"][0]["final_acc"])
    lines = [
        "# strideconv training report", "",
        *meta_lines(meta), f"- wall time: {meta['wall_s']:.0f} s",
        "",
        "Every variant has its own learning rate: each trains at every value of its setting's grid with the same "
        f"{seeds} seeds, and the value with the best mean validation accuracy is chosen (the grid is widened for every "
        "variant where a best lands on its edge). Test accuracy (%) at that learning rate, mean ± std over the seeds. "
        "A seed fixes the initial weights and the minibatch order, the same for every variant and learning rate. "
        "`Δ` is the mean paired difference (same seed) to `plain` with the same init (for `plain` from another "
        "init: to `plain` from the default init), with a 95% t-interval; `*` marks an interval that excludes 0. "
        "Step time: wall time of a training step relative to `plain` in the same run (all learning rates and seeds "
        "of a variant step together; both CPU workers busy).", "",
    ] + summary_table(data) + [
        "", "## At the learning rate tuned for plain", "",
        "What swapping the layer and changing nothing else gives: each correction at the learning rate chosen for "
        "`plain` with the same init (the same runs as above).", "",
    ] + plain_lr_table(st)
    for s in st.settings:
        lines += setting_section(st, s, plots[s["name"]])
    return "\n".join(lines) + "\n"


# ----- plots -------------------------------------------------------------------------------------

def plot(st: Study, s: dict, out_dir: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, grid = s["name"], st.data["grids"][s["name"]]
    names = st.names(s)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    colours = plt.cm.tab10(np.arange(len(names)) % 10)
    for v, colour in zip(names, colours):
        style = "-" if v.split(" · ")[0] in ("plain", "position") else "--"
        colour = "black" if v == "plain" else colour
        means = st.means[name][v]
        axes[0].plot(grid, [100 * means[lr] for lr in grid], style, marker="o", ms=3, color=colour, label=v)
        r = st.row(name, v)
        for ax, key in ((axes[1], "train_loss"), (axes[2], "test_acc")):
            vals = np.array(r[key]) * (100 if key == "test_acc" else 1)
            ax.plot(r["steps"], vals.mean(1), style, color=colour, lw=2 if v == "plain" else 1.2, label=v)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("learning rate")
    axes[0].set_ylabel("validation accuracy (%)")
    axes[0].set_title(f"{name}: the learning-rate sweep")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("training loss (mean of each interval)")
    axes[1].set_title("at each variant's learning rate")
    axes[2].set_ylabel("test accuracy (%)")
    for ax in axes[1:]:
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = f"train_{name}.png"
    fig.savefig(os.path.join(out_dir, path), dpi=85)
    plt.close(fig)
    return path


def write_report(out_dir: str, data: dict) -> None:
    st = Study(data)
    plots = {s["name"]: plot(st, s, out_dir) for s in st.settings}
    text = report(data, plots)
    with open(os.path.join(out_dir, "train.md"), "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {out_dir}/train.md, train.json and {len(plots)} plots")


def rerender(path: str) -> None:
    """Write train.md and the plots again from a train.json (no training)."""
    with open(path) as f:
        data = json.load(f)
    write_report(os.path.dirname(os.path.abspath(path)), data)
