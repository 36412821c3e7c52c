"""Test helpers shared by the test files (the references are in reference.py)."""

import contextlib

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (none visible)")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


def same_error_type(call_plain, call_ours):
    """Assert that the plain PyTorch call and ours both raise, the same exception type; return both."""
    errors = []
    for call in (call_plain, call_ours):
        with pytest.raises(Exception) as info:
            call()
        errors.append(info.value)
    assert type(errors[0]) is type(errors[1]), errors
    return errors


def same_error(call_plain, call_ours):
    """Assert that the plain PyTorch call and ours fail alike: same exception type and message."""
    errors = same_error_type(call_plain, call_ours)
    assert str(errors[0]) == str(errors[1])


def same_outcome(call_plain, call_ours):
    """Both raise the same exception type, or both run to outputs of one shape."""
    try:
        expected = call_plain()
    except Exception:
        same_error_type(call_plain, call_ours)
        return
    assert call_ours().shape == expected.shape


def operands(cin, cout, kernel, size, groups=1, device="cpu", dtype=torch.float64, bias=True, seed=0, batch=2):
    """A seeded input (batch, cin, *size), weight (cout, cin / groups, *kernel) and bias."""
    gen = torch.Generator().manual_seed(seed)
    kernel = (kernel,) * len(size) if isinstance(kernel, int) else tuple(kernel)
    x = torch.randn((batch, cin) + tuple(size), generator=gen, dtype=dtype).to(device)
    w = torch.randn((cout, cin // groups) + kernel, generator=gen, dtype=dtype).to(device)
    b = torch.randn(cout, generator=gen, dtype=dtype).to(device) if bias else None
    return x, w, b


@contextlib.contextmanager
def deterministic_algorithms():
    """torch.use_deterministic_algorithms(True) for a block, then the previous setting. On a GPU,
    cuDNN may otherwise pick a non-deterministic algorithm for torch's own convolution (two calls
    of the same nn.ConvTranspose3d differed by 3e-8 on an H200), so a bit-for-bit comparison with
    torch is only meaningful in this mode."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
