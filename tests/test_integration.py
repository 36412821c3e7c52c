"""PyTorch integration and reliability: compile, autocast, channels_last, double backward,
DistributedDataParallel, determinism, edge cases, soak and threads, large tensors."""

import os
import resource
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import strideconv
from strideconv.functional import conv2d
from reference import expected_grad_input


def small_cnn(correction="position", dtype=torch.float32, device="cpu", seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        strideconv.Conv2d(3, 8, 4, 4, correction=correction),  # patchify stem
        nn.ReLU(),
        strideconv.Conv2d(8, 16, 3, 2, 1, correction=correction),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, 1, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    ).to(device, dtype)


def grads_of(model, x):
    x = x.detach().clone().requires_grad_()
    y = model(x)
    grads = torch.autograd.grad(y.square().sum(), [x] + list(model.parameters()))
    return y.detach(), grads


# ----- torch.compile ------------------------------------------------------------------------

@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph_matches_eager(dynamic, device):
    torch._dynamo.reset()
    model = small_cnn(device=device)
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic)
    sizes = [32, 48] if dynamic else [32]
    for size in sizes:  # with dynamic=True the second size reuses the symbolic graph
        x = torch.randn(2, 3, size, size, device=device)
        y0, g0 = grads_of(model, x)
        y1, g1 = grads_of(compiled, x)
        torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)
        for a, b in zip(g1, g0):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ----- torch.export ---------------------------------------------------------------------------

def test_export_keeps_the_op_dynamic_shapes_and_save_load(tmp_path, device):
    model = small_cnn(device=device)
    x = torch.randn(2, 3, 32, 32, device=device)
    size = torch.export.Dim("size", min=4, max=128)
    exported = torch.export.export(model, (x,), dynamic_shapes={"input": {2: 4 * size, 3: 4 * size}})
    targets = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.strideconv.conv.default) == 2  # the op, not a decomposition

    path = tmp_path / "model.pt2"
    torch.export.save(exported, str(path))
    loaded = torch.export.load(str(path)).module()
    for size in (32, 44):  # the traced size and another one of the symbolic range
        x = torch.randn(2, 3, size, size, device=device)
        y0, g0 = grads_of(model, x)
        y1, g1 = grads_of(loaded, x)
        torch.testing.assert_close(y1, y0, rtol=0, atol=0)  # the forward is the same kernels
        for a, b in zip(g1, g0):  # the input gradient is the corrected one, as in eager
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ----- autocast -------------------------------------------------------------------------------

AUTOCAST = [("cpu", torch.bfloat16), pytest.param("cuda", torch.float16, marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (none visible)")),
    pytest.param("cuda", torch.bfloat16, marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (none visible)"))]


@pytest.mark.parametrize("device, dtype", AUTOCAST)
def test_autocast_matches_nn_conv2d_and_a_float32_reference(device, dtype):
    torch.manual_seed(0)
    plain = nn.Conv2d(8, 16, 3, 2, 1).to(device)
    ours = strideconv.Conv2d(8, 16, 3, 2, 1).to(device)
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(4, 8, 20, 20, device=device, requires_grad=True)
    with torch.autocast(device, dtype=dtype):
        y0, y = plain(x), ours(x)
    assert y.dtype == y0.dtype == dtype
    assert torch.equal(y, y0)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, ours.weight), g)
    assert gx.dtype == torch.float32 and gw.dtype == torch.float32  # cast back, as nn.Conv2d's
    assert torch.isfinite(gx).all() and torch.isfinite(gw).all()
    # float32 reference: the corrected gradient of the same layer without autocast
    y32 = ours(x)
    gx32, gw32 = torch.autograd.grad(y32, (x, ours.weight), g.float())
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
    assert (gx - gx32).norm() <= tol * gx32.norm()
    assert (gw - gw32).norm() <= tol * gw32.norm()


# ----- channels_last --------------------------------------------------------------------------

@pytest.mark.parametrize("correction", strideconv.CORRECTIONS)
def test_channels_last_same_results_and_memory_format(correction, device):
    torch.manual_seed(0)  # float64: no TF32, so both layouts agree to rounding
    plain = nn.Conv2d(6, 8, 3, 2, 1).to(device, torch.float64).to(memory_format=torch.channels_last)
    ours = strideconv.Conv2d(6, 8, 3, 2, 1, correction=correction).to(device, torch.float64)
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(2, 6, 15, 14, device=device, dtype=torch.float64)
    y_ref = ours(x)
    g = torch.randn_like(y_ref)
    gx_ref = torch.autograd.grad(ours(x.requires_grad_()), x, g)[0]
    ours = ours.to(memory_format=torch.channels_last)
    xc = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    y, y0 = ours(xc), plain(xc)
    assert y.is_contiguous(memory_format=torch.channels_last) == y0.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    gx = torch.autograd.grad(y, xc, g)[0]
    gx0 = torch.autograd.grad(y0, xc, g)[0]
    assert gx.is_contiguous(memory_format=torch.channels_last) == gx0.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-10)


