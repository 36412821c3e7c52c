// Output factor maps of the normalised transposed convolution (see output_factors.h).

#include "output_factors.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>
#include <utility>
#include <vector>

#include "lru_cache.h"

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

// The key of a cached map: its geometry (six values per axis, unused axes zero), correction,
// power, dtype and device. Fixed-size, so that a lookup allocates nothing.
constexpr size_t kAxisFields = 6;
using Key = std::tuple<std::array<int64_t, kAxisFields * kMaxSpatialDims>, int, int, double, at::ScalarType, at::Device>;

Key key_of(const Geometry& g, Correction correction, double power, at::ScalarType dtype, at::Device device) {
  std::array<int64_t, kAxisFields * kMaxSpatialDims> ints{};
  for (int d = 0; d < g.ndim; ++d) {
    const Axis& a = g.axis[d];
    const int64_t fields[kAxisFields] = {a.length, a.kernel, a.stride, a.padding, a.dilation, a.output_padding};
    std::copy(fields, fields + kAxisFields, ints.begin() + d * kAxisFields);
  }
  return {ints, g.ndim, static_cast<int>(correction), power, dtype, device};
}

// The small factor tensors, in a bounded cache (lru_cache.h; 32: the layers of one network have
// a few distinct geometries each), each built as a plain tensor even under inference mode, so
// that autograd can use it later.
class FactorCache {
 public:
  template <typename Build>
  at::Tensor get(Key key, const Build& build) {
    return cache_.get(std::move(key), [&] {
      c10::InferenceMode normal_mode(false);
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      return build();
    });
  }

 private:
  LruCache<Key, at::Tensor, 32> cache_;
};

}  // namespace

at::Tensor output_factor_map(const Geometry& g, Correction correction, double power,
                             at::ScalarType dtype, at::Device device) {
  static auto* cache = new FactorCache();
  return cache->get(key_of(g, correction, power, dtype, device),
                    [&] { return build(g, correction, power, dtype, device); });
}

at::Tensor weight_factors(const Geometry& g, Correction correction, double power,
                          at::ScalarType weight_dtype, at::Device device) {
  static auto* cache = new FactorCache();
  const at::ScalarType dtype = weight_dtype == at::kDouble ? at::kDouble : at::kFloat;
  Key key = key_of(g, correction, power, dtype, device);
  if (correction != Correction::Map) {  // the tap factors do not depend on the lengths or padding
    auto& ints = std::get<0>(key);
    for (size_t i = 0; i < ints.size(); i += kAxisFields) ints[i] = ints[i + 3] = 0;
  }
  return cache->get(std::move(key), [&] {
    std::vector<int64_t> shape{1, 1};
    at::Tensor f = at::ones({}, at::kDouble);
    for (int d = 0; d < g.ndim; ++d) {
      const Axis& a = g.axis[d];
      std::vector<double> taps(a.kernel, 1.0);
      if (correction != Correction::Map) {
        for (int64_t t = 0; t < a.kernel; ++t) taps[t] = a.tap_factor<double>(t, power);
      }
      f = f.unsqueeze(-1) * at::tensor(taps, at::kDouble);
      shape.push_back(a.kernel);
    }
    if (correction == Correction::Map) f = f * map_alpha(g, power);
    return f.reshape(shape).to(device, dtype).contiguous();
  });
}

double map_alpha(const Geometry& g, double power) {
  double log_alpha = 0;
  for (int d = 0; d < g.ndim; ++d) log_alpha += g.axis[d].log_map_factor(power);
  return std::exp(log_alpha);
}

}  // namespace strideconv
