// The Python module strideconv._C. Importing it runs the operator
// registrations of the other files; it also exposes `conv_fast`, the common eager
// call of strideconv.functional, checked in C++, and `conv_transpose_fast`, the same
// for the transposed convolutions; `conv`, the eager entry of strideconv.functional and
// the modules; and `conv_transpose`, the same for torch.ops.strideconv.conv_transpose.
//
// `conv` calls the same registered operator as torch.ops.strideconv.conv, through the
// dispatcher, so autograd, autocast, vmap and tensor subclasses see exactly the same
// op. It only skips the generic, boxed argument handling of torch.ops (about 7 us
// per call on a CPU core): the fixed cost that makes a small convolution on a GPU
// slower than F.conv2d, whose binding is unboxed too. Python falls back to torch.ops
// while torch.compile traces and whenever __torch_function__ is in play.

#include <ATen/PythonTorchFunctionTLS.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/extension.h>

#include <array>
#include <cmath>
#include <tuple>

#include "lru_cache.h"
#include "ops.h"
#include "options.h"

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

// The correction `h` names when it is a str naming one of strideconv's four; false for anything
// else (the Python entry then refuses it in its own words).
bool known_correction(PyObject* h, c10::string_view& name) {
  if (!PyUnicode_CheckExact(h)) return false;
  Py_ssize_t length = 0;
  const char* chars = PyUnicode_AsUTF8AndSize(h, &length);
  if (chars == nullptr) {
    PyErr_Clear();
    return false;
  }
  name = c10::string_view(chars, static_cast<size_t>(length));
  return name == "position" || name == "kernel" || name == "map" || name == "none";
}

// What the two fast entries below share: the tensors and settings of a common eager call, or
// false where the Python entry must take its general path. Accepted: groups a plain int, power a
// float in (0, inf), a known correction, tensors of the exact Tensor or Parameter types (no
// subclass: no __torch_function__), no torch function mode, an input of nd + 2 dims, no jit
// tracing. `correction` views the str's UTF-8 buffer, which lives as long as the call's arguments.
struct FastCall {
  at::Tensor input, weight;
  std::optional<at::Tensor> bias;
  int64_t groups = 0;
  c10::string_view correction;
  double power = 0;
};

bool fast_call(PyObject* input, PyObject* weight, PyObject* bias, PyObject* groups, PyObject* correction,
               PyObject* power, int64_t nd, FastCall& call) {
  if (!exact_int(groups, call.groups) || !PyFloat_CheckExact(power) || !known_correction(correction, call.correction)) {
    return false;
  }
  call.power = PyFloat_AS_DOUBLE(power);
  if (!(call.power > 0 && call.power < INFINITY)) return false;
  if (!plain_tensor(input) || !plain_tensor(weight) || !(bias == Py_None || plain_tensor(bias)) ||
      at::impl::torch_function_mode_enabled() || torch::jit::tracer::isTracing()) {
    return false;
  }
  // Owned handles, taken while the GIL is held (as torch's own bindings take theirs): a tensor
  // that Python owns costs a GIL round trip on its first extra C++ reference (torch 2.13
  // counts its PyObject from C++), so the references autograd takes later, with the GIL
  // released, must not be the first ones.
  call.input = THPVariable_Unpack(input);
  if (call.input.dim() != nd + 2) return false;
  call.weight = THPVariable_Unpack(weight);
  if (bias != Py_None) call.bias = THPVariable_Unpack(bias);
  return true;
}

// The common eager call of strideconv.functional.conv1d/2d/3d and of the modules, checked and
// run here rather than in Python (about 2 us of Python per call): stride, padding and dilation
// each a plain int or a tuple of 1 or nd plain ints (as the modules store them), and what
// fast_call accepts. Anything else returns None, and the Python entry takes its general path
// (every normalisation, every refusal in torch's words). Python checks first that dynamo is not
// tracing: it must see the op.
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
  int64_t nd = 0;
  std::array<int64_t, 3> sv{}, pv{}, dv{};
  FastCall c;
  if (!exact_int(args[9], nd) || nd < 1 || nd > 3 || !int_list(args[3], nd, sv) || !int_list(args[4], nd, pv) ||
      !int_list(args[5], nd, dv) || !fast_call(args[0], args[1], args[2], args[6], args[7], args[8], nd, c)) {
    Py_RETURN_NONE;
  }
  at::Tensor out;
  {
    py::gil_scoped_release no_gil;
    out = strideconv::call_conv(c.input, c.weight, c.bias, at::IntArrayRef(sv.data(), nd),
                                at::IntArrayRef(pv.data(), nd), at::IntArrayRef(dv.data(), nd), c.groups,
                                c.correction, c.power);
  }
  return THPVariable_Wrap(std::move(out));
  END_HANDLE_TH_ERRORS
}

PyMethodDef conv_fast_def = {
    "conv_fast", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&conv_fast)), METH_FASTCALL,
    "conv_fast(input, weight, bias, stride, padding, dilation, groups, correction, power, nd): "
    "strideconv.functional's common eager call, checked in C++; None where the Python entry must take its "
    "general path"};

