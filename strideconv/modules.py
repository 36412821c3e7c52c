"""``strideconv.Conv2d``: ``torch.nn.Conv2d`` with a corrected input gradient."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from ._factors import check_correction
from .functional import _conv

__all__ = ["Conv2d"]


class Conv2d(nn.Conv2d):
    """Drop-in for ``torch.nn.Conv2d`` whose backward corrects ``grad_input``.

    Same arguments, defaults, parameters, initial weights, ``state_dict`` and forward output as
    ``torch.nn.Conv2d``; two keyword-only settings choose the correction of the input gradient
    (see ``strideconv.functional.conv2d``). Padding modes other than ``"zeros"`` pad first, so
    the count map is that of the padded tensor.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        correction: str = "position",
        power: float = 0.5,
    ) -> None:
        check_correction(correction, power)
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype,
        )
        self.correction = correction
        self.power = float(power)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, correction={self.correction!r}, power={self.power}"

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        if input.dim() not in (3, 4):
            raise RuntimeError(
                "Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: "
                f"{list(input.shape)}"
            )
        unbatched = input.dim() == 3
        if unbatched:
            input = input.unsqueeze(0)
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = _pair(0)
        else:
            padding = self.padding
        out = _conv(
            input, weight, bias, self.stride, padding, self.dilation, self.groups,
            self.correction, self.power, 2,
        )
        return out.squeeze(0) if unbatched else out
