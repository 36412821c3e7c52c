"""Model-zoo patterns that make strided convolutions other than through an exact nn.Conv2d,
written here as the two big model zoos write them (no timm or torchvision needed):

- a weight-standardised ResNet stage (BiT): pre-activation bottlenecks whose convolutions are
  a subclass of nn.Conv2d that standardises its weight in its own forward;
- an EfficientNet-like stem and block ported from TensorFlow: "same" padding done by the layer
  itself (an asymmetric F.pad, then F.conv2d with padding 0), a depthwise 5x5/2 convolution,
  squeeze-and-excitation;
- a blur-pool downsample (anti-aliased ResNets): a fixed binomial filter applied with a
  functional depthwise F.conv2d(..., stride=2), found only by running the model.

``strideconv.convert(model, example_input=x)`` covers all three: the subclasses by running their
own forward inside ``corrected()``, the blur pool through the recording pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def standardised(w):
    """Weight standardisation: five tensor ops in the forward."""
    return (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-6)


class StdConv2d(nn.Conv2d):
    def forward(self, x):
        return F.conv2d(x, standardised(self.weight), self.bias, self.stride, self.padding, self.dilation, self.groups)


class PreActBottleneck(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        out = 4 * width
        self.gn1, self.conv1 = nn.GroupNorm(4, cin), StdConv2d(cin, width, 1, bias=False)
        self.gn2, self.conv2 = nn.GroupNorm(4, width), StdConv2d(width, width, 3, stride, 1, bias=False)
        self.gn3, self.conv3 = nn.GroupNorm(4, width), StdConv2d(width, out, 1, bias=False)
        self.shortcut = StdConv2d(cin, out, 1, stride, bias=False) if stride != 1 or cin != out else None

    def forward(self, x):
        x = F.relu(self.gn1(x))
        skip = x if self.shortcut is None else self.shortcut(x)
        y = self.conv1(x)
        y = self.conv2(F.relu(self.gn2(y)))
        return self.conv3(F.relu(self.gn3(y))) + skip


def ws_resnet_stage(width=16, classes=10) -> nn.Module:
    """A stem, then a stage of three bottlenecks whose first one has stride 2 (3x3/2 and 1x1/2)."""
    return nn.Sequential(
        StdConv2d(3, 4 * width, 3, 1, 1, bias=False),
        PreActBottleneck(4 * width, 2 * width, 2), PreActBottleneck(8 * width, 2 * width, 1),
        PreActBottleneck(8 * width, 2 * width, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * width, classes),
    )


class Conv2dSame(nn.Conv2d):
    """TensorFlow's "same": the padding the input size needs, the odd one after."""

    def forward(self, x):
        pads = []
        for length, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(length / s) - 1) * s + (k - 1) * d + 1 - length, 0)
            pads = [total // 2, total - total // 2] + pads  # F.pad lists the last dim first
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Expand 1x1, depthwise kxk with stride, squeeze-and-excitation, project 1x1."""

    def __init__(self, cin, cout, k, stride, expand=4):
        super().__init__()
        mid = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU())
        self.dw = nn.Sequential(Conv2dSame(mid, mid, k, stride, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.SiLU())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(mid, cin // 4, 1), nn.SiLU(),
                                nn.Conv2d(cin // 4, mid, 1), nn.Sigmoid())
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.dw(self.expand(x))
        return self.project(y * self.se(y))


def efficientnet_stem_block(width=16, classes=10) -> nn.Module:
    """A TF-"same" 3x3/2 stem, then MBConv blocks with depthwise 3x3/2 and 5x5/2."""
    return nn.Sequential(
        Conv2dSame(3, width, 3, 2, bias=False), nn.BatchNorm2d(width), nn.SiLU(),
        MBConv(width, width, 3, 1), MBConv(width, 2 * width, 3, 2), MBConv(2 * width, 4 * width, 5, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, classes),
    )


class BlurPool(nn.Module):
    """A fixed [1 2 1] x [1 2 1] / 16 filter, depthwise, stride 2."""

    def __init__(self, channels):
        super().__init__()
        f = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (f[:, None] * f[None, :] / 16).expand(channels, 1, 3, 3).contiguous())

    def forward(self, x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


def blurpool_downsample(width=16, classes=10) -> nn.Module:
    """Anti-aliased downsampling, twice: conv 3x3 (stride 1), ReLU, blur pool."""
    def down(cin, cout):
        return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), BlurPool(cout)]

    return nn.Sequential(*down(3, width), *down(width, 2 * width), *down(2 * width, 4 * width),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, classes))
