"""Functional interface: drop-ins for ``F.conv1d/2d/3d``, ``F.conv_transpose1d/2d/3d`` and ``F.avg_pool2d``."""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F

from . import _C, _traced
from ._arguments import check_correction, check_power, int_arg, int_tuple, pool_stride, same_padding
from ._pooling import CorrectedAvgPool2d, ScaleGrad, apply, factor_map, plain_avg_pool2d
from .factors import axis_alpha, axis_counts, tap_factors

__all__ = ["conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "avg_pool2d"]

_conv_op = torch.ops.strideconv.conv.default
_conv_fast = _C.conv_fast
_conv_transpose_fast = _C.conv_transpose_fast
_pool_fast = _C.pool_fast
_conv_transpose_op = torch.ops.strideconv.conv_transpose.default
_has_torch_function = torch.overrides.has_torch_function_variadic
_transforms_active = torch._C._are_functorch_transforms_active
_is_compiling = torch.compiler.is_compiling

# Whether dynamo traces (it reads True there): the one context the C++ fast path must not run in,
# since dynamo must see the op. Other tracers see the dispatched op, or hand us tensor subclasses
# that the fast path refuses. Cheaper than is_compiling(), which also covers torch.export.
_dynamo_traces = torch.compiler.is_dynamo_compiling
_is_tracing = torch._C._is_tracing
_in_onnx_export = torch.onnx.is_in_onnx_export
_PLAIN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_PLAIN_TRANSPOSED = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _is_exporting() -> bool:
    """Whether torch.export traces: the flag it sets while it does, read as it stands (under
    torch.compile, torch 2.11's dynamo answers True for torch.compiler.is_exporting())."""
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return torch.compiler.is_exporting() if flag is None else flag


def _string_padding(input, weight, padding: str, stride, dilation, nd: int, correction: str, power: float):
    """(input, padding) for ``padding='valid'`` or ``'same'``, resolved as ATen does."""
    if padding == "valid":
        return input, (0,) * nd
    if padding != "same":
        raise RuntimeError(f"Invalid padding string: {padding!r}")  # torch's words
    pads = same_padding(weight.shape[2:], stride, dilation)
    extra = [after - before for before, after in pads]
    if any(extra):
        # Asymmetric: pad the far side by the odd one, as ATen does. The counts of the input's
        # positions are those of the padded tensor; "map"'s alpha is a mean over the input's
        # positions, which the padded tensor's has one more of: its gradient is rescaled here.
        if correction == "map" and input.requires_grad and torch.is_grad_enabled():
            ratio = _same_alpha_ratio(tuple(input.shape[-nd:]), tuple(weight.shape[2:]), tuple(pads),
                                      tuple(dilation), power)
            input = apply(ScaleGrad, input, torch.tensor(ratio, dtype=input.dtype, device=input.device))
        pad_arg = []
        for e in reversed(extra):
            pad_arg += [0, e]
        input = F.pad(input, pad_arg)
    return input, tuple(before for before, _ in pads)


def _same_alpha_ratio(size, kernel, pads, dilation, power) -> float:
    """alpha over the input's positions / alpha over the padded tensor's (stride 1)."""
    ratio = 1.0
    for length, k, (before, after), q in zip(size, kernel, pads, dilation):
        padded = length + after - before
        counts = axis_counts(padded, k, 1, before, q)
        ratio *= axis_alpha(counts[:length], k, power) / axis_alpha(counts, k, power)
    return ratio


def _fast_path_allowed(input, weight, bias) -> bool:
    """Whether the eager binding may run the call: not while torch.compile, torch.export or
    torch.jit traces, nor under a __torch_function__ override (they must see torch.ops)."""
    return not (_is_compiling() or _is_tracing() or _has_torch_function(input, weight, bias))


def _conv_nd(input, weight, bias, stride, padding, dilation, groups, correction, power, nd):
    """N-d entry: the common call through ``_C.conv_fast``, anything else through ``_conv_general``.

    Kept lean on purpose: on a GPU, a small convolution's time is mostly this host code. The
    public conv1d/2d/3d make the same two calls themselves (one Python frame less per call).
    """
    # The common call first, checked in C++ (_C.conv_fast): plain ints, a batched input, nothing
    # tracing, no __torch_function__. It returns None for everything else (and every refusal),
    # which takes the general path. Dynamo must see the op: checked here first.
    if not _dynamo_traces():
        out = _conv_fast(input, weight, bias, stride, padding, dilation, groups, correction, power, nd)
        if out is not None:
            return out
    return _conv_general(input, weight, bias, stride, padding, dilation, groups, correction, power, nd)


def _conv_general(input, weight, bias, stride, padding, dilation, groups, correction, power, nd):
    """Every call: normalises each argument once, accepts unbatched input, refuses in torch's words."""
    correction, power = check_correction(correction), check_power(power)
    batched = _check_dims(input, nd, f"conv{nd}d")
    stride, dilation = int_tuple(stride, nd, "stride"), int_tuple(dilation, nd, "dilation")
    groups = int_arg(groups, "groups")
    if isinstance(padding, str):
        input, padding = _string_padding(input, weight, padding, stride, dilation, nd, correction, power)
    else:
        padding = int_tuple(padding, nd, "padding")
    # torch.ops while torch.compile or torch.export traces (dynamo sees the op), while
    # torch.jit traces, or when a __torch_function__ override is in play; otherwise the
    # unboxed binding of the same operator.
    call = _C.conv
    if not _fast_path_allowed(input, weight, bias):
        if _in_onnx_export():  # ONNX exporters trace: give them the plain convolution, a standard Conv
            return _PLAIN[nd](input, weight, bias, stride, padding, dilation, groups)
        call = _conv_op
        if _dynamo_traces() and not _is_exporting():  # torch.compile: written so inductor sees the convolution
            call = _traced.conv
    if not batched:
        input = input.unsqueeze(0)
    out = call(input, weight, bias, stride, padding, dilation, groups, correction, power)
    return out if batched else out.squeeze(0)


_DOC = """``torch.nn.functional.conv{nd}d`` with a corrected input gradient.

    The output is bit-identical to ``F.conv{nd}d``. In the backward pass, ``grad_weight`` and
    ``grad_bias`` are the true gradients and ``grad_input`` is corrected for the uneven number of
    kernel windows that touch each input position (see ``correction_factors``):

    * ``"position"`` (default): true gradient times ``(K / C(i)) ** power`` at every position;
    * ``"kernel"``: each tap scaled by ``(K / n) ** power``, ``n`` its class count (interior only);
    * ``"map"``: true gradient times one scalar ``alpha``;
    * ``"none"``: the true gradient.
    """

_Int = Union[int, tuple[int, ...]]


def conv1d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           stride: _Int = 1, padding: Union[_Int, str] = 0, dilation: _Int = 1, groups: int = 1,
           *, correction: str = "position", power: float = 0.5) -> torch.Tensor:
    if not _dynamo_traces():  # as _conv_nd, inline
        out = _conv_fast(input, weight, bias, stride, padding, dilation, groups, correction, power, 1)
        if out is not None:
            return out
    return _conv_general(input, weight, bias, stride, padding, dilation, groups, correction, power, 1)


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           stride: _Int = 1, padding: Union[_Int, str] = 0, dilation: _Int = 1, groups: int = 1,
           *, correction: str = "position", power: float = 0.5) -> torch.Tensor:
    if not _dynamo_traces():  # as _conv_nd, inline
        out = _conv_fast(input, weight, bias, stride, padding, dilation, groups, correction, power, 2)
        if out is not None:
            return out
    return _conv_general(input, weight, bias, stride, padding, dilation, groups, correction, power, 2)


