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

// Whether scaling the output (one elementwise pass over `output_numel` elements) is
// cheaper than scaling the weight (`weight_passes` passes over `weight_numel`). (The
// backward compares the same quantities as SymInts.)
inline bool output_is_cheaper(int64_t weight_numel, int weight_passes, int64_t output_numel) {
  return weight_numel * weight_passes >= output_numel;
}

}  // namespace strideconv
