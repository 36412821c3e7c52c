"""``strideconv.report``: every strided call of a model, its count cell and backward deficit.

Built from the recording pass (strideconv/_recording.py): each row is a call as it was made, so
a layer that pads itself, or a functional call inside another module's forward, is described by
the geometry of its real call. The command line is ``python -m strideconv.report``
(strideconv/report.py).
"""

from __future__ import annotations

import collections
import itertools
import math
from typing import NamedTuple, Optional

import torch
from torch import nn

from ._arguments import check_correction
from ._recording import Call, buffers_kept, record
from .factors import axis_alpha, axis_class_counts, axis_counts, axis_transposed_counts, pool_axis_counts, \
    tap_factors
from .metrics import phase_energies

__all__ = ["Layer", "Report", "report"]


class Layer(NamedTuple):
    name: str  # the module whose forward made the call ("" for the model itself)
    kind: str  # that module's class
    input_size: tuple  # spatial size the count map covers: the layer's own input, or a transposed call's output
    kernel: tuple
    stride: tuple
    padding: tuple  # ((before, after), ...) per spatial dim, a zero F.pad feeding the call folded in
    cell: str  # the repeating count pattern away from the borders
    deficit: float  # mean count over K: Var[grad_input] (a transposed layer's Var[output]) relative to K taps
    alpha: float  # the "map" scalar at the setting's power, over the counted positions
    correction: str  # the setting the call ran with ("none": torch's gradient)
    op: str = ""  # the call: "conv2d", "conv_transpose2d", "avg_pool2d", ...
    dilation: tuple = ()
    groups: int = 1
    calls: int = 1  # how many identical calls this row stands for
    effects: str = ""  # what each correction does to this call's gradient: "none", one factor, or "varies"
    phase_plain: Optional[float] = None  # measured phase energy ratio of the input gradient (gradients=...)
    phase_corrected: Optional[float] = None
    measured: str = ""  # the correction of phase_corrected


_LEGEND = """\
Each row is one strided call as the model made it (identical calls of one module share a row).
layer / type / call: the module whose forward made the call, its class, and the call itself (a
  functional call inside another module's forward is listed under that module).
counted size: the spatial size whose positions are counted: the layer's own input (before a zero
  F.pad that feeds the call, which is folded into the padding), or a transposed call's output.
padding: per side, "before:after" where the two differ (a self-padding layer's F.pad included).
count cell: how many kernel windows reach each position, over one stride period away from the
  borders, anchored at the first position of the counted input ("uniform: 1" when every position
  gets the same count; shares when the cell is large). A stride-1 layer gives every position K.
mean count / K: the mean count over the number of taps K: what the plain backward's input-gradient
  variance is, relative to a stride-1 layer's (a transposed call: its output variance).
alpha: the scalar of correction="map" at the setting's power, over the counted positions.
correction: the setting the call ran with (none: torch's gradient; "(corrected())": set by a
  strideconv.corrected() block, or by convert for a module whose forward is its own).
position / kernel / map: what each correction would do to this call's gradient where it reaches:
  none (it changes nothing), xF (one factor F everywhere: a rescaling, no pattern removed) or
  varies (the pattern is corrected).
phase ratio (with gradients=...): max over min of the mean squared input gradient per stride phase,
  measured on the gradient that flows through this call (one backward of the example input with a
  fixed random output gradient; interior positions only), plain and under the named correction.
  1 means no stride pattern; inf, that some phase receives no gradient from this call."""


def _size(t: tuple) -> str:
    return "x".join(str(v) for v in t)


def _padding(pads: tuple) -> str:
    return "x".join(str(b) if b == a else f"{b}:{a}" for b, a in pads)


def _ratio(value) -> str:
    return "-" if value is None else (f"{value:.2f}" if math.isfinite(value) else "inf")