// The same for the transposed convolutions (strideconv.functional.conv_transpose1d/2d/3d and the
// modules without output_size): stride, padding, output_padding and dilation each a plain int or
// a tuple of 1 or nd plain ints, and what fast_call accepts; None for anything else.
PyObject* conv_transpose_fast(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 11) {
    PyErr_SetString(PyExc_TypeError, "conv_transpose_fast(input, weight, bias, stride, padding, output_padding, "
                                     "dilation, groups, correction, power, nd)");
    return nullptr;
  }
  int64_t nd = 0;
  std::array<int64_t, 3> sv{}, pv{}, ov{}, dv{};
  FastCall c;
  if (!exact_int(args[10], nd) || nd < 1 || nd > 3 || !int_list(args[3], nd, sv) || !int_list(args[4], nd, pv) ||
      !int_list(args[5], nd, ov) || !int_list(args[6], nd, dv) ||
      !fast_call(args[0], args[1], args[2], args[7], args[8], args[9], nd, c)) {
    Py_RETURN_NONE;
  }
  at::Tensor out;
  {
    py::gil_scoped_release no_gil;
    out = strideconv::call_conv_transpose(c.input, c.weight, c.bias, at::IntArrayRef(sv.data(), nd),
                                          at::IntArrayRef(pv.data(), nd), at::IntArrayRef(ov.data(), nd),
                                          at::IntArrayRef(dv.data(), nd), c.groups, c.correction, c.power);
  }
  return THPVariable_Wrap(std::move(out));
  END_HANDLE_TH_ERRORS
}

PyMethodDef conv_transpose_fast_def = {
    "conv_transpose_fast", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&conv_transpose_fast)),
    METH_FASTCALL,
    "conv_transpose_fast(input, weight, bias, stride, padding, output_padding, dilation, groups, correction, "
    "power, nd): strideconv.functional's common eager transposed call, checked in C++; None where the Python "
    "entry must take its general path"};

// --- avg_pool2d ---------------------------------------------------------------------------------
//
// The factor maps of corrected pooling calls, by geometry, correction, power, dtype and device:
// built by Python (strideconv/_pooling.py, the one definition) on a layer's first call and handed
// here by `pool_factor_remember`, so that `pool_fast` finds them without Python on later calls.
using PoolKey = std::tuple<std::array<int64_t, 8>, bool, strideconv::Correction, double, at::ScalarType, at::Device>;

strideconv::LruCache<PoolKey, at::Tensor, 64>& pool_factors() {
  static auto* cache = new strideconv::LruCache<PoolKey, at::Tensor, 64>();  // never destroyed (lru_cache.h)
  return *cache;
}

PoolKey pool_key(const at::Tensor& x, const std::array<int64_t, 3>& k, const std::array<int64_t, 3>& s,
                 const std::array<int64_t, 3>& p, bool ceil_mode, strideconv::Correction correction, double power) {
  return {{x.size(-2), x.size(-1), k[0], k[1], s[0], s[1], p[0], p[1]}, ceil_mode, correction, power,
          x.scalar_type(), x.device()};
}

// The pooling call's arguments as F.avg_pool2d's common forms give them: kernel, stride (None:
// the kernel) and padding each a plain int or a tuple of 1 or 2 plain ints, valid values, plain
// bools, divisor_override None or an int. False for anything else.
bool pool_arguments(PyObject* const* args, std::array<int64_t, 3>& k, std::array<int64_t, 3>& s,
                    std::array<int64_t, 3>& p, bool& ceil_mode, bool& count_include_pad,
                    std::optional<int64_t>& divisor) {
  if (!int_list(args[1], 2, k) || !(args[2] == Py_None ? (s = k, true) : int_list(args[2], 2, s)) ||
      !int_list(args[3], 2, p) || !PyBool_Check(args[4]) || !PyBool_Check(args[5])) {
    return false;
  }
  for (int d = 0; d < 2; ++d) {
    if (k[d] <= 0 || s[d] <= 0 || p[d] < 0) return false;
  }
  ceil_mode = args[4] == Py_True;
  count_include_pad = args[5] == Py_True;
  if (args[6] != Py_None) {
    int64_t v = 0;
    if (!exact_int(args[6], v)) return false;
    divisor = v;
  }
  return true;
}

// Whether a torch.func transform (grad, vmap, ...) is active: functorch includes its dynamic
// layer's front key in the thread's dispatch keys while its stack of transforms is not empty.
bool functorch_active() {
  return c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode);
}

