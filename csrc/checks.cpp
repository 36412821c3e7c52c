// Argument checks and the device-independent half of the operators.

#include <cmath>
#include <cstdio>
#include <iterator>
#include <string>

#include "ops.h"

namespace strideconv {
namespace {

// Error messages are assembled from strings only: on one toolchain (torch 2.11,
// GCC 13) streaming numbers into a TORCH_CHECK message crashed while throwing.
std::string show(at::IntArrayRef values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + std::to_string(values[i]);
  return out + "]";
}

std::string show(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%g", value);
  return buffer;
}

std::string show(at::ScalarType type) { return c10::toString(type); }

// A floating point tensor (outer, inner, *spatial) with 1 to 3 spatial dims.
void check_operand(const at::Tensor& t, const char* what, const char* layout) {
  TORCH_CHECK_VALUE(
      t.dim() >= 3 && t.dim() <= 2 + kMaxSpatialDims, "strideconv: expected a ", what, " of sizes ",
      layout, " with 1 to 3 spatial dims, got sizes ", show(t.sizes()));
  TORCH_CHECK_VALUE(
      t.is_floating_point(), "strideconv: expected a floating point ", what, ", got ", show(t.scalar_type()));
}

}  // namespace

Geometry make_geometry(
    at::IntArrayRef lengths,
    at::IntArrayRef kernel_size,
    at::IntArrayRef stride,
    at::IntArrayRef padding,
    at::IntArrayRef dilation) {
  const auto nd = static_cast<int64_t>(lengths.size());
  TORCH_CHECK_VALUE(
      nd >= 1 && nd <= kMaxSpatialDims,
      "strideconv: expected 1 to ", std::to_string(kMaxSpatialDims),
      " spatial dimensions, got ", std::to_string(nd));
  TORCH_CHECK_VALUE(
      static_cast<int64_t>(kernel_size.size()) == nd &&
          static_cast<int64_t>(stride.size()) == nd &&
          static_cast<int64_t>(padding.size()) == nd &&
          static_cast<int64_t>(dilation.size()) == nd,
      "strideconv: kernel_size, stride, padding and dilation need ", std::to_string(nd),
      " values each, got ", show(kernel_size), ", ", show(stride), ", ", show(padding), ", ",
      show(dilation));
  Geometry g;
  g.ndim = static_cast<int>(nd);
  for (int d = 0; d < g.ndim; ++d) {
    TORCH_CHECK_VALUE(kernel_size[d] >= 1, "strideconv: kernel_size must be positive, got ", show(kernel_size));
    TORCH_CHECK_VALUE(stride[d] >= 1, "strideconv: stride must be positive, got ", show(stride));
    TORCH_CHECK_VALUE(padding[d] >= 0, "strideconv: padding must be non-negative, got ", show(padding));
    TORCH_CHECK_VALUE(dilation[d] >= 1, "strideconv: dilation must be positive, got ", show(dilation));
    g.axis[d] = Axis{lengths[d], kernel_size[d], stride[d], padding[d], dilation[d]};
  }
  return g;
}

// The schema's names of the corrections, in the order of enum Correction.
constexpr const char* kCorrectionNames[] = {"none", "map", "kernel", "position"};

Correction parse_correction(c10::string_view name) {
  for (size_t c = 0; c < std::size(kCorrectionNames); ++c) {
    if (name == kCorrectionNames[c]) return static_cast<Correction>(c);
  }
  TORCH_CHECK_VALUE(
      false, "strideconv: correction must be one of 'none', 'map', 'kernel', 'position', got '",
      std::string(name), "'");
  return Correction::None;  // not reached
}

const char* correction_name(Correction correction) {
  return kCorrectionNames[static_cast<int>(correction)];
}

void check_power(double power) {
  TORCH_CHECK_VALUE(
      std::isfinite(power) && power > 0,
      "strideconv: power must be a positive finite number, got ", show(power));
}

// Geometry of a gradient w.r.t. the input (N, C, *spatial).
Geometry input_geometry(
    const at::Tensor& grad, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_operand(grad, "gradient", "(batch, channels, *spatial)");
  return make_geometry(grad.sizes().slice(2), kernel_size, stride, padding, dilation);
}

// The weight whose input gradient is the corrected one (SPEC section 3).
at::Tensor scale_weight_with(
    ScaleTapsFn scale_taps, const at::Tensor& weight, at::IntArrayRef input_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    c10::string_view correction, double power) {
  const Correction kind = parse_correction(correction);
  check_power(power);
  check_operand(weight, "weight", "(out, in / groups, *kernel)");
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
