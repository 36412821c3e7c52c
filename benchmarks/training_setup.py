"""The training study's settings (networks, optimisers, learning rates) and its data:
generated or bundled by a package, nothing downloaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch


VARIANTS: List[Tuple[str, Optional[str], float]] = [  # (name, correction, power); None = torch.nn
    ("plain", None, 0.5),
    ("position", "position", 0.5),
    ("kernel", "kernel", 0.5),
    ("map", "map", 0.5),
    ("position p=1", "position", 1.0),
    ("kernel p=1", "kernel", 1.0),
    ("map p=1", "map", 1.0),
]
INITS = ["default", "kaiming", "kaiming-stride"]

Layer = Tuple[int, int, int, int, int]  # in_channels, out_channels, kernel, stride, padding


@dataclass(frozen=True)
class Setting:
    name: str
    data: str  # "mnist1d" or "digits"
    dim: int  # 1 or 2 spatial dimensions
    layers: Tuple[Layer, ...]
    optimizer: str  # "adam" or "sgd" (momentum 0.9)
    lr: float
    batch: int
    steps: int
    eval_every: int
    note: str


MNIST1D_CNN = ((1, 25, 5, 2, 1), (25, 25, 3, 2, 1), (25, 25, 3, 2, 1))  # the authors' ConvBase: 40 -> 19 -> 10 -> 5
DIGITS_CNN = ((1, 16, 3, 1, 1), (16, 32, 2, 2, 0), (32, 32, 3, 2, 1))  # 8x8 -> 8x8 -> 4x4 (patchify) -> 2x2
DEEP_CNN = ((1, 16, 5, 2, 2),) + ((16, 16, 3, 1, 1), (16, 16, 3, 2, 1)) * 3 + ((16, 16, 3, 1, 1),)  # 40->20->10->5->3

SETTINGS = [
    Setting("mnist1d-cnn", "mnist1d", 1, MNIST1D_CNN, "adam", 1e-2, 100, 4000, 250,
            "the MNIST-1D authors' CNN and optimiser (Adam 1e-2, batch 100); they train 8000 steps, the "
            "plain baseline's test accuracy is flat from 4000 on"),
    Setting("digits-cnn", "digits", 2, DIGITS_CNN, "adam", 1e-2, 64, 1000, 100,
            "3x3 conv, 2x2/2 patchify, 3x3/2; Adam, lr from --tune (plain validation accuracy 96.6 / 97.3 / "
            "97.4 / 97.9 / 95.1% at lr 3e-4 / 1e-3 / 3e-3 / 1e-2 / 3e-2)"),
    Setting("deep-sgd", "mnist1d", 1, DEEP_CNN, "sgd", 3e-2, 100, 2000, 200,
            "8 plain conv layers (4 strided), no normalisation, no residuals; SGD momentum 0.9, lr from --tune "
            "(plain validation accuracy 50.8 / 64.9 / 73.3 / 15.2% at lr 3e-3 / 1e-2 / 3e-2 / 1e-1)"),
    Setting("deep-adam", "mnist1d", 1, DEEP_CNN, "adam", 1e-2, 100, 2000, 200,
            "the same network with Adam, lr from --tune (plain validation accuracy 56.2 / 73.2 / 83.6 / 89.1 / "
            "66.6% at lr 3e-4 / 1e-3 / 3e-3 / 1e-2 / 3e-2)"),
]
TUNE_LRS = {"adam": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2], "sgd": [3e-3, 1e-2, 3e-2, 1e-1]}


# ----- data: generated or bundled by a package, nothing downloaded ----------------------------

def load_data(name: str):
    """(x_train, y_train, x_test, y_test) as float32 / int64 tensors, channels first."""
    if name == "mnist1d":
        from mnist1d.data import get_dataset_args, make_dataset

        d = make_dataset(get_dataset_args())  # generated locally: 4000 train / 1000 test, length 40
        x, xt = (torch.tensor(d[k], dtype=torch.float32).unsqueeze(1) for k in ("x", "x_test"))
        return x, torch.tensor(d["y"]), xt, torch.tensor(d["y_test"])
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()  # 1797 8x8 images, bundled with scikit-learn
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)
        y = torch.tensor(d.target)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        x, y = x[order], y[order]
        n = int(0.8 * len(y))
        x = (x - x[:n].mean()) / x[:n].std()
        return split(x, y)
    raise ValueError(f"unknown data set {name!r}")


def split(x: torch.Tensor, y: torch.Tensor):
    """The first four fifths to train on, the last fifth to test on."""
    n = int(0.8 * len(y))
    return x[:n], y[:n], x[n:], y[n:]


def validation_split(data):
    """The training set split again (for --tune: the real test set stays unseen)."""
    return split(*data[:2])
