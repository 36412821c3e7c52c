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
# the studies' own table code (studies/training_report.py) and its statistics (benchmarks/common.py)
sys.path[:0] = [os.path.join(ROOT, "studies"), os.path.join(ROOT, "benchmarks")]
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


_CORRECTION_NAMES = ("none", "map", "kernel", "position")


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


_SETTINGS = {"mnist1d-cnn": "MNIST-1D CNN, Adam", "digits8-cnn": "8x8 digits CNN, Adam",
             "digits28-cnn": "28x28 digits CNN, Adam", "deep28-cnn": "12-layer CNN, SGD",
             "fixup28-resnet": "Fixup ResNet, SGD"}


def _train_table(data: dict, columns: list, at_plain_lr: bool, spread: bool) -> list:
    """The training study's test accuracy, a row per setting and a column per variant: mean over
    the seeds (± std where ``spread``), and in bold the paired difference to plain with the same
    init where its 95% t-interval excludes 0; "does not train" where the variant's validation
    accuracy is the same at every learning rate of the grid (chance everywhere)."""
    from training_report import Study, trains_nowhere

    st = Study(data)
    variants = {v["name"]: v for v in st.variants}
    lines = []
    for setting in st.settings:
        cells = []
        for name in columns:
            v = variants[name]
            if v["init"] not in setting["inits"]:
                cells.append("–")
                continue
            c = st.comparison(setting["name"], v, at_reference_lr=at_plain_lr and v["correction"] is not None)
            mean, sd = c["acc"]
            cell = f"{mean:.1f} ± {sd:.1f}" if spread else f"{mean:.1f}"
            if "delta" in c and abs(c["delta"][0]) > c["delta"][1]:
                cell += f" (**{c['delta'][0]:+.1f}**)"
            if trains_nowhere(st.means[setting["name"]][name]):
                cell += ", does not train"
            cells.append(cell)
        lines.append(f"| {_SETTINGS.get(setting['name'], setting['name'])} | " + " | ".join(cells) + " |")
    return lines


