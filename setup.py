"""Build strideconv's compiled operators against the torch already installed.

    pip install --no-build-isolation .

The C++ (CPU) operators are always built. The CUDA kernels are added when a
CUDA-enabled torch and a CUDA toolkit are present, or when FORCE_CUDA=1;
FORCE_ONLY_CPU=1 turns them off. TORCH_CUDA_ARCH_LIST and MAX_JOBS are honoured
by torch.utils.cpp_extension; DEBUG=1 builds with -O0 -g.
"""

import glob
import os
import re
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _version():
    """The one version, strideconv.__version__, read without importing the package (whose
    compiled part this script builds)."""
    with open(os.path.join(ROOT, "strideconv", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def _toolkit_root(path):
    """The CUDA toolkit folder (the one holding bin/nvcc and include/)."""
    return path if path and os.path.isfile(os.path.join(path, "include", "cuda_runtime.h")) else None


def _find_cuda_home():
    # torch.utils.cpp_extension guesses CUDA_HOME from the nvcc on PATH too, but takes
    # the folder above it on trust: where nvcc is a launcher script outside the toolkit,
    # that guess has no headers and the CUDA build fails.
    # So: guess the same way, keep the guess only if it holds the toolkit's headers, and
    # hand it to cpp_extension through CUDA_HOME before it is imported.
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if candidate:
            return candidate
    nvcc = shutil.which("nvcc")
    guesses = []
    if nvcc:
        guesses.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    guesses.append("/usr/local/cuda")
    for guess in guesses:
        if _toolkit_root(guess):
            return guess
    return None


_cuda_home = _find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home  # read by torch.utils.cpp_extension at import

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda():
    if os.environ.get("FORCE_ONLY_CPU") == "1":
        return False, "FORCE_ONLY_CPU=1"
    if os.environ.get("FORCE_CUDA") == "1":
        return True, "FORCE_CUDA=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU build"
    if _cuda_home is None:
        return False, "no CUDA toolkit found (set CUDA_HOME)"
    return True, f"torch {torch.__version__} (CUDA {torch.version.cuda}), toolkit at {_cuda_home}"


def _wheel_cuda_includes():
    """Headers the CUDA library wheels install (cusparse.h, ...), for toolkits without them."""
    if _cuda_home and os.path.isfile(os.path.join(_cuda_home, "include", "cusparse.h")):
        return []
    try:
        import nvidia  # namespace package of the CUDA library wheels
    except ImportError:
        return []
    found = []
    for base in nvidia.__path__:
        found += sorted(glob.glob(os.path.join(base, "*", "include")))
    return found


def extensions():
    use_cuda, why = _want_cuda()
    print(f"strideconv: building {'CPU + CUDA' if use_cuda else 'CPU only'} ({why})", file=sys.stderr)
    debug = os.environ.get("DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cpp = (
        "python.cpp",
        "conv.cpp",
        "options.cpp",
        "output_factors.cpp",
        "autograd/conv.cpp",
        "autograd/conv_transpose.cpp",
        "autograd/pool.cpp",
        "autograd/scaling.cpp",
        "autocast.cpp",
        "pool.cpp",
        "cpu/scale_kernels.cpp",
        "cpu/pool_kernels.cpp",
    )
    sources = [os.path.join(ROOT, "csrc", f) for f in cpp]
    args = {"cxx": list(opt)}  # the C++ standard is chosen by cpp_extension for this torch
    # at::parallel_for runs on OpenMP in torch's Linux builds, and its header-inline loop only
    # splits work when the extension is compiled with OpenMP too (otherwise every CPU kernel of
    # ours runs on one thread). The runtime is torch's own libgomp, already loaded.
    link = []
    if sys.platform.startswith("linux"):
        args["cxx"].append("-fopenmp")
        link.append("-fopenmp")
    if not use_cuda:
        return [CppExtension("strideconv._C", sources, extra_compile_args=args, extra_link_args=link)]
    sources += [os.path.join(ROOT, "csrc", "cuda", f) for f in ("scale_kernels.cu", "pool_kernels.cu")]
    args["nvcc"] = opt + ["--expt-relaxed-constexpr", "-lineinfo"]
    return [
        CUDAExtension(
            "strideconv._C", sources, include_dirs=_wheel_cuda_includes(), extra_compile_args=args,
            extra_link_args=link,
        )
    ]


setup(
    name="strideconv",
    version=_version(),
    description="Strided convolutions whose input gradient is corrected for uneven kernel coverage",
    packages=find_packages(include=["strideconv", "strideconv.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
    install_requires=["torch>=2.11"],  # tested: 2.11 and 2.13 (CPU suite), 2.14.1 (CUDA build)
)
