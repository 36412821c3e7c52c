"""Render the measured tables of README.md and docs/*.md from the records' JSON.

    python scripts/render_docs.py           # rewrite every rendered block from its record
    python scripts/render_docs.py --check   # exit 1 if a committed doc differs from its rendering

A rendered block sits between two markers that name the table and the record it comes from:

    <!-- render: models benchmarks/results/cpu-2026-12-06-models/models.json -->
    ... (written by this script: the table, then the record it comes from) ...
    <!-- end render -->

Each kind of table is one function, below or, for the studies' tables, in render_studies.py; it
says which statistic it shows and over what.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

import render_studies

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"(<!-- render: (\S+) (\S+) -->\n)(.*?)(<!-- end render -->)", re.S)  # RECORD: a.json[+b.json]


def _merged(loaded: list) -> dict:
    """Whole-step records merged (``a.json+b.json``): a later record's rows replace the earlier
    ones' of the same model and mode; the table states each row's rounds."""
    rows = {}
    for data in loaded:
        for row in data["rows"]:
            rows[(row["model"], row["mode"])] = dict(row, rounds=data["rounds"])
    return dict(loaded[0], rows=list(rows.values()), rounds="/".join(str(d["rounds"]) for d in loaded))


def _source(path: str, meta: dict, doc_dir: str, root: str) -> str:
    link = os.path.relpath(os.path.join(root, os.path.dirname(path)), doc_dir)
    if not meta.get("commit"):  # an older record: what is known of it is in its folder's README
        notes = os.path.relpath(os.path.join(root, os.path.dirname(os.path.dirname(path)), "README.md"), doc_dir)
        return (f"Record: [{os.path.dirname(path)}]({link}/) ({meta['date']}, `{meta['command']}`; written before "
                f"records named their commit: see [what is known of it]({notes})).")
    commit = meta["commit"][:12] + (" (uncommitted changes)" if meta.get("dirty") else "")
    return (f"Record: [{os.path.dirname(path)}]({link}/) (commit {commit}, {meta['date']}, "
            f"`{meta['command']}`).")


def models(data: dict) -> list:
    """Whole training steps, converted over plain."""
    lines = [f"Median step time of {data['rounds']} shuffled rounds (batch {data['batch']}, {data['clock']}); "
             "ratio: converted median over plain median, with the quartiles of the per-round ratios; control: a "
             "second copy of the plain model timed against the first the same way.", "",
             "| model | mode | plain ms | converted ms | ratio (median) | per-round quartiles | control (quartiles) |",
             "|---|---|---|---|---|---|---|"]
    return lines + [f"| {r['model']} | {r['mode']} | {r['plain_ms']:.2f} | {r['converted_ms']:.2f} | "
                    f"{r['ratio']:.3f} | {r['q1']:.3f}-{r['q3']:.3f} | "
                    f"{r['control']:.3f} ({r['control_q1']:.3f}-{r['control_q3']:.3f}) |" for r in data["rows"]]


def mode_cost(data: dict) -> list:
    """corrected()'s eager cost (the context measurement models.py records)."""
    c = data["context"]
    return [f"Extra microseconds per call, median over {c['rounds']} shuffled rounds of {c['reps']} calls (one "
            "thread, thread CPU time).", "",
            "| what | extra us per call |", "|---|---|",
            f"| entering and leaving a `corrected()` block | {c['block_us']:+.2f} |",
            f"| a strided `F.conv2d` 3x3/2 inside the block, fwd+bwd ({c['conv_us']:.1f} us alone) | "
            f"{c['strided_us']:+.2f} |",
            f"| the same call made with `strideconv.functional.conv2d` | {c['functional_us']:+.2f} |",
            f"| any other torch op inside the block ({c['op_us']:.2f} us alone) | {c['other_op_us']:+.2f} |",
            f"| the same op inside a mode that only passes calls on (any mode's cost) | {c['bare_op_us']:+.2f} |",
            f"| a weight-standardised `nn.Conv2d` subclass covered by `convert`, fwd+bwd ({c['subclass_plain_us']:.0f} "
            f"us plain) | {c['subclass_us']:+.2f} |"]


