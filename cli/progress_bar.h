#pragma once

// A one-line progress bar on stderr for the CLI commands, redrawn in place on a terminal;
// without a terminal it prints one line per phase change instead.

#include <string>

#include "crds/model_cache.h"

namespace modelcache::controller {

class ProgressBar {
 public:
  explicit ProgressBar(bool terminal) : terminal_(terminal) {}
  void Update(const crds::ModelCacheStatus& status);
  void Update(const std::string& phase, uint64_t done, uint64_t total, uint64_t bytes_per_second);
  // Erases the bar so that the next line starts clean.
  void Clear();

 private:
  bool terminal_;
  bool drawn_ = false;
  std::string last_phase_;
};

}  // namespace modelcache::controller
