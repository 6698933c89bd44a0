#pragma once

// Secrets in Kubernetes mode. A resource's spec.source.tokenSecretRef is read with ReadHubToken,
// uncached (only Secrets that opt in by a label). The daemon's own Secrets (KubeSecretReader):
// `--s3-secret` names a Secret holding the S3 credentials. The name is "NAME" (in the daemon's
// own namespace: the service account's in a pod, the kubeconfig context's outside one, else
// "default" — the namespace the leader-election Lease uses too) or "NAMESPACE/NAME".
//
// The reader's values are read through the KubeClient and kept for a short time (2 s by
// default), so that a burst of checks (every S3 resource after a start or a resync) costs one
// GET, while a rotated Secret is used by the jobs and retries that start after it. Only
// successful reads are kept. Values are never logged, and errors name the Secret, never a value.

#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <string_view>

#include "common/clock.h"
#include "common/result.h"
#include "controller/kube/kube_client.h"
#include "crds/model_cache.h"

namespace modelcache::controller {

struct SecretName {
  std::string namespace_;
  std::string name;
  // "NAMESPACE/NAME"
  std::string ToString() const { return namespace_ + "/" + name; }
};

// Parses "NAME" (namespace `default_namespace`) or "NAMESPACE/NAME". InvalidSpec naming `flag`
// when the namespace is not a DNS-1123 label or the name not a DNS-1123 subdomain.
Result<SecretName> ParseSecretName(std::string_view value, const std::string& default_namespace,
                                   std::string_view flag);

// The label a Secret must carry, with the value "true", to be used as a Hub token by a resource's
// spec.source.tokenSecretRef. RBAC cannot grant `get` on Secrets by label, so this is what keeps
// the other Secrets of a namespace (database passwords, ...) from being sent to the endpoint a
// resource names.
inline constexpr char kHubTokenLabel[] = "modelcache.dev/hub-token";

// tokenSecretRef `ref` of a resource in namespace `ns`: data[ref.key] of Secret ns/ref.name, if
// that Secret carries kHubTokenLabel=true. Otherwise InvalidSpec (retry_after set: the Secret
// may be created, labelled or made readable without a change to the resource) with one message
// whatever the cause — a missing Secret, a Secret without the label, a read the daemon is not
// allowed (403) and a missing key look the same — so that a resource's status does not tell
// which Secrets or keys exist; the cause is logged for the operator (names only). Transport and
// server errors (not about the Secret) are returned as the client gives them, prefixed with
// the field. Never logs or returns a value.
Result<std::string> ReadHubToken(const KubeClient& client, const std::string& ns,
                                 const crds::SecretKeyRef& ref);

// Thread-safe. `client` and `clock` must outlive the reader.
class KubeSecretReader {
 public:
  KubeSecretReader(const KubeClient& client, const Clock& clock,
                   std::chrono::milliseconds cache_time = std::chrono::seconds(2));

  // The decoded data of Secret `secret` (KubeClient::GetSecretData), from the cache when read
  // less than cache_time ago. A missing Secret is InvalidSpec and a refused read Unauthorized,
  // both with retry_after set (the Secret may appear, or the RBAC be fixed, without any change
  // to a resource); transport errors as the client returns them. Messages name the Secret.
  Result<std::map<std::string, std::string>> Read(const SecretName& secret);

 private:
  struct Entry {
    Clock::TimePoint read_at;
    std::map<std::string, std::string> data;
  };
  const KubeClient& client_;
  const Clock& clock_;
  const std::chrono::milliseconds cache_time_;
  std::mutex mu_;
  std::map<std::string, Entry> cache_;  // by "NAMESPACE/NAME"; guarded by mu_
};

}  // namespace modelcache::controller
