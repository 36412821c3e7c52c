#pragma once
// A small bounded cache, most recently used first, safe to share between threads: what the
// factor tensors (output_factors.cpp) and the CPU band entries (cpu/scale_kernels.cpp) are kept
// in, so that a layer's backward finds them built. Instances are meant to be created with `new`
// and never destroyed: cached tensors must not be freed by static destructors at process exit,
// after the allocators they came from may be gone.

#include <cstddef>
#include <list>
#include <mutex>
#include <optional>
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
    put(std::move(key), value);
    return value;
  }

  // The value of `key` if it is cached (it becomes the most recent), else nothing.
  std::optional<Value> find(const Key& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->first == key) {
        entries_.splice(entries_.begin(), entries_, it);
        return it->second;
      }
    }
    return std::nullopt;
  }

  // Caches `value` as the most recent entry for `key`, in place of any value it had.
  void put(Key key, Value value) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->first == key) {
        entries_.erase(it);
        break;
      }
    }
    entries_.emplace_front(std::move(key), std::move(value));
    if (entries_.size() > Capacity) entries_.pop_back();
  }

 private:
  std::mutex mutex_;
  std::list<std::pair<Key, Value>> entries_;
};

}  // namespace strideconv
