#include "controller/status_summary.h"

#include <algorithm>

namespace modelcache::controller {

void StatusSummary::Apply(const crds::ModelCacheStatus& status, int sign) {
  std::string phase = status.phase.empty() ? std::string(crds::kPhasePending) : status.phase;
  phases[phase] += sign;
  if (phases[phase] == 0) {
    phases.erase(phase);
  }
  if (phase == crds::kPhaseDownloading && status.progress && status.progress->bytes_total > 0) {
    uint64_t done = std::min(status.progress->bytes_done, status.progress->bytes_total);
    uint64_t total = status.progress->bytes_total;
    if (sign > 0) {
      downloading_done += done;
      downloading_total += total;
    } else {
      downloading_done -= std::min(downloading_done, done);
      downloading_total -= std::min(downloading_total, total);
    }
  }
}

}  // namespace modelcache::controller
