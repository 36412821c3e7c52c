#pragma once
// Argument checks and the device-independent half of each operator; the
// device kernels live in cpu/ and cuda/ and register themselves.

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include "geometry.h"

namespace strideconv {

enum class Correction { None, Map, Kernel, Position };

inline Correction parse_correction(c10::string_view name) {
  if (name == "none") return Correction::None;
  if (name == "map") return Correction::Map;
  if (name == "kernel") return Correction::Kernel;
  if (name == "position") return Correction::Position;
  TORCH_CHECK_VALUE(
      false, "strideconv: correction must be one of 'none', 'map', 'kernel', 'position', got '",
      std::string(name), "'");
}

inline void check_power(double power) {
  TORCH_CHECK_VALUE(
      std::isfinite(power) && power > 0,
      "strideconv: power must be a positive finite number, got ", power);
}

// Geometry of a gradient w.r.t. the input (N, C, *spatial).
inline Geometry input_geometry(
    const at::Tensor& grad, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK_VALUE(
      grad.dim() >= 3 && grad.dim() <= 2 + kMaxSpatialDims,
      "strideconv: expected a (batch, channels, *spatial) tensor with 1 to 3 spatial dims, got sizes ",
      grad.sizes());
  TORCH_CHECK_VALUE(
      grad.is_floating_point(), "strideconv: expected a floating point tensor, got ", grad.scalar_type());
  return make_geometry(grad.sizes().slice(2), kernel_size, stride, padding, dilation);
}

// The weight "kernel"/"position" backward with: each tap times its tap factor,
// on a fresh tensor laid out like the weight. One device kernel each.
using ScaleTapsFn = void (*)(const at::Tensor& weight, at::Tensor& out, const Geometry& g, double power);

// The weight whose input gradient is the corrected one (SPEC section 3).
inline at::Tensor scale_weight_with(
    ScaleTapsFn scale_taps, const at::Tensor& weight, at::IntArrayRef input_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    c10::string_view correction, double power) {
  const Correction kind = parse_correction(correction);
  check_power(power);
  TORCH_CHECK_VALUE(
      weight.dim() >= 3 && weight.dim() <= 2 + kMaxSpatialDims,
      "strideconv: expected a weight of sizes (out, in / groups, *kernel), got ", weight.sizes());
  TORCH_CHECK_VALUE(
      weight.is_floating_point(), "strideconv: expected a floating point weight, got ", weight.scalar_type());
  const Geometry g = make_geometry(input_size, weight.sizes().slice(2), stride, padding, dilation);
  switch (kind) {
    case Correction::None:
      return weight.clone();
    case Correction::Map: {
      double alpha = 1.0;
      for (int d = 0; d < g.ndim; ++d) alpha *= g.axis[d].map_factor(power);
      return weight * alpha;
    }
    default: {
      at::Tensor out = at::empty_like(weight);
      if (out.numel() > 0) scale_taps(weight, out, g, power);
      return out;
    }
  }
}

}  // namespace strideconv