# ----- double backward ------------------------------------------------------------------------

@pytest.mark.parametrize("power", [0.5, 1.0])
@pytest.mark.parametrize("correction", strideconv.CORRECTIONS)
def test_gradgradcheck_every_correction(correction, power, device):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 8, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    w = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    b = torch.randn(4, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    fn = lambda x, w, b: conv2d(x, w, b, 2, 1, correction=correction, power=power)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def factor_input(x, factor):
    """Plain ops only: forward is x, the gradient reaching x is multiplied by ``factor``
    (a constant), at any order of differentiation."""
    return x * factor - (x * factor).detach() + x.detach()


@pytest.mark.parametrize("correction", ["position", "map"])
def test_gradient_penalty_step_matches_plain_pytorch_reference(correction, device):
    """WGAN-GP / R1: the norm of the input gradient in the loss, one optimiser step."""
    torch.manual_seed(0)
    layers = [(3, 8, 3, 2, 1), (8, 8, 4, 2, 1)]
    weights = [(torch.randn(o, i, k, k, dtype=torch.float64, device=device) * 0.3).requires_grad_()
               for i, o, k, _, _ in layers]
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, device=device, requires_grad=True)

    def critic(x, ours):
        h = x
        for w, (_, _, k, s, p) in zip(weights, layers):
            if ours:
                h = conv2d(h, w, None, s, p, correction=correction)
            else:
                f = strideconv.correction_factors(h.shape[2:], k, s, p)
                factor = f.position if correction == "position" else torch.full(f.counts.shape, f.map, dtype=torch.float64)
                h = F.conv2d(factor_input(h, factor.to(h)), w, None, s, p)
            h = F.softplus(h)
        return h.mean(dim=(1, 2, 3))

    results = []
    for ours in (True, False):
        out = critic(x, ours)
        (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        loss = out.mean() + 10 * gx.flatten(1).norm(dim=1).sub(1).square().mean()
        results.append(torch.autograd.grad(loss, weights))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ----- DistributedDataParallel ----------------------------------------------------------------

def _ddp_worker(rank, world, port, path):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = small_cnn(dtype=torch.float64)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    data = torch.load(path + ".data")
    for x, y in data:
        part = x.shape[0] // world
        xs, ys = x[rank * part:(rank + 1) * part], y[rank * part:(rank + 1) * part]
        opt.zero_grad()
        F.cross_entropy(ddp(xs), ys).backward()
        opt.step()
    if rank == 0:
        torch.save(model.state_dict(), path + ".ddp")
    dist.barrier()  # neither rank tears gloo down while the other still uses it
    dist.destroy_process_group()


def test_ddp_two_gloo_processes_equal_one_process_on_the_whole_batch(tmp_path):
    import socket

    import torch.multiprocessing as mp

    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, 16, 16, generator=gen, dtype=torch.float64), torch.randint(0, 5, (8,), generator=gen))
            for _ in range(3)]
    path = str(tmp_path / "run")
    torch.save(data, path + ".data")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, path), nprocs=2, join=True)
    model = small_cnn(dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in data:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    ddp_state = torch.load(path + ".ddp")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ddp_state[name], value, rtol=1e-10, atol=1e-12)


