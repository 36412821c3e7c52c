#pragma once
// The CPU loop that scales a contiguous weight by its tap factors: taps innermost, so one flat
// table of `taps` factors repeats along the weight's rows and no index arithmetic is needed.
// Each element is multiplied in the factors' type (opmath) and rounded once to scalar_t. Shared
// by the scale_taps kernel (cpu/scale_kernels.cpp) and the backward's cached-factor path
// (autograd/conv.cpp).

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace strideconv {

constexpr int64_t kTapWork = 65536;  // weight elements per task: waking a thread costs more than scaling fewer

// body(first, last) over [0, n): through at::parallel_for when there is more than one task of
// `grain` items, else called directly (a small layer's loop costs less than the thread pool's
// bookkeeping). `body` calls no ATen op.
template <typename Body>
void parallel_loop(int64_t n, int64_t grain, const Body& body) {
  if (n <= 0) return;
  if (n <= grain) {
    body(0, n);
  } else {
    at::parallel_for(0, n, grain, body);
  }
}

template <typename scalar_t, typename factor_t>
void scale_rows(const scalar_t* src, const factor_t* taps_factors, scalar_t* dst, int64_t rows, int64_t taps) {
  parallel_loop(rows, std::max<int64_t>(1, kTapWork / taps), [&](int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row) {
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t e = row * taps + t;
        dst[e] = static_cast<scalar_t>(static_cast<factor_t>(src[e]) * taps_factors[t]);
      }
    }
  });
}

}  // namespace strideconv
