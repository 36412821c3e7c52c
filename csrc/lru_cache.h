#pragma once
// A small bounded cache, most recently used first, safe to share between threads: what the
// factor tensors (output_factors.cpp) and the CPU band entries (cpu/scale_kernels.cpp) are kept
// in, so that a layer's backward finds them built. Instances are meant to be created with `new`
// and never destroyed: cached tensors must not be freed by static destructors at process exit,
// after the allocators they came from may be gone.

#include <cstddef>
#include <list>
#include <mutex>
#include <utility>

namespace strideconv {

template <typename Key, typename Value, size_t Capacity>
class LruCache {
 public:
  // The value of `key`, built by `build()` (outside the lock) when it is not cached.
  template <typename Build>
  Value get(Key key, const Build& build) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = entries_.begin(); it != entries_.end(); ++it) {
        if (it->first == key) {
          entries_.splice(entries_.begin(), entries_, it);
          return it->second;
        }
      }
    }
    Value value = build();
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.emplace_front(std::move(key), value);
    if (entries_.size() > Capacity) entries_.pop_back();
    return value;
  }

 private:
  std::mutex mutex_;
  std::list<std::pair<Key, Value>> entries_;
};

}  // namespace strideconv