# ----- determinism ----------------------------------------------------------------------------

def test_deterministic_algorithms_give_bitwise_equal_gradients(device):
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        x = torch.randn(4, 3, 32, 32, device=device)
        runs = [grads_of(small_cnn(device=device), x) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(previous)
    (y0, g0), (y1, g1) = runs
    assert torch.equal(y0, y1)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))


# ----- edge cases: the result or the error torch.nn.Conv2d gives -------------------------------

def both(cfg, x, g=None, correction="position"):
    """Forward (and backward) of nn.Conv2d and strideconv.Conv2d with the same weights."""
    torch.manual_seed(0)
    plain = nn.Conv2d(**cfg).to(x.device)
    ours = strideconv.Conv2d(**cfg, correction=correction).to(x.device)
    ours.load_state_dict(plain.state_dict())
    out = []
    for m in (plain, ours):
        xi = x.detach().requires_grad_(x.is_floating_point())
        y = m(xi)
        gx = torch.autograd.grad(y, xi, torch.ones_like(y) if g is None else g)[0] if xi.requires_grad else None
        out.append((y, gx))
    return out


EDGE = {
    "empty batch": (dict(in_channels=3, out_channels=4, kernel_size=3, stride=2), torch.randn(0, 3, 9, 9)),
    "1x1 output": (dict(in_channels=3, out_channels=4, kernel_size=3, stride=2), torch.randn(2, 3, 3, 3)),
    "stride > kernel": (dict(in_channels=3, out_channels=4, kernel_size=2, stride=3), torch.randn(2, 3, 10, 10)),
    "input = kernel": (dict(in_channels=3, out_channels=4, kernel_size=5, stride=5), torch.randn(2, 3, 5, 5)),
    "non-contiguous": (dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1),
                       torch.randn(2, 9, 3, 9).transpose(1, 2)),
    "expanded": (dict(in_channels=3, out_channels=4, kernel_size=3, stride=2), torch.randn(1, 3, 9, 9).expand(4, 3, 9, 9)),
    "sliced": (dict(in_channels=3, out_channels=4, kernel_size=3, stride=2), torch.randn(2, 6, 20, 20)[:, ::2, 1::2, ::2]),
}


@pytest.mark.parametrize("name", list(EDGE))
def test_edge_cases_shapes_and_values(name, device):
    cfg, x = EDGE[name]
    (y0, gx0), (y, gx) = both(cfg, x.to(device))
    assert torch.equal(y, y0)
    assert gx.shape == gx0.shape and gx.stride() == gx0.stride()
    assert torch.isfinite(gx).all()
    w = nn.Conv2d(**cfg).weight  # the reference with the same weights
    torch.manual_seed(0)
    w = nn.Conv2d(**cfg).weight.detach().double()
    s, p = cfg.get("stride", 1), cfg.get("padding", 0)
    expected = expected_grad_input("position", 0.5, x.double(), w, torch.ones(y.shape, dtype=torch.float64),
                                   (s, s), (p, p), (1, 1), 1)
    torch.testing.assert_close(gx.double().cpu(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("where", ["input", "grad"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("correction", strideconv.CORRECTIONS)
def test_nan_and_inf_propagate_as_in_nn_conv2d(where, value, correction, device):
    cfg = dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1)
    x = torch.randn(1, 2, 9, 9, device=device)
    g = torch.randn(1, 3, 5, 5, device=device)
    if where == "input":
        x[0, 1, 4, 4] = value
    else:
        g[0, 2, 0, 4] = value
    (y0, gx0), (y, gx) = both(cfg, x, g, correction)
    assert torch.equal(torch.isnan(y), torch.isnan(y0)) and torch.equal(torch.isinf(y), torch.isinf(y0))
    assert torch.equal(torch.isnan(gx), torch.isnan(gx0))
    assert torch.equal(torch.isinf(gx), torch.isinf(gx0))


def same_error(call_plain, call_ours):
    errors = []
    for call in (call_plain, call_ours):
        with pytest.raises(Exception) as info:
            call()
        errors.append(info.value)
    assert type(errors[0]) is type(errors[1]) and str(errors[0]) == str(errors[1]), errors


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool])
def test_integer_inputs_same_error(dtype):
    x = torch.ones(1, 3, 8, 8, dtype=dtype)
    same_error(lambda: nn.Conv2d(3, 4, 3)(x), lambda: strideconv.Conv2d(3, 4, 3)(x))


def test_complex_is_a_clear_error():
    x = torch.randn(1, 3, 8, 8, dtype=torch.complex64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.complex64)
    for weight in (w, w.real):
        for correction in strideconv.CORRECTIONS:
            with pytest.raises(ValueError, match="complex convolutions are not supported"):
                conv2d(x, weight, stride=2, correction=correction)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible)")