def conv3d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           stride: _Int = 1, padding: Union[_Int, str] = 0, dilation: _Int = 1, groups: int = 1,
           *, correction: str = "position", power: float = 0.5) -> torch.Tensor:
    if not _dynamo_traces():  # as _conv_nd, inline
        out = _conv_fast(input, weight, bias, stride, padding, dilation, groups, correction, power, 3)
        if out is not None:
            return out
    return _conv_general(input, weight, bias, stride, padding, dilation, groups, correction, power, 3)


for _nd, _fn in ((1, conv1d), (2, conv2d), (3, conv3d)):
    _fn.__doc__ = _DOC.format(nd=_nd)


def _check_dims(input, nd: int, name: str) -> bool:
    """Whether ``input`` is batched; torch's error for a wrong number of dims."""
    dim = input.dim()
    if dim != nd + 2 and dim != nd + 1:
        raise RuntimeError(
            f"Expected {nd + 1}D (unbatched) or {nd + 2}D (batched) input to {name}, but got "
            f"input of size: {list(input.shape)}"
        )
    return dim == nd + 2


def _conv_transpose_nd(input, weight, bias, stride, padding, output_padding, groups, dilation, correction,
                       power, nd):
    """Public N-d entry of the transposed convolutions, as ``_conv_nd``: the common call through
    ``_C.conv_transpose_fast``, anything else normalised here."""
    if not _dynamo_traces():
        out = _conv_transpose_fast(input, weight, bias, stride, padding, output_padding, dilation, groups, correction,
                                   power, nd)
        if out is not None:
            return out
    correction, power = check_correction(correction), check_power(power)
    batched = _check_dims(input, nd, f"conv_transpose{nd}d")
    stride, padding = int_tuple(stride, nd, "stride"), int_tuple(padding, nd, "padding")
    output_padding = int_tuple(output_padding, nd, "output_padding")
    dilation, groups = int_tuple(dilation, nd, "dilation"), int_arg(groups, "groups")
    call = _C.conv_transpose
    if not _fast_path_allowed(input, weight, bias):
        if _in_onnx_export():  # ONNX: the same function in standard ops (ConvTranspose, Mul, Add)
            return _plain_ops_conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation,
                                             correction, power, nd)
        call = _conv_transpose_op
        if _dynamo_traces() and not _is_exporting():
            call = _traced.conv_transpose
    if not batched:
        input = input.unsqueeze(0)
    out = call(input, weight, bias, stride, padding, output_padding, dilation, groups, correction, power)
    return out if batched else out.squeeze(0)


