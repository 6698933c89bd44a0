#pragma once

// Kubernetes mode's StatusStore: status lives on the API server and is written through the
// /status subresource with optimistic concurrency, as controller-runtime's status writer with
// retry.RetryOnConflict: PUT .../status with the object's metadata.resourceVersion; on 409
// Conflict, GET the current object, put the status to write on it, and PUT again (up to
// max_attempts in all). Only .status changes on the server (the subresource ignores the rest).
//
// Thread-safe: holds only the client.

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <optional>
#include <vector>

#include "common/result.h"
#include "controller/kube/kube_client.h"
#include "controller/status_store.h"
#include "crds/model_cache.h"

namespace modelcache::controller {

class KubeStatusStore final : public StatusStore {
 public:
  // What the reflector already holds for a key (object and status), so that a first Read needs
  // no request; nullopt when it holds nothing.
  using CachedLookup = std::function<std::optional<crds::ModelCache>(const crds::ObjectKey&)>;

  // `client` must outlive the store.
  explicit KubeStatusStore(const KubeClient& client, int max_attempts = 5,
                           CachedLookup cached = {});

  // The cached object if `cached` has it, else a GET of the object, status included; nullopt
  // on 404.
  Result<std::optional<crds::ModelCache>> Read(const crds::ObjectKey& key) const override;
  // Writes object_with_status.status (see above). An empty metadata.resourceVersion reads the
  // current one first. StorageError if the object no longer exists (404) or the conflicts
  // outlast max_attempts; ReplyError's error for other answers.
  VoidResult Write(const crds::ModelCache& object_with_status) override;
  // Nothing to do: the status goes away with the object on the server. Always OK.
  VoidResult Remove(const crds::ObjectKey& key) override;
  // Every object in the client's scope (the list of all namespaces), ordered by namespace then
  // name; objects that do not convert are skipped with a warning.
  Result<std::vector<crds::ModelCache>> List() const override;

  // 409 answers received so far (for tests and metrics).
  uint64_t conflicts() const;

  // Tells the store that this process moved `key` from resourceVersion `from` to `to` (Write
  // does this itself; the finalizer edit calls it). A later Write based on `from` — the
  // reflector's cache may not have seen `to` yet — is then sent with `to` instead of drawing a
  // 409 and a re-read. If someone else changed the object meanwhile, the 409 path still applies.
  // resourceVersions are only compared for equality, as clients must.
  void NoteUpdate(const crds::ObjectKey& key, const std::string& from, const std::string& to);

 private:
  const KubeClient& client_;
  const int max_attempts_;
  const CachedLookup cached_;
  mutable std::atomic<uint64_t> conflicts_{0};

  // Per key: resourceVersions this process has moved past, and where they lead.
  struct Moved {
    std::set<std::string> from;
    std::string to;
  };
  // The resourceVersion to send for a write based on `rv`.
  std::string Current(const crds::ObjectKey& key, const std::string& rv) const;
  mutable std::mutex moved_mu_;
  std::map<crds::ObjectKey, Moved> moved_;  // GUARDED_BY(moved_mu_)
};

}  // namespace modelcache::controller
