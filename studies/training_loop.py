"""The training loop of the side-by-side runs (one learning rate per run), its measurements
(loss, accuracy, input-gradient RMS per layer, time per step), and the worker processes that run
the jobs."""

from __future__ import annotations

import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import List, Tuple

import torch
import torch.nn.functional as F

from training_models import grouped_model, shared_batch, side_input
from training_setup import Setting


def run_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each run's mean cross-entropy (G,); logits (B, G, 10), y (B, G). Their sum is the training
    loss: run g's parameters get exactly the gradient of run g's loss."""
    return F.cross_entropy(logits.permute(0, 2, 1), y, reduction="none").mean(0)


def per_run_rms(t: torch.Tensor, groups: int) -> List[float]:
    return t.reshape(t.shape[0], groups, -1).pow(2).mean(dim=(0, 2)).sqrt().tolist()


def input_grad_rms(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> List[List[float]]:
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


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> List[float]:
    """Per-run accuracy on (x, y)."""
    with torch.no_grad():
        x, y = shared_batch(x, y, model.groups)
        return (model(x).argmax(-1) == y).float().mean(0).tolist()


def batch_order(seed: int, n: int, batch: int, steps: int) -> torch.Tensor:
    """Minibatch indices (steps, batch) of one seed: consecutive reshuffled epochs."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    epochs = math.ceil(steps * batch / n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(epochs)])[: steps * batch].view(steps, batch)


class RunOptimizer:
    """SGD with momentum 0.9 or Adam, as torch.optim computes them (no weight decay), with a
    learning rate per run: every parameter of a grouped model holds the runs' parameters
    concatenated along dimension 0, so run g's rows step with lrs[g]. Both act element-wise, so
    each run steps exactly as it would alone (tests/test_benchmarks.py checks it against
    torch.optim)."""

    def __init__(self, params, kind: str, lrs: List[float], momentum=0.9, betas=(0.9, 0.999), eps=1e-8):
        if kind not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {kind!r}")
        self.params = [p for p in params if p.requires_grad]
        self.kind, self.momentum, self.betas, self.eps, self.t = kind, momentum, betas, eps, 0
        g = len(lrs)
        self.lrs = []
        for p in self.params:
            lr = torch.tensor(lrs, dtype=p.dtype, device=p.device).repeat_interleave(p.shape[0] // g)
            self.lrs.append(lr.view(-1, *([1] * (p.dim() - 1))))
        self.state = [[torch.zeros_like(p) for _ in range(1 if kind == "sgd" else 2)] for p in self.params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        self.t += 1
        b1, b2 = self.betas
        for p, lr, state in zip(self.params, self.lrs, self.state):
            if p.grad is None:
                continue
            if self.kind == "sgd":
                (buf,) = state  # torch.optim.SGD, no dampening: buf = momentum * buf + grad, from buf = 0
                buf.mul_(self.momentum).add_(p.grad)
                p.sub_(lr * buf)
            else:
                m, v = state  # torch.optim.Adam
                m.lerp_(p.grad, 1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (v.sqrt() / math.sqrt(1 - b2 ** self.t)).add_(self.eps)
                p.sub_((lr / (1 - b1 ** self.t)) * m / denom)


def train(setting: Setting, correction, power, init: str, runs: List[Tuple[float, int]], data, device="cpu"):
    """Train the runs (learning rate, seed) of one variant side by side; returns per-run curves and
    results, and the time spent in training steps (evaluations not counted)."""
    x, y, xv, yv, xt, yt = (t.to(device) for t in data)
    model = grouped_model(setting, correction, power, init, [seed for _, seed in runs]).to(device)
    g = len(runs)
    opt = RunOptimizer(model.parameters(), setting.optimizer, [lr for lr, _ in runs])
    order = torch.stack([batch_order(seed, len(y), setting.batch, setting.steps) for _, seed in runs]).to(device)
    probe = (x[:setting.probe], y[:setting.probe])  # a fixed batch for the gradient norms
    out = dict(grad_rms_init=input_grad_rms(model, *probe), steps=[], train_loss=[], test_acc=[])
    running = torch.zeros(g, device=device)
    step_seconds = 0.0
    for step in range(1, setting.steps + 1):
        t0 = time.perf_counter()
        idx = order[:, step - 1]  # (G, B)
        per_run = run_losses(model(side_input(x[idx])), y[idx].t())
        opt.zero_grad()
        per_run.sum().backward()
        opt.step()
        running += per_run.detach()
        if device != "cpu":
            torch.cuda.synchronize(device)
        step_seconds += time.perf_counter() - t0
        if step % setting.eval_every == 0 or step == setting.steps:
            span = step - (out["steps"][-1] if out["steps"] else 0)
            out["steps"].append(step)
            out["train_loss"].append((running / span).tolist())
            out["test_acc"].append(evaluate(model, xt, yt))
            running.zero_()
    out["grad_rms_final"] = input_grad_rms(model, *probe)
    out["val_acc"] = evaluate(model, xv, yv)
    out["final_acc"] = out["test_acc"][-1]
    out["step_seconds"] = step_seconds / setting.steps
    return out


def _job(args):
    setting, variant, runs, data, device, threads = args
    torch.set_num_threads(threads)
    return setting.name, variant.name, runs, train(setting, variant.correction, variant.power, variant.init, runs,
                                                   data, device)


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