def steps(data: dict) -> list:
    """The whole-step ratios in one row per model: eager and compiled, with the A/A control."""
    cells = {(r["model"], r["mode"]): r for r in data["rows"]}
    names = list(dict.fromkeys(r["model"] for r in data["rows"]))
    lines = [f"Converted / plain step time, median of shuffled rounds (CPU, one thread, batch {data['batch']}); in "
             "brackets the control, a second plain copy timed the same way (and the rounds, where records are "
             "merged).", "",
             "| model | eager | `torch.compile` |", "|---|---|---|"]

    def cell(r):
        rounds = f", {r['rounds']} rounds" if "rounds" in r else ""
        return f"{r['ratio']:.3f} (control {r['control']:.3f}{rounds})"

    for name in names:
        row = [cell(cells[(name, m)]) if (name, m) in cells else "-" for m in ("eager", "compile")]
        lines.append(f"| {name} | {row[0]} | {row[1]} |")
    return lines


def compiled_profile(data: dict) -> list:
    """Where a compiled step's time goes (benchmarks/compiled_profile.py): per model, the
    converted step's extra microseconds in each category, and plain's step time."""
    shown = [c for c in data["categories"] if c != "total"]
    lines = [f"Converted minus plain, microseconds per compiled step (CPU, one thread, batch 8): median of "
             f"{data['rounds']} alternating profiles of {data['steps']} steps each, self CPU time per category "
             "(inductor's kernels profiled as events).", "",
             "| model | plain step us | " + " | ".join(shown) + " | total |", "|---|---|" + "---|" * (len(shown) + 1)]
    for r in data["rows"]:
        cells = [f"{r['converted'][c] - r['plain'][c]:+.0f}" for c in shown + ["total"]]
        lines.append(f"| {r['model']} | {r['plain']['total']:.0f} | " + " | ".join(cells) + " |")
    return lines


_CORRECTION_NAMES = ("none", "map", "kernel", "position")


def callgrind(data: dict) -> list:
    """Whole steps under callgrind (benchmarks/callgrind_steps.py): per model, what a converted
    step adds to a plain one in instructions and simulated first-level cache misses."""
    events = [("Ir", "instructions"), ("I1mr", "L1 instruction misses"), ("D1mr", "L1 data read misses"),
              ("D1mw", "L1 data write misses")]
    lines = [f"Per eager step (CPU, one thread, batch 8), from callgrind's cache simulation: the difference between "
             f"{data['steps']} more steps and the warm-up alone, over {data['steps']}; converted minus plain, and "
             "that as a share of plain; control: plain measured again in its own processes (the method's scatter). "
             "Counts of a simulated machine, not times.", "",
             "| model | | " + " | ".join(name for _, name in events) + " |", "|---|---|" + "---|" * len(events)]
    for r in data["rows"]:
        for variant in ("converted", "control"):
            cells = [f"{r[variant][e] - r['plain'][e]:+,.0f} ({(r[variant][e] - r['plain'][e]) / r['plain'][e]:+.1%})"
                     for e, _ in events]
            lines.append(f"| {r['model']} | {variant} | " + " | ".join(cells) + " |")
    return lines


def _ratio_cell(r: dict) -> str:
    return f"{r['train_ratio']:.3f} ({r['train_q1']:.2f}-{r['train_q3']:.2f})"


def _ratio_table(first: str, rows: list, variants: list) -> list:
    """fwd+bwd ratios with their quartiles: a row per shape, a column per variant (corrections'
    names in code type)."""
    cells = {(r["shape"], r["variant"]): r for r in rows}
    lines = ["| " + first + " | " + " | ".join(f"`{v}`" if v in _CORRECTION_NAMES else v for v in variants) + " |",
             "|---|" + "---|" * len(variants)]
    return lines + [f"| {shape} | " + " | ".join(_ratio_cell(cells[(shape, v)]) for v in variants) + " |"
                    for shape in dict.fromkeys(r["shape"] for r in rows)]


def speed(data: dict) -> list:
    """Single layers, fwd+bwd: each variant's ratio to F.conv2d with its per-round quartiles, the
    A/A control first (run.py's speed table)."""
    m = data["speed_meta"]
    lines = [f"fwd+bwd time over `F.conv2d`'s: median of {m['rounds']} shuffled rounds ({m['clock']}, batch "
             f"{m['batch']}), with the quartiles of the per-round ratios; control: `F.conv2d` against itself.", ""]
    lines += _ratio_table("layer", [r for r in data["speed"] if r["dtype"] == "float32"],
                          ["control", "none", "map", "kernel", "position"])
    if m.get("flagged"):
        lines += ["", "Control off by more than 2% on: " + "; ".join(m["flagged"]) + "."]
    return lines


