"""Command line of ``strideconv.report``: every strided layer of a model defined in a file.

    python -m strideconv.report path/to/model.py:make_model --input-size 1 3 224 224

where ``make_model`` is a module instance or a callable returning one in that file. (The
package imports the function from ``strideconv._report``, not this module, so that
``python -m`` runs this file cleanly.)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import torch
from torch import nn

from ._report import report


def _load(target: str) -> nn.Module:
    """The model named by FILE.py[:NAME]; every failure is a one-line SystemExit."""
    path, _, attr = target.partition(":")
    if not os.path.isfile(path):
        raise SystemExit(f"strideconv.report: no such file: {path!r}")
    spec = importlib.util.spec_from_file_location("_strideconv_report_target", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"strideconv.report: cannot load a Python file from {path!r}")
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as exc:
        raise SystemExit(f"strideconv.report: running {path} failed: {type(exc).__name__}: {exc}") from None
    if not attr:
        found = [v for v in vars(mod).values() if isinstance(v, nn.Module)]
        if len(found) != 1:
            raise SystemExit(
                f"strideconv.report: {path}: name the model as FILE:NAME ({len(found)} module instances found)"
            )
        return found[0]
    if not hasattr(mod, attr):
        raise SystemExit(f"strideconv.report: {path} has no name {attr!r}")
    obj = getattr(mod, attr)
    try:
        model = obj if isinstance(obj, nn.Module) else obj()
    except Exception as exc:
        raise SystemExit(f"strideconv.report: calling {target} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise SystemExit(f"strideconv.report: {target} is not an nn.Module nor a callable returning one")
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m strideconv.report", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="List every strided convolution, transposed convolution and average pooling call\n"
                    "that a model defined in a Python file makes on an example input (N(0, 1) of the given\n"
                    "size), with how unevenly its backward reaches each input position. Prints a Markdown\n"
                    "table, then what its columns mean.",
        epilog="example:\n  python -m strideconv.report models/net.py:make_model --input-size 1 3 224 224\n"
               "  python -m strideconv.report models/net.py:make_model --input-size 2 3 64 64 --gradients")
    parser.add_argument("target", metavar="FILE.py:NAME",
                        help="NAME is a module instance in FILE.py, or a function that returns one; without "
                             ":NAME, the file's only module instance")
    parser.add_argument("--input-size", type=int, nargs="+", required=True, metavar="N",
                        help="the size of an example input, batch first (e.g. 1 3 224 224)")
    parser.add_argument("--min-stride", type=int, default=2, metavar="S",
                        help="list layers whose largest stride is at least S (default 2)")
    parser.add_argument("--gradients", nargs="?", const="position", default=None, metavar="CORRECTION",
                        choices=["position", "kernel", "map"],
                        help="also run two backward passes (plain, and under CORRECTION, default position) and "
                             "add each convolution call's measured phase ratio of its input gradient")
    parser.add_argument("--seed", type=int, default=0, help="the example input is N(0, 1) from this seed")
    args = parser.parse_args(argv)
    model = _load(args.target).eval()
    example = torch.randn(args.input_size, generator=torch.Generator().manual_seed(args.seed))
    try:
        rows = report(model, example, args.min_stride, gradients=args.gradients or False)
    except Exception as exc:
        raise SystemExit(
            f"strideconv.report: the model failed on an input of size {args.input_size}: {type(exc).__name__}: {exc}"
        ) from None
    print(rows)
    print()
    print(rows.legend())
    return 0


if __name__ == "__main__":
    sys.exit(main())
