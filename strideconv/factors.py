"""Multiplication counts and correction factors, written from the definitions.

One spatial axis at a time (docs/design.md, "Definitions"); N-d quantities are
products over axes. This is the readable reference of the math that csrc/axis.h
runs, used by the public helpers, the report and the tests.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch

from ._arguments import check_power, int_tuple_exact

__all__ = [
    "Factors", "axis_alpha", "axis_class_counts", "axis_counts", "axis_transposed_counts",
    "correction_factors", "count_map", "pool_axis_counts", "transposed_count_map", "transposed_factors",
]


def axis_counts(length: int, kernel: int, stride: int, padding: int, dilation: int,
                padding_after: int | None = None) -> list[int]:
    """C(i) for one axis: how many (output o, tap t) pairs read input position i. ``padding`` is
    the zeros before the input; ``padding_after``, those after it (default: as many)."""
    after = padding if padding_after is None else padding_after
    if kernel < 1 or stride < 1 or dilation < 1 or min(padding, after) < 0 or length < 0:
        raise ValueError(
            "need kernel, stride, dilation >= 1 and padding, length >= 0, got "
            f"kernel={kernel}, stride={stride}, padding={padding}, dilation={dilation}, length={length}"
        )
    out_length = (length + padding + after - dilation * (kernel - 1) - 1) // stride + 1
    return _window_counts(length, out_length, kernel, stride, padding, dilation)


def axis_transposed_counts(
    in_length: int, kernel: int, stride: int, padding: int, output_padding: int, dilation: int
) -> list[int]:
    """C(j) for one axis of a transposed convolution: how many (input i, tap t) pairs add into
    output position j (``i*s - p + t*q == j``), over its output length."""
    if kernel < 1 or stride < 1 or dilation < 1 or padding < 0 or output_padding < 0 or in_length < 0:
        raise ValueError(
            "need kernel, stride, dilation >= 1 and padding, output_padding, length >= 0, got "
            f"kernel={kernel}, stride={stride}, padding={padding}, output_padding={output_padding}, "
            f"dilation={dilation}, length={in_length}"
        )
    out_length = _transposed_length(in_length, kernel, stride, padding, output_padding, dilation)
    if out_length < 0:
        raise ValueError(f"the output length would be negative ({out_length})")
    return _window_counts(out_length, in_length, kernel, stride, padding, dilation)


def _transposed_length(in_length, kernel, stride, padding, output_padding, dilation):
    """The output length of a transposed convolution along one axis: (L - 1) s - 2p + q (k - 1) + a + 1
    (ints, or symbolic sizes while torch.compile traces)."""
    return (in_length - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def _window_counts(length, out_length, kernel, stride, padding, dilation) -> list[int]:
    """How many (window o < out_length, tap t) pairs land on each of ``length`` positions."""
    counts = [0] * length
    for o in range(max(out_length, 0)):
        for t in range(kernel):
            i = o * stride - padding + t * dilation
            if 0 <= i < length:
                counts[i] += 1
    return counts


def axis_alpha(counts: Sequence[int], kernel: int, power: float) -> float:
    """One axis' share of alpha: ``k^g / sqrt(mean_i C(i)^(2g))`` (1 if no window touches it)."""
    mean = sum(c ** (2 * power) for c in counts if c > 0) / max(len(counts), 1)
    return kernel**power / math.sqrt(mean) if mean > 0 else 1.0


def axis_class_counts(kernel: int, stride: int, dilation: int) -> list[int]:
    """n(r) for r in 0..stride-1: how many taps t have (t * dilation) mod stride == r."""
    n = [0] * stride
    for t in range(kernel):
        n[(t * dilation) % stride] += 1
    return n


def _sizes(input_size, kernel_size, stride, padding, dilation, *output_padding):
    """The spatial size and every list expanded to one int per dim (output_padding when given,
    before the dilation)."""
    input_size = tuple(int(v) for v in input_size)
    nd = len(input_size)
    if isinstance(padding, str):
        raise ValueError("count maps take integer padding; pass the padding 'same' resolves to")
    named = [(kernel_size, "kernel_size"), (stride, "stride"), (padding, "padding")]
    named += [(output_padding[0], "output_padding")] if output_padding else []
    named += [(dilation, "dilation")]
    return (input_size,) + tuple(int_tuple_exact(v, nd, name) for v, name in named)


