#pragma once
// What the CPU and CUDA kernels share: the geometry of one call (its axes), the
// "band" of positions outside the interior box (all that the "position"
// correction touches), the per-axis factor tables, and the walks that turn a
// work item into memory offsets for any strides (docs/design.md, "The band").

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <limits>

#include "axis.h"

namespace strideconv {

// The convolution settings of one call, per spatial axis; the lengths are those of
// the tensor the correction applies to. Built and checked by make_geometry
// (options.h).
struct Geometry {
  int ndim = 0;
  Axis axis[kMaxSpatialDims];
};

// The positions outside the band's interior box (Axis::band_begin/band_end),
// enumerated level by level: at level
// l, axes before l run over their interior, axis l over its border, and axes
// after l over everything. The levels partition the band exactly.
struct Band {
  int ndim = 0;
  int64_t size[kMaxSpatialDims] = {1, 1, 1};
  int64_t begin[kMaxSpatialDims] = {0, 0, 0};
  int64_t end[kMaxSpatialDims] = {1, 1, 1};
  int64_t level_count[kMaxSpatialDims] = {0, 0, 0};
  int64_t count = 0;  // positions in the band

  explicit Band(const Geometry& g) : ndim(g.ndim) {
    for (int d = 0; d < ndim; ++d) {
      size[d] = g.axis[d].length;
      begin[d] = g.axis[d].band_begin();
      end[d] = g.axis[d].band_end();
    }
    for (int l = 0; l < ndim; ++l) {
      int64_t n = size[l] - (end[l] - begin[l]);
      for (int d = 0; d < l; ++d) n *= end[d] - begin[d];
      for (int d = l + 1; d < ndim; ++d) n *= size[d];
      level_count[l] = n;
      count += n;
    }
  }

  // Spatial coordinates of the b-th band position, 0 <= b < count.
  template <typename index_t>
  STRIDECONV_HD void position(index_t b, index_t* coord) const {
    int l = 0;
    while (b >= index_t(level_count[l])) {
      b -= index_t(level_count[l]);
      ++l;
    }
    for (int d = ndim - 1; d > l; --d) {
      coord[d] = b % index_t(size[d]);
      b /= index_t(size[d]);
    }
    const index_t border = index_t(size[l] - (end[l] - begin[l]));
    const index_t j = b % border;
    b /= border;
    coord[l] = j < index_t(begin[l]) ? j : index_t(end[l]) + (j - index_t(begin[l]));
    for (int d = l - 1; d >= 0; --d) {
      const index_t inner = index_t(end[d] - begin[d]);
      coord[d] = index_t(begin[d]) + b % inner;
      b /= inner;
    }
  }
};

// Per-axis factors that the kernels look up instead of recomputing them for
// every element: the border ratio of the first kCached positions on each side
// of the band's interior, and the tap factor of the first kCached taps. What
// lies beyond (very wide borders or kernels) is computed from the Axis. Small
// and trivially copyable: passed to CUDA kernels by value.
constexpr int kCached = 32;

template <typename real_t>
struct AxisFactors {
  Axis axis;
  real_t power = 1;
  int64_t begin = 0, end = 0;  // the band's interior on this axis
  real_t front[kCached] = {}, back[kCached] = {}, tap[kCached] = {};

  AxisFactors() = default;
  AxisFactors(const Axis& a, double g)
      : axis(a), power(real_t(g)), begin(a.band_begin()), end(a.band_end()) {
    for (int64_t j = 0; j < kCached; ++j) {
      if (j < begin) front[j] = a.border_ratio<real_t>(j, power);
      if (end + j < a.length) back[j] = a.border_ratio<real_t>(end + j, power);
      if (j < a.kernel) tap[j] = a.tap_factor<real_t>(j, power);
    }
  }

  // (n / C(i))^g, 1 inside the interior.
  STRIDECONV_HD real_t ratio(int64_t i) const {
    if (i < begin) return i < kCached ? front[i] : axis.border_ratio<real_t>(i, power);
    if (i >= end) return i - end < kCached ? back[i - end] : axis.border_ratio<real_t>(i, power);
    return real_t(1);
  }

  // (k / n(r(t)))^g.
  STRIDECONV_HD real_t tap_factor(int64_t t) const {
    return t < kCached ? tap[t] : axis.tap_factor<real_t>(t, power);
  }
};

template <typename real_t>
struct FactorTable {
  int ndim = 0;
  AxisFactors<real_t> axis[kMaxSpatialDims];

  FactorTable(const Geometry& g, double power) : ndim(g.ndim) {
    for (int d = 0; d < ndim; ++d) axis[d] = AxisFactors<real_t>(g.axis[d], power);
  }