def test_tensors_on_different_devices_same_error():
    x = torch.randn(1, 3, 8, 8, device="cuda")
    w = torch.randn(4, 3, 3, 3)
    same_error(lambda: F.conv2d(x, w), lambda: conv2d(x, w))


# ----- soak and threads -----------------------------------------------------------------------

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def test_soak_varying_sizes_memory_flat_results_right():
    """Detection-style input sizes: thousands of steps, no growth, spot-checked results."""
    torch.manual_seed(0)
    conv = strideconv.Conv2d(3, 4, 3, 2, 1)
    pool = strideconv.AvgPool2d(3, 2, 1)
    gen = torch.Generator().manual_seed(0)
    sizes = torch.randint(5, 40, (3000, 2), generator=gen).tolist()
    marks = {}
    for step, (h, w) in enumerate(sizes):
        x = torch.randn(1, 3, h, w, requires_grad=True)
        y = conv(x)
        (gx,) = torch.autograd.grad(y.sum() + pool(x).sum(), x)
        if step % 500 == 0:
            (true,) = torch.autograd.grad(F.conv2d(x, conv.weight, conv.bias, 2, 1).sum(), x)
            (true_pool,) = torch.autograd.grad(F.avg_pool2d(x, 3, 2, 1).sum(), x)
            f = strideconv.correction_factors((h, w), 3, 2, 1).position.float()
            torch.testing.assert_close(gx, (true + true_pool) * f, rtol=1e-4, atol=1e-5)
        if step in (1000, 2999):
            marks[step] = rss_mb()
    assert marks[2999] - marks[1000] < 20, marks
    assert strideconv._pooling._factor_map.cache_info().currsize <= 64


def test_concurrent_calls_from_threads(device):
    torch.manual_seed(0)
    jobs = [(3 + i % 3, 5 + i, 2 + i % 2, i % 2, 11 + 3 * i) for i in range(8)]
    inputs = [(torch.randn(2, c, n, n + 1, dtype=torch.float64, device=device),
               torch.randn(o, c, 3, 3, dtype=torch.float64, device=device), s, p) for c, o, s, p, n in jobs]
    expected = []
    for x, w, s, p in inputs:
        y = F.conv2d(x, w, None, s, p)
        g = torch.ones_like(y)
        expected.append(expected_grad_input("position", 0.5, x.cpu(), w.cpu(), g.cpu(), (s, s), (p, p), (1, 1), 1))
    results = [None] * len(inputs)
    errors = []

    def work(i):
        try:
            x, w, s, p = inputs[i]
            for _ in range(20):
                xi = x.clone().requires_grad_()
                y = conv2d(xi, w, None, s, p)
                (gx,) = torch.autograd.grad(y, xi, torch.ones_like(y))
            results[i] = gx.cpu()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# ----- large tensors: indexing past 2^31 elements ---------------------------------------------

