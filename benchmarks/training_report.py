"""The training study's tables, report (train.md) and plots."""

from __future__ import annotations

import json
import math
import os
import statistics
from typing import List

import numpy as np

from common import accuracy_table, mean_std
from training_setup import VARIANTS, Setting


def collect(raw, settings, inits):
    """raw[(setting, variant)] -> per run results; regroup per init, runs in seed order."""
    table = {}
    for s in settings:
        for variant, _, _ in VARIANTS:
            runs, res = raw[(s.name, variant)]
            for init in inits:
                cols = [i for i, (ini, _) in enumerate(runs) if ini == init]
                pick = lambda rows: [[row[i] for i in cols] for row in rows]  # noqa: E731
                table[(s.name, variant, init)] = dict(
                    seeds=[runs[i][1] for i in cols],
                    final_acc=[res["final_acc"][i] for i in cols],
                    steps=res["steps"],
                    train_loss=pick(res["train_loss"]),
                    test_acc=pick(res["test_acc"]),
                    grad_rms_init=pick(res["grad_rms_init"]),
                    grad_rms_final=pick(res["grad_rms_final"]),
                    seconds=res["seconds"],
                )
    return table


def as_rows(table) -> List[dict]:
    """The table as train.json stores it: one dict per (setting, variant, init)."""
    return [dict(setting=k[0], variant=k[1], init=k[2], **v) for k, v in table.items()]


def relative_profile(rows: List[List[float]]) -> List[float]:
    """Per layer: mean over runs of RMS(dx_l) / RMS(dx_L), the last conv's input gradient.

    Runs whose last layer passes back no gradient at all (every ReLU dead) are left out; NaN if all are."""
    alive = [i for i, top in enumerate(rows[-1]) if top > 0]
    return [statistics.fmean(row[i] / rows[-1][i] for i in alive) if alive else math.nan for row in rows]


def report(meta, settings, inits, table, seeds, plots) -> str:
    lines = [
        "# strideconv training report", "",
        f"- date: {meta['date']}", f"- machine: {meta['machine']}", f"- torch {meta['torch']}",
        f"- device: {meta['device']}", f"- command: `{meta['command']}`", f"- wall time: {meta['wall_s']:.0f} s",
        "",
        f"Final test accuracy (%), mean ± standard deviation over {seeds} seeds. A seed fixes the initial "
        "weights and the minibatch order, the same for every variant; `Δ` is the mean paired difference "
        "to `plain` (same seed, same init) ± its standard deviation. Hyperparameters are fixed per "
        "setting and shared by all variants.", "",
    ] + accuracy_table(as_rows(table))
    for s in settings:
        lines += ["", f"## {s.name}", "", f"{s.note}. Layers (in, out, kernel, stride, padding): "
                  f"{', '.join(str(l) for l in s.layers)}; {s.steps} steps, batch {s.batch}.", ""]
        lines.append("| variant | " + " | ".join(f"{i} | Δ {i}" for i in inits) + " |")
        lines.append("|---" * (1 + 2 * len(inits)) + "|")
        for variant, _, _ in VARIANTS:
            cells = []
            for init in inits:
                acc = [100 * a for a in table[(s.name, variant, init)]["final_acc"]]
                base = [100 * a for a in table[(s.name, "plain", init)]["final_acc"]]
                m, sd = mean_std(acc)
                cells.append(f"{m:.1f} ± {sd:.1f}")
                dm, dsd = mean_std([a - b for a, b in zip(acc, base)])
                cells.append("" if variant == "plain" else f"{dm:+.1f} ± {dsd:.1f}")
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines += ["", "Input-gradient RMS of each conv layer relative to the last conv's, on a fixed batch of "
                  "500 training examples, mean over seeds, at initialisation → after training (Kaiming's "
                  "fan_out analysis intends 1 for every layer at initialisation; runs whose last layer passes back no "
                  "gradient, every ReLU dead, are left out, nan if all are):", "",
                  "| variant | init | " + " | ".join(f"layer {i + 1}" for i in range(len(s.layers) - 1)) + " |",
                  "|---|---|" + "---|" * (len(s.layers) - 1)]
        for variant, _, _ in VARIANTS:
            for init in inits:
                r = table[(s.name, variant, init)]
                a, b = relative_profile(r["grad_rms_init"]), relative_profile(r["grad_rms_final"])
                lines.append(f"| {variant} | {init} | " +
                             " | ".join(f"{u:.2f} → {v:.2f}" for u, v in list(zip(a, b))[:-1]) + " |")
        lines += ["", f"![{s.name}]({plots[s.name]})"]
    return "\n".join(lines) + "\n"


def plot(setting, inits, table, out_dir) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(inits), figsize=(5 * len(inits), 7.5), squeeze=False, sharex=True)
    colours = plt.cm.tab10(np.arange(len(VARIANTS)))
    for col, init in enumerate(inits):
        for (variant, _, _), colour in zip(VARIANTS, colours):
            r = table[(setting.name, variant, init)]
            style = "--" if "p=1" in variant else "-"
            colour = "black" if variant == "plain" else colour
            for row, key in enumerate(("train_loss", "test_acc")):
                vals = np.array(r[key])  # (evals, seeds)
                m, sd = vals.mean(1), vals.std(1)
                ax = axes[row, col]
                ax.plot(r["steps"], m, style, color=colour, lw=2 if variant == "plain" else 1.2, label=variant)
                ax.fill_between(r["steps"], m - sd, m + sd, color=colour, alpha=0.12)
        axes[0, col].set_title(f"{setting.name}, init: {init}")
        axes[0, col].set_yscale("log")
        axes[0, col].set_ylabel("training loss (mean of each interval)")
        axes[1, col].set_ylabel("test accuracy")
        axes[1, col].set_xlabel("step")
    axes[1, 0].legend(fontsize=8)
    fig.tight_layout()
    name = f"train_{setting.name}.png"
    fig.savefig(os.path.join(out_dir, name), dpi=90)
    plt.close(fig)
    return name


def write_report(out_dir, meta, settings, inits, table, seeds):
    plots = {s.name: plot(s, inits, table, out_dir) for s in settings}
    text = report(meta, settings, inits, table, seeds, plots)
    with open(os.path.join(out_dir, "train.md"), "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {out_dir}/train.md, train.json and {len(plots)} plots")


def rerender(path: str) -> None:
    """Write train.md and the plots again from a train.json (no training)."""
    with open(path) as f:
        data = json.load(f)
    settings = [Setting(**dict(d, layers=tuple(tuple(l) for l in d["layers"]))) for d in data["settings"]]
    keys = ("setting", "variant", "init")
    table = {tuple(r[k] for k in keys): {k: v for k, v in r.items() if k not in keys} for r in data["results"]}
    write_report(os.path.dirname(os.path.abspath(path)), data["meta"], settings, data["inits"], table,
                 len(data["results"][0]["final_acc"]))
