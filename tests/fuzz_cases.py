"""Differential fuzz cases: random argument forms and settings, judged against torch itself.

A case is drawn from a seed. ``run_case`` calls strideconv and ``torch.nn.functional`` /
``torch.nn`` with the same arguments and returns the outcome class:

* ``ok``: both ran; our output is bit-equal to torch's and our ``grad_input`` equals the
  reference (the true gradient times the factor map of the expanded arguments);
* ``same-error``: torch raised, and we raised the same exception type;
* ``rejected``: a direct ``torch.ops.strideconv`` call with malformed arguments raised a
  RuntimeError, ValueError or TypeError with a readable message;
* ``accepted``: such a direct call succeeded (its arguments were legal after all);
* anything else (``mismatch: ...``) is a failure. A crash is caught by the parent
  (tests/test_fuzz.py), which runs the cases in a child process.

Run as a script, it runs ``count`` cases from ``first`` and prints one JSON line per case,
flushed before the next starts, so that the parent knows which case a crash ended.
"""

from __future__ import annotations

import json
import random
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import strideconv
from reference import count_map_by_autograd, expected_conv_transpose, expected_grad_input

PLAIN_F = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
OURS_F = {1: strideconv.functional.conv1d, 2: strideconv.functional.conv2d, 3: strideconv.functional.conv3d}
PLAIN_M = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
OURS_M = {1: strideconv.Conv1d, 2: strideconv.Conv2d, 3: strideconv.Conv3d}
PLAIN_TF = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
OURS_TF = {1: strideconv.functional.conv_transpose1d, 2: strideconv.functional.conv_transpose2d,
           3: strideconv.functional.conv_transpose3d}
PLAIN_TM = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
OURS_TM = {1: strideconv.ConvTranspose1d, 2: strideconv.ConvTranspose2d, 3: strideconv.ConvTranspose3d}
CORRECTIONS = ("none", "map", "kernel", "position")


def _form(rng: random.Random, values: list[int], nd: int, functional: bool):
    """One of the forms torch accepts for an int list (all values equal when broadcast), or,
    now and then, one it rejects. (torch.nn modules iterate a 0-d tensor and fail: that
    form is drawn for the functional API only.)"""
    v = values[0]
    same = all(x == v for x in values)
    r = rng.random()
    if r < 0.04:
        return rng.choice([float(v), True, None, (float(v),) * nd, (v,) * (nd + 1), ()])
    if same:
        forms = [v, (v,), [v], np.int64(v), np.int32(v), (np.int64(v),), tuple(values), list(values)]
        return rng.choice(forms + [torch.tensor(v)] if functional else forms)
    return rng.choice([tuple(values), list(values), tuple(np.int64(x) for x in values)])


def draw_conv(rng: random.Random) -> dict:
    """Random settings of one convolution call, mostly legal, some not."""
    nd = rng.choice([1, 2, 2, 3])
    api = rng.choice(["functional", "module"])
    form = lambda values: _form(rng, values, nd, api == "functional")  # noqa: E731
    groups = rng.choice([1, 1, 2, 3])
    c_in, c_out = groups * rng.randint(1, 2), groups * rng.randint(1, 2)
    same = rng.random() < 0.5  # one value broadcast over the dims
    k = [rng.randint(1, 4)] * nd if same else [rng.randint(1, 4) for _ in range(nd)]
    s = [rng.randint(1, 4)] * nd if same else [rng.randint(1, 4) for _ in range(nd)]
    q = [rng.randint(1, 2)] * nd if same else [rng.randint(1, 2) for _ in range(nd)]
    p = [rng.randint(0, 2)] * nd if same else [rng.randint(0, 2) for _ in range(nd)]
    # mostly at least the dilated kernel, sometimes one short (torch refuses)
    size = [max(1, qi * (ki - 1) + 1 - 2 * pi + rng.randint(-1, 5 if nd < 3 else 3)) for ki, qi, pi in zip(k, q, p)]
    if rng.random() < 0.03:
        s = [0] * nd  # rejected by torch
    if rng.random() < 0.03:
        p = [-1] * nd
    padding, stride = form(p), form(s)
    if rng.random() < 0.08:
        padding = rng.choice(["same", "valid", "bogus"])
        if padding == "same" and rng.random() < 0.7:
            stride = rng.choice([1, (1,), [1] * nd])
    return dict(
        nd=nd, groups=rng.choice([groups, np.int64(groups)]) if rng.random() < 0.2 else groups,
        c_in=c_in, c_out=c_out, kernel=k, stride=stride, padding=padding, dilation=form(q),
        size=size, batch=rng.choice([0, 1, 2]) if rng.random() < 0.1 else rng.choice([1, 2]),
        unbatched=rng.random() < 0.1, bias=rng.random() < 0.6,
        dtype=rng.choice([torch.float32, torch.float64]),
        layout=rng.choice(["contiguous", "contiguous", "channels_last", "strided"]),
        correction=rng.choice(CORRECTIONS), power=rng.choice([0.5, 0.5, 1.0, 0.25, np.float32(0.5)]),
        api=api,
        # (torch's own circular 'same' padding pads fewer columns than it reports: string
        # paddings are drawn with zero padding only)
        padding_mode="zeros" if isinstance(padding, str) else rng.choice(
            ["zeros", "zeros", "reflect", "replicate", "circular"]),
        seed=rng.randrange(2**31),
    )