class Report(list):
    """A list of ``Layer`` rows; ``str()`` gives a Markdown table, ``legend()`` what its columns say."""

    @staticmethod
    def legend() -> str:
        return _LEGEND

    def __str__(self) -> str:
        measured = next((r.measured for r in self if r.measured), "")
        head = ["layer", "type", "call", "counted size", "kernel", "stride", "padding", "count cell",
                "mean count / K", "alpha", "correction", "position / kernel / map"]
        if measured:
            head += ["phase ratio, plain", f"phase ratio, {measured}"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self:
            name = (r.name or "(model)") + (f" (x{r.calls})" if r.calls > 1 else "")
            cells = [name, r.kind, r.op, _size(r.input_size), _size(r.kernel), _size(r.stride), _padding(r.padding),
                     r.cell, f"{r.deficit:.3f}", f"{r.alpha:.3f}", r.correction, r.effects]
            if measured:
                cells += [_ratio(r.phase_plain), _ratio(r.phase_corrected)]
            lines.append("| " + " | ".join(cells) + " |")
        if not self:
            lines.append("| (no strided call) |" + " |" * (len(head) - 1))
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


def _axes(call: Call) -> list:
    """The per-axis counts of the call's count map over its counted positions."""
    if call.op.startswith("conv_transpose"):
        return [axis_transposed_counts(L, k, s, b, a, q) for L, k, s, (b, _), a, q in
                zip(call.input_size, call.kernel, call.stride, call.padding, call.output_padding, call.dilation)]
    if call.op.startswith("avg_pool"):
        return [pool_axis_counts(L, k, s, b, call.ceil_mode)
                for L, k, s, (b, _) in zip(call.input_size, call.kernel, call.stride, call.padding)]
    return [axis_counts(L, k, s, b, q, a)
            for L, k, s, (b, a), q in zip(call.input_size, call.kernel, call.stride, call.padding, call.dilation)]


def _effect(values) -> str:
    """'none' when every factor is 1, 'xF' when all are F, else 'varies'."""
    values = set(round(v, 9) for v in values)
    if len(values) > 1:
        return "varies"
    (v,) = values or {1.0}
    return "none" if v == 1 else f"x{v:.2f}"


def _effects(call: Call, axes, alpha: float, power: float) -> str:
    """What position, kernel and map do to the call's gradient, where a window reaches."""
    position = [math.prod((k / c) ** power for c, k in zip(counts, call.kernel))
                for counts in itertools.product(*[[c for c in axis if c > 0] for axis in axes])]
    kernel = tap_factors(call.kernel, call.stride, call.dilation, power).flatten().tolist()
    return f"{_effect(position)} / {_effect(kernel)} / {_effect([alpha])}"


def _row(call: Call, calls: int) -> Layer:
    axes = _axes(call)
    power = call.power if call.correction != "none" else 0.5
    size = tuple(len(a) for a in axes)
    mean_count, alpha = 1.0, 1.0
    for counts, k in zip(axes, call.kernel):
        mean_count *= sum(counts) / max(len(counts), 1)
        alpha *= axis_alpha(counts, k, power)
    befores = tuple(b for b, _ in call.padding)
    correction = call.correction + (" (corrected())" if call.by == "corrected()" else "")
    return Layer(call.module, call.module_type, size, call.kernel, call.stride, call.padding,
                 _cell(call.kernel, call.stride, befores, call.dilation), mean_count / math.prod(call.kernel), alpha,
                 correction, call.op, call.dilation, call.groups, calls, _effects(call, axes, alpha, power))


def _own_input_gradient(grad: torch.Tensor, call: Call) -> torch.Tensor:
    """The gradient of the call's input, cut to the layer's own input where a zero F.pad fed the
    call (its size minus the pad's, offset by the pad's leading zeros)."""
    nd = len(call.kernel)
    if grad.dim() == nd + 1:
        grad = grad.unsqueeze(0)
    index = [slice(None)] * 2
    for L, Lc, (b, a) in zip(call.input_size, grad.shape[2:], call.padding):
        lead = ((Lc - L) + (b - a)) // 2  # the pad's own leading zeros (the rest is the call's padding)
        index.append(slice(lead, lead + L))
    return grad[tuple(index)]


def _phase_energies(grad: torch.Tensor, call: Call) -> torch.Tensor:
    """Phase energies of the call's input gradient over the positions at least (k - 1) * dilation
    from every border (all positions where the input is too small for that)."""
    grad = _own_input_gradient(grad, call)
    border = max((k - 1) * q for k, q in zip(call.kernel, call.dilation))
    if any(L < 2 * border + s for L, s in zip(call.input_size, call.stride)):
        border = 0
    return phase_energies(grad, call.stride, border)


def _tensors(value) -> list:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _measure(model, example_input, min_stride: int, correction: str):
    """Per call: its input gradient's phase energies, plain and under ``correction`` (None where
    no gradient reaches the call). Both passes see the same random state and output gradient."""
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    args = tuple(a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in args)
    devices = sorted({a.device.index or 0 for a in args if isinstance(a, torch.Tensor) and a.is_cuda})
    energies = []
    for force in ("none", correction):
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            torch.manual_seed(0)
            rec = record(model, args if isinstance(example_input, tuple) else args[0], min_stride=min_stride,
                         transposed=True, pool=True, force=force, taps=True)
        outputs = [t for t in _tensors(rec.output) if t.requires_grad]
        generator = torch.Generator().manual_seed(0)
        seeds = [torch.randn(t.shape, generator=generator, dtype=torch.float64).to(t) for t in outputs]
        tapped = [(i, view) for i, view in enumerate(rec.taps) if view is not None]
        grads = torch.autograd.grad(outputs, [view for _, view in tapped], seeds, allow_unused=True) if (
            outputs and tapped) else []
        found = [None] * len(rec.calls)
        for (i, _), grad in zip(tapped, grads):
            if grad is not None:
                found[i] = _phase_energies(grad, rec.calls[i])
        energies.append(found)
    return energies


def _ratio_of(energies) -> Optional[float]:
    if any(e is None for e in energies):
        return None
    total = sum(energies)
    low = total.min().item()
    return math.inf if low == 0 else total.max().item() / low


def report(model: nn.Module, example_input, min_stride: int = 2, *, gradients=False) -> Report:
    """Run ``model`` once on ``example_input`` (a tensor, or a tuple of positional arguments) and
    list every call of a convolution, transposed convolution or average pooling whose largest
    stride is at least ``min_stride``, as the call was made: one row per module and call
    geometry, with the count map its backward has (a transposed call's: its forward's, over its
    output), the setting it ran with, and what each correction would do to it.

    ``gradients=True`` (or a correction's name; True means ``"position"``) also runs two
    backward passes, one with every strided convolution plain and one with all of them under
    that correction, and adds each convolution call's measured phase energy ratio of its input
    gradient (see ``Report.legend()``). The model's buffers (BatchNorm statistics) are restored
    afterwards and no parameter's ``.grad`` is touched.
    """
    measured = ""
    if gradients is not False:
        measured = "position" if gradients is True else check_correction(gradients)
        if measured == "none":
            raise ValueError("gradients= names the correction to compare with plain: 'position', 'kernel' or 'map'")
    with buffers_kept(model):
        with torch.no_grad():
            calls = record(model, example_input, min_stride=min_stride, transposed=True, pool=True).calls
        energies = _measure(model, example_input, min_stride, measured) if measured else None
    if energies is not None and not all(len(e) == len(calls) for e in energies):
        raise RuntimeError("strideconv.report: the model made different calls in the gradient passes "
                           f"({len(calls)}, then {[len(e) for e in energies]})")
    groups = collections.OrderedDict()
    for i, call in enumerate(calls):
        groups.setdefault(call, []).append(i)
    rows = Report()
    for call, indices in groups.items():
        row = _row(call, len(indices))
        if energies is not None and call.op.startswith("conv") and not call.op.startswith("conv_transpose"):
            plain, corrected = ([e[i] for i in indices] for e in energies)
            row = row._replace(phase_plain=_ratio_of(plain), phase_corrected=_ratio_of(corrected), measured=measured)
        elif energies is not None:
            row = row._replace(measured=measured)
        rows.append(row)
    return rows
