#pragma once

// How many resources are in each phase, and the bytes of those downloading: what a systemd
// STATUS= line reports. Kept up to date by the Manager as statuses are written (so that a line
// costs O(phases), not a pass over every resource on each change).

#include <cstdint>
#include <map>
#include <string>

#include "crds/model_cache.h"

namespace modelcache::controller {

struct StatusSummary {
  std::map<std::string, int64_t> phases;  // phase -> resources; "" is counted as Pending
  uint64_t downloading_done = 0;          // over Downloading resources that report progress
  uint64_t downloading_total = 0;

  void Add(const crds::ModelCacheStatus& status) { Apply(status, +1); }
  void Remove(const crds::ModelCacheStatus& status) { Apply(status, -1); }

 private:
  void Apply(const crds::ModelCacheStatus& status, int sign);
};

}  // namespace modelcache::controller
