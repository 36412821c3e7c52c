"""Independent references, built from plain PyTorch ops and the definitions of docs/design.md only."""

import torch
import torch.nn.functional as F


def count_map_by_autograd(size, kernel, stride, padding, dilation):
    """C(i): the input gradient of an all-ones convolution under an all-ones output gradient."""
    x = torch.ones((1, 1) + tuple(size), dtype=torch.float64, requires_grad=True)
    w = torch.ones((1, 1) + tuple(kernel), dtype=torch.float64)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(size)]
    y = conv(x, w, stride=stride, padding=padding, dilation=dilation)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    return g[0, 0].round()


def tap_factors(kernel, stride, dilation, power):
    """(k / n(r(t)))^g per tap, the outer product over axes, from the definition of classes."""
    out = torch.ones(())
    for k, s, q in zip(kernel, stride, dilation):
        classes = [(t * q) % s for t in range(k)]
        f = torch.tensor([(k / classes.count(r)) ** power for r in classes], dtype=torch.float64)
        out = out.unsqueeze(-1) * f
    return out


def interior_counts(size, kernel, stride, padding, dilation):
    """n((i + p) mod s): the count each position would have away from the borders."""
    out = torch.ones(())
    for L, k, s, p, q in zip(size, kernel, stride, padding, dilation):
        classes = [(t * q) % s for t in range(k)]
        n = torch.tensor([classes.count((i + p) % s) for i in range(L)], dtype=torch.float64)
        out = out.unsqueeze(-1) * n
    return out


def expected_grad_input(correction, power, x, w, grad_out, stride, padding, dilation, groups):
    """grad_input as docs/design.md ("Corrections") defines it, from the true gradient of F.conv{1,2,3}d and the count map."""
    x = x.detach().double().requires_grad_()
    w = w.detach().double()
    grad_out = grad_out.double()
    kernel = tuple(w.shape[2:])
    if correction == "kernel":
        w = w * tap_factors(kernel, stride, dilation, power)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[x.dim() - 2]
    y = conv(x, w, None, stride, padding, dilation, groups)
    (true,) = torch.autograd.grad(y, x, grad_out)
    if correction in ("none", "kernel"):
        return true
    C = count_map_by_autograd(x.shape[2:], kernel, stride, padding, dilation)
    K = float(torch.tensor(kernel).prod())
    if correction == "position":
        factor = torch.where(C > 0, (K / C.clamp(min=1)) ** power, torch.zeros_like(C))
        return true * factor
    mean = (C ** (2 * power)).mean()
    if mean == 0:  # no window touches the input: the true gradient is zero, alpha undefined
        return true
    return true * (K**power / mean.sqrt())


_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def transposed_count_map_by_ones(in_size, kernel, stride, padding, output_padding, dilation):
    """C(j) of a transposed convolution: its output for an all-ones input and kernel (one channel)."""
    x = torch.ones((1, 1) + tuple(in_size), dtype=torch.float64)
    w = torch.ones((1, 1) + tuple(kernel), dtype=torch.float64)
    return _CONV_TRANSPOSE[len(in_size)](x, w, None, stride, padding, output_padding, 1, dilation)[0, 0].round()


def expected_conv_transpose(correction, power, x, w, b, stride, padding, output_padding, groups, dilation):
    """The count-normalised transposed convolution as docs/design.md defines it, in plain torch ops
    (differentiable: its autograd gives the reference gradients). Batched x; expanded int tuples."""
    nd = x.dim() - 2
    plain = _CONV_TRANSPOSE[nd]
    kernel = tuple(w.shape[2:])
    if correction == "kernel":
        w = w * tap_factors(kernel, stride, dilation, power).to(w)
    y = plain(x, w, None, stride, padding, output_padding, groups, dilation)
    if correction in ("position", "map"):
        C = transposed_count_map_by_ones(x.shape[2:], kernel, stride, padding, output_padding, dilation)
        K = float(torch.tensor(kernel).prod())
        if correction == "position":
            y = y * torch.where(C > 0, (K / C.clamp(min=1)) ** power, torch.zeros_like(C)).to(y)
        else:
            mean = (C ** (2 * power)).mean()
            if mean > 0:
                y = y * float(K**power / mean.sqrt())
    return y if b is None else y + b.reshape((-1,) + (1,) * nd)