def _plain_ops_conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation, correction,
                              power, nd):
    """The normalised transposed convolution written with standard ops, for exporters (ONNX).

    Nothing depends on the traced size: the tap factors depend on the kernel, stride and dilation
    only, and the count map is computed in the graph, as the transposed convolution of ones (an
    input of ones shaped like the input's spatial dims, an all-ones kernel), so an export with
    dynamic height and width normalises every size correctly."""
    plain = _PLAIN_TRANSPOSED[nd]
    if correction == "none":
        return plain(input, weight, bias, stride, padding, output_padding, groups, dilation)
    kernel = tuple(weight.shape[2:])
    if correction == "kernel":
        taps = tap_factors(kernel, stride, dilation, power).to(weight)
        return plain(input, weight * taps, bias, stride, padding, output_padding, groups, dilation)
    lead = input.dim() - nd  # 2 batched, 1 unbatched
    ones = torch.ones_like(input.flatten(0, lead - 1)[:1]).unsqueeze(0)  # (1, 1, *spatial)
    counts = plain(ones, ones.new_ones((1, 1) + kernel), None, stride, padding, output_padding, 1, dilation)
    taps = math.prod(kernel)
    if correction == "map":  # alpha = K^g / sqrt(mean C^(2g)) over the output
        alpha = taps**power / counts.pow(2 * power).mean().sqrt()
        return plain(input, weight * alpha, bias, stride, padding, output_padding, groups, dilation)
    factor = (taps / counts.clamp(min=1)).pow(power)  # where C = 0 the output is 0 anyway
    out = plain(input, weight, None, stride, padding, output_padding, groups, dilation)
    out = out * (factor if lead == 2 else factor[0])
    return out if bias is None else out + bias.reshape((-1,) + (1,) * nd)


_TRANSPOSED_DOC = """``torch.nn.functional.conv_transpose{nd}d`` normalised by its count map.

    Each output position ``j`` of a strided transposed convolution sums a different number
    ``C(j)`` of (input, tap) products (kernel 3, stride 2: the cell ``[4 2; 2 1]``). With ``K``
    the number of taps, ``y0`` the output without bias and ``b`` the bias:

    * ``"position"`` (default): ``(K / C(j)) ** power * y0(j) + b`` (``b`` where ``C(j) = 0``);
    * ``"kernel"``: each tap scaled by ``(K / n) ** power``, ``n`` its class count (equal to
      ``"position"`` away from the borders);
    * ``"map"``: ``alpha * y0 + b``, one scalar;
    * ``"none"``: ``F.conv_transpose{nd}d``, bit for bit.

    Every gradient is the true gradient of that function. ``power=0.5`` gives each output the
    variance at random initialisation that a stride-1 layer with ``K`` taps gives; ``power=1``
    makes each output a mean of its contributions (times ``K``).
    """


