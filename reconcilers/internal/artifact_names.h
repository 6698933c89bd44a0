#pragma once

// The artifact names the reconciler's resources hold in their local stores (store/name_claims.h):
// which name each resource claimed in this process, and the claims and releases themselves.
// Private to reconcilers/.
//
// Thread-safe; never called concurrently for the same key (the work queue guarantees it).

#include <chrono>
#include <map>
#include <mutex>
#include <stop_token>
#include <string>
#include <utility>

#include "common/result.h"
#include "crds/model_cache.h"

namespace modelcache::reconcilers {

class ArtifactNames {
 public:
  // `claim_scope`, `hf_endpoint` and `name_recheck` as ReconcilerOptions documents them.
  ArtifactNames(std::string claim_scope, std::string hf_endpoint,
                std::chrono::milliseconds name_recheck)
      : claim_scope_(std::move(claim_scope)),
        hf_endpoint_(std::move(hf_endpoint)),
        name_recheck_(name_recheck) {}

  // Claims `spec`'s artifact name in the local store at `store_root` (for an S3 store: the local
  // cache, where its versions are staged under the same name) before anything can move its
  // `current`, and lets go of the name the resource held before if it named another. Without a
  // claim scope the name is only checked. ArtifactNameConflict, with retry_after name_recheck
  // (a log line names the owner; the status does not), when another resource owns it. An empty
  // `store_root` (an S3 store without a local cache) claims nothing.
  VoidResult Claim(const crds::ObjectKey& key, const crds::ModelCacheSpec& spec,
                   const std::string& store_root, std::stop_token stop);

  // A deleted resource frees the name it held: the one it claimed in this process, else (a
  // restart since) `deleting_name` in the store at `deleting_root` when the deleted object is
  // still known (both empty when it is not).
  void Release(const crds::ObjectKey& key, const std::string& deleting_root,
               const std::string& deleting_name);

 private:
  std::string Holder(const crds::ObjectKey& key) const;
  void ReleaseName(const crds::ObjectKey& key, const std::string& root, const std::string& name);

  const std::string claim_scope_;
  const std::string hf_endpoint_;
  const std::chrono::milliseconds name_recheck_;
  std::mutex mu_;
  // The name each resource holds: (local store root, name).
  std::map<crds::ObjectKey, std::pair<std::string, std::string>> claimed_;  // GUARDED_BY(mu_)
};

}  // namespace modelcache::reconcilers
