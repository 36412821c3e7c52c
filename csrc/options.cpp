// Parsing and checking of the operators' arguments (see options.h).

#include "options.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <limits>
#include <string>

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
  std::snprintf(buffer, sizeof(buffer), "%.6g", value);
  return buffer;
}

// `values` (one value, or one per spatial dim) into out[0..nd), each in [lowest, kMaxArgument].
void expand(at::IntArrayRef values, int nd, const char* name, int64_t lowest, int64_t* out) {
  const auto n = static_cast<int64_t>(values.size());
  TORCH_CHECK_VALUE(
      n == 1 || n == nd, "strideconv: expected ", name, " to be a single value or a list of ",
      std::to_string(nd), " values (one per spatial dim), got ", name, "=", show(values));
  for (int d = 0; d < nd; ++d) {
    const int64_t v = values[n == 1 ? 0 : d];
    TORCH_CHECK_VALUE(
        v >= lowest && v <= kMaxArgument, "strideconv: expected every ", name, " value in [",
        std::to_string(lowest), ", 2^31 - 1], got ", name, "=", show(values));
    out[d] = v;
  }
}

void check_ndim(int64_t nd) {
  TORCH_CHECK_VALUE(
      nd >= 1 && nd <= kMaxSpatialDims, "strideconv: expected 1 to 3 spatial dimensions, got ",
      std::to_string(nd));
}

// The schema's names of the corrections, in the order of enum Correction.
constexpr const char* kCorrectionNames[] = {"none", "map", "kernel", "position"};

}  // namespace

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

ConvOptions conv_options(
    int64_t ndim, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    int64_t groups, Correction correction, double power, at::IntArrayRef output_padding) {
  check_ndim(ndim);
  check_power(power);
  TORCH_CHECK_VALUE(groups >= 1, "strideconv: expected groups to be positive, got groups=",
                    std::to_string(groups));
  ConvOptions o;
  o.ndim = static_cast<int>(ndim);
  expand(stride, o.ndim, "stride", 1, o.stride);
  expand(padding, o.ndim, "padding", 0, o.padding);
  expand(dilation, o.ndim, "dilation", 1, o.dilation);
  if (!output_padding.empty()) expand(output_padding, o.ndim, "output_padding", 0, o.output_padding);
  o.groups = groups;
  o.correction = correction;
  o.power = power;
  return o;
}

Geometry make_geometry(
    at::IntArrayRef lengths, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, at::IntArrayRef output_padding) {
  const auto nd = static_cast<int64_t>(lengths.size());
  check_ndim(nd);
  Geometry g;
  g.ndim = static_cast<int>(nd);
  int64_t length[kMaxSpatialDims], kernel[kMaxSpatialDims], s[kMaxSpatialDims],
      p[kMaxSpatialDims], q[kMaxSpatialDims], a[kMaxSpatialDims] = {0, 0, 0};
  expand(lengths, g.ndim, "input size", 0, length);
  expand(kernel_size, g.ndim, "kernel_size", 1, kernel);
  expand(stride, g.ndim, "stride", 1, s);
  expand(padding, g.ndim, "padding", 0, p);
  expand(dilation, g.ndim, "dilation", 1, q);
  if (!output_padding.empty()) expand(output_padding, g.ndim, "output_padding", 0, a);
  for (int d = 0; d < g.ndim; ++d) g.axis[d] = Axis{length[d], kernel[d], s[d], p[d], q[d], a[d]};
  return g;
}

Geometry make_geometry(at::IntArrayRef lengths, at::IntArrayRef kernel_size, const ConvOptions& o) {
  Geometry g;
  g.ndim = o.ndim;
  for (int d = 0; d < o.ndim; ++d) {
    g.axis[d] = Axis{lengths[d], kernel_size[d], o.stride[d], o.padding[d], o.dilation[d], o.output_padding[d]};
  }
  return g;
}

bool taps_trivial(at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef dilation) {
  for (size_t d = 0; d < kernel_size.size(); ++d) {
    if (kernel_size[d] != 1 && dilation[d] % stride[d] != 0) return false;
  }
  return true;
}

