"""Render the measured tables of README.md and docs/*.md from the records' JSON.

    python scripts/render_docs.py           # rewrite every rendered block from its record
    python scripts/render_docs.py --check   # exit 1 if a committed doc differs from its rendering

A rendered block sits between two markers that name the table and the record it comes from:

    <!-- render: models benchmarks/results/cpu-2026-12-06-models/models.json -->
    ... (written by this script: the table, then the record it comes from) ...
    <!-- end render -->

Each kind of table is one function below; it says which statistic it shows and over what.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

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
    commit = (meta.get("commit") or "no commit recorded")[:12] + (" (uncommitted changes)" if meta.get("dirty") else "")
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


def speed(data: dict) -> list:
    """Single layers, fwd+bwd: each variant's ratio to F.conv2d with its per-round quartiles, the
    A/A control first (run.py's speed table)."""
    m = data["speed_meta"]
    variants = ["control", "none", "map", "kernel", "position"]
    lines = [f"fwd+bwd time over `F.conv2d`'s: median of {m['rounds']} shuffled rounds ({m['clock']}, batch "
             f"{m['batch']}), with the quartiles of the per-round ratios; control: `F.conv2d` against itself.", "",
             "| layer | " + " | ".join(f"`{v}`" if v != "control" else v for v in variants) + " |",
             "|---|" + "---|" * len(variants)]
    cells = {(r["shape"], r["variant"]): r for r in data["speed"] if r["dtype"] == "float32"}
    for shape in dict.fromkeys(r["shape"] for r in data["speed"]):
        lines.append(f"| {shape} | " + " | ".join(
            f"{cells[(shape, v)]['train_ratio']:.3f} ({cells[(shape, v)]['train_q1']:.2f}-"
            f"{cells[(shape, v)]['train_q3']:.2f})" for v in variants) + " |")
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


RENDERERS = {"models": models, "mode_cost": mode_cost, "steps": steps, "speed": speed, "overhead": overhead}


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
