// CPU kernels of scale_border_ (the border band of a gradient, in place) and
// scale_taps (a weight times its tap factors).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "../lru_cache.h"
#include "../options.h"
#include "../output_factors.h"
#include "scale_border.h"
#include "scale_rows.h"

namespace strideconv {
namespace {

// The band positions whose factor is not 1, as (offset within one (batch,
// channel) slice, factor) pairs: a few rows and columns, so the per-element
// loops below do one load, one multiply and one store, with no index decoding.
template <typename opmath_t>
void band_entries(const at::Tensor& grad, const Geometry& g, double power,
                  std::vector<int64_t>& offsets, std::vector<opmath_t>& factors) {
  const Band band(g);
  const FactorTable<opmath_t> table(g, power);
  int64_t coord[kMaxSpatialDims];
  for (int64_t b = 0; b < band.count; ++b) {
    band.position(b, coord);
    const opmath_t f = table.ratio(coord);
    if (f == opmath_t(1)) continue;
    int64_t off = 0;
    for (int d = 0; d < g.ndim; ++d) off += coord[d] * grad.stride(2 + d);
    offsets.push_back(off);
    factors.push_back(f);
  }
}

template <typename opmath_t>
struct BandEntries {
  std::vector<int64_t> offsets;
  std::vector<opmath_t> factors;
};

// The band entries of a geometry, power and spatial memory layout, built once and kept in a
// small cache (lru_cache.h): a layer's backward finds them built.
template <typename opmath_t>
std::shared_ptr<const BandEntries<opmath_t>> cached_band_entries(const at::Tensor& grad, const Geometry& g,
                                                                 double power) {
  // Seven values per axis (unused axes zero) and the power: fixed-size, a lookup allocates nothing.
  constexpr size_t kFields = 7;
  using Key = std::pair<std::array<int64_t, kFields * kMaxSpatialDims + 1>, double>;
  static auto* cache = new LruCache<Key, std::shared_ptr<const BandEntries<opmath_t>>, 32>();
  Key key{{}, power};
  key.first.back() = g.ndim;
  for (int d = 0; d < g.ndim; ++d) {
    const Axis& a = g.axis[d];
    const int64_t fields[kFields] = {a.length,   a.kernel,         a.stride,         a.padding,
                                     a.dilation, a.output_padding, grad.stride(2 + d)};
    std::copy(fields, fields + kFields, key.first.begin() + d * kFields);
  }
  return cache->get(std::move(key), [&] {
    auto built = std::make_shared<BandEntries<opmath_t>>();
    band_entries(grad, g, power, built->offsets, built->factors);
    return std::shared_ptr<const BandEntries<opmath_t>>(std::move(built));
  });
}

// With a bias b (one value per channel), the band's values v become f (v - b) + b: the
// output of a transposed convolution whose bias was added before the scaling.
template <typename scalar_t>
void scale_band(at::Tensor& grad, const Geometry& g, double power, const std::optional<at::Tensor>& bias) {
  using opmath_t = at::opmath_type<scalar_t>;
  const auto band = cached_band_entries<opmath_t>(grad, g, power);
  const std::vector<int64_t>& offsets = band->offsets;
  const std::vector<opmath_t>& factors = band->factors;
  const int64_t entries = static_cast<int64_t>(offsets.size());
  if (entries == 0) return;
  const int64_t batch = grad.size(0), channels = grad.size(1);
  const int64_t batch_stride = grad.stride(0), channel_stride = grad.stride(1);
  scalar_t* data = grad.data_ptr<scalar_t>();
  at::Tensor shift;  // the bias in opmath_t, or nothing
  if (bias.has_value() && bias->defined()) shift = bias->to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
  const opmath_t* b = shift.defined() ? shift.const_data_ptr<opmath_t>() : nullptr;
  const auto scale = [&](int64_t off, opmath_t f, int64_t c) {
    const opmath_t v = static_cast<opmath_t>(data[off]);
    data[off] = static_cast<scalar_t>(b == nullptr ? v * f : f * (v - b[c]) + b[c]);
  };
  constexpr int64_t kWork = 16384;  // elements per task
  if (channel_stride == 1 && channels > 1) {
    // channels_last: the channels of one position are adjacent in memory.
    const int64_t grain = std::max<int64_t>(1, kWork / channels);
    parallel_loop(batch * entries, grain, [&](int64_t first, int64_t last) {
      for (int64_t item = first; item < last; ++item) {
        const int64_t base = (item / entries) * batch_stride + offsets[item % entries];
        const opmath_t f = factors[item % entries];
        for (int64_t c = 0; c < channels; ++c) scale(base + c, f, c);
      }
    });
  } else {
    // One (batch, channel) slice after another, each visiting its band.
    const int64_t grain = std::max<int64_t>(1, kWork / entries);
    parallel_loop(batch * channels, grain, [&](int64_t first, int64_t last) {
      for (int64_t slice = first; slice < last; ++slice) {
        const int64_t c = slice % channels;
        const int64_t base = (slice / channels) * batch_stride + c * channel_stride;
        for (int64_t k = 0; k < entries; ++k) scale(base + offsets[k], factors[k], c);
      }
    });
  }
}

}  // namespace

void scale_border_on_cpu(at::Tensor& grad, const Geometry& g, double power, const std::optional<at::Tensor>& bias) {
  if (grad.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "scale_border_cpu", [&] {
    scale_band<scalar_t>(grad, g, power, bias);
  });
}

namespace {

void scale_border_inplace(
    at::Tensor& grad, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, double power,
    at::IntArrayRef output_padding, const std::optional<at::Tensor>& bias) {
  const Geometry g = border_geometry(grad, kernel_size, stride, padding, dilation, power, output_padding, bias);
  at::assert_no_internal_overlap(grad);
  scale_border_on_cpu(grad, g, power, bias);
}

at::Tensor scale_taps(const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef dilation,
                      double power) {
  const Geometry g = tap_geometry(weight, stride, dilation, power);
  at::Tensor out = at::empty_like(weight);
  if (out.numel() == 0) return out;
  // One factor per tap, the last axis fastest, shaped (1, 1, *kernel), in opmath_t: the cached
  // factors (output_factors.h) that the backward nodes and the transposed kernel use as well.
  const at::Tensor f = weight_factors(g, Correction::Kernel, power, weight.scalar_type(), weight.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "scale_taps_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    if (weight.is_contiguous() && out.is_contiguous()) {  // the usual layout (scale_rows.h)
      scale_rows(weight.const_data_ptr<scalar_t>(), f.const_data_ptr<opmath_t>(), out.data_ptr<scalar_t>(),
                 weight.numel() / f.numel(), f.numel());
      return;
    }
    // Any other layout (channels_last, as inductor lays weights out for convolutions): the factors
    // broadcast by TensorIterator, which walks the strides in memory order; the product is taken
    // in opmath_t and rounded once into `out`.
    at::mul_out(out, weight, f);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(strideconv, CPU, m) {
  m.impl("scale_border_", &scale_border_inplace);
  m.impl("scale_taps", &scale_taps);
}

}  // namespace strideconv
