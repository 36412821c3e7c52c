#pragma once
// The operators' arguments, parsed and checked in one place. Every registered
// op can be called directly (torch.ops.strideconv.*), so each one parses its own
// arguments here before it indexes anything; past this point they travel typed.
//
// Lists follow ATen's convolution: one value or one per spatial dim.
// Checks raise ValueError (TORCH_CHECK_VALUE) naming the argument.

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <vector>

#include "band.h"

namespace strideconv {

enum class Correction { None, Map, Kernel, Position };

Correction parse_correction(c10::string_view name);
const char* correction_name(Correction correction);  // its inverse

void check_power(double power);

// The settings of one convolution call that its backward needs, per spatial
// axis, expanded and checked.
struct ConvOptions {
  int ndim = 0;
  int64_t stride[kMaxSpatialDims] = {1, 1, 1};
  int64_t padding[kMaxSpatialDims] = {0, 0, 0};
  int64_t dilation[kMaxSpatialDims] = {1, 1, 1};
  int64_t output_padding[kMaxSpatialDims] = {0, 0, 0};  // transposed convolutions only
  int64_t groups = 1;
  Correction correction = Correction::Position;
  double power = 0.5;

  at::IntArrayRef stride_list() const { return {stride, static_cast<size_t>(ndim)}; }
  at::IntArrayRef padding_list() const { return {padding, static_cast<size_t>(ndim)}; }
  at::IntArrayRef dilation_list() const { return {dilation, static_cast<size_t>(ndim)}; }
  at::IntArrayRef output_padding_list() const { return {output_padding, static_cast<size_t>(ndim)}; }
};

// `ndim` spatial dims: 1 to 3. An empty output_padding is all zeros.
ConvOptions conv_options(
    int64_t ndim, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    int64_t groups, Correction correction, double power, at::IntArrayRef output_padding = {});

// The geometry of one call: `lengths` are the spatial sizes of the tensor the
// correction applies to (a convolution's input, a transposed convolution's
// output); the other lists are expanded to their length. An empty
// output_padding is all zeros (a strided convolution).
Geometry make_geometry(
    at::IntArrayRef lengths, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, at::IntArrayRef output_padding = {});

// The same, from options conv_options already checked (the backward of a call the forward
// checked): no list to expand, nothing to check again.
Geometry make_geometry(at::IntArrayRef lengths, at::IntArrayRef kernel_size, const ConvOptions& o);

// float16 or bfloat16: factors for these are kept in float32 and products rounded once.
inline bool reduced_precision(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

// Whether every "kernel" tap factor is 1, so that the weight needs no scaling:
// on each axis k == 1 or all taps in one class (dilation a multiple of stride).
bool taps_trivial(at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef dilation);

// A floating point tensor (outer, inner, *spatial) with 1 to 3 spatial dims.
void check_operand(const at::Tensor& t, const char* what, const char* layout);

// The checked arguments of the device kernels, the same on every device:
// scale_border_ on a gradient (batch, channels, *spatial), with an optional bias of one
// value per channel on its device ...
Geometry border_geometry(
    const at::Tensor& grad, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, double power,
    at::IntArrayRef output_padding, const std::optional<at::Tensor>& bias = std::nullopt);
// ... and scale_taps on a weight (out, in / groups, *kernel), whose tap factors
// depend on the kernel, stride and dilation only.
Geometry tap_geometry(
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef dilation, double power);

// That the largest factor `correction` applies at `power` is finite in `dtype`
// (the tap-scaled weight and the scaled gradient are held in it).
void check_factors_fit(const Geometry& g, Correction correction, double power, at::ScalarType dtype);

}  // namespace strideconv
