#pragma once
// Shared declarations of the operators; the device kernels live in cpu/ and
// cuda/ and register themselves.

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include "geometry.h"

namespace strideconv {

enum class Correction { None, Map, Kernel, Position };

// strideconv::conv through the dispatcher (typed, unboxed): the call every
// entry point makes, so autograd, autocast and tracing see the registered op.
at::Tensor call_conv(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    c10::string_view correction, double power);

// Argument checks and the host half of the operators. Compiled once, in
// checks.cpp, by the C++ compiler: the CUDA translation unit only calls them.

Correction parse_correction(c10::string_view name);
const char* correction_name(Correction correction);  // its inverse

void check_power(double power);

// Geometry of a gradient w.r.t. the input (N, C, *spatial).
Geometry input_geometry(
    const at::Tensor& grad, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation);

// Scales each tap of `weight` by its tap factor into `out` (laid out like the
// weight). One device kernel each.
using ScaleTapsFn = void (*)(const at::Tensor& weight, at::Tensor& out, const Geometry& g, double power);

// The weight whose input gradient is the corrected one (SPEC section 3):
// "none" a copy, "map" alpha * weight, "kernel"/"position" tap-scaled.
at::Tensor scale_weight_with(
    ScaleTapsFn scale_taps, const at::Tensor& weight, at::IntArrayRef input_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    c10::string_view correction, double power);

}  // namespace strideconv