def _input(case: dict) -> torch.Tensor:
    g = torch.Generator().manual_seed(case["seed"])
    shape = ([] if case["unbatched"] else [case["batch"]]) + [case["c_in"]] + case["size"]
    x = torch.randn(shape, generator=g, dtype=case["dtype"])
    if case["layout"] == "channels_last" and case["nd"] == 2 and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    elif case["layout"] == "strided":
        x = torch.randn(shape[:-1] + [2 * shape[-1]], generator=g, dtype=case["dtype"])[..., ::2]
    return x


def _expanded(value, nd: int) -> tuple:
    if isinstance(value, (tuple, list)):
        values = tuple(int(v) for v in value)
        return values * nd if len(values) == 1 else values
    return (int(value),) * nd


def _reference_grad(case, x, weight, grad_out):
    """grad_input from the definitions: the padded tensor's count map, chained through the pad."""
    nd, padding = case["nd"], case["padding"]
    stride, dilation = _expanded(case["stride"], nd), _expanded(case["dilation"], nd)
    kernel = weight.shape[2:]
    xr = x.detach().double().requires_grad_()
    if case["api"] == "module" and case["padding_mode"] != "zeros":  # (string paddings use zeros)
        # as torch.nn.ConvNd stores it: a one-value tuple pads the last dim only
        stored = padding if isinstance(padding, (tuple, list)) else (padding,) * nd
        pad_arg = [int(v) for v in reversed(stored) for _ in range(2)]
        xp, conv_padding = F.pad(xr, pad_arg, mode=case["padding_mode"]), (0,) * nd
    elif padding == "same":
        extra = [(q * (k - 1)) % 2 for k, q in zip(kernel, dilation)]
        xp = F.pad(xr, [v for e in reversed(extra) for v in (0, e)])
        conv_padding = tuple(q * (k - 1) // 2 for k, q in zip(kernel, dilation))
    else:
        xp, conv_padding = xr, (0,) * nd if padding == "valid" else _expanded(padding, nd)
    batched = x.dim() == nd + 2
    xpb = xp if batched else xp.unsqueeze(0)
    go = (grad_out if batched else grad_out.unsqueeze(0)).double()
    correction, power = case["correction"], float(case["power"])
    same_map = padding == "same" and correction == "map" and xpb.shape[2:] != (xr.shape[2:] if batched else
                                                                              xr.shape[1:])
    g = expected_grad_input("none" if same_map else correction, power, xpb, weight, go, stride, conv_padding,
                            dilation, int(case["groups"]))
    (out,) = torch.autograd.grad(xpb, xr, g)
    if same_map:  # alpha is a mean over the input's positions, not the padded tensor's extra zeros
        counts = count_map_by_autograd(xpb.shape[2:], kernel, stride, conv_padding, dilation)
        counts = counts[tuple(slice(0, n) for n in out.shape[-nd:])]
        mean = (counts ** (2 * power)).mean()
        if mean > 0:
            out = out * (float(torch.tensor(kernel).prod()) ** power / mean.sqrt())
    return out


def _call(case, which: str, x, weight, bias):
    nd = case["nd"]
    args = (case["stride"], case["padding"], case["dilation"], case["groups"])
    extra = {} if which == "plain" else dict(correction=case["correction"], power=case["power"])
    if case["api"] == "functional":
        return (PLAIN_F if which == "plain" else OURS_F)[nd](x, weight, bias, *args, **extra)
    cls = (PLAIN_M if which == "plain" else OURS_M)[nd]
    m = cls(case["c_in"], case["c_out"], weight.shape[2:], *args, bias=bias is not None,
            padding_mode=case["padding_mode"], dtype=case["dtype"], **extra)
    with torch.no_grad():
        m.weight.copy_(weight)
        if bias is not None:
            m.bias.copy_(bias)
    return m(x)


def _refused_alike(torch_error: Exception, call_ours) -> str:
    """Torch refused a call: ours (forward and backward) must raise the same exception type."""
    try:
        call_ours().sum().backward()
    except Exception as ours:
        if type(ours) is type(torch_error):
            return "same-error"
        return f"mismatch: torch {type(torch_error).__name__}, ours {type(ours).__name__}: {ours}"[:300]
    return f"mismatch: torch raised {type(torch_error).__name__}: {torch_error}, ours ran"[:300]


def run_conv_case(case: dict) -> str:
    g = torch.Generator().manual_seed(case["seed"] + 1)
    x = _input(case)
    w = torch.randn([case["c_out"], case["c_in"] // int(case["groups"])] + case["kernel"], generator=g,
                    dtype=case["dtype"])
    b = torch.randn(case["c_out"], generator=g, dtype=case["dtype"]) if case["bias"] else None
    try:
        expected = _call(case, "plain", x, w, b)
    except Exception as exc:
        return _refused_alike(exc, lambda: _call(case, "ours", x.requires_grad_(), w, b))
    xr = x.detach().clone().requires_grad_()
    try:
        out = _call(case, "ours", xr, w, b)
    except Exception as exc:
        return f"mismatch: torch ran, ours raised {type(exc).__name__}: {exc}"[:300]
    if out.shape != expected.shape or not torch.equal(out, expected):
        return "mismatch: forward differs from torch"
    grad_out = torch.randn(out.shape, generator=g, dtype=case["dtype"])
    (grad,) = torch.autograd.grad(out, xr, grad_out)
    ref = _reference_grad(case, x, w, grad_out)
    if not torch.isfinite(grad).all():
        return "mismatch: non-finite grad_input"
    tol = 1e-9 if case["dtype"] == torch.float64 else 1e-4
    if not torch.allclose(grad.double(), ref, rtol=tol, atol=tol):
        return f"mismatch: grad_input differs from the reference by {(grad.double() - ref).abs().max().item():.3g}"
    return "ok"


# ----- transposed convolutions -----------------------------------------------------------------

def draw_transposed(rng: random.Random) -> dict:
    """Random settings of one transposed convolution call, mostly legal, some not."""
    nd = rng.choice([1, 2, 2, 3])
    api = rng.choice(["functional", "module"])
    form = lambda values: _form(rng, values, nd, api == "functional")  # noqa: E731
    groups = rng.choice([1, 1, 2, 3])
    same = rng.random() < 0.5
    pick = lambda lo, hi: [rng.randint(lo, hi)] * nd if same else [rng.randint(lo, hi) for _ in range(nd)]  # noqa: E731
    k, s, q, p = pick(1, 4), pick(1, 4), pick(1, 3), pick(0, 2)
    # legal: below the stride or the dilation; now and then one too large (torch refuses)
    a = [rng.randint(0, max(si, qi) - (0 if rng.random() < 0.05 else 1)) for si, qi in zip(s, q)]
    if rng.random() < 0.03:
        s = [0] * nd
    return dict(
        nd=nd, api=api, groups=rng.choice([groups, np.int64(groups)]) if rng.random() < 0.2 else groups,
        c_in=groups * rng.randint(1, 2), c_out=groups * rng.randint(1, 2), kernel=k,
        stride=form(s), padding=form(p), output_padding=form(a), dilation=form(q),
        size=[rng.randint(1, 6 if nd < 3 else 4) for _ in range(nd)],
        batch=rng.choice([0, 1, 2]) if rng.random() < 0.1 else rng.choice([1, 2]),
        unbatched=rng.random() < 0.1, bias=rng.random() < 0.6,
        dtype=rng.choice([torch.float32, torch.float64]),
        layout=rng.choice(["contiguous", "contiguous", "channels_last", "strided"]),
        correction=rng.choice(CORRECTIONS), power=rng.choice([0.5, 0.5, 1.0, 0.25, np.float32(0.5)]),
        use_output_size=api == "module" and rng.random() < 0.3, seed=rng.randrange(2**31),
    )


def _call_transposed(case, which: str, x, weight, bias):
    nd = case["nd"]
    extra = {} if which == "plain" else dict(correction=case["correction"], power=case["power"])
    if case["api"] == "functional":
        fn = (PLAIN_TF if which == "plain" else OURS_TF)[nd]
        return fn(x, weight, bias, case["stride"], case["padding"], case["output_padding"], case["groups"],
                  case["dilation"], **extra)
    cls = (PLAIN_TM if which == "plain" else OURS_TM)[nd]
    m = cls(case["c_in"], case["c_out"], weight.shape[2:], case["stride"], case["padding"], case["output_padding"],
            case["groups"], bias is not None, case["dilation"], dtype=case["dtype"], **extra)
    params = {"weight": weight} | ({"bias": bias} if bias is not None else {})
    kwargs = {}
    if case["use_output_size"]:  # the size output_padding gives, asked for by output_size
        size = PLAIN_TF[nd](x, weight, None, case["stride"], case["padding"], case["output_padding"],
                            case["groups"], case["dilation"]).shape[-nd:]
        m.output_padding = (0,) * nd  # ignored when output_size is given
        kwargs["output_size"] = list(size)
    # the call with these tensors as parameters, so that their gradients are the module's
    return torch.func.functional_call(m, params, (x,), kwargs)


def run_transposed_case(case: dict) -> str:
    g = torch.Generator().manual_seed(case["seed"] + 1)
    x = _input(case)
    groups = int(case["groups"])
    w = torch.randn([case["c_in"], case["c_out"] // groups] + case["kernel"], generator=g, dtype=case["dtype"])
    b = torch.randn(case["c_out"], generator=g, dtype=case["dtype"]) if case["bias"] else None
    try:
        plain = _call_transposed(case, "plain", x, w, b)
    except Exception as exc:
        return _refused_alike(exc, lambda: _call_transposed(case, "ours", x.requires_grad_(), w, b))
    xr, wr = x.detach().clone().requires_grad_(), w.clone().requires_grad_()
    br = b.clone().requires_grad_() if b is not None else None
    try:
        out = _call_transposed(case, "ours", xr, wr, br)
    except Exception as exc:
        return f"mismatch: torch ran, ours raised {type(exc).__name__}: {exc}"[:300]
    if out.shape != plain.shape:
        return "mismatch: output shape differs from torch"
    if case["correction"] == "none" and not torch.equal(out, plain):
        return "mismatch: correction='none' differs from torch"
    if out.numel() == 0:  # (an empty output length, which torch's float64 path refuses)
        return "ok"
    # the reference, in float64, with the output padding the call ended up with
    nd = case["nd"]
    batched = x.dim() == nd + 2
    stride, padding = _expanded(case["stride"], nd), _expanded(case["padding"], nd)
    dilation = _expanded(case["dilation"], nd)
    a = tuple(Lo - ((Li - 1) * s_ - 2 * p_ + q_ * (k_ - 1) + 1) for Lo, Li, s_, p_, q_, k_ in
              zip(out.shape[-nd:], x.shape[-nd:], stride, padding, dilation, case["kernel"]))
    x64, w64 = x.detach().double().requires_grad_(), w.double().requires_grad_()
    b64 = b.double().requires_grad_() if b is not None else None
    ref = expected_conv_transpose(case["correction"], float(case["power"]), x64 if batched else x64.unsqueeze(0),
                                  w64, b64, stride, padding, a, groups, dilation)
    ref = ref if batched else ref.squeeze(0)
    tol = 1e-9 if case["dtype"] == torch.float64 else 1e-4
    close = lambda u, v: torch.allclose(u.double(), v, rtol=tol, atol=tol * max(1.0, v.abs().max().item() if v.numel() else 1.0))  # noqa: E731
    if not close(out, ref.detach()):
        return f"mismatch: output differs from the reference by {(out.double() - ref).abs().max().item():.3g}"
    grad_out = torch.randn(out.shape, generator=g, dtype=case["dtype"])
    inputs = [xr, wr] + ([br] if br is not None else [])
    ours = torch.autograd.grad(out, inputs, grad_out, allow_unused=True)
    theirs = torch.autograd.grad(ref, [x64, w64] + ([b64] if b64 is not None else []), grad_out.double(),
                                 allow_unused=True)
    for name, u, v in zip(("input", "weight", "bias"), ours, theirs):
        u = torch.zeros_like(inputs[0 if name == "input" else 1 if name == "weight" else 2]) if u is None else u
        v = torch.zeros_like(u, dtype=torch.float64) if v is None else v
        if not torch.isfinite(u).all():
            return f"mismatch: non-finite grad_{name}"
        if not close(u, v):
            return f"mismatch: grad_{name} differs from the reference by {(u.double() - v).abs().max().item():.3g}"
    return "ok"


# ----- direct calls of the registered ops with malformed arguments ---------------------------

def _list(rng: random.Random):
    n = rng.choice([0, 1, 1, 2, 3, 4, 7])
    return [rng.choice([1, 1, 1, 2, 2, 3, 0, -1, -3, 2**31, 2**40]) for _ in range(n)]


def draw_direct(rng: random.Random) -> dict:
    return dict(
        op=rng.choice(["conv", "conv_transpose", "output_factors", "scale_weight", "scale_taps", "scale_border_",
                       "scale_border"]),
        rank=rng.choice([1, 2, 3, 4, 4, 5, 6]), sizes=[rng.randint(0, 5) for _ in range(6)],
        lists=[_list(rng) for _ in range(5)], groups=rng.choice([-1, 0, 1, 2, 2**40]),
        correction=rng.choice(["position", "kernel", "map", "none", "bogus", ""]),
        power=rng.choice([0.5, 1.0, -1.0, 0.0, float("nan"), float("inf"), 1e-300, 40.0, 400.0]),
        seed=rng.randrange(2**31), dtype=rng.choice(["float32", "float64", "float16", "int64"]),
    )


def run_direct_case(case: dict) -> str:
    dtype = getattr(torch, case["dtype"])
    shape = case["sizes"][: case["rank"]]
    t = torch.ones(shape, dtype=dtype) if dtype == torch.int64 else torch.randn(shape).to(dtype)
    w = torch.randn(shape[:2] + [min(v, 3) for v in shape[2:]]).to(dtype) if dtype != torch.int64 else t
    ops = torch.ops.strideconv
    a, b, c, d, e = case["lists"]
    try:
        if case["op"] == "conv":
            ops.conv(t, w, None, a, b, c, case["groups"], case["correction"], case["power"])
        elif case["op"] == "conv_transpose":
            ops.conv_transpose(t, w, None, a, b, e, c, case["groups"], case["correction"], case["power"])
        elif case["op"] == "output_factors":
            ops.output_factors(t, a, b, c, d, e, case["correction"], case["power"])
        elif case["op"] == "scale_weight":
            ops.scale_weight(w, a, b, c, d, case["correction"], case["power"], e)
        elif case["op"] == "scale_taps":
            ops.scale_taps(w, a, b, case["power"])
        elif case["op"] == "scale_border_":
            ops.scale_border_(t, a, b, c, d, case["power"], e)
        else:
            ops.scale_border(t, a, b, c, d, case["power"], e)
    except (RuntimeError, ValueError, TypeError) as exc:
        message = str(exc)
        if not message.isprintable() and not all(ch.isprintable() or ch in "\n\t" for ch in message):
            return "mismatch: unreadable error message"
        return "rejected"
    except Exception as exc:
        return f"mismatch: {type(exc).__name__}: {exc}"[:300]
    return "accepted"


def draw(seed: int, index: int) -> dict:
    rng = random.Random(seed * 1_000_003 + index)
    r = rng.random()
    if r < 0.2:
        return {"kind": "direct"} | draw_direct(rng)
    return ({"kind": "transposed"} | draw_transposed(rng)) if r < 0.45 else ({"kind": "conv"} | draw_conv(rng))


def run_case(case: dict) -> str:
    run = {"direct": run_direct_case, "transposed": run_transposed_case, "conv": run_conv_case}[case["kind"]]
    return run(case)


if __name__ == "__main__":
    seed, first, count = (int(v) for v in sys.argv[1:4])
    torch.set_num_threads(1)
    for i in range(first, first + count):
        outcome = run_case(draw(seed, i))
        print(json.dumps({"index": i, "outcome": outcome}), flush=True)