def overhead(data: dict) -> list:
    """run.py's per-call table: microseconds per call over F.conv2d (modules: over nn.Conv2d)."""
    m = data["overhead_meta"]
    rows = {r["variant"]: r for r in data["overhead"]}
    lines = [f"Extra microseconds per call, median of the per-round differences over {m['rounds']} shuffled rounds "
             f"of {m['reps']} calls ({m['clock']}, one thread), fwd+bwd with the quartiles; control: `F.conv2d` "
             f"against itself, fwd+bwd ratio {m['control'][0]:.3f}, fwd {m['control'][1]:.3f}.", "",
             "| variant | fwd (no_grad) | fwd+bwd [quartiles] |", "|---|---|---|"]
    for name, r in rows.items():
        if name == "F.conv2d" or name == "nn.Conv2d":
            continue
        if name.startswith("strideconv.Conv2d"):
            lines.append(f"| {name}, over `nn.Conv2d` | | {r['train_module_extra_us']:+.2f} "
                         f"[{r['train_module_q1_us']:+.2f}, {r['train_module_q3_us']:+.2f}] |")
        else:
            lines.append(f"| {name} | {r['fwd_extra_us']:+.2f} | {r['train_extra_us']:+.2f} "
                         f"[{r['train_extra_q1_us']:+.2f}, {r['train_extra_q3_us']:+.2f}] |")
    lines.append(f"| (`F.conv2d` itself: {rows['F.conv2d']['fwd_us']:.1f} us fwd, "
                 f"{rows['F.conv2d']['train_us']:.1f} us fwd+bwd) | | |")
    return lines


def variance(data: dict) -> list:
    """run.py's gradient-variance table for one strided layer (c=3, k=4): Var[y] and Var[dx],
    plain and with ``position``, per stride, over the record's draws."""
    setting = "1 layer, c=3, k=4, image 100"
    rows = [r for r in data["variance"] if r["setting"] == setting]
    cells = {(r["stride"], r["variant"]): r for r in rows}
    lines = [f"Mean square over {data['draws']} draws and every position (no padding).", "",
             "| stride | Var[y] | Var[dx], `F.conv2d` | Var[dx], `correction=\"position\"` |", "|---|---|---|---|"]
    for stride in dict.fromkeys(r["stride"] for r in rows):
        plain, fixed = cells[(stride, "F.conv2d")], cells.get((stride, "position"))
        lines.append(f"| {stride} | {plain['var_y']:.2f} | {plain['var_dx']:.2f} | "
                     f"{fixed['var_dx'] if fixed is None else format(fixed['var_dx'], '.2f')} |")
    return lines


def gpu_speed(data: dict) -> list:
    """An older GPU record's speed table (one run, no quartiles or control recorded): fwd+bwd over
    F.conv2d, float32, contiguous."""
    m = data["speed_meta"]
    variants = ["none", "map", "kernel", "position", "hook"]
    cells = {(r["shape"], r["variant"]): r for r in data["speed"]
             if r["dtype"] == "float32" and r["layout"] == "contiguous"}
    lines = [f"fwd+bwd time over `F.conv2d`'s, float32, batch {m['batch']}: ratio of the medians of {m['rounds']} "
             f"interleaved rounds of {m['reps']} calls (CUDA events), one run; `hook`: `F.conv2d` with a tensor hook "
             "multiplying the input gradient by the position factor map.", "",
             "| layer | " + " | ".join(f"`{v}`" for v in variants) + " |", "|---|" + "---|" * len(variants)]
    for shape in dict.fromkeys(r["shape"] for r in data["speed"]):
        lines.append(f"| {shape} | " + " | ".join(f"{cells[(shape, v)]['train_ratio']:.3f}" for v in variants) + " |")
    return lines


def pool(data: dict) -> list:
    """run.py's pooling table: fwd+bwd over F.avg_pool2d, with quartiles and the A/A control."""
    rows = data["pool"]
    lines = [f"fwd+bwd time over `F.avg_pool2d`'s (with the input gradient): median of {rows[0]['rounds']} shuffled "
             f"rounds (thread CPU time, one thread, batch {rows[0]['batch']}), with the quartiles of the per-round "
             "ratios; control: `F.avg_pool2d` against itself.", ""]
    return lines + _ratio_table("pooling", rows, ["control", "none", "map", "kernel", "position"])