// The common eager call of strideconv.functional.avg_pool2d and strideconv.AvgPool2d, as
// conv_fast is the convolution's: pool_fast(input, kernel_size, stride, padding, ceil_mode,
// count_include_pad, divisor_override, correction, power). A plain tensor of 3 or 4 dims, the
// common argument forms, no torch function mode, no functorch transform, no jit tracing; a
// corrected call whose factor map Python has remembered runs the op and its C++ node, a call with
// nothing to correct runs ATen's avg_pool2d. Anything else returns None (the Python entry's
// general path). Python checks first that dynamo is not tracing.
PyObject* pool_fast(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 9) {
    PyErr_SetString(PyExc_TypeError, "pool_fast(input, kernel_size, stride, padding, ceil_mode, count_include_pad, "
                                     "divisor_override, correction, power)");
    return nullptr;
  }
  std::array<int64_t, 3> k{}, s{}, p{};
  bool ceil_mode = false, count_include_pad = true;
  std::optional<int64_t> divisor;
  c10::string_view name;
  if (!known_correction(args[7], name) || !PyFloat_CheckExact(args[8]) || !plain_tensor(args[0]) ||
      !pool_arguments(args, k, s, p, ceil_mode, count_include_pad, divisor) ||
      at::impl::torch_function_mode_enabled() || torch::jit::tracer::isTracing() ||
      functorch_active()) {
    Py_RETURN_NONE;
  }
  const double power = PyFloat_AS_DOUBLE(args[8]);
  if (!(power > 0 && power < INFINITY)) Py_RETURN_NONE;
  const at::Tensor x = THPVariable_Unpack(args[0]);
  if ((x.dim() != 3 && x.dim() != 4) || x.key_set().has(c10::DispatchKey::FuncTorchGradWrapper) ||
      x.key_set().has(c10::DispatchKey::FuncTorchBatched)) {
    Py_RETURN_NONE;  // a torch.func wrapper (a dead one escaped from its transform, too)
  }
  const at::IntArrayRef kernel(k.data(), 2), stride(s.data(), 2), padding(p.data(), 2);
  at::Tensor out;
  const strideconv::Correction correction = strideconv::parse_correction(name);
  if (correction != strideconv::Correction::None && x.requires_grad() && at::GradMode::is_enabled()) {
    const std::optional<at::Tensor> factor = pool_factors().find(pool_key(x, k, s, p, ceil_mode, correction, power));
    if (!factor.has_value()) Py_RETURN_NONE;
    py::gil_scoped_release no_gil;
    out = strideconv::call_avg_pool2d(x, *factor, kernel, stride, padding, ceil_mode, count_include_pad, divisor);
  } else {
    py::gil_scoped_release no_gil;
    out = at::avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor);
  }
  return THPVariable_Wrap(std::move(out));
  END_HANDLE_TH_ERRORS
}

PyMethodDef pool_fast_def = {
    "pool_fast", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&pool_fast)), METH_FASTCALL,
    "pool_fast(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, correction, "
    "power): strideconv.functional.avg_pool2d's common eager call, checked in C++; None where the Python entry "
    "must take its general path"};

// Remembers the factor map Python built for a corrected pooling call of `input` (two-int lists).
void pool_factor_remember(const at::Tensor& input, const at::Tensor& factor, std::array<int64_t, 2> kernel,
                          std::array<int64_t, 2> stride, std::array<int64_t, 2> padding, bool ceil_mode,
                          const std::string& correction, double power) {
  const strideconv::Correction code = strideconv::parse_correction(correction);
  TORCH_CHECK_VALUE(code != strideconv::Correction::None,
                    "strideconv: pool_factor_remember expects a correction other than 'none'");
  const std::array<int64_t, 3> k{kernel[0], kernel[1], 0}, s{stride[0], stride[1], 0},
      p{padding[0], padding[1], 0};
  pool_factors().put(pool_key(input, k, s, p, ceil_mode, code, power), factor);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.add_object("conv_fast", py::reinterpret_steal<py::object>(
                                PyCFunction_NewEx(&conv_fast_def, nullptr, m.attr("__name__").ptr())));
  m.add_object("conv_transpose_fast",
                py::reinterpret_steal<py::object>(
                    PyCFunction_NewEx(&conv_transpose_fast_def, nullptr, m.attr("__name__").ptr())));
  m.def("conv", &strideconv::call_conv, "strideconv::conv, called through the dispatcher",
        pybind11::arg("input"), pybind11::arg("weight"), pybind11::arg("bias"),
        pybind11::arg("stride"), pybind11::arg("padding"), pybind11::arg("dilation"),
        pybind11::arg("groups"), pybind11::arg("correction"), pybind11::arg("power"));
  m.add_object("pool_fast", py::reinterpret_steal<py::object>(
                                PyCFunction_NewEx(&pool_fast_def, nullptr, m.attr("__name__").ptr())));
  m.def("pool_factor_remember", &pool_factor_remember,
        "remember the factor map of a corrected avg_pool2d call, for pool_fast", pybind11::arg("input"),
        pybind11::arg("factor"), pybind11::arg("kernel_size"), pybind11::arg("stride"), pybind11::arg("padding"),
        pybind11::arg("ceil_mode"), pybind11::arg("correction"), pybind11::arg("power"));
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
