#pragma once

// The controller's local copy of the desired state: every ModelCache a source currently declares,
// keyed by namespace/name, as controller-runtime's informer cache is. Sources write it; reconcile
// workers read it by key and never look at the event that queued the key.
//
// Thread-safe: all methods may be called concurrently; readers get copies.

#include <cstddef>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "crds/model_cache.h"

namespace modelcache::controller {

struct CachedObject {
  // Defaulted, with metadata (generation, uid, creationTimestamp) filled in by the source. Its
  // status is empty in directory mode (status lives in the StatusStore); in Kubernetes mode it is
  // the status the API server last sent, which KubeStatusStore::Read serves on first sight.
  crds::ModelCache object;
  // Where it was declared: "models/qwen.yaml:12" in directory mode (path relative to the watched
  // directory, line where the document starts).
  std::string origin;
  // Set when the declaration itself is unusable, e.g. InvalidSpec "declared twice: a.yaml:3 and
  // b.yaml:1", a validation failure, or a YAML syntax error in the file (then `object` is the last
  // good version). The controller must not act on such an object; it reports the error.
  std::optional<Error> source_error;
};

// The origin of every object of the Kubernetes source.
inline constexpr std::string_view kKubernetesOrigin = "kubernetes";

// "models/qwen.yaml:12" -> "models/qwen.yaml": the origin without a trailing ":<line>".
std::string_view OriginFile(std::string_view origin);

// Who declared the entry, for sharing job slots fairly (ReconcilerOptions::tenant_of): in
// Kubernetes mode its namespace ("team-a"); in directory mode the top-level entry of the watched
// directory its file lies in: the directory ("team-a/" for team-a/models/qwen.yaml) or, for a
// file at the top, the file ("qwen.yaml"). Whoever may write below one top-level directory (a
// GitOps repo's team folder, one ConfigMap mount) is one tenant.
std::string TenantOf(const CachedObject& entry);

// True if `a` and `b` differ in what a reconcile depends on: the spec, metadata.generation,
// metadata.deletionTimestamp or source_error. Only the origin or labels changing is not a change
// (controller-runtime's GenerationChangedPredicate, plus source errors).
bool ObjectChanged(const CachedObject& a, const CachedObject& b);

class ObjectCache {
 public:
  ObjectCache() = default;
  ObjectCache(const ObjectCache&) = delete;
  ObjectCache& operator=(const ObjectCache&) = delete;

  // A copy of the entry for `key`, nullopt if there is none.
  std::optional<CachedObject> Get(const crds::ObjectKey& key) const;
  // Copies of all entries, ordered by key.
  std::vector<CachedObject> List() const;
  // All keys, ordered.
  std::vector<crds::ObjectKey> Keys() const;
  size_t Size() const;

  // Inserts `entry` under entry.object.key(), replacing any previous one. Returns true if the
  // key is new or ObjectChanged() says the entry changed.
  bool Upsert(CachedObject entry);
  // Removes the entry for `key`; returns false if there was none.
  bool Delete(const crds::ObjectKey& key);

  // In one step, as seen by readers: removes every entry whose OriginFile() is `file` and that is
  // not in `entries`, then upserts `entries` (which may come from anywhere). Returns the keys
  // that were added, removed or changed (ObjectChanged), ordered.
  std::vector<crds::ObjectKey> ReplaceOrigin(std::string_view file,
                                             std::vector<CachedObject> entries);
  // In one step: the cache afterwards holds exactly `entries` (a full relist). Returns the keys
  // that were added, removed or changed, ordered. If `entries` holds a key twice, the later one
  // wins.
  std::vector<crds::ObjectKey> ReplaceAll(std::vector<CachedObject> entries);

 private:
  mutable std::mutex mu_;
  std::map<crds::ObjectKey, CachedObject> objects_;  // GUARDED_BY(mu_)
};

}  // namespace modelcache::controller
