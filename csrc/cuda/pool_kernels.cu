// CUDA kernel of avg_pool2d_backward_scaled: the corrected input gradient of average pooling
// in one pass (pool.h), one thread per input element, no atomics.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../pool.h"

namespace strideconv {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void avg_pool2d_backward_scaled_kernel(const scalar_t* grad, const at::opmath_type<scalar_t>* factor,
                                                  scalar_t* out, const PoolWindows p, const int64_t items) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t plane = p.height * p.width, out_plane = p.out_height * p.out_width;
  const int64_t step = int64_t(blockDim.x) * gridDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < items; e += step) {
    const int64_t q = e / plane, i = e % plane;
    const int64_t h = i / p.width, w = i % p.width;
    out[e] = static_cast<scalar_t>(factor[i] * p.gather<opmath_t>(grad + q * out_plane, p.out_width, 1, h, w));
  }
}

at::Tensor avg_pool2d_backward_scaled(
    const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override,
    const at::Tensor& factor) {
  (void)ceil_mode;  // the output size (grad_output's) already includes ceil_mode's windows
  const PoolWindows p =
      pool_windows(grad_output, input, kernel_size, stride, padding, count_include_pad, divisor_override, factor);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor grad = grad_output.contiguous();
  at::Tensor out = at::empty(input.sizes(), input.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t items = out.numel();
  if (items == 0) return out.contiguous(input.suggest_memory_format());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const unsigned int blocks =
      static_cast<unsigned int>(std::min<int64_t>((items + kThreads - 1) / kThreads, 65535LL * 8));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "avg_pool2d_backward_scaled_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor f = factor.to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
    avg_pool2d_backward_scaled_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), f.const_data_ptr<opmath_t>(), out.data_ptr<scalar_t>(), p, items);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.contiguous(input.suggest_memory_format());
}

}  // namespace

TORCH_LIBRARY_IMPL(strideconv, CUDA, m) {
  m.impl("avg_pool2d_backward_scaled", &avg_pool2d_backward_scaled);
}

}  // namespace strideconv