def _train_header(columns: list, intro: str) -> list:
    return [intro, "", "| setting | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]


def train_profile(data: dict) -> list:
    """The 12-layer net's input-gradient RMS per layer at initialisation, relative to the last
    layer's (the study's own measure, mean over the seeds): the first layer's value and the range
    over the layers below the last."""
    from training_report import Study, relative_profile

    st = Study(data)
    setting = next(s for s in st.settings if s["name"] == "deep28-cnn")
    lines = [f"Input-gradient RMS of each convolution of the 12-layer CNN at initialisation, over the last one's "
             f"(Kaiming's analysis intends 1 everywhere), mean over {len(data['results'][0]['final_acc'])} seeds.", "",
             "| variant | first layer | range over the layers below the last |", "|---|---|---|"]
    for name in st.names(setting):
        profile = relative_profile(st.row(setting["name"], name)["grad_rms_init"])[:-1]
        lines.append(f"| {name} | {profile[0]:.2f} | {min(profile):.2f}-{max(profile):.2f} |")
    return lines


def train_default(data: dict) -> list:
    """Test accuracy from the default init, each variant at its own best learning rate."""
    columns = ["plain", "position", "kernel", "map", "position p=1"]
    seeds = len(data["results"][0]["final_acc"])
    return _train_header(columns, f"Test accuracy %, mean ± std over {seeds} seeds, each variant at the learning rate "
                                  "of its best mean validation accuracy; bold: the paired difference to `plain` "
                                  "where its 95% interval excludes 0.") + _train_table(data, columns, False, True)


def train_inits(data: dict) -> list:
    """Test accuracy from Kaiming and stride-aware init, each at its own best learning rate."""
    columns = ["plain · kaiming", "position · kaiming", "plain · stride init", "position · stride init",
               "kernel · stride init", "map · stride init"]
    seeds = len(data["results"][0]["final_acc"])
    return _train_header(columns, f"Test accuracy %, mean ± std over {seeds} seeds, each variant at its own best "
                                  "learning rate; bold: the paired difference to `plain` with the same init (plain "
                                  "rows: to `plain` from the default init) where its 95% interval excludes 0.") \
        + _train_table(data, columns, False, True)


def train_swap(data: dict) -> list:
    """Each correction at the learning rate chosen for plain with the same init."""
    columns = ["position", "kernel", "map", "position p=1", "position · kaiming", "position · stride init",
               "kernel · stride init", "map · stride init"]
    seeds = len(data["results"][0]["final_acc"])
    return _train_header(columns, f"Mean test accuracy % over {seeds} seeds at `plain`'s learning rate (same init); "
                                  "bold: the paired difference to `plain` where its 95% interval excludes 0.") \
        + _train_table(data, columns, True, False)


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


def _stat_cell(entry: dict, digits: int) -> str:
    """A study's per-variant statistic (studies' records): the median over the seeds, then either
    the median ratio to plain with its 95% interval (``factor``) or the mean paired difference to
    plain with its 95% t-interval (``diff``)."""
    cell = f"{entry['median']:.{digits}f}"
    if "factor" in entry:
        return cell + f" (x{entry['factor']:.2f} [{entry['low']:.2f}, {entry['high']:.2f}])"
    if "diff" in entry:
        d, h = entry["diff"], entry["half_width"]
        return cell + f" ({d:+.{digits}f} [{d - h:+.{digits}f}, {d + h:+.{digits}f}])"
    return cell


def _variant_table(first: str, variants: list, rows: list) -> list:
    return ["| " + first + " | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)] + rows


def image_gradients(data: dict) -> list:
    """The image-gradient study: stride-2 / stride-4 phase energy ratio of each method's map."""
    lines = [f"Stride-2 / stride-4 phase energy ratio of the maps (1.0: no pattern), median over {len(data['seeds'])} "
             "seeds; in brackets the stride-2 ratio over plain's: the median of the per-seed ratios with its 95% "
             "interval.", ""]
    rows = []
    for method, stats in data["stats"].items():
        cells = []
        for v in data["variants"]:
            p2, p4 = stats["phase2"][v], stats["phase4"][v]
            ratio = f" (x{p2['factor']:.2f} [{p2['low']:.2f}, {p2['high']:.2f}])" if "factor" in p2 else ""
            cells.append(f"{p2['median']:.3g} / {p4['median']:.3g}{ratio}")
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines + _variant_table("map of", data["variants"], rows)


def attack_success(data: dict) -> list:
    """The image-gradient study's PGD attacks: the share of test images each attack turns."""
    lines = [f"Attack success % (images whose label the attack changes), median over {len(data['seeds'])} seeds; in "
             "brackets the mean paired difference to plain with its 95% t-interval.", ""]
    rows = [f"| {attack} | " + " | ".join(_stat_cell(data["stats"][attack]["success"][v], 1) for v in data["variants"])
            + " |" for attack in data["stats"] if "success" in data["stats"][attack]]
    return lines + _variant_table("attack", data["variants"], rows)


def gan(data: dict) -> list:
    """The GAN study: per discriminator, the samples' measures plain and corrected (mean ± std over
    the seeds) and the paired difference, corrected minus plain, with its 95% t-interval."""
    from common import mean_std, t_interval

    metrics = [("harmonic_rel", "harmonic / real", 2), ("confidence", "confidence", 3),
               ("label_entropy", "label entropy", 2), ("nn_distance", "NN distance", 2)]
    runs = {(r["kernel"], r["corrected"], r["seed"]): r for r in data["records"]}
    seeds = sorted({r["seed"] for r in data["records"]})
    lines = [f"Mean ± std over {len(seeds)} seeds (the same seeds for both variants); the paired difference "
             "`position` minus plain with its 95% t-interval.", "",
             "| discriminator | variant | " + " | ".join(m[1] for m in metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for kernel in sorted({r["kernel"] for r in data["records"]}):
        for corrected, name in ((False, "plain"), (True, "`position`")):
            cells = [mean_std([runs[(kernel, corrected, sd)][m] for sd in seeds]) for m, _, _ in metrics]
            lines.append(f"| {kernel}x{kernel}/2 | {name} | " + " | ".join(
                f"{c[0]:.{d}f} ± {c[1]:.{d}f}" for c, (_, _, d) in zip(cells, metrics)) + " |")
        diffs = [[runs[(kernel, True, sd)][m] - runs[(kernel, False, sd)][m] for sd in seeds] for m, _, _ in metrics]
        lines.append(f"| {kernel}x{kernel}/2 | difference | " + " | ".join(
            f"{sum(x) / len(x):+.{d}f} [{sum(x) / len(x) - t_interval(x):+.{d}f}, {sum(x) / len(x) + t_interval(x):+.{d}f}]"
            for x, (_, _, d) in zip(diffs, metrics)) + " |")
    return lines


def decoder(data: dict) -> list:
    """The decoder study: each upsampler's stride-2 harmonic energy at initialisation and its
    reconstruction error after training, mean ± std over the seeds."""
    rows = data["rows"]
    lines = [f"Mean ± std over {rows[0]['seeds']} seeds: the outputs' stride-2 harmonic energy ratio at "
             f"initialisation (real digits: {data['real_harmonic']:.2f}) and after {data['epochs']} epochs, and the "
             "test reconstruction MSE after training.", "",
             "| upsampler | harmonic ratio at init | after training | MSE after training |", "|---|---|---|---|"]
    return lines + [f"| {r['variant']} | {r['init_out_harmonic'][0]:.3g} ± {r['init_out_harmonic'][1]:.2g} | "
                    f"{r['trained_out_harmonic'][0]:.3f} ± {r['trained_out_harmonic'][1]:.3f} | "
                    f"{r['trained_mse'][0]:.2e} ± {r['trained_mse'][1]:.1e} |" for r in rows]


def attribution_floors(data: dict) -> list:
    """The attribution study's reference points: random rankings and the networks' accuracy."""
    f, records = data["floors"], data["records"]
    acc = [100 * r["accuracy"] for r in records]
    canvas = [100 * r["canvas_accuracy"] for r in records]
    return ["| reference (over the seeds) | value |", "|---|---|",
            f"| random ranking: deletion AUC, to zeros / to blur | {f['deletion|zeros|random']:.3f} / "
            f"{f['deletion|blurred|random']:.3f} |",
            f"| random ranking: insertion AUC, from zeros / from blur | {f['insertion|zeros|random']:.3f} / "
            f"{f['insertion|blurred|random']:.3f} |",
            f"| random attribution: pointing score | {f['pointing|random']:.3f} |",
            f"| digit network, test accuracy % (min-max) | {min(acc):.1f}-{max(acc):.1f} |",
            f"| canvas network, test accuracy % (min-max) | {min(canvas):.1f}-{max(canvas):.1f} |"]


def faithfulness(data: dict) -> list:
    """The attribution study: deletion to a blurred image and insertion from zeros, per method."""
    lines = [f"Area under the deletion (to a blurred image; lower is more faithful) and insertion (from zeros; higher "
             f"is more faithful) curves, median over {len(data['seeds'])} seeds; in brackets the mean paired "
             "difference to plain with its 95% t-interval.", ""]
    rows = [f"| {method}, {label} | " + " | ".join(_stat_cell(data["stats"][f"{key}|{method}"][v], 3)
                                                   for v in data["variants"]) + " |"
            for method in data["methods"] for key, label in (("deletion|blurred", "deletion to blur"),
                                                              ("insertion|zeros", "insertion from zeros"))]
    return lines + _variant_table("method, measure", data["variants"], rows)


def pointing(data: dict) -> list:
    """The attribution study's pointing game on the canvas task."""
    lines = [f"Pointing score (the share of the positive attribution inside the digit's ink box), median over "
             f"{len(data['seeds'])} seeds; in brackets the mean paired difference to plain with its 95% t-interval.",
             ""]
    rows = [f"| {method} | " + " | ".join(_stat_cell(data["stats"][f"pointing|{method}"][v], 3)
                                          for v in data["variants"]) + " |" for method in data["methods"]]
    return lines + _variant_table("method", data["variants"], rows)


def _optimisation(data: dict, task: str, objective: str, digits: int) -> list:
    stats = data["stats"][task]
    columns = [("objective@50", f"{objective} at step 50", digits), ("objective@200", "at step 200", digits),
               ("scorer", "judge confidence", 2), ("spectrum_distance", "spectrum distance", 2),
               ("change_phase2", "stride-2 pattern of the change", 2)]
    lines = [f"Median over {len(data['seeds'])} seeds; in brackets the mean paired difference to plain with its 95% "
             "t-interval (the pattern: the median ratio to plain with its 95% interval).", "",
             f"| {task} | " + " | ".join(c[1] for c in columns) + " |", "|---|" + "---|" * len(columns)]
    return lines + [f"| {m} | " + " | ".join(_stat_cell(stats[key][m], d) for key, _, d in columns) + " |"
                    for m in data["methods"]]


def feature_visualisation(data: dict) -> list:
    """The image-optimisation study's feature visualisation (gradient ascent on a logit)."""
    return _optimisation(data, "feature visualisation", "logit", 1)


def model_inversion(data: dict) -> list:
    """The image-optimisation study's model inversion (Adam on a log-probability)."""
    return _optimisation(data, "model inversion", "log-prob", 2)


RENDERERS = {"decoder": decoder, "train_profile": train_profile, "variance": variance, "gan": gan, "attribution_floors": attribution_floors, "image_gradients": image_gradients, "attack_success": attack_success, "faithfulness": faithfulness, "pointing": pointing,
             "feature_visualisation": feature_visualisation, "model_inversion": model_inversion,
             "transposed_variance": transposed_variance, "train_default": train_default, "train_inits": train_inits, "train_swap": train_swap, "models": models, "mode_cost": mode_cost, "steps": steps, "speed": speed, "overhead": overhead,
             "gpu_speed": gpu_speed, "pool": pool, "pool_call": pool_call, "transposed": transposed}


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
