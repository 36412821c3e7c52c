"""render_docs.py's tables of the studies (studies/): the training study's accuracy tables and
gradient profile, built on the study's own code (studies/training_report.py), and the
attribution, GAN and decoder studies' tables, with the statistics of benchmarks/common.py."""

from __future__ import annotations

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the studies' own table code and the benchmark's statistics, imported by the renderers below
sys.path[:0] = [os.path.join(_ROOT, "studies"), os.path.join(_ROOT, "benchmarks")]


_SETTINGS = {"mnist1d-cnn": "MNIST-1D CNN, Adam", "digits8-cnn": "8x8 digits CNN, Adam",
             "digits28-cnn": "28x28 digits CNN, Adam", "deep28-cnn": "12-layer CNN, SGD",
             "fixup28-resnet": "Fixup ResNet, SGD"}


def _train_table(data: dict, columns: list, at_plain_lr: bool, spread: bool) -> list:
    """The training study's test accuracy, a row per setting and a column per variant: mean over
    the seeds (± std where ``spread``), and in bold the paired difference to plain with the same
    init, with its 95% t-interval, where that interval excludes 0; "does not train" where the variant's validation
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
                m, h = c["delta"]
                cell += f" (**{m:+.1f}** [{m - h:+.1f}, {m + h:+.1f}])"
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
                                  "[its 95% interval] where that interval excludes 0.") + _train_table(data, columns, False, True)


def train_inits(data: dict) -> list:
    """Test accuracy from Kaiming and stride-aware init, each at its own best learning rate."""
    columns = ["plain · kaiming", "position · kaiming", "plain · stride init", "position · stride init",
               "kernel · stride init", "map · stride init"]
    seeds = len(data["results"][0]["final_acc"])
    return _train_header(columns, f"Test accuracy %, mean ± std over {seeds} seeds, each variant at its own best "
                                  "learning rate; bold: the paired difference to `plain` with the same init (plain "
                                  "rows: to `plain` from the default init) [its 95% interval] where that interval excludes 0.") \
        + _train_table(data, columns, False, True)


def train_swap(data: dict) -> list:
    """Each correction at the learning rate chosen for plain with the same init."""
    columns = ["position", "kernel", "map", "position p=1", "position · kaiming", "position · stride init",
               "kernel · stride init", "map · stride init"]
    seeds = len(data["results"][0]["final_acc"])
    return _train_header(columns, f"Mean test accuracy % over {seeds} seeds at `plain`'s learning rate (same init); "
                                  "bold: the paired difference to `plain` [its 95% interval] where that interval excludes 0.") \
        + _train_table(data, columns, True, False)


def train_lr(data: dict) -> list:
    """The learning rate each variant was tuned to (best mean validation accuracy over its
    setting's grid), a row per setting: where the corrections' rate departs from plain's."""
    from training_report import Study, trains_nowhere

    st = Study(data)
    columns = [v["name"] for v in st.variants]
    lines = _train_header(["grid"] + columns, "Learning rate of each variant's best mean validation accuracy over "
                                              f"{len(data['results'][0]['final_acc'])} seeds, from its setting's grid "
                                              "(\"none trains\": chance at every rate of the grid).")
    for setting in st.settings:
        grid = data["grids"][setting["name"]]
        cells = [f"{min(grid):.2g}-{max(grid):.2g}"]
        for v in st.variants:
            if v["init"] not in setting["inits"]:
                cells.append("–")
            elif trains_nowhere(st.means[setting["name"]][v["name"]]):
                cells.append("none trains")
            else:
                cells.append(f"{st.lr[(setting['name'], v['name'])]:.2g}")
        lines.append(f"| {_SETTINGS.get(setting['name'], setting['name'])} | " + " | ".join(cells) + " |")
    return lines


def train_cost(data: dict) -> list:
    """Time per training step over plain's, from the study's own timing of each variant's first
    job (``Study.step_ratio``): the corrections' range and median per setting, and the range of
    plain from other inits, the same computation as plain (what noise alone reads)."""
    import statistics

    from training_report import Study

    st = Study(data)
    lines = ["Time per training step over `plain`'s (same setting; each variant's first job, on two busy "
             "workers): the corrections' range and median, and `plain` from Kaiming or stride-aware init, "
             "which computes the same as `plain` (the noise of the timing).", "",
             "| setting | corrections: range | corrections: median | plain from other inits: range |",
             "|---|---|---|---|"]
    for setting in st.settings:
        timed = [v for v in st.variants if v["init"] in setting["inits"] and v["name"] != "plain"]
        corrected = [st.step_ratio(setting["name"], v["name"]) for v in timed if v["correction"] is not None]
        same = [st.step_ratio(setting["name"], v["name"]) for v in timed if v["correction"] is None]
        lines.append(f"| {_SETTINGS.get(setting['name'], setting['name'])} | {min(corrected):.2f}-{max(corrected):.2f} "
                     f"| {statistics.median(corrected):.2f} | {min(same):.2f}-{max(same):.2f} |")
    return lines


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
             "t-interval (the pattern: the median ratio to plain with its 95% interval). Judge: the independent "
             f"classifier, {100 * data['scorer_accuracy']:.1f} % test accuracy.", "",
             f"| {task} | " + " | ".join(c[1] for c in columns) + " |", "|---|" + "---|" * len(columns)]
    return lines + [f"| {m} | " + " | ".join(_stat_cell(stats[key][m], d) for key, _, d in columns) + " |"
                    for m in data["methods"]]


def feature_visualisation(data: dict) -> list:
    """The image-optimisation study's feature visualisation (gradient ascent on a logit)."""
    return _optimisation(data, "feature visualisation", "logit", 1)


def model_inversion(data: dict) -> list:
    """The image-optimisation study's model inversion (Adam on a log-probability)."""
    return _optimisation(data, "model inversion", "log-prob", 2)


RENDERERS = {"train_default": train_default, "train_inits": train_inits, "train_swap": train_swap,
             "train_profile": train_profile, "train_lr": train_lr, "train_cost": train_cost,
             "image_gradients": image_gradients, "attack_success": attack_success,
             "attribution_floors": attribution_floors, "faithfulness": faithfulness, "pointing": pointing,
             "feature_visualisation": feature_visualisation, "model_inversion": model_inversion, "gan": gan,
             "decoder": decoder}
