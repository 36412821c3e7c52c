"""strideconv benchmark: gradient variance, pictures, speed and memory against F.conv2d; the
transposed convolutions against F.conv_transpose2d; a summary of the studies' latest results.

    python benchmarks/run.py                 # CPU, a few minutes on two cores
    python benchmarks/run.py --device cuda   # GPU suite: float32 and bf16 autocast, channels_last
    python benchmarks/run.py --quick         # smoke run

Writes report.md, results.json and PNG pictures into --out (default benchmarks/out). The
measurements live in variance.py, speed.py, pool.py and transposed.py; common.py has what they share.
The whole-model timings (models.py) and the studies (studies/: decoder.py, image_gradients.py,
attribution.py, image_optimisation.py, gan.py, train.py) are their own commands; their latest results
in --out are summarised at the end.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

import pool
import speed
import transposed
import variance
from common import describe, meta_lines, paired_cell, record_folder


def _study(out_dir: str, name: str, title: str, missing: str):
    """(heading lines, the study's JSON or None) for the study that writes `name`.json into --out."""
    lines = ["", f"## {title}", ""]
    path = os.path.join(out_dir, f"{name}.json")
    if not os.path.exists(path):
        folder = "benchmarks" if name == "models" else "studies"
        return lines + [f"Not run here: `python {folder}/{name}.py` with the same `--out` {missing}"], None
    with open(path) as f:
        return lines, json.load(f)


def training_section(out_dir: str) -> list:
    """The main table of studies/train.py when its train.json is in the same directory."""
    lines, data = _study(out_dir, "train", "Training", "trains plain and corrected networks (MNIST-1D, "
                         "8x8 and 28x28 digits, a deep plain CNN, a Fixup residual net), each variant at its own "
                         "tuned learning rate, and writes train.md.")
    if data is None:
        return lines
    from training_report import summary_table

    return lines + [f"From [train.md](train.md) (`{data['meta']['command']}`): test accuracy (%) at each variant's "
                    f"own learning rate, mean ± std over {len(data['results'][0]['final_acc'])} seeds.", ""] + summary_table(data)


def decoder_section(out_dir: str) -> list:
    """The after-training table of studies/decoder.py when its decoder.json is in --out."""
    lines, data = _study(out_dir, "decoder", "Decoder study", "trains a small autoencoder on 28x28 digits with "
                         "each upsampler and writes decoder.md.")
    if data is None:
        return lines
    lines += [f"From [decoder.md](decoder.md) (`{data['meta']['command']}`, {data['rows'][0]['seeds']} seeds): "
              "test MSE and the stride-2 harmonic energy ratio of the outputs, at initialisation and after training "
              f"(real images: {data['real_harmonic']:.3f}).", "",
              "| upsampler | MSE x1e-3 | output harmonic ratio, init | output harmonic ratio, trained |", "|---|---|---|---|"]
    return lines + [f"| {r['variant']} | {1e3 * r['trained_mse'][0]:.2f} ± {1e3 * r['trained_mse'][1]:.2f} | "
                    f"{r['init_out_harmonic'][0]:.2f} | {r['trained_out_harmonic'][0]:.3f} |" for r in data["rows"]]


def image_gradients_section(out_dir: str) -> list:
    """Summary of studies/image_gradients.py when its JSON is in --out."""
    lines, data = _study(out_dir, "image_gradients", "Image-space gradients study", "measures the stride pattern "
                         "of input gradients and PGD perturbations of a strided CNN trained on 28x28 digits, plain "
                         "and corrected.")
    if data is None:
        return lines
    st = data["stats"]
    lines += [f"From [image_gradients.md](image_gradients.md) (`{data['meta']['command']}`, {len(data['seeds'])} "
              "seeds): median stride-2 phase energy ratio (1 = no pattern) of the input gradient and the L2 PGD "
              "perturbation, and L2 PGD's success rate (paired difference to plain [95% interval]).", "",
              "| variant | input gradient | L2 PGD perturbation | L2 PGD success % |", "|---|---|---|---|"]
    return lines + [f"| {v} | {paired_cell(st['gradient']['phase2'][v])} | {paired_cell(st['PGD L2']['phase2'][v])} | "
                    f"{paired_cell(st['PGD L2']['success'][v], 1)} |" for v in data["variants"]]


def attribution_section(out_dir: str) -> list:
    """Summary of studies/attribution.py when its JSON is in --out."""
    lines, data = _study(out_dir, "attribution", "Attribution faithfulness study", "scores saliency maps of plain "
                         "and corrected gradients by deletion, insertion and a pointing game.")
    if data is None:
        return lines
    st, floors, variants = data["stats"], data["floors"], data["variants"]
    lines += [f"From [attribution.md](attribution.md) (`{data['meta']['command']}`, {len(data['seeds'])} seeds), "
              "saliency (|gradient|) and integrated gradients: median AUCs, paired difference to plain [95% "
              f"interval]. Random ranking: deletion {floors['deletion|blurred|random']:.3f}, insertion "
              f"{floors['insertion|blurred|random']:.3f} (blurred baseline), pointing {floors['pointing|random']:.3f}.",
              "", "| measure | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    for key, label in (("deletion|blurred|saliency", "saliency deletion (lower better)"),
                       ("insertion|blurred|saliency", "saliency insertion (higher better)"),
                       ("pointing|saliency", "saliency pointing game (higher better)"),
                       ("deletion|blurred|integrated gradients", "IG deletion"),
                       ("pointing|integrated gradients", "IG pointing game")):
        lines.append(f"| {label} | " + " | ".join(paired_cell(st[key][v], 3) for v in variants) + " |")
    return lines


def image_optimisation_section(out_dir: str) -> list:
    """Summary of studies/image_optimisation.py when its JSON is in --out."""
    lines, data = _study(out_dir, "image_optimisation", "Image optimisation study", "optimises images through a "
                         "strided CNN with plain and corrected gradients and the standard remedies, at matched cost.")
    if data is None:
        return lines
    st = data["stats"]["feature visualisation"]
    last = f"objective@{data['sizes']['steps']}"
    lines += [f"From [image_optimisation.md](image_optimisation.md) (`{data['meta']['command']}`, "
              f"{len(data['seeds'])} seeds), feature visualisation: the logit reached after {data['sizes']['steps']} "
              "steps, the independent judge's confidence and the spectrum distance from real digits (median, paired "
              "difference to plain [95% interval]).", "",
              "| method | logit reached | judge confidence | spectrum distance |", "|---|---|---|---|"]
    return lines + [f"| {m} | {paired_cell(st[last][m])} | {paired_cell(st['scorer'][m])} | "
                    f"{paired_cell(st['spectrum_distance'][m])} |" for m in data["methods"]]


def models_section(out_dir: str) -> list:
    """Summary of benchmarks/models.py when its JSON is in --out."""
    lines, data = _study(out_dir, "models", "Whole training steps", "times training steps of whole models "
                         "(ResNet-18/50, a DCGAN generator, a U-Net), converted against plain.")
    if data is None:
        return lines
    lines += [f"From [models.md](models.md) (`{data['meta']['command']}`; batch {data['batch']}, {data['clock']}): "
              "converted step time over plain, median and per-round quartiles.", "",
              "| model | mode | ratio | quartiles |", "|---|---|---|---|"]
    return lines + [f"| {r['model']} | {r['mode']} | {r['ratio']:.3f} | {r['q1']:.3f}-{r['q3']:.3f} |"
                    for r in data["rows"]]


def gan_section(out_dir: str) -> list:
    """Summary of studies/gan.py when its JSON is in --out."""
    lines, data = _study(out_dir, "gan", "GAN study", "trains a small GAN on 28x28 digits whose generator has no "
                         "transposed convolution, with a plain or corrected strided discriminator.")
    if data is None:
        return lines
    lines += [f"From [gan.md](gan.md) (`{data['meta']['command']}`, {data['rows'][0]['seeds']} seeds): samples' "
              "stride-2 harmonic energy ratio over real images', classifier confidence, nearest-training-image "
              "distance.", "", "| discriminator | harmonic / real | confidence | NN dist. |", "|---|---|---|---|"]
    return lines + [f"| {r['variant']} | {r['harmonic_rel'][0]:.2f} ± {r['harmonic_rel'][1]:.2f} | "
                    f"{r['confidence'][0]:.3f} | {r['nn_distance'][0]:.2f} |" for r in data["rows"]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few draws, small shapes")
    parser.add_argument("--out", default=None, help="the record's folder (default: a new one under out/)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of the speed, pooling and transposed tables (default 21 on CPU, 15 on a GPU)")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["variance", "pictures", "speed", "pool", "overhead", "transposed"])
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    args.out = record_folder(args.out, __file__, args.device, ["report.md", "results.json"])
    torch.manual_seed(0)
    meta = describe(args.device, "benchmarks/run.py", argv)
    var_rows, draws = variance.variance_table(args.device, args.quick) if "variance" not in args.skip else ([], 0)
    pics = variance.pictures(args.out, args.device, args.quick) if "pictures" not in args.skip else []
    speed_rows, speed_meta = (speed.speed_suite(args.device, args.quick, args.rounds) if "speed" not in args.skip
                              else ([], dict(batch=0, rounds=0, reps=0)))
    pool_rows = pool.table(args.device, args.quick, args.rounds) if "pool" not in args.skip else []
    overhead_rows, overhead_meta = (speed.overhead_table(args.device, args.quick) if "overhead" not in args.skip
                                    else ([], None))
    context = speed.context_overhead(args.device, args.quick) if "overhead" not in args.skip else None
    pool_call_rows = pool.overhead(args.device, args.quick) if "pool" not in args.skip else []
    if "transposed" not in args.skip:
        t_pics, t_ratios, t_draws = transposed.variance_pictures(args.out, args.device, args.quick)
        t_rows, t_meta = transposed.speed_table(args.device, args.quick, args.rounds)
    lines = [
        "# strideconv benchmark report", "",
        *meta_lines(meta), "",
    ]
    lines += variance.report_section(var_rows, draws, pics) + [""]
    lines += speed.report_section(speed_rows, speed_meta) + pool.table_section(pool_rows)
    lines += speed.overhead_section(overhead_rows, overhead_meta) + pool.overhead_section(pool_call_rows)
    lines += speed.context_section(context) if context else []
    if "transposed" not in args.skip:
        lines += [""] + transposed.report_section(t_rows, t_meta, t_pics, t_ratios, t_draws)
        pics = pics + t_pics
    else:
        t_rows, t_meta, t_ratios, t_draws = [], None, [], 0
    studies = (decoder_section(args.out) + image_gradients_section(args.out) + attribution_section(args.out)
               + image_optimisation_section(args.out) + gan_section(args.out) + models_section(args.out))
    text = "\n".join(lines + studies + training_section(args.out)) + "\n"
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(dict(meta=meta, variance=var_rows, draws=draws, speed=speed_rows, speed_meta=speed_meta,
                       pool=pool_rows, pool_overhead=pool_call_rows, overhead=overhead_rows, overhead_meta=overhead_meta, context=context,
                       transposed_speed=t_rows, transposed_meta=t_meta, transposed_variance=t_ratios,
                       transposed_draws=t_draws), f, indent=1)
    print(text)
    print(f"wrote {args.out}/report.md, results.json and {len(pics)} pictures")


if __name__ == "__main__":
    main()