def conv_transpose1d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     stride: _Int = 1, padding: _Int = 0, output_padding: _Int = 0, groups: int = 1,
                     dilation: _Int = 1, *, correction: str = "position", power: float = 0.5) -> torch.Tensor:
    return _conv_transpose_nd(input, weight, bias, stride, padding, output_padding, groups, dilation, correction,
                              power, 1)


def conv_transpose2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     stride: _Int = 1, padding: _Int = 0, output_padding: _Int = 0, groups: int = 1,
                     dilation: _Int = 1, *, correction: str = "position", power: float = 0.5) -> torch.Tensor:
    return _conv_transpose_nd(input, weight, bias, stride, padding, output_padding, groups, dilation, correction,
                              power, 2)


def conv_transpose3d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     stride: _Int = 1, padding: _Int = 0, output_padding: _Int = 0, groups: int = 1,
                     dilation: _Int = 1, *, correction: str = "position", power: float = 0.5) -> torch.Tensor:
    return _conv_transpose_nd(input, weight, bias, stride, padding, output_padding, groups, dilation, correction,
                              power, 3)


for _nd, _fn in ((1, conv_transpose1d), (2, conv_transpose2d), (3, conv_transpose3d)):
    _fn.__doc__ = _TRANSPOSED_DOC.format(nd=_nd)


def _pool_in_cpp(input, divisor_override) -> bool:
    """Whether a corrected pooling call may take the compiled op and its C++ autograd node (the
    eager call: a few microseconds) rather than the Python autograd.Function, which everything
    that traces Python or transforms it needs: dynamo, torch.func, jit tracing, ONNX export,
    __torch_function__ overrides and modes."""
    return not (_dynamo_traces() or _transforms_active() or _is_tracing() or _has_torch_function(input)
                or torch.overrides._is_torch_function_mode_enabled()) and (
        divisor_override is None or type(divisor_override) is int)


def avg_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Optional[int] = None,
               *, correction: str = "position", power: float = 0.5) -> torch.Tensor:
    """``torch.nn.functional.avg_pool2d`` with a corrected input gradient.

    Average pooling is a convolution with a constant kernel, so its backward has the same count
    map (with ``ceil_mode``'s extra windows included). The output is ``F.avg_pool2d``'s; the input
    gradient is the true one times the factor map of ``correction`` (with dilation 1, "kernel" is
    a factor map too: ``(K / n((i + p) mod s)) ** power`` where a window touches ``i``).
    """
    # The common call first, checked in C++ (_C.pool_fast, as _conv_nd): None for everything else,
    # and for a corrected call whose factor map is not yet remembered (the layer's first call).
    if not _dynamo_traces():
        out = _pool_fast(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                         correction, power)
        if out is not None:
            return out
    correction, power = check_correction(correction), check_power(power)
    kernel = int_tuple(kernel_size, 2, "kernel_size")
    stride_ = int_tuple(pool_stride(stride, kernel), 2, "stride")
    pad = int_tuple(padding, 2, "padding")
    # Only what F.avg_pool2d accepts is corrected; the rest reaches it and raises there.
    valid = len(kernel) == len(stride_) == len(pad) == 2 and min(kernel) > 0 and min(stride_) > 0 and min(pad) >= 0
    if valid and correction != "none" and input.requires_grad and torch.is_grad_enabled() and input.dim() in (3, 4):
        factor = factor_map(tuple(input.shape[-2:]), kernel, stride_, pad, ceil_mode, correction, power,
                            input.device, input.dtype)
        if _pool_in_cpp(input, divisor_override):  # the common eager call: the op and its C++ node
            _C.pool_factor_remember(input, factor, kernel, stride_, pad, bool(ceil_mode), correction, power)
            return _C.avg_pool2d(input, factor, kernel, stride_, pad, bool(ceil_mode), bool(count_include_pad),
                                 divisor_override)
        return apply(CorrectedAvgPool2d, input, factor, kernel, stride_, pad, bool(ceil_mode),
                     bool(count_include_pad), divisor_override)
    if valid:
        return plain_avg_pool2d(input, kernel, stride_, pad, ceil_mode, count_include_pad, divisor_override)
    return F.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
