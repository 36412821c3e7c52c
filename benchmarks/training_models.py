"""The training study's networks: one per run, or the runs of one variant side by side as
groups of a single network (see train.py)."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import strideconv
from training_setup import INITS, Setting


def make_convs(setting: Setting, correction: Optional[str], power: float, groups: int = 1) -> List[nn.Module]:
    """The setting's convolutions, torch.nn's (correction None) or strideconv's, each `groups` wide."""
    if correction is None:
        conv, extra = (nn.Conv1d, nn.Conv2d)[setting.dim - 1], {}
    else:
        conv, extra = (strideconv.Conv1d, strideconv.Conv2d)[setting.dim - 1], dict(correction=correction, power=power)
    return [conv(groups * cin, groups * cout, k, stride=s, padding=p, groups=groups, **extra)
            for cin, cout, k, s, p in setting.layers]


def conv_layers(net: nn.Module) -> List[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]


def head_features(setting: Setting) -> int:
    size = 40 if setting.data == "mnist1d" else 8
    for _, _, k, s, p in setting.layers:
        size = (size + 2 * p - k) // s + 1
    return setting.layers[-1][1] * size ** setting.dim


def single_network(setting: Setting, correction: Optional[str] = None, power: float = 0.5) -> nn.Sequential:
    """The network as a user writes it: convolutions and ReLUs, then a linear head."""
    mods: List[nn.Module] = []
    for conv in make_convs(setting, correction, power):
        mods += [conv, nn.ReLU()]
    return nn.Sequential(*mods, nn.Flatten(), nn.Linear(head_features(setting), 10))


def initialise(net: nn.Sequential, init: str) -> nn.Sequential:
    if init == "kaiming":  # torchvision's ResNet init, PyTorch's fan_out
        for m in conv_layers(net):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    elif init == "kaiming-stride":
        strideconv.init.init_convs_(net)  # the same, with the effective fan_out of each conv
    elif init != "default":
        raise ValueError(f"unknown init {init!r}; choose from {INITS}")
    return net


class Side(nn.Module):
    """G copies of one network side by side: group g of every convolution is copy g's layer."""

    def __init__(self, setting: Setting, correction: Optional[str], power: float, nets: List[nn.Sequential]):
        super().__init__()
        self.groups = len(nets)
        self.convs = nn.ModuleList(make_convs(setting, correction, power, self.groups))
        singles = [conv_layers(net) for net in nets]
        heads = [net[-1] for net in nets]
        with torch.no_grad():
            for i, c in enumerate(self.convs):
                c.weight.copy_(torch.cat([s[i].weight for s in singles]))
                c.bias.copy_(torch.cat([s[i].bias for s in singles]))
            self.head_w = nn.Parameter(torch.stack([h.weight.t() for h in heads]))  # (G, F, 10)
            self.head_b = nn.Parameter(torch.stack([h.bias for h in heads]))  # (G, 10)
        self.inputs: Optional[List[torch.Tensor]] = None  # set to a list to collect each conv's input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, G * C, *spatial), group g's channels from run g's minibatch. Returns (B, G, 10)."""
        for conv in self.convs:
            if self.inputs is not None:
                self.inputs.append(x)
            x = F.relu(conv(x))
        h = x.reshape(x.shape[0], self.groups, -1)
        return torch.einsum("bgf,gfo->bgo", h, self.head_w) + self.head_b


def side_input(x: torch.Tensor) -> torch.Tensor:
    """(G, B, C, *spatial), a minibatch per run -> (B, G * C, *spatial)."""
    g, b = x.shape[:2]
    return x.transpose(0, 1).reshape(b, g * x.shape[2], *x.shape[3:])


def shared_batch(x: torch.Tensor, y: torch.Tensor, groups: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The same minibatch x (B, C, *spatial), y (B,) for every run: (B, G * C, *spatial), (B, G)."""
    return side_input(x.unsqueeze(0).expand(groups, *x.shape)), y.unsqueeze(1).expand(-1, groups)
