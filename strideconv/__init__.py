"""strideconv: strided convolutions with a corrected input gradient.

The forward pass is ``torch.nn.functional.conv2d``, bit for bit. The backward pass
corrects ``grad_input`` for the uneven number of kernel windows that reach each
input pixel under a stride (docs/design.md). Transposed convolutions, whose forward
has the same uneven count, are normalised in the forward instead.
"""

import torch  # noqa: F401  (loads libtorch, which _C links against)

try:
    from . import _C  # noqa: F401  (registers torch.ops.strideconv.*)
except ImportError as exc:  # no silent fallback to plain convolutions
    raise ImportError(
        "strideconv's compiled extension (strideconv._C) is missing or does not load: "
        f"{exc}. Build it against your installed torch with "
        "`pip install --no-build-isolation .` from the strideconv source folder "
        "(add `-e` for a development install)."
    ) from exc

from . import _fake_kernels  # noqa: F401,E402  (shapes for torch.compile and meta tensors)
from . import functional, init, metrics  # noqa: E402
from ._arguments import CORRECTIONS  # noqa: E402
from .factors import Factors, correction_factors, count_map, transposed_count_map, transposed_factors  # noqa: E402
from .convert import convert, revert  # noqa: E402
from .modules import (  # noqa: E402
    AvgPool2d, Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d,
)
from ._report import report  # noqa: E402
from ._context import corrected  # noqa: E402
from .equalise import PhaseEqualised, equalise_phases, phase_equalised  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "AvgPool2d",
    "functional", "init", "metrics", "convert", "revert", "corrected", "report", "count_map", "correction_factors",
    "Factors", "transposed_count_map", "transposed_factors", "CORRECTIONS", "PhaseEqualised", "equalise_phases",
    "phase_equalised",
]