def _outer(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    out = vectors[0]
    for v in vectors[1:]:
        out = out.unsqueeze(-1) * v
    return out


def count_map(input_size, kernel_size, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """The multiplication count C of every input position, as an int64 tensor of ``input_size``.

    ``input_size`` is the spatial size, e.g. ``(H, W)``; the other arguments take an int or one
    value per spatial dimension, as ``torch.nn.Conv2d`` does.

    >>> count_map((6, 6), 3, stride=2, padding=1)[:2, :2]
    tensor([[1, 2],
            [2, 4]])
    """
    sizes = _sizes(input_size, kernel_size, stride, padding, dilation)
    per_axis = [torch.tensor(axis_counts(*args), dtype=torch.int64) for args in zip(*sizes)]
    return _outer(per_axis)


class Factors(NamedTuple):
    """The correction factors of one convolution geometry (docs/design.md, "Corrections"), float64."""

    counts: torch.Tensor  # C(i), shape input_size
    position: torch.Tensor  # (K / C(i))^g where C > 0, else 0; shape input_size
    kernel: torch.Tensor  # (K / n(r(t)))^g per tap, shape kernel_size
    map: float  # alpha = K^g / sqrt(mean_i C(i)^(2g))


def correction_factors(
    input_size, kernel_size, stride=1, padding=0, dilation=1, power: float = 0.5
) -> Factors:
    """Every factor strideconv applies to ``grad_input``, from the definitions.

    ``position``: the factor map the default correction multiplies the true input gradient with;
    ``kernel``: the per-tap weight factors of ``correction="kernel"``; ``map``: the scalar alpha of
    ``correction="map"``.
    """
    power = check_power(power)
    input_size, kernel_size, stride, padding, dilation = _sizes(
        input_size, kernel_size, stride, padding, dilation
    )
    axes = [(axis_counts(length, k, s, p, q), k, s, q)
            for length, k, s, p, q in zip(input_size, kernel_size, stride, padding, dilation)]
    return _factors(axes, power)


def _axis_taps(k: int, s: int, q: int, power: float) -> torch.Tensor:
    """(k / n(r(t)))^g for each tap t of one axis, float64."""
    n = axis_class_counts(k, s, q)
    return torch.tensor([(k / n[(t * q) % s]) ** power for t in range(k)], dtype=torch.float64)


def tap_factors(kernel_size, stride, dilation, power: float) -> torch.Tensor:
    """The "kernel" factor of every tap, shape ``kernel_size`` (float64): it depends on the kernel,
    stride and dilation only, not on the size of the input (expanded int tuples)."""
    return _outer([_axis_taps(k, s, q, power) for k, s, q in zip(kernel_size, stride, dilation)])


def _factors(axes, power: float) -> Factors:
    """Factors from (counts, kernel, stride, dilation) per axis."""
    counts, position, taps, alpha = [], [], [], 1.0
    for c, k, s, q in axes:
        counts.append(torch.tensor(c, dtype=torch.int64))
        position.append(torch.tensor([(k / ci) ** power if ci > 0 else 0.0 for ci in c], dtype=torch.float64))
        taps.append(_axis_taps(k, s, q, power))
        alpha *= axis_alpha(c, k, power)
    return Factors(_outer(counts), _outer(position), _outer(taps), alpha)


def pool_axis_counts(length: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> list[int]:
    """C(i) of average pooling along one axis: windows ``o*s - p + [0, k)``, with the extra window
    ``ceil_mode`` adds when it starts inside the input or the left padding (as ATen counts them)."""
    out = (length + 2 * padding - kernel + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= length + padding:
        out -= 1
    return _window_counts(length, out, kernel, stride, padding, 1)


def transposed_count_map(input_size, kernel_size, stride=1, padding=0, output_padding=0, dilation=1) -> torch.Tensor:
    """The count C of every OUTPUT position of a transposed convolution whose input has spatial
    size ``input_size``, as an int64 tensor of the output's spatial size.

    >>> transposed_count_map((3, 3), 3, stride=2, padding=1, output_padding=1)[:2, :2]
    tensor([[1, 2],
            [2, 4]])
    """
    sizes = _sizes(input_size, kernel_size, stride, padding, dilation, output_padding)
    return _outer([torch.tensor(axis_transposed_counts(*args), dtype=torch.int64) for args in zip(*sizes)])


def transposed_factors(
    input_size, kernel_size, stride=1, padding=0, output_padding=0, dilation=1, power: float = 0.5
) -> Factors:
    """The factors of a count-normalised transposed convolution (docs/design.md, "Transposed
    convolutions"), over its output: ``position`` multiplies the output without bias, ``kernel``
    the weight's taps, ``map`` is the scalar alpha. The plain-op form of ``ConvTranspose2d``'s
    corrections is ``F.conv_transpose2d(x, w) * position + b`` (and so on)."""
    power = check_power(power)
    sizes = _sizes(input_size, kernel_size, stride, padding, dilation, output_padding)
    return _factors([(axis_transposed_counts(length, k, s, p, a, q), k, s, q) for length, k, s, p, a, q in zip(*sizes)],
                    power)
