"""``strideconv.report``: every strided layer of a model, its count cell and backward deficit.

The command line is ``python -m strideconv.report`` (strideconv/report.py).
"""

from __future__ import annotations

import collections
import itertools
import math
from typing import NamedTuple

import torch
from torch import nn

from ._arguments import int_tuple_exact, same_padding
from .factors import (_transposed_length, axis_alpha, axis_class_counts, axis_counts, axis_transposed_counts,
                      pool_axis_counts)
from .modules import TORCH_CONV_TRANSPOSES, TORCH_CONVS

__all__ = ["Layer", "Report", "report"]

_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


class Layer(NamedTuple):
    name: str
    kind: str
    input_size: tuple  # spatial size the count map covers: the input, or a transposed layer's output
    kernel: tuple
    stride: tuple
    padding: tuple
    cell: str  # the repeating count pattern away from the borders
    deficit: float  # mean count over K: Var[grad_input] (a transposed layer's Var[output]) relative to K taps
    alpha: float  # the "map" scalar at the layer's power
    correction: str


_LEGEND = """\
counted size: the spatial size whose positions are counted (a layer's input, padded as the layer
  pads it; a transposed layer's output).
count cell: how many kernel windows reach each position, over one stride period away from the
  borders ("uniform: 1" when every position gets the same count; shares when the cell is large).
  A plain stride-1 layer gives every position K windows.
mean count / K: the mean count over the number of taps K: what the plain backward's input-gradient
  variance is, relative to a stride-1 layer's (a transposed layer: its output variance).
alpha: the scalar of correction="map" at the layer's power.
correction: the layer's setting (a torch.nn layer has none; strideconv.convert or
  strideconv.corrected() gives it one)."""


