#pragma once

// MemoryStatusStore: a StatusStore that keeps objects in a map, for tests of the manager and of
// what writes status through it. Thread-safe.

#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include "controller/directory/file_status_store.h"

namespace modelcache::controller {

class MemoryStatusStore final : public StatusStore {
 public:
  Result<std::optional<crds::ModelCache>> Read(const crds::ObjectKey& key) const override {
    std::lock_guard lock(mu_);
    auto it = objects_.find(key);
    if (it == objects_.end()) {
      return std::optional<crds::ModelCache>();
    }
    return std::optional<crds::ModelCache>(it->second);
  }

  // As FileStatusStore: InvalidSpec for a key that is not path-safe.
  VoidResult Write(const crds::ModelCache& object_with_status) override {
    crds::ObjectKey key = object_with_status.key();
    if (auto ok = CheckKeyIsPathSafe(key); !ok) {
      return ok.error();
    }
    std::lock_guard lock(mu_);
    objects_.insert_or_assign(key, object_with_status);
    ++writes_;
    return {};
  }

  VoidResult Remove(const crds::ObjectKey& key) override {
    std::lock_guard lock(mu_);
    objects_.erase(key);
    return {};
  }

  Result<std::vector<crds::ModelCache>> List() const override {
    std::lock_guard lock(mu_);
    std::vector<crds::ModelCache> out;
    for (const auto& [key, object] : objects_) {
      out.push_back(object);
    }
    return out;
  }

  // How many Write() calls succeeded, so tests can assert that nothing was written needlessly.
  int writes() const {
    std::lock_guard lock(mu_);
    return writes_;
  }

 private:
  mutable std::mutex mu_;
  std::map<crds::ObjectKey, crds::ModelCache> objects_;  // GUARDED_BY(mu_)
  int writes_ = 0;                                       // GUARDED_BY(mu_)
};

}  // namespace modelcache::controller