def _check_large(device):
    # 7 planes of 16384 x 32769: more than 2^31 elements, offsets past 2^31 too
    n, h, w = 7, 16384, 32768 + 1
    grad = torch.ones(n, 1, h, w, dtype=torch.bfloat16, device=device)
    assert grad.numel() > 2**31
    torch.ops.strideconv.scale_border_(grad, [3, 3], [2, 2], [1, 1], [1, 1], 1.0)
    # On ones, the result is the ratio map n((i + p) mod s) / C(i) itself (power 1).
    rows, cols = torch.tensor(axis_ratios(h)), torch.tensor(axis_ratios(w))
    for b in (0, n - 1):
        torch.testing.assert_close(grad[b, 0, h - 1].float().cpu(), rows[h - 1] * cols)
        torch.testing.assert_close(grad[b, 0, :, w - 1].float().cpu(), rows * cols[w - 1])
        assert torch.equal(grad[b, 0, h // 2].float().cpu(), rows[h // 2] * cols)


def axis_ratios(length, k=3, s=2, p=1):
    """n((i + p) mod s) / C(i) along one axis (1 where C = 0), from the definitions."""
    counts = [0] * length
    for o in range((length + 2 * p - k) // s + 1):
        for t in range(k):
            j = o * s - p + t
            if 0 <= j < length:
                counts[j] += 1
    classes = [sum(1 for t in range(k) if t % s == r) for r in range(s)]
    return [classes[(i + p) % s] / c if c else 1.0 for i, c in enumerate(counts)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible)")
def test_large_tensor_indexing_cuda():
    _check_large("cuda")


@pytest.mark.slow
def test_large_tensor_indexing_cpu():
    _check_large("cpu")


# ----- TorchScript and ONNX -------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [dict(stride=2), dict(stride=(2,), padding=1),
                                    dict(stride=2, padding=1, padding_mode="reflect"),
                                    dict(stride=2, padding="valid")])
def test_jit_script_conv_same_output_and_corrected_gradient(kwargs):
    torch.manual_seed(0)
    conv = strideconv.Conv2d(2, 3, 3, **kwargs)
    scripted = torch.jit.script(conv)
    for x in (torch.randn(2, 2, 9, 9), torch.randn(2, 9, 9)):  # batched and unbatched
        x = x.requires_grad_()
        y0, y1 = conv(x), scripted(x)
        assert torch.equal(y1, y0)
        (g0,) = torch.autograd.grad(y0.sum(), x)
        (g1,) = torch.autograd.grad(y1.sum(), x)
        torch.testing.assert_close(g1, g0)
    (true,) = torch.autograd.grad(nn.Conv2d._conv_forward(conv, x, conv.weight, conv.bias).sum(), x)
    assert not torch.allclose(g1, true)  # the scripted module corrects too


def test_jit_script_refusals_name_revert():
    with pytest.raises(RuntimeError, match="revert"):
        torch.jit.script(strideconv.Conv2d(2, 3, 3, padding="same"))
    with pytest.raises(RuntimeError, match="revert"):
        torch.jit.script(nn.Sequential(strideconv.AvgPool2d(2)))
    scripted = torch.jit.script(strideconv.revert(nn.Sequential(strideconv.AvgPool2d(2))))
    x = torch.randn(1, 1, 4, 4)
    assert torch.equal(scripted(x), F.avg_pool2d(x, 2))


@pytest.mark.parametrize("dynamo", [True, False])
def test_onnx_export_of_a_converted_model_is_a_standard_conv(tmp_path, dynamo):
    onnx = pytest.importorskip("onnx", reason="onnx is in requirements-dev.txt")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in requirements-dev.txt")
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    model = strideconv.convert(small_cnn(correction="none")).eval()
    x = torch.randn(2, 3, 32, 32)
    path = str(tmp_path / "model.onnx")
    torch.onnx.export(model, (x,), path, dynamo=dynamo)
    ops = [node.op_type for node in onnx.load(path).graph.node]
    assert ops.count("Conv") == 3 and not any("strideconv" in op for op in ops)
    session = ort.InferenceSession(path)
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(y), model(x).detach(), rtol=1e-4, atol=1e-5)
