"""The training study's networks: one per run, or the runs of one variant side by side as
groups of a single network (see train.py): the plain CNNs (Side) and a residual net without
normalisation, Fixup-initialised (Fixup)."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import strideconv
from training_setup import INITS, Setting


def conv_factory(dim: int, correction: Optional[str], power: float, groups: int = 1):
    """conv(cin, cout, k, s, p, bias=True): torch.nn's (correction None) or strideconv's
    convolution, `groups` runs wide."""
    if correction is None:
        cls, extra = (nn.Conv1d, nn.Conv2d)[dim - 1], {}
    else:
        cls, extra = (strideconv.Conv1d, strideconv.Conv2d)[dim - 1], dict(correction=correction, power=power)

    def conv(cin, cout, k, s, p, bias=True):
        return cls(groups * cin, groups * cout, k, stride=s, padding=p, groups=groups, bias=bias, **extra)

    return conv


def make_convs(setting: Setting, correction: Optional[str], power: float, groups: int = 1) -> List[nn.Module]:
    """The setting's convolutions, torch.nn's (correction None) or strideconv's, each `groups` wide."""
    conv = conv_factory(setting.dim, correction, power, groups)
    return [conv(*layer) for layer in setting.layers]


def conv_layers(net: nn.Module) -> List[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]


def head_features(setting: Setting) -> int:
    size = setting.size
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
    elif init == "stride":
        strideconv.init.init_convs_(net)  # the same, with the effective fan_out of each conv
    elif init != "default":
        raise ValueError(f"unknown init {init!r}; choose from {list(INITS)}")
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


# ----- a residual net without normalisation (Fixup) -------------------------------------------

FIXUP_WIDTHS = (8, 16, 32)  # three stages of FIXUP_BLOCKS basic blocks; each later stage starts with stride 2
FIXUP_BLOCKS = 2


def _per_run(scalars: torch.Tensor, channels: int, dim: int) -> torch.Tensor:
    """(G,) run scalars -> (1, G * channels, 1, ...) to add to or multiply a grouped activation."""
    return scalars.repeat_interleave(channels).view(1, -1, *([1] * dim))


class FixupBlock(nn.Module):
    """A basic block without BatchNorm (Zhang, Dauphin and Ma, 2019): scalar biases before each
    convolution and activation, a scalar multiplier after the second convolution."""

    def __init__(self, conv, cin: int, cout: int, stride: int, groups: int, dim: int):
        super().__init__()
        self.cin, self.cout, self.dim = cin, cout, dim
        self.conv1 = conv(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = conv(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = conv(cin, cout, 1, stride, 0, bias=False) if stride != 1 or cin != cout else None
        for name in ("bias1a", "bias1b", "bias2a", "bias2b"):
            setattr(self, name, nn.Parameter(torch.zeros(groups)))
        self.scale = nn.Parameter(torch.ones(groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dim
        x_in = x + _per_run(self.bias1a, self.cin, d)
        out = F.relu(self.conv1(x_in) + _per_run(self.bias1b, self.cout, d))
        out = self.conv2(out + _per_run(self.bias2a, self.cout, d))
        out = out * _per_run(self.scale, self.cout, d) + _per_run(self.bias2b, self.cout, d)
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x_in)))


class Fixup(nn.Module):
    """G Fixup residual nets side by side (G = 1: the network as a user writes it): a 3x3/2 stem,
    the stages of FixupBlocks, global average pooling, a linear head per run."""

    def __init__(self, setting: Setting, correction: Optional[str], power: float, groups: int = 1):
        super().__init__()
        self.groups, self.dim = groups, setting.dim
        conv = conv_factory(setting.dim, correction, power, groups)
        width = FIXUP_WIDTHS[0]
        self.stem = conv(1, width, 3, 2, 1, bias=False)
        self.stem_bias = nn.Parameter(torch.zeros(groups))
        blocks = []
        for stage, w in enumerate(FIXUP_WIDTHS):
            for b in range(FIXUP_BLOCKS):
                blocks.append(FixupBlock(conv, width, w, 2 if stage > 0 and b == 0 else 1, groups, setting.dim))
                width = w
        self.blocks = nn.ModuleList(blocks)
        self.head_bias = nn.Parameter(torch.zeros(groups))
        self.head_w = nn.Parameter(torch.zeros(groups, width, 10))  # Fixup: the classifier starts at zero
        self.head_b = nn.Parameter(torch.zeros(groups, 10))
        self.inputs: Optional[List[torch.Tensor]] = None  # set to a list to collect the stem's and blocks' inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, G, *spatial). Returns (B, G, 10)."""
        if self.inputs is not None:
            self.inputs.append(x)
        x = F.relu(self.stem(x) + _per_run(self.stem_bias, FIXUP_WIDTHS[0], self.dim))
        for block in self.blocks:
            if self.inputs is not None:
                self.inputs.append(x)
            x = block(x)
        h = x.flatten(2).mean(2).view(x.shape[0], self.groups, -1) + self.head_bias.view(1, -1, 1)
        return torch.einsum("bgf,gfo->bgo", h, self.head_w) + self.head_b


def fixup_initialise(net: Fixup, init: str) -> Fixup:
    """Fixup's rule: every convolution Kaiming normal (fan_out, ReLU) as in the Fixup authors' code,
    the first convolution of each residual branch scaled by L^(-1/2) (L blocks, two convolutions
    each), the last one and the classifier at zero. init "stride" uses the effective fan_out."""
    if init not in ("default", "stride"):
        raise ValueError(f"the Fixup net is initialised by Fixup's rule ('default') or with the effective fan_out "
                         f"('stride'), got {init!r}")

    def draw(m):
        if init == "stride":
            strideconv.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", stride=m.stride)
        else:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    with torch.no_grad():
        draw(net.stem)
        for block in net.blocks:
            draw(block.conv1)
            block.conv1.weight.mul_(len(net.blocks) ** -0.5)
            block.conv2.weight.zero_()
            if block.shortcut is not None:
                draw(block.shortcut)
    return net


def stacked(model: nn.Module, singles: List[nn.Module]) -> nn.Module:
    """Load G single-run models (groups=1) into the G-wide `model`: every parameter of a grouped
    model is the runs' parameters concatenated along dimension 0."""
    states = [s.state_dict() for s in singles]
    model.load_state_dict({k: torch.cat([st[k] for st in states]) for k in states[0]})
    return model


def initial_networks(setting: Setting, init: str, seeds: List[int]) -> List[nn.Module]:
    """One plain network per seed: the weights torch draws after torch.manual_seed(seed), the
    same for every variant (strideconv draws as torch.nn)."""
    nets = []
    for seed in seeds:
        torch.manual_seed(seed)
        if setting.arch == "fixup":
            nets.append(fixup_initialise(Fixup(setting, None, 0.5), init))
        else:
            nets.append(initialise(single_network(setting), init))
    return nets


def side_by_side(setting: Setting, correction: Optional[str], power: float, nets: List[nn.Module]) -> nn.Module:
    """The single-run networks `nets` as the groups of one network with this correction's layers."""
    if setting.arch == "fixup":
        return stacked(Fixup(setting, correction, power, len(nets)), nets)
    return Side(setting, correction, power, nets)


def grouped_model(setting: Setting, correction: Optional[str], power: float, init: str,
                  seeds: List[int]) -> nn.Module:
    """The runs of one variant side by side, run g from seeds[g]'s initial weights."""
    return side_by_side(setting, correction, power, initial_networks(setting, init, seeds))
