"""PyTorch integrations: torch.compile, torch.export, autocast, channels_last,
DistributedDataParallel, determinism, TorchScript and ONNX."""

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import strideconv
from helpers import needs_cuda


def small_cnn(correction="position", dtype=torch.float32, device="cpu", seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        strideconv.Conv2d(3, 8, 4, 4, correction=correction),  # patchify stem
        nn.ReLU(),
        strideconv.Conv2d(8, 16, 3, 2, 1, correction=correction),
        nn.ReLU(),
        strideconv.ConvTranspose2d(16, 16, 3, 2, 1, output_padding=1, correction=correction),  # a decoder layer
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


def assert_matches_eager(model, compiled, xs, rtol, atol):
    """The compiled model's output and every gradient equal the eager model's, on each input."""
    for x in xs:
        y0, g0 = grads_of(model, x)
        y1, g1 = grads_of(compiled, x)
        torch.testing.assert_close(y1, y0, rtol=rtol, atol=atol)
        for a, b in zip(g1, g0):
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# ----- torch.compile ------------------------------------------------------------------------

@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph_matches_eager(dynamic, device):
    torch._dynamo.reset()
    model = small_cnn(device=device)
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic)
    sizes = [32, 48] if dynamic else [32]  # with dynamic=True the second size reuses the symbolic graph
    assert_matches_eager(model, compiled, [torch.randn(2, 3, size, size, device=device) for size in sizes],
                         rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("correction", ["none", "map", "kernel", "position"])
def test_compile_sees_aten_convolutions_and_gives_the_corrected_gradients(correction):
    """While dynamo traces, the layers are written with torch's convolutions (inductor lays them
    out as any convolution) and strideconv's scaling ops: the graph holds no strideconv.conv or
    conv_transpose, and every gradient is eager's (float64, static and dynamic shapes, with and
    without bias, strided and transposed layers)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        strideconv.Conv2d(3, 8, 3, 2, 1, correction=correction), nn.ReLU(),
        strideconv.ConvTranspose2d(8, 4, 3, 2, 1, output_padding=1, correction=correction),
        strideconv.ConvTranspose2d(4, 2, 4, 2, 1, bias=False, correction=correction),
        strideconv.Conv2d(2, 2, 3, 2, 1, bias=False, correction=correction)).double()
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm

    torch._dynamo.reset()
    torch.compile(model, backend=capture, fullgraph=True)(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    targets = {n.target for g in graphs for n in g.graph.nodes if n.op == "call_function"}
    assert torch.conv_transpose2d in targets  # the strided layers sit in autograd.Function nodes
    assert not targets & {torch.ops.strideconv.conv.default, torch.ops.strideconv.conv_transpose.default}
    for dynamic in (False, True):
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=dynamic)
        xs = [torch.randn(2, 3, size, size, dtype=torch.float64) for size in ([16, 20] if dynamic else [16])]
        assert_matches_eager(model, compiled, xs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dynamic", [False, True])
def test_compiled_position_builds_its_factor_map_from_aten_ops(dynamic):
    """Under torch.compile, ``position`` reaches AOT autograd's graphs as ATen ops only: its factor
    map is built from ``arange`` with pointwise ops, which inductor folds into the multiply, and no
    strideconv op is left. With dynamic shapes the spatial sizes stay symbolic (one graph serves
    two sizes); the gradients are eager's in float64."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    torch.manual_seed(0)
    model = nn.Sequential(strideconv.Conv2d(3, 4, 3, 2, 1), nn.ReLU(),
                          strideconv.ConvTranspose2d(4, 2, 3, 2, 1, output_padding=1), nn.ReLU(),
                          strideconv.Conv2d(2, 2, (3, 2), (2, 3), (0, 1), dilation=(1, 2))).double()
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm)

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=aot_autograd(fw_compiler=keep, bw_compiler=keep), fullgraph=True,
                             dynamic=dynamic)
    for size in [(15, 13), (17, 12)]:
        x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
        (g1,) = torch.autograd.grad(compiled(x).square().sum(), x)
        (g0,) = torch.autograd.grad(model(x).square().sum(), x)
        torch.testing.assert_close(g1, g0, rtol=1e-12, atol=1e-12)
    ours = {str(n.target) for g in graphs for n in g.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("strideconv.")}
    assert ours == set()
    assert len(graphs) == (2 if dynamic else 4)  # a forward and a backward graph per compilation


