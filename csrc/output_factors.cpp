// Output factor maps of the normalised transposed convolution (see output_factors.h).

#include "output_factors.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <cmath>
#include <list>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

namespace strideconv {
namespace {

// (K / c)^g per position of one axis, c the count ("position") or the class count ("kernel").
std::vector<double> axis_factors(const Axis& a, Correction correction, double power) {
  std::vector<double> out(a.length, 1.0);
  for (int64_t j = 0; j < a.length; ++j) {
    const int64_t c = correction == Correction::Position ? a.count(j) : a.class_count_at(j);
    if (c > 0 && c != a.kernel) out[j] = power_of(double(a.kernel) / double(c), power);
  }
  return out;
}

at::Tensor build(const Geometry& g, Correction correction, double power, at::ScalarType dtype,
                 at::Device device) {
  at::Tensor map = at::ones({}, at::kDouble);
  for (int d = 0; d < g.ndim; ++d) {
    std::vector<double> v = axis_factors(g.axis[d], correction, power);
    map = map.unsqueeze(-1) * at::tensor(v, at::kDouble);
  }
  std::vector<int64_t> shape{1, 1};
  for (int d = 0; d < g.ndim; ++d) shape.push_back(g.axis[d].length);
  return map.reshape(shape).to(device, dtype).contiguous();
}

// The key of a cached map: its geometry, correction, power, dtype and device.
using Key = std::tuple<std::vector<int64_t>, int, double, at::ScalarType, at::Device>;

Key key_of(const Geometry& g, Correction correction, double power, at::ScalarType dtype, at::Device device) {
  std::vector<int64_t> ints;
  for (int d = 0; d < g.ndim; ++d) {
    const Axis& a = g.axis[d];
    ints.insert(ints.end(), {a.length, a.kernel, a.stride, a.padding, a.dilation, a.output_padding});
  }
  return {std::move(ints), static_cast<int>(correction), power, dtype, device};
}

constexpr size_t kCacheSize = 32;  // layers of one network: a few distinct geometries each

}  // namespace

at::Tensor output_factor_map(const Geometry& g, Correction correction, double power,
                             at::ScalarType dtype, at::Device device) {
  // Never destroyed: tensors must not be freed by static destructors at process exit,
  // after the allocators they came from may be gone.
  static auto* mutex = new std::mutex();
  static auto* cache = new std::list<std::pair<Key, at::Tensor>>();  // most recently used first
  Key key = key_of(g, correction, power, dtype, device);
  {
    std::lock_guard<std::mutex> lock(*mutex);
    for (auto it = cache->begin(); it != cache->end(); ++it) {
      if (it->first == key) {
        cache->splice(cache->begin(), *cache, it);
        return it->second;
      }
    }
  }
  at::Tensor map;
  {
    // A plain tensor even under inference mode, so that autograd can use it later.
    c10::InferenceMode normal_mode(false);
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    map = build(g, correction, power, dtype, device);
  }
  std::lock_guard<std::mutex> lock(*mutex);
  cache->emplace_front(std::move(key), map);
  if (cache->size() > kCacheSize) cache->pop_back();
  return map;
}

double map_alpha(const Geometry& g, double power) {
  double log_alpha = 0;
  for (int d = 0; d < g.ndim; ++d) log_alpha += g.axis[d].log_map_factor(power);
  return std::exp(log_alpha);
}

}  // namespace strideconv
