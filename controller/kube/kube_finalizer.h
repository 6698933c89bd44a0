#pragma once

// The ModelCache finalizer of Kubernetes mode (docs/kubernetes.md, "What happens to an object"
// and "Deletion and retention"): added before the first reconcile of a live object, removed
// once a deleted one has been handled.

#include <string_view>

#include "common/result.h"
#include "controller/kube/kube_client.h"
#include "controller/kube/kube_status_store.h"
#include "crds/model_cache.h"

namespace modelcache::controller {

inline constexpr std::string_view kFinalizer = "modelcache.dev/artifact";
// Conflicting writers of one object's metadata, in a row, before a finalizer edit gives up (the
// key is then requeued with rate limiting).
inline constexpr int kFinalizerAttempts = 5;

// Adds (add = true) or removes kFinalizer with a JSON merge patch of metadata.finalizers that
// carries the resourceVersion the list was computed from, as controllerutil.AddFinalizer or
// RemoveFinalizer + client.Patch(MergeFromWithOptimisticLock) in retry.RetryOnConflict. A merge
// patch replaces the whole list, hence the precondition; only the list is sent, so fields this
// program does not model (ownerReferences, managedFields, unknown spec fields) stay as they are.
//
// The first attempt starts from `cached`, the reflector's copy, with its resourceVersion: no
// GET. On 409 Conflict the object is re-read (GET) and the edit redone, up to
// kFinalizerAttempts patches. The new resourceVersion is passed to statuses.NoteUpdate, so the
// next status write based on the older cached copy does not draw a 409.
//
// OK when there is nothing to do: the object is gone (404), already in the wanted state, or
// being deleted when adding (the API server forbids new finalizers then). Otherwise the error
// of ReplyError naming the edit and the object, or the transport's error.
VoidResult EditFinalizer(const KubeClient& client, const crds::ModelCache& cached, bool add,
                         KubeStatusStore& statuses);

}  // namespace modelcache::controller