@pytest.mark.parametrize("correction", ["none", "map", "kernel", "position"])
def test_compile_under_autocast_matches_eager(correction):
    """Compiled under autocast, the layers compute in the autocast dtype, as in eager mode (the
    output's dtype is eager's), and the gradients agree with eager's to bfloat16 precision."""
    torch.manual_seed(0)
    model = nn.Sequential(strideconv.Conv2d(3, 8, 3, 2, 1, correction=correction), nn.ReLU(),
                          strideconv.ConvTranspose2d(8, 4, 3, 2, 1, output_padding=1, correction=correction))
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.autocast("cpu", torch.bfloat16):
        y0, y1 = model(x), compiled(x)
    assert y0.dtype == y1.dtype == torch.bfloat16
    torch.testing.assert_close(y1, y0, rtol=2e-2, atol=2e-2)
    g0 = torch.autograd.grad(y0.float().square().sum(), [x] + list(model.parameters()))
    g1 = torch.autograd.grad(y1.float().square().sum(), [x] + list(model.parameters()))
    for a, b in zip(g1, g0):
        assert a.dtype == b.dtype
        assert (a - b).norm() <= 2e-2 * b.norm()


# ----- torch.export ---------------------------------------------------------------------------

def test_export_keeps_the_op_dynamic_shapes_and_save_load(tmp_path, device):
    model = small_cnn(device=device)
    x = torch.randn(2, 3, 32, 32, device=device)
    size = torch.export.Dim("size", min=4, max=128)
    exported = torch.export.export(model, (x,), dynamic_shapes={"input": {2: 4 * size, 3: 4 * size}})
    targets = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.strideconv.conv.default) == 2  # the op, not a decomposition
    assert targets.count(torch.ops.strideconv.conv_transpose.default) == 1

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

AUTOCAST = [("cpu", torch.bfloat16), pytest.param("cuda", torch.float16, marks=needs_cuda),
            pytest.param("cuda", torch.bfloat16, marks=needs_cuda)]


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


@pytest.mark.parametrize("correction", ["position", "kernel", "map"])
@pytest.mark.parametrize("device, dtype", AUTOCAST)
def test_autocast_input_gradient_as_accurate_as_nn_conv2d(correction, device, dtype):
    """The weight is scaled in float32 before the cast (one rounding, as nn.Conv2d's weight), so
    the corrected input gradient under autocast is no further from its float32 value than
    nn.Conv2d's is from its own (summed over seeds: the difference is a few percent either way)."""
    errors = {"nn": 0.0, "ours": 0.0}
    for seed in range(4):
        torch.manual_seed(seed)
        plain = nn.Conv2d(16, 32, 3, 2, 1).to(device)
        ours = strideconv.Conv2d(16, 32, 3, 2, 1, correction=correction).to(device)
        ours.load_state_dict(plain.state_dict())
        x = torch.randn(4, 16, 24, 24, device=device, requires_grad=True)
        for name, m in (("nn", plain), ("ours", ours)):
            with torch.autocast(device, dtype=dtype):
                y = m(x)
            g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(device)
            (gx,) = torch.autograd.grad(y, x, g)
            (gx32,) = torch.autograd.grad(m(x), x, g.float())
            errors[name] += ((gx - gx32).norm() / gx32.norm()).item()
    assert errors["ours"] <= 1.03 * errors["nn"], errors


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
    dist.barrier()  # both ranks are done (rank 0 has saved its result)
    # Leave without tearing gloo down: its teardown at exit aborts now and then ("terminate
    # called without an active exception", about 1 run in 8, with or without strideconv).
    os._exit(0)


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


# ----- CUDA graphs ----------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("correction", ["position", "kernel", "map"])
def test_cuda_graph_captures_a_whole_training_step(correction):
    """A training step (forward, backward, every gradient) captured in one CUDA graph and replayed
    on new data gives the eager gradients: nothing in the corrected ops runs on the host per call
    once their factors are cached, and nothing copies from the host during capture."""
    model = nn.Sequential(strideconv.AvgPool2d(2, 2, correction=correction), small_cnn(correction, device="cuda"))
    model = model.cuda()
    static_x = torch.randn(4, 3, 64, 64, device="cuda", requires_grad=True)
    params = list(model.parameters())

    def step():
        model(static_x).square().sum().backward()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up: cuDNN plans, the factor caches
        for _ in range(3):
            static_x.grad = None
            model.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    static_x.grad = None
    model.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step()
    for seed in (1, 2):
        with torch.no_grad():
            static_x.copy_(torch.randn(4, 3, 64, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(seed)))
        graph.replay()
        torch.cuda.synchronize()
        x = static_x.detach().clone().requires_grad_()
        want = torch.autograd.grad(model(x).square().sum(), [x] + params)
        got = [static_x.grad] + [p.grad for p in params]
        for u, v in zip(got, want):
            torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)


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