void check_operand(const at::Tensor& t, const char* what, const char* layout) {
  TORCH_CHECK_VALUE(
      t.dim() >= 3 && t.dim() <= 2 + kMaxSpatialDims, "strideconv: expected a ", what, " of sizes ",
      layout, " with 1 to 3 spatial dims, got sizes ", show(t.sizes()));
  TORCH_CHECK_VALUE(
      t.is_floating_point(), "strideconv: expected a floating point ", what, ", got ",
      std::string(c10::toString(t.scalar_type())));
}

Geometry border_geometry(
    const at::Tensor& grad, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, double power,
    at::IntArrayRef output_padding, const std::optional<at::Tensor>& bias) {
  check_power(power);
  check_operand(grad, "gradient", "(batch, channels, *spatial)");
  TORCH_CHECK_VALUE(!bias.has_value() || !bias->defined() ||
                        (bias->dim() == 1 && bias->size(0) == grad.size(1) && bias->device() == grad.device() &&
                         bias->is_floating_point()),
                    "strideconv: scale_border_ expected a floating-point bias of one value per channel, "
                    "on the gradient's device");
  const Geometry g =
      make_geometry(grad.sizes().slice(2), kernel_size, stride, padding, dilation, output_padding);
  check_factors_fit(g, Correction::Position, power, grad.scalar_type());
  return g;
}

Geometry tap_geometry(
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef dilation, double power) {
  check_power(power);
  check_operand(weight, "weight", "(out, in / groups, *kernel)");
  const auto kernel_size = weight.sizes().slice(2);
  const int64_t no_padding = 0;
  const Geometry g = make_geometry(kernel_size, kernel_size, stride, no_padding, dilation);
  check_factors_fit(g, Correction::Kernel, power, weight.scalar_type());
  return g;
}

void check_factors_fit(const Geometry& g, Correction correction, double power, at::ScalarType dtype) {
  if (correction == Correction::None) return;
  double largest = 0;  // max over dtypes we dispatch on
  switch (dtype) {
    case at::kDouble: largest = std::numeric_limits<double>::max(); break;
    case at::kHalf: largest = 65504.0; break;
    case at::kBFloat16: largest = 3.3895313892515355e38; break;
    default: largest = std::numeric_limits<float>::max(); break;
  }
  // The common case without a logarithm: for power <= 1 every factor is at most K (the taps),
  // and "map"'s alpha at most K sqrt(L) (L the positions).
  if (power <= 1) {
    double bound = 1;
    for (int d = 0; d < g.ndim; ++d) {
      bound *= double(g.axis[d].kernel);
      if (correction == Correction::Map) bound *= std::sqrt(double(std::max<int64_t>(g.axis[d].length, 1)));
    }
    if (bound <= largest) return;
  }
  // log of the largest factor: "kernel" (k / n_min)^g per axis, "position"
  // at most (k / 1)^g per axis (a position one window reaches), "map" alpha,
  // which is at most k^g sqrt(L) per axis: computed (O(L)) only past that bound.
  double log_factor = 0;
  for (int d = 0; d < g.ndim; ++d) {
    const Axis& a = g.axis[d];
    log_factor += power * std::log(double(a.kernel) /
                                   double(correction == Correction::Kernel ? a.smallest_class_count() : 1));
    if (correction == Correction::Map) log_factor += 0.5 * std::log(double(std::max<int64_t>(a.length, 1)));
  }
  if (log_factor <= std::log(largest)) return;
  if (correction == Correction::Map) {
    log_factor = 0;
    for (int d = 0; d < g.ndim; ++d) log_factor += g.axis[d].log_map_factor(power);
    if (log_factor <= std::log(largest)) return;
  }
  TORCH_CHECK_VALUE(
      false, "strideconv: power=", show(power), " makes the '", correction_name(correction),
      "' correction factors of this layer reach ", show(std::exp(std::min(log_factor, 709.0))),
      ", more than ", std::string(c10::toString(dtype)), " holds (", show(largest),
      "); for this layer and dtype, power must be at most ",
      show(power * std::log(largest) / log_factor));
}

}  // namespace strideconv
