// Conditions as apimachinery's meta.SetStatusCondition keeps them: one entry per type, and
// lastTransitionTime records when the status last flipped, not when the condition was written,
// so that callers can write status only when SetCondition reports a change.

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "crds/model_cache.h"

namespace modelcache::crds {

bool SetCondition(std::vector<Condition>& conditions, Condition c, const std::string& now) {
  for (Condition& existing : conditions) {
    if (existing.type != c.type) {
      continue;
    }
    bool changed = false;
    if (existing.status != c.status) {
      existing.status = c.status;
      existing.last_transition_time = c.last_transition_time.empty() ? now : c.last_transition_time;
      changed = true;
    }
    if (existing.reason != c.reason) {
      existing.reason = std::move(c.reason);
      changed = true;
    }
    if (existing.message != c.message) {
      existing.message = std::move(c.message);
      changed = true;
    }
    if (existing.observed_generation != c.observed_generation) {
      existing.observed_generation = c.observed_generation;
      changed = true;
    }
    return changed;
  }
  if (c.last_transition_time.empty()) {
    c.last_transition_time = now;
  }
  conditions.push_back(std::move(c));
  return true;
}

const Condition* FindCondition(const std::vector<Condition>& conditions, std::string_view type) {
  for (const Condition& c : conditions) {
    if (c.type == type) {
      return &c;
    }
  }
  return nullptr;
}

}  // namespace modelcache::crds