  // The separable N-d factors: products of the per-axis ones.
  template <typename index_t>
  STRIDECONV_HD real_t ratio(const index_t* coord) const {
    real_t f = 1;
    for (int d = 0; d < ndim; ++d) f *= axis[d].ratio(coord[d]);
    return f;
  }
  template <typename index_t>
  STRIDECONV_HD real_t tap_factor(const index_t* tap) const {
    real_t f = 1;
    for (int d = 0; d < ndim; ++d) f *= axis[d].tap_factor(tap[d]);
    return f;
  }
};

// Walks the (batch, channel, band position) triples of a gradient tensor of
// any strides. When channels are innermost in memory (channels_last) they vary
// fastest, so neighbouring work items touch neighbouring addresses.
struct BandWalk {
  Band band;
  int64_t batch = 0, channels = 0;
  int64_t batch_stride = 0, channel_stride = 0;
  int64_t spatial_stride[kMaxSpatialDims] = {0, 0, 0};
  bool channels_inner = false;

  BandWalk(const at::Tensor& t, const Geometry& g) : band(g) {
    batch = t.size(0);
    channels = t.size(1);
    batch_stride = t.stride(0);
    channel_stride = t.stride(1);
    for (int d = 0; d < g.ndim; ++d) spatial_stride[d] = t.stride(2 + d);
    channels_inner = channels > 1 && channel_stride == 1;
  }

  int64_t items() const { return batch * channels * band.count; }

  // Memory offset of work item e; its spatial coordinates land in coord (and its channel in
  // *channel when asked).
  template <typename index_t>
  STRIDECONV_HD index_t offset(index_t e, index_t* coord, index_t* channel = nullptr) const {
    index_t n, c, b;
    const index_t C = index_t(channels), B = index_t(band.count);
    if (channels_inner) {
      c = e % C;
      e /= C;
      b = e % B;
      n = e / B;
    } else {
      b = e % B;
      e /= B;
      c = e % C;
      n = e / C;
    }
    band.position(b, coord);
    if (channel != nullptr) *channel = c;
    index_t off = n * index_t(batch_stride) + c * index_t(channel_stride);
    for (int d = 0; d < band.ndim; ++d) off += coord[d] * index_t(spatial_stride[d]);
    return off;
  }

  // Whether every item index and memory offset fits in 32-bit arithmetic,
  // with headroom for a grid-stride step past the last item.
  bool fits_int32(const at::Tensor& t) const {
    const int64_t limit = std::numeric_limits<int32_t>::max() / 2;
    int64_t max_offset = 0;
    for (int64_t d = 0; d < t.dim(); ++d) max_offset += (t.size(d) - 1) * t.stride(d);
    return items() <= limit && max_offset <= limit;
  }
};

}  // namespace strideconv

namespace strideconv {

// Walks the elements of a weight (out, in / groups, *kernel) of any strides,
// reading from it and writing to an output of possibly other strides.
struct TapWalk {
  int ndim = 0;  // tensor dims: 2 + spatial
  int64_t size[2 + kMaxSpatialDims] = {};
  int64_t in_stride[2 + kMaxSpatialDims] = {};
  int64_t out_stride[2 + kMaxSpatialDims] = {};

  TapWalk(const at::Tensor& in, const at::Tensor& out) : ndim(static_cast<int>(in.dim())) {
    for (int d = 0; d < ndim; ++d) {
      size[d] = in.size(d);
      in_stride[d] = in.stride(d);
      out_stride[d] = out.stride(d);
    }
  }

  // Offsets of logical element e (row-major) in input and output; the kernel
  // tap coordinates land in tap.
  template <typename index_t>
  STRIDECONV_HD void offsets(index_t e, index_t& in_off, index_t& out_off, index_t* tap) const {
    in_off = 0;
    out_off = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      const index_t i = e % index_t(size[d]);
      e /= index_t(size[d]);
      in_off += i * index_t(in_stride[d]);
      out_off += i * index_t(out_stride[d]);
      if (d >= 2) tap[d - 2] = i;
    }
  }

  // Whether every element index and offset of both tensors fits in 32 bits,
  // with headroom for a grid-stride step past the last element.
  bool fits_int32() const {
    const int64_t limit = std::numeric_limits<int32_t>::max() / 2;
    int64_t numel = 1, in_max = 0, out_max = 0;
    for (int d = 0; d < ndim; ++d) {
      numel *= size[d];
      in_max += (size[d] - 1) * in_stride[d];
      out_max += (size[d] - 1) * out_stride[d];
    }
    return numel <= limit && in_max <= limit && out_max <= limit;
  }
};

}  // namespace strideconv