class Report(list):
    """A list of ``Layer`` rows; ``str()`` gives a Markdown table, ``legend()`` what its columns say."""

    @staticmethod
    def legend() -> str:
        return _LEGEND

    def __str__(self) -> str:
        head = ["layer", "type", "counted size", "kernel", "stride", "padding", "count cell",
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


_CELL_ENTRIES = 16  # cells up to this many positions are printed whole (a 4x4 cell)


def _cell(kernel, stride, padding, dilation) -> str:
    """The counts n((i + p) mod s) over one stride period of positions, summarised: "uniform: 1"
    when every position has the same count; else the cell itself when it is small ('[1 2; 2 4]'
    in 2-D, a product of per-axis lists otherwise); else the distinct counts and the share of
    positions with each ('1: 56%, 2: 38%, 4: 6%')."""
    axes = []
    for k, s, p, q in zip(kernel, stride, padding, dilation):
        n = axis_class_counts(k, s, q)
        axes.append([n[(i + p) % s] for i in range(s)])
    entries = [math.prod(c) for c in itertools.product(*axes)]
    if len(set(entries)) == 1:
        return f"uniform: {entries[0]}"
    if len(entries) <= _CELL_ENTRIES:
        if len(axes) == 2:
            return "[" + "; ".join(" ".join(str(a * b) for b in axes[1]) for a in axes[0]) + "]"
        return " x ".join("[" + " ".join(str(v) for v in a) + "]" for a in axes)
    shares = collections.Counter(entries)
    return ", ".join(f"{count}: {100 * shares[count] / len(entries):.0f}%" for count in sorted(shares))


def _geometry(module, input, nd: int):
    """(size, kernel, stride, padding, dilation, ceil_mode) of the count map a layer's backward
    has: the spatial size of the tensor it convolves (the input, padded first under a non-zero
    padding mode, or by the odd extra that 'same' needs, as strideconv does) and the padding
    the convolution itself adds."""
    expand = lambda v, name: int_tuple_exact(v, nd, name)  # noqa: E731
    size = tuple(input.shape[-nd:])
    kernel = expand(module.kernel_size, "kernel_size")
    if not isinstance(module, TORCH_CONVS):  # average pooling
        stride = expand(module.stride if module.stride is not None else module.kernel_size, "stride")
        return size, kernel, stride, expand(module.padding, "padding"), (1,) * nd, module.ceil_mode
    stride, dilation = expand(module.stride, "stride"), expand(module.dilation, "dilation")
    no_padding = (0,) * nd
    if module.padding_mode != "zeros":  # torch pads (last dim first) by these, then convolves
        pads = module._reversed_padding_repeated_twice
        size = tuple(L + pads[2 * (nd - 1 - d)] + pads[2 * (nd - 1 - d) + 1] for d, L in enumerate(size))
        return size, kernel, stride, no_padding, dilation, False
    if module.padding == "valid":
        return size, kernel, stride, no_padding, dilation, False
    if module.padding == "same":
        pads = same_padding(kernel, stride, dilation)
        size = tuple(L + after - before for L, (before, after) in zip(size, pads))
        return size, kernel, stride, tuple(before for before, _ in pads), dilation, False
    return size, kernel, stride, expand(module.padding, "padding"), dilation, False


def _transposed_geometry(module, input, output, nd: int):
    """(input size, output size, kernel, stride, padding, output padding, dilation) of a
    transposed convolution's call; the output padding is read off the sizes (``output_size=``)."""
    expand = lambda v, name: int_tuple_exact(v, nd, name)  # noqa: E731
    size_in, size_out = tuple(input.shape[-nd:]), tuple(output.shape[-nd:])
    kernel, stride = expand(module.kernel_size, "kernel_size"), expand(module.stride, "stride")
    padding, dilation = expand(module.padding, "padding"), expand(module.dilation, "dilation")
    out_padding = tuple(
        Lo - _transposed_length(Li, k, s, p, 0, q)
        for Li, Lo, k, s, p, q in zip(size_in, size_out, kernel, stride, padding, dilation)
    )
    return size_in, size_out, kernel, stride, padding, out_padding, dilation


def _ndim(module) -> int:
    if isinstance(module, (nn.Conv3d, nn.AvgPool3d, nn.ConvTranspose3d)):
        return 3
    return 2 if isinstance(module, (nn.Conv2d, nn.AvgPool2d, nn.ConvTranspose2d)) else 1


def report(model: nn.Module, example_input, min_stride: int = 2) -> Report:
    """Run ``model`` once on ``example_input`` (no gradient) and list every convolution,
    transposed convolution and average pooling whose largest stride is at least ``min_stride``:
    one row per layer and input size it was called at, with the count map its backward has (a
    transposed convolution's: its forward's, over its output)."""
    calls = {}  # (name, geometry) -> module, in call order
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, TORCH_CONV_TRANSPOSES):
            def post_hook(mod, args, output, name=name):
                calls.setdefault((name, _transposed_geometry(mod, args[0], output, _ndim(mod))), mod)
            handles.append(module.register_forward_hook(post_hook))
        elif isinstance(module, TORCH_CONVS + _POOLS):
            def hook(mod, args, name=name):
                calls.setdefault((name, _geometry(mod, args[0], _ndim(mod))), mod)
            handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        for h in handles:
            h.remove()
    rows = Report()
    for (name, geometry), module in calls.items():
        if isinstance(module, TORCH_CONV_TRANSPOSES):
            size_in, size, kernel, stride, padding, out_padding, dilation = geometry
            axes = [axis_transposed_counts(*a) for a in zip(size_in, kernel, stride, padding, out_padding, dilation)]
        else:
            size, kernel, stride, padding, dilation, ceil_mode = geometry
            axes = [pool_axis_counts(L, k, s, p, ceil_mode) if isinstance(module, _POOLS) else axis_counts(L, k, s, p, q)
                    for L, k, s, p, q in zip(size, kernel, stride, padding, dilation)]
        if max(stride) < min_stride:
            continue
        power = getattr(module, "power", 0.5)
        mean_count, alpha = 1.0, 1.0
        for c, L, k in zip(axes, size, kernel):
            mean_count *= sum(c) / max(L, 1)
            alpha *= axis_alpha(c, k, power)
        correction = getattr(module, "correction", "none (plain torch.nn)")
        rows.append(Layer(name, type(module).__name__, size, kernel, stride, padding,
                          _cell(kernel, stride, padding, dilation), mean_count / math.prod(kernel), alpha, correction))
    return rows
