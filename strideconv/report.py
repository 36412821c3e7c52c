"""``strideconv.report``: every strided layer of a model, its count cell and backward deficit.

From the command line, for a model defined in a Python file::

    python -m strideconv.report path/to/model.py:make_model --input-size 1 3 224 224

where ``make_model`` is a module instance or a callable returning one in that file.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from typing import NamedTuple

import torch
from torch import nn

from ._factors import axis_alpha, axis_class_counts, axis_counts, pool_axis_counts

__all__ = ["Layer", "Report", "report"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


class Layer(NamedTuple):
    name: str
    kind: str
    input_size: tuple  # spatial
    kernel: tuple
    stride: tuple
    padding: tuple
    cell: str  # the repeating count pattern away from the borders
    deficit: float  # mean count over K: Var[grad_input] relative to what Kaiming's n assumes
    alpha: float  # the "map" scalar at the layer's power
    correction: str


class Report(list):
    """A list of ``Layer`` rows; ``str()`` gives a Markdown table."""

    def __str__(self) -> str:
        head = ["layer", "type", "input", "kernel", "stride", "padding", "count cell",
                "mean count / K", "alpha", "correction"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        fmt = lambda t: "x".join(str(v) for v in t)  # noqa: E731
        for r in self:
            lines.append(
                f"| {r.name or '(model)'} | {r.kind} | {fmt(r.input_size)} | {fmt(r.kernel)} | "
                f"{fmt(r.stride)} | {fmt(r.padding)} | {r.cell} | {r.deficit:.3f} | {r.alpha:.3f} | "
                f"{r.correction} |"
            )
        if not self:
            lines.append("| (no strided layer) |" + " |" * (len(head) - 1))
        return "\n".join(lines)


def _cell(kernel, stride, padding, dilation) -> str:
    """n((i + p) mod s) per axis for one period of positions, as '[1 2; 2 4]' in 2-D."""
    axes = []
    for k, s, p, q in zip(kernel, stride, padding, dilation):
        n = axis_class_counts(k, s, q)
        axes.append([n[(i + p) % s] for i in range(s)])
    if len(axes) == 2:
        return "[" + "; ".join(" ".join(str(a * b) for b in axes[1]) for a in axes[0]) + "]"
    return " x ".join("[" + " ".join(str(v) for v in a) + "]" for a in axes)


def _settings(module, nd: int):
    expand = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd  # noqa: E731
    if isinstance(module, _CONVS):
        padding = (0,) * nd if isinstance(module.padding, str) else expand(module.padding)
        if isinstance(module.padding, str) and module.padding == "same":
            padding = tuple(q * (k - 1) // 2 for k, q in zip(module.kernel_size, module.dilation))
        return expand(module.kernel_size), expand(module.stride), padding, expand(module.dilation), False
    stride = module.stride if module.stride is not None else module.kernel_size
    return expand(module.kernel_size), expand(stride), expand(module.padding), (1,) * nd, module.ceil_mode


def report(model: nn.Module, example_input, min_stride: int = 2) -> Report:
    """Run ``model`` once on ``example_input`` (no gradient) and list every convolution and
    average pooling whose largest stride is at least ``min_stride``."""
    sizes = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, _CONVS + _POOLS):
            def hook(mod, args, name=name):
                nd = 3 if isinstance(mod, (nn.Conv3d, nn.AvgPool3d)) else 2 if isinstance(mod, (nn.Conv2d, nn.AvgPool2d)) else 1
                sizes[name] = tuple(args[0].shape[-nd:])
            handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        for h in handles:
            h.remove()
    rows = Report()
    for name, module in model.named_modules():
        if name not in sizes:
            continue
        kernel, stride, padding, dilation, ceil_mode = _settings(module, len(sizes[name]))
        if max(stride) < min_stride:
            continue
        power = getattr(module, "power", 0.5)
        K = math.prod(kernel)
        mean_count, alpha = 1.0, 1.0
        for L, k, s, p, q in zip(sizes[name], kernel, stride, padding, dilation):
            c = pool_axis_counts(L, k, s, p, ceil_mode) if isinstance(module, _POOLS) else axis_counts(L, k, s, p, q)
            mean_count *= sum(c) / max(L, 1)
            alpha *= axis_alpha(c, k, power)
        correction = getattr(module, "correction", "none (plain torch.nn)")
        rows.append(Layer(name, type(module).__name__, sizes[name], kernel, stride, padding,
                          _cell(kernel, stride, padding, dilation), mean_count / K, alpha, correction))
    return rows


def _load(target: str) -> nn.Module:
    path, _, attr = target.partition(":")
    spec = importlib.util.spec_from_file_location("_strideconv_report_target", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load a Python file from {path!r}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not attr:
        found = [v for v in vars(mod).values() if isinstance(v, nn.Module)]
        if len(found) != 1:
            raise SystemExit(f"{path}: name the model as FILE:NAME ({len(found)} module instances found)")
        return found[0]
    obj = getattr(mod, attr)
    model = obj if isinstance(obj, nn.Module) else obj()
    if not isinstance(model, nn.Module):
        raise SystemExit(f"{target} is not an nn.Module nor a callable returning one")
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strideconv.report", description=__doc__.splitlines()[0])
    parser.add_argument("target", help="FILE.py:NAME, NAME a module instance or a callable returning one")
    parser.add_argument("--input-size", type=int, nargs="+", required=True, help="e.g. 1 3 224 224")
    parser.add_argument("--min-stride", type=int, default=2)
    args = parser.parse_args(argv)
    model = _load(args.target).eval()
    print(report(model, torch.zeros(args.input_size), args.min_stride))
    return 0


if __name__ == "__main__":
    sys.exit(main())
