// CUDA kernels of scale_border_ (the border band of a gradient, in place) and
// scale_taps (a weight times its tap factors).
//
// scale_border_ touches only the border band (a few rows and columns), in
// place, one thread per element, no atomics. The per-axis factor tables
// (geometry.h) travel as a kernel argument, so nothing is copied from the host
// and the launch can be captured in a CUDA graph. The tables are indexed per
// element, so they are __grid_constant__: read in place from the parameter
// space, not copied to each thread's local memory.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "../options.h"

namespace strideconv {
namespace {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t items) {
  const int64_t max_blocks = 65535LL * 8;  // grid-stride loops cover the rest
  return static_cast<unsigned int>(std::min<int64_t>((items + kThreads - 1) / kThreads, max_blocks));
}

// With a bias (one opmath_t per channel, or null), v becomes f (v - b) + b.
template <typename scalar_t, typename index_t>
__global__ void scale_band_kernel(scalar_t* data, const __grid_constant__ BandWalk walk,
                                  const __grid_constant__ FactorTable<at::opmath_type<scalar_t>> factors,
                                  const at::opmath_type<scalar_t>* bias, const index_t items) {
  using opmath_t = at::opmath_type<scalar_t>;
  const index_t step = index_t(blockDim.x) * gridDim.x;
  for (index_t e = index_t(blockIdx.x) * blockDim.x + threadIdx.x; e < items; e += step) {
    index_t coord[kMaxSpatialDims];
    index_t channel;
    const index_t off = walk.offset(e, coord, &channel);
    const opmath_t f = factors.ratio(coord);
    if (f == opmath_t(1)) continue;
    const opmath_t v = static_cast<opmath_t>(data[off]);
    data[off] = static_cast<scalar_t>(bias == nullptr ? v * f : f * (v - bias[channel]) + bias[channel]);
  }
}

template <typename scalar_t, typename index_t>
__global__ void scale_taps_kernel(const scalar_t* src, scalar_t* dst,
                                  const __grid_constant__ TapWalk walk,
                                  const __grid_constant__ FactorTable<at::opmath_type<scalar_t>> factors,
                                  const index_t items) {
  using opmath_t = at::opmath_type<scalar_t>;
  const index_t step = index_t(blockDim.x) * gridDim.x;
  for (index_t e = index_t(blockIdx.x) * blockDim.x + threadIdx.x; e < items; e += step) {
    index_t tap[kMaxSpatialDims];
    index_t in_off, out_off;
    walk.offsets(e, in_off, out_off, tap);
    dst[out_off] = static_cast<scalar_t>(static_cast<opmath_t>(src[in_off]) * factors.tap_factor(tap));
  }
}

void scale_border_inplace(
    at::Tensor& grad, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, double power,
    at::IntArrayRef output_padding, const std::optional<at::Tensor>& bias) {
  const Geometry g = border_geometry(grad, kernel_size, stride, padding, dilation, power, output_padding, bias);
  at::assert_no_internal_overlap(grad);
  const BandWalk walk(grad, g);
  const int64_t items = walk.items();
  if (items == 0) return;
  const c10::cuda::CUDAGuard guard(grad.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "scale_border_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const FactorTable<opmath_t> factors(g, power);
    at::Tensor shift;  // the bias in opmath_t, or nothing
    if (bias.has_value() && bias->defined()) shift = bias->to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
    const opmath_t* b = shift.defined() ? shift.const_data_ptr<opmath_t>() : nullptr;
    if (walk.fits_int32(grad)) {
      scale_band_kernel<scalar_t, int32_t><<<blocks_for(items), kThreads, 0, stream>>>(
          grad.data_ptr<scalar_t>(), walk, factors, b, static_cast<int32_t>(items));
    } else {
      scale_band_kernel<scalar_t, int64_t><<<blocks_for(items), kThreads, 0, stream>>>(
          grad.data_ptr<scalar_t>(), walk, factors, b, items);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor scale_taps(const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef dilation,
                      double power) {
  const Geometry g = tap_geometry(weight, stride, dilation, power);
  at::Tensor out = at::empty_like(weight);
  if (out.numel() == 0) return out;
  const c10::cuda::CUDAGuard guard(weight.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const TapWalk walk(weight, out);
  const int64_t items = weight.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "scale_taps_cuda", [&] {
    const FactorTable<at::opmath_type<scalar_t>> factors(g, power);
    const scalar_t* src = weight.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    if (walk.fits_int32()) {
      scale_taps_kernel<scalar_t, int32_t><<<blocks_for(items), kThreads, 0, stream>>>(
          src, dst, walk, factors, static_cast<int32_t>(items));
    } else {
      scale_taps_kernel<scalar_t, int64_t><<<blocks_for(items), kThreads, 0, stream>>>(
          src, dst, walk, factors, items);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(strideconv, CUDA, m) {
  m.impl("scale_border_", &scale_border_inplace);
  m.impl("scale_taps", &scale_taps);
}

}  // namespace strideconv
