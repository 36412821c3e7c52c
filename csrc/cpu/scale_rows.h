#pragma once
// The CPU loop that scales a contiguous weight by its tap factors: taps innermost, so one flat
// table of `taps` factors repeats along the weight's rows and no index arithmetic is needed.
// Each element is multiplied in the factors' type (opmath) and rounded once to scalar_t. Shared
// by the scale_taps kernel (cpu/scale_kernels.cpp) and, through scale_rows_on_cpu, by the
// callers that scale a weight with the cached factors (weight_factors) without a dispatched op:
// the transposed convolution's kernel (conv.cpp) and the backward nodes (autograd/).

#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>

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

// A tensor with storage that no tracing sees (not fake, functional or meta, no dispatch
// mode active): a kernel or a backward may then use cached factor tensors and the CPU loops
// directly. Otherwise it goes through the registered ops, which tracing records.
inline bool concrete(const at::Tensor& t) {
  static const c10::DispatchKeySet traced({c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot,
                                           c10::DispatchKey::Functionalize});
  return !t.key_set().has_any(traced) && !t.is_meta() && !c10::impl::TorchDispatchModeTLS::any_modes_set();
}

// `source` (a contiguous CPU weight of the same float or double dtype as `like`) times the tap
// factors `f` (contiguous, one value per tap, repeating along the weight's rows) into a new
// tensor `out`, by the loop above and without a dispatched op; false (nothing done) for anything
// else. On a CPU core, the first dispatched op ahead of a convolution's kernels was measured at
// about 4 us per call (a 3x3 weight: `at::mul` in a C++ loop costs 0.5); this loop costs what the
// multiply costs. The rounding is the same: one multiply in the weight's dtype by factors of
// that dtype.
inline bool scale_rows_on_cpu(const at::Tensor& source, const at::Tensor& f, const at::Tensor& like,
                              at::Tensor& out) {
  const at::ScalarType dtype = like.scalar_type();
  if (!source.is_cpu() || !concrete(source) || source.scalar_type() != dtype || f.scalar_type() != dtype ||
      (dtype != at::kFloat && dtype != at::kDouble) || !source.is_contiguous() || !f.is_contiguous() ||
      f.device() != source.device()) {
    return false;
  }
  const int64_t taps = f.numel(), n = source.numel();
  if (taps == 0 || n % taps != 0) return false;
  out = at::detail::empty_cpu(source.sizes(), dtype, /*pin_memory=*/false, c10::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(dtype, "strideconv_scale_rows", [&] {
    scale_rows(source.const_data_ptr<scalar_t>(), f.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
               n / taps, taps);
  });
  return true;
}

}  // namespace strideconv
