#pragma once
// The normalisation of a transposed convolution applied to its output (and to the incoming
// gradient in the backward) instead of to its weight (docs/design.md, "Transposed
// convolutions"). Every tap reaching output position j lies in the one tap class
// (j + p) mod s, so tap-scaling the weight ("kernel") multiplies y0(j) by that class's
// factor: both corrections are a factor per output position, and "map" a scalar.

#include <ATen/core/Tensor.h>

#include "options.h"

namespace strideconv {

// The factor of every output position, shaped (1, 1, *spatial) to broadcast over batch
// and channels, in `dtype` on `device`: "position" (K / C(j))^g, "kernel"
// (K / n((j + p) mod s))^g; 1 where no tap reaches j (nothing to scale there, and no
// gradient flows from there). Built per axis on the host and kept in a small cache.
at::Tensor output_factor_map(const Geometry& g, Correction correction, double power,
                             at::ScalarType dtype, at::Device device);

// alpha of "map" over the output positions.
double map_alpha(const Geometry& g, double power);

// The factors that scale a weight (out, in / groups, *kernel) for the corrected input
// gradient of a strided convolution (g over its input): "kernel" and "position" each tap's
// (k / n(r(t)))^g, "map" alpha on every tap; shaped (1, 1, *kernel), in float64 for a
// float64 weight and float32 otherwise (reduced precision weights are scaled in float32,
// one rounding). Cached (bounded, thread-safe): the backward of a layer finds them built.
at::Tensor weight_factors(const Geometry& g, Correction correction, double power,
                          at::ScalarType weight_dtype, at::Device device);

// Whether to normalise on the output (one elementwise pass over it) rather than on the
// weight (scaling it, and in the backward its gradient): when the weight holds at least
// 1/kOutputPathRatio as many elements as the output. The ratio is measured, not derived
// (benchmarks/transposed.py, CPU, fwd+bwd against F.conv_transpose2d): the weight path cost
// 7-8% where the weight was 0.28-0.5 of the output (3x3/2 and 4x4/2, 16 -> 32) and the output
// path 0-3%; the output path cost 13% where the weight was 0.035 of it (3x3/2, 32 -> 64) and the
// weight path 2%. `Size` is int64_t in the forward, c10::SymInt in the backward (traced).
constexpr int64_t kOutputPathRatio = 8;

template <typename Size>
inline bool output_is_cheaper(const Size& weight_numel, const Size& output_numel) {
  return weight_numel * kOutputPathRatio >= output_numel;
}

}  // namespace strideconv
