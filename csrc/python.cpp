// The Python module strideconv._C. Importing it runs the operator
// registrations of the other files; it also exposes `conv_fast`, the common eager
// call of strideconv.functional, checked in C++; `conv`, the eager entry of
// strideconv.functional and the modules; and `conv_transpose`, the same for
// torch.ops.strideconv.conv_transpose.
//
// `conv` calls the same registered operator as torch.ops.strideconv.conv, through the
// dispatcher, so autograd, autocast, vmap and tensor subclasses see exactly the same
// op. It only skips the generic, boxed argument handling of torch.ops (about 7 us
// per call on a CPU core): the fixed cost that makes a small convolution on a GPU
// slower than F.conv2d, whose binding is unboxed too. Python falls back to torch.ops
// while torch.compile traces and whenever __torch_function__ is in play.

#include <ATen/PythonTorchFunctionTLS.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/extension.h>

#include <array>
#include <cmath>

#include "ops.h"

namespace {

namespace py = pybind11;

// A Python int that fits int64_t (not a bool, which is a subclass).
bool exact_int(PyObject* h, int64_t& value) {
  if (!PyLong_CheckExact(h)) return false;
  int overflow = 0;
  value = PyLong_AsLongLongAndOverflow(h, &overflow);
  if (value == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  return overflow == 0;
}

// One value per spatial dim from an int, or a tuple of 1 or nd ints (as the modules store them).
bool int_list(py::handle h, int64_t nd, std::array<int64_t, 3>& out) {
  int64_t v = 0;
  if (exact_int(h.ptr(), v)) {
    out.fill(v);
    return true;
  }
  if (!PyTuple_CheckExact(h.ptr())) return false;
  const Py_ssize_t n = PyTuple_GET_SIZE(h.ptr());
  if (n != 1 && n != nd) return false;
  for (Py_ssize_t i = 0; i < nd; ++i) {
    if (!exact_int(PyTuple_GET_ITEM(h.ptr(), n == 1 ? 0 : i), out[i])) return false;
  }
  return true;
}

// A torch.Tensor or nn.Parameter, not a subclass (which may define __torch_function__).
bool plain_tensor(py::handle h) {
  return THPVariable_CheckExact(h.ptr());
}

// The common eager call of strideconv.functional.conv1d/2d/3d and of the modules, checked and
// run here rather than in Python (about 2 us of Python per call): stride, padding and dilation
// each a plain int or a tuple of 1 or nd plain ints (as the modules store them), an int groups,
// a float power in (0, inf), a known correction, tensors of the exact Tensor or Parameter types
// (no subclass: no __torch_function__), no torch function mode, a batched input, no jit tracing.
// Anything else returns None, and the Python entry takes its general path (every normalisation,
// every refusal in torch's words). Python checks first that dynamo is not tracing: it must see
// the op.
//
// A plain CPython function (METH_FASTCALL), as torch's own bindings are: pybind11's generic
// argument handling costs more than the checks themselves. Errors of the operator (ATen's, for
// arguments ATen refuses) and its warnings reach Python as they do from torch's functions.
PyObject* conv_fast(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 10) {
    PyErr_SetString(PyExc_TypeError,
                    "conv_fast(input, weight, bias, stride, padding, dilation, groups, correction, power, nd)");
    return nullptr;
  }
  const py::handle input(args[0]), weight(args[1]), bias(args[2]), correction(args[7]), power(args[8]);
  int64_t nd = 0, g = 0;
  std::array<int64_t, 3> sv{}, pv{}, dv{};
  if (!exact_int(args[9], nd) || nd < 1 || nd > 3 || !int_list(args[3], nd, sv) || !int_list(args[4], nd, pv) ||
      !int_list(args[5], nd, dv) || !exact_int(args[6], g) || !PyFloat_CheckExact(power.ptr()) ||
      !PyUnicode_CheckExact(correction.ptr())) {
    Py_RETURN_NONE;
  }
  const double pw = PyFloat_AS_DOUBLE(power.ptr());
  if (!(pw > 0 && pw < INFINITY)) Py_RETURN_NONE;
  Py_ssize_t length = 0;
  const char* chars = PyUnicode_AsUTF8AndSize(correction.ptr(), &length);
  if (chars == nullptr) {
    PyErr_Clear();
    Py_RETURN_NONE;
  }
  const c10::string_view name(chars, static_cast<size_t>(length));
  if (name != "position" && name != "kernel" && name != "map" && name != "none") Py_RETURN_NONE;
  if (!plain_tensor(input) || !plain_tensor(weight) || !(bias.is_none() || plain_tensor(bias)) ||
      at::impl::torch_function_mode_enabled() || torch::jit::tracer::isTracing()) {
    Py_RETURN_NONE;
  }
  // Owned handles, taken while the GIL is held (as torch's own bindings take theirs): a tensor
  // that Python owns costs a GIL round trip on its first extra C++ reference (torch 2.13
  // counts its PyObject from C++), so the references autograd takes below, with the GIL
  // released, must not be the first ones.
  const at::Tensor x = THPVariable_Unpack(input.ptr());
  if (x.dim() != nd + 2) Py_RETURN_NONE;
  const at::Tensor w = THPVariable_Unpack(weight.ptr());
  std::optional<at::Tensor> b;
  if (!bias.is_none()) b = THPVariable_Unpack(bias.ptr());
  at::Tensor out;
  {
    py::gil_scoped_release no_gil;
    out = strideconv::call_conv(x, w, b, at::IntArrayRef(sv.data(), nd), at::IntArrayRef(pv.data(), nd),
                                at::IntArrayRef(dv.data(), nd), g, name, pw);
  }
  return THPVariable_Wrap(std::move(out));
  END_HANDLE_TH_ERRORS
}

PyMethodDef conv_fast_def = {
    "conv_fast", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&conv_fast)), METH_FASTCALL,
    "conv_fast(input, weight, bias, stride, padding, dilation, groups, correction, power, nd): "
    "strideconv.functional's common eager call, checked in C++; None where the Python entry must take its "
    "general path"};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.add_object("conv_fast", py::reinterpret_steal<py::object>(
                                PyCFunction_NewEx(&conv_fast_def, nullptr, m.attr("__name__").ptr())));
  m.def("conv", &strideconv::call_conv, "strideconv::conv, called through the dispatcher",
        pybind11::arg("input"), pybind11::arg("weight"), pybind11::arg("bias"),
        pybind11::arg("stride"), pybind11::arg("padding"), pybind11::arg("dilation"),
        pybind11::arg("groups"), pybind11::arg("correction"), pybind11::arg("power"));
  m.def("avg_pool2d", &strideconv::call_avg_pool2d, "strideconv::avg_pool2d, called through the dispatcher",
        pybind11::arg("input"), pybind11::arg("factor"), pybind11::arg("kernel_size"), pybind11::arg("stride"),
        pybind11::arg("padding"), pybind11::arg("ceil_mode"), pybind11::arg("count_include_pad"),
        pybind11::arg("divisor_override"), pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("conv_transpose", &strideconv::call_conv_transpose,
        "strideconv::conv_transpose, called through the dispatcher", pybind11::arg("input"),
        pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("stride"),
        pybind11::arg("padding"), pybind11::arg("output_padding"), pybind11::arg("dilation"),
        pybind11::arg("groups"), pybind11::arg("correction"), pybind11::arg("power"));
}
