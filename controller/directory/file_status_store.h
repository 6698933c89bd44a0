#pragma once

// Directory mode's status store: one JSON file per resource under the state directory.

#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "controller/status_store.h"
#include "crds/model_cache.h"

namespace modelcache::controller {

// <state-dir>/status/<namespace>/<name>.json, each written atomically (temp file + fsync +
// rename + fsync of the directory) as crds::ToJson of the full object, pretty-printed.
//
// Thread-safe: every write is an atomic rename, so no lock is needed; concurrent Write()s of the
// same key leave one of them whole.
class FileStatusStore final : public StatusStore {
 public:
  explicit FileStatusStore(std::string state_dir);

  Result<std::optional<crds::ModelCache>> Read(const crds::ObjectKey& key) const override;
  VoidResult Write(const crds::ModelCache& object_with_status) override;
  VoidResult Remove(const crds::ObjectKey& key) override;
  Result<std::vector<crds::ModelCache>> List() const override;

  // "<state-dir>/status/<namespace>/<name>.json" (whether or not it exists).
  std::string PathFor(const crds::ObjectKey& key) const;

 private:
  std::string status_dir_;  // <state-dir>/status
};

// InvalidSpec unless `key`'s namespace and name are usable as path components.
VoidResult CheckKeyIsPathSafe(const crds::ObjectKey& key);

}  // namespace modelcache::controller
