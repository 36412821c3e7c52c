"""The training loop of the side-by-side runs, its measurements (loss, accuracy, input-gradient
RMS per layer), and the worker processes that run the jobs."""

from __future__ import annotations

import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import List, Tuple

import torch
import torch.nn.functional as F

from training_models import Side, initialise, shared_batch, side_input, single_network
from training_setup import VARIANTS, Setting


def run_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each run's mean cross-entropy (G,); logits (B, G, 10), y (B, G). Their sum is the training
    loss: run g's parameters get exactly the gradient of run g's loss."""
    return F.cross_entropy(logits.permute(0, 2, 1), y, reduction="none").mean(0)


def per_run_rms(t: torch.Tensor, groups: int) -> List[float]:
    return t.reshape(t.shape[0], groups, -1).pow(2).mean(dim=(0, 2)).sqrt().tolist()


def input_grad_rms(model: Side, x: torch.Tensor, y: torch.Tensor) -> List[List[float]]:
    """RMS of the gradient reaching each conv's input (the data's for the first), per run: [layer][run].

    The gradient is the one each layer passes back: the corrected one for strideconv layers."""
    model.inputs = []
    try:
        x, y = shared_batch(x, y, model.groups)
        loss = run_losses(model(x.requires_grad_(True)), y).sum()
        grads = torch.autograd.grad(loss, model.inputs)
    finally:
        model.inputs = None
    return [per_run_rms(g, model.groups) for g in grads]


def evaluate(model: Side, x: torch.Tensor, y: torch.Tensor) -> Tuple[List[float], List[float]]:
    """Per-run test accuracy and test loss."""
    with torch.no_grad():
        x, y = shared_batch(x, y, model.groups)
        logits = model(x)
        acc = (logits.argmax(-1) == y).float().mean(0)
        loss = run_losses(logits, y)
    return acc.tolist(), loss.tolist()


def batch_order(seed: int, n: int, batch: int, steps: int) -> torch.Tensor:
    """Minibatch indices (steps, batch) of one seed: consecutive reshuffled epochs."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    epochs = math.ceil(steps * batch / n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(epochs)])[: steps * batch].view(steps, batch)


def make_runs(setting: Setting, correction, power, runs: List[Tuple[str, int]]) -> Side:
    nets = []
    for init, seed in runs:
        torch.manual_seed(seed)  # the same initial weights for every variant (strideconv draws as torch.nn)
        nets.append(initialise(single_network(setting), init))
    return Side(setting, correction, power, nets)


def train(setting: Setting, correction, power, runs: List[Tuple[str, int]], data, device="cpu"):
    """Train the runs (init, seed) of one variant side by side; returns per-run curves and results."""
    x, y, xt, yt = (t.to(device) for t in data)
    model = make_runs(setting, correction, power, runs).to(device)
    g = model.groups
    if setting.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=setting.lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=setting.lr, momentum=0.9)
    order = torch.stack([batch_order(seed, len(y), setting.batch, setting.steps) for _, seed in runs]).to(device)
    probe = (x[:500], y[:500])  # a fixed batch for the gradient norms
    out = dict(grad_rms_init=input_grad_rms(model, *probe), steps=[], train_loss=[], test_acc=[], test_loss=[])
    running = torch.zeros(g, device=device)
    for step in range(1, setting.steps + 1):
        idx = order[:, step - 1]  # (G, B)
        logits = model(side_input(x[idx]))
        per_run = run_losses(logits, y[idx].t())
        opt.zero_grad(set_to_none=True)
        per_run.sum().backward()
        opt.step()
        running += per_run.detach()
        if step % setting.eval_every == 0 or step == setting.steps:
            span = step - (out["steps"][-1] if out["steps"] else 0)
            acc, loss = evaluate(model, xt, yt)
            out["steps"].append(step)
            out["train_loss"].append((running / span).tolist())
            out["test_acc"].append(acc)
            out["test_loss"].append(loss)
            running.zero_()
    out["grad_rms_final"] = input_grad_rms(model, *probe)
    out["final_acc"] = out["test_acc"][-1]
    return out


def _job(args):
    setting, variant, runs, data, device, threads = args
    torch.set_num_threads(threads)
    _, correction, power = next(v for v in VARIANTS if v[0] == variant)
    t0 = time.perf_counter()
    res = train(setting, correction, power, runs, data, device)
    res["seconds"] = time.perf_counter() - t0
    return setting.name, variant, runs, res


def run_jobs(jobs, device, workers):
    """Yield the jobs' results in order: from a process pool on CPU, one after another on CUDA."""
    if device != "cpu" or workers <= 1:
        for job in jobs:
            yield _job(job + (device, torch.get_num_threads()))
        return
    ctx = multiprocessing.get_context("spawn")  # no forked OpenMP state
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = [pool.submit(_job, job + (device, 1)) for job in jobs]
        for f in futures:
            yield f.result()
