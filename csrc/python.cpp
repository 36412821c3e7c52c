// The Python module strideconv._C. Importing it runs the operator
// registrations of the other files; it also exposes `conv`, the eager entry
// point of strideconv.functional; and `conv_transpose`, the same for
// torch.ops.strideconv.conv_transpose.
//
// `conv` calls the same registered operator as torch.ops.strideconv.conv, through the
// dispatcher, so autograd, autocast, vmap and tensor subclasses see exactly the same
// op. It only skips the generic, boxed argument handling of torch.ops (about 7 us
// per call on a CPU core): the fixed cost that makes a small convolution on a GPU
// slower than F.conv2d, whose binding is unboxed too. Python falls back to torch.ops
// while torch.compile traces and whenever __torch_function__ is in play.

#include <torch/extension.h>

#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("conv", &strideconv::call_conv, "strideconv::conv, called through the dispatcher",
        pybind11::arg("input"), pybind11::arg("weight"), pybind11::arg("bias"),
        pybind11::arg("stride"), pybind11::arg("padding"), pybind11::arg("dilation"),
        pybind11::arg("groups"), pybind11::arg("correction"), pybind11::arg("power"));
  m.def("conv_transpose", &strideconv::call_conv_transpose,
        "strideconv::conv_transpose, called through the dispatcher", pybind11::arg("input"),
        pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("stride"),
        pybind11::arg("padding"), pybind11::arg("output_padding"), pybind11::arg("dilation"),
        pybind11::arg("groups"), pybind11::arg("correction"), pybind11::arg("power"));
}