def pool_call(data: dict) -> list:
    """run.py's per-call pooling table: microseconds per call over nn.AvgPool2d."""
    rows = data["pool_overhead"]
    lines = [f"Extra microseconds per call over `nn.AvgPool2d` (a 1x1x6x6 input, 2x2/2): median of the per-round "
             f"differences over {rows[0]['rounds']} shuffled rounds of {rows[0]['reps']} calls (thread CPU time, one "
             "thread), with the quartiles; control: `nn.AvgPool2d` against itself.", "",
             "| module | fwd (no_grad) [quartiles] | fwd+bwd [quartiles] |", "|---|---|---|"]
    for r in rows:
        if r["variant"] == "nn.AvgPool2d":
            continue
        lines.append(f"| {r['variant']} | {r['fwd_extra_us']:+.2f} [{r['fwd_extra_q1_us']:+.2f}, "
                     f"{r['fwd_extra_q3_us']:+.2f}] | {r['train_extra_us']:+.2f} [{r['train_extra_q1_us']:+.2f}, "
                     f"{r['train_extra_q3_us']:+.2f}] |")
    plain = next(r for r in rows if r["variant"] == "nn.AvgPool2d")
    return lines + [f"| (`nn.AvgPool2d` itself: {plain['fwd_us']:.1f} us fwd, {plain['train_us']:.1f} us fwd+bwd) | | |"]


def transposed(data: dict) -> list:
    """run.py's transposed table: fwd+bwd over F.conv_transpose2d, with quartiles and the control."""
    m, rows = data["transposed_meta"], [r for r in data["transposed_speed"] if r["dtype"] == "float32"]
    band = any(r["variant"] == "band passes" for r in rows)
    variants = ["control", "none", "position", "kernel", "map", "plain ops"] + (["band passes"] if band else [])
    lines = [f"fwd+bwd time (the layer, then a ReLU) over `F.conv_transpose2d`'s: median of {m['rounds']} shuffled "
             f"rounds ({m['clock']}, batch {m['batch']}), with the quartiles of the per-round ratios; control: "
             "`F.conv_transpose2d` against itself; `plain ops`: `F.conv_transpose2d` times a precomputed position "
             "factor map, plus the bias." + (" `band passes`: two in-place passes of `scale_border_` over a buffer of "
                                             "the output's size (what `position` adds on the weight path, forward "
                                             "and backward), alone, as a share of the plain step." if band else ""), ""]
    return lines + _ratio_table("layer", rows, variants)


def transposed_variance(data: dict) -> list:
    """run.py's output variance of transposed convolutions at random init: the stride-phase
    energy ratio of the standard deviation map and the mean variance over a stride-1 layer's."""
    ratios = data["transposed_variance"]
    lines = ["Output variance at random initialisation (input and weight N(0, 1), 3 input channels, no bias), over "
             f"{data['transposed_draws']} draws: stride-phase energy ratio of the standard deviation map "
             "(1.00: every phase alike) inside the border and over the whole output, and the mean variance over that "
             "of a stride-1 layer with the same number of taps.", "",
             "| geometry | variant | phase ratio, interior | phase ratio, whole output | mean Var / stride-1 |",
             "|---|---|---|---|---|"]
    return lines + [f"| {r['geometry']} | {r['variant']} | {r['phase_ratio_interior']:.2f} | {r['phase_ratio_all']:.2f} "
                    f"| {r['mean_var_over_stride1']:.2f} |" for r in ratios]


RENDERERS = {"models": models, "callgrind": callgrind, "compiled_profile": compiled_profile, "mode_cost": mode_cost, "steps": steps, "speed": speed, "overhead": overhead,
             "variance": variance, "gpu_speed": gpu_speed, "pool": pool, "pool_call": pool_call, "transposed": transposed,
             "transposed_variance": transposed_variance, **render_studies.RENDERERS}


def render(text: str, doc_path: str, root: str) -> str:
    def block(match):
        name, records = match.group(2), match.group(3).split("+")
        loaded = []
        for record in records:
            with open(os.path.join(root, record)) as f:
                loaded.append(json.load(f))
        data = loaded[0] if len(loaded) == 1 else _merged(loaded)
        sources = [_source(r, d["meta"], os.path.dirname(doc_path), root) for r, d in zip(records, loaded)]
        return match.group(1) + "\n".join(RENDERERS[name](data) + [""] + sources) + "\n" + match.group(5)

    return BLOCK.sub(block, text)


def docs(root: str) -> list:
    return [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "docs", "*.md")))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 where a doc differs")
    parser.add_argument("--root", default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    stale = []
    for path in docs(args.root):
        with open(path) as f:
            text = f.read()
        rendered = render(text, path, args.root)
        if rendered != text:
            stale.append(os.path.relpath(path, args.root))
            if not args.check:
                with open(path, "w") as f:
                    f.write(rendered)
    if args.check and stale:
        print("differs from its records: " + ", ".join(stale) + " (run python scripts/render_docs.py)")
        return 1
    print(("rewrote: " + ", ".join(stale)) if stale and not args.check else "docs match their records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
