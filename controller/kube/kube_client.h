#pragma once

// A small REST client for the ModelCache custom resource (modelcache.dev/v1alpha1, plural
// modelcaches) and Secrets, over common/http_client.h. It speaks the API server's JSON protocol
// as client-go's typed clients do: requests carry "Authorization: Bearer <token>" from the
// config's token provider and "Accept: application/json".
//
// HTTP error answers are not Errors here: every call returns the status code and the JSON body
// (a metav1.Status for errors), because callers decide what a 404, 409 or 410 means.
// Transport failures are NetworkError and a stop request is Cancelled, as in HttpClient.
//
// Every request first waits for the client-side rate limit, if one is set (KubeRateLimit: the
// `--kube-api-qps` and `--kube-api-burst` of `modelcache run`, as kube-controller-manager's): a
// watch waits once, when it is (re)established, never per event.
//
// Thread-safe: a client holds its configuration and the limiter, which its copies share.

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "common/result.h"
#include "common/token_bucket.h"
#include "controller/kube/kube_config.h"

namespace modelcache::controller {

// clang-tidy 14 takes the implicit noexcept move of a nlohmann::json member for one that throws.
struct KubeReply {  // NOLINT(bugprone-exception-escape)
  long status = 0;
  nlohmann::json body;  // null if the body was not JSON
  bool ok() const { return status >= 200 && status < 300; }
  // metav1.Status "reason" of an error answer ("Conflict", "NotFound", …), "" if none.
  std::string reason() const;
};

// An error answer as an Error: 401/403 Unauthorized, 429 RateLimited, 5xx and anything else
// unexpected NetworkError; the message is "<what>: HTTP <code> <reason>: <message>".
Error ReplyError(const KubeReply& reply, std::string_view what);

// A start-up request of the daemon (the first list of ModelCaches; a node's read of its Node and
// of its report) that fails transiently — the API server restarting or overloaded, a kept-alive
// connection closed under us — is run again after 0.5, 1, 2 and 4 s (logging `what` and the
// error at warn) before its error ends the daemon, as client-go's reflectors retry theirs. A
// permanent error (Unauthorized, InvalidSpec) is returned at once; so is Cancelled.
VoidResult RetryAtStartup(const std::string& what, const std::function<VoidResult()>& step);

// The string values of an object's metadata.labels (empty when it has none).
std::map<std::string, std::string> MetadataLabels(const nlohmann::json& object);

struct WatchEvent {
  std::string type;  // ADDED | MODIFIED | DELETED | BOOKMARK | ERROR
  nlohmann::json object;
};

// The client-side rate limit: a token bucket of `burst` requests refilled at `qps` per second
// (client-go's flowcontrol.NewTokenBucketRateLimiter). qps <= 0: no limit.
struct KubeRateLimit {
  double qps = 0;
  int burst = 100;
};

// What requests wait on before they are sent. Thread-safe.
class KubeRateLimiter {
 public:
  // `clock` (for the bucket's refills; waits are real time) must outlive the limiter.
  KubeRateLimiter(KubeRateLimit limit, const Clock& clock);

  // Takes a token, waiting (in real time) until the bucket has refilled it. `what` names the
  // request for the log line of a wait longer than a second. Cancelled, without waiting out the
  // delay, when `stop` is requested or Cancel() is called.
  VoidResult Wait(std::string_view what, std::stop_token stop);
  // Ends every wait with Cancelled, now and from now on (requests that find a token still go):
  // the daemon is shutting down and a delayed request would only hold it up.
  void Cancel();

  const KubeRateLimit& limit() const { return limit_; }
  // Requests that had to wait so far.
  uint64_t waited() const;

 private:
  const KubeRateLimit limit_;
  TokenBucket bucket_;
  mutable std::mutex mu_;
  std::condition_variable_any cv_;
  bool cancelled_ = false;  // GUARDED_BY(mu_)
  uint64_t waited_ = 0;     // GUARDED_BY(mu_)
};

class KubeClient {
 public:
  // Without a limit (leader election, whose renewals must never queue behind other requests, as
  // kube-controller-manager gives it a client of its own).
  explicit KubeClient(KubeConfig config);
  // Every request waits on `limiter` (shared with the client's copies and with other clients
  // given the same one; not null).
  KubeClient(KubeConfig config, std::shared_ptr<KubeRateLimiter> limiter);

  const KubeConfig& config() const { return config_; }

  // GET the list (namespace "" = all namespaces). The reply body is the ModelCacheList.
  Result<KubeReply> List(const std::string& ns, std::stop_token stop = {}) const;

  // Watches from `resource_version` (allowWatchBookmarks=true, timeoutSeconds=`timeout`) and
  // calls `on_event` for each newline-delimited JSON event as it arrives. Returns when the server
  // ends the stream (OK), `on_event` returns false (OK), the stream breaks (NetworkError), the
  // server answers with an HTTP error (the error of ReplyError; an HTTP 410 is instead passed to
  // `on_event` as an ERROR event with its Status, code 410, and the call returns OK), or `stop`
  // is requested (Cancelled). A line that is not a JSON event is NetworkError.
  VoidResult Watch(const std::string& ns, const std::string& resource_version,
                   std::chrono::seconds timeout,
                   const std::function<bool(const WatchEvent&)>& on_event,
                   std::stop_token stop = {}) const;

  // Watch of another collection: `collection_url` is the server + path of a list, optionally
  // with a query (fieldSelector=…), as ModelCacheUrl(ns) for Watch.
  VoidResult WatchCollection(const std::string& collection_url,
                             const std::string& resource_version, std::chrono::seconds timeout,
                             const std::function<bool(const WatchEvent&)>& on_event,
                             std::stop_token stop = {}) const;

  Result<KubeReply> Get(const std::string& ns, const std::string& name,
                        std::stop_token stop = {}) const;
  // PUT of the whole object (metadata.resourceVersion is the precondition): changes metadata
  // (finalizers, labels) and spec; the server ignores .status.
  Result<KubeReply> Update(const nlohmann::json& object, std::stop_token stop = {}) const;
  // PUT .../status: changes only .status.
  Result<KubeReply> UpdateStatus(const nlohmann::json& object, std::stop_token stop = {}) const;
  // PATCH of object ns/name with a JSON merge patch (RFC 7386,
  // application/merge-patch+json). A metadata.resourceVersion in `patch` is a precondition
  // (409 Conflict when stale), as for Update.
  Result<KubeReply> MergePatch(const std::string& ns, const std::string& name,
                               const nlohmann::json& patch, std::stop_token stop = {}) const;

  // A Secret as the daemon uses it: metadata.labels and the decoded data (base64 of .data, plus
  // .stringData if present).
  struct Secret {
    std::map<std::string, std::string> labels;
    std::map<std::string, std::string> data;
  };
  // Secret ns/name. InvalidSpec if the Secret does not exist, Unauthorized on 401/403.
  Result<Secret> GetSecret(const std::string& ns, const std::string& name,
                           std::stop_token stop = {}) const;
  // GetSecret's data only.
  Result<std::map<std::string, std::string>> GetSecretData(const std::string& ns,
                                                           const std::string& name,
                                                           std::stop_token stop = {}) const;

  // ".../apis/modelcache.dev/v1alpha1[/namespaces/NS]/modelcaches[/NAME]".
  std::string ModelCacheUrl(const std::string& ns, const std::string& name = "") const;

  // Any other request: `method` on server + `path` ("/api/v1/nodes/n1"), with `body` as JSON
  // (sent unless null) of `content_type` (e.g. "application/strategic-merge-patch+json" for a
  // PATCH). The reply as for the calls above. `timeout` bounds the whole request (the Lease
  // calls use their renew deadline).
  Result<KubeReply> Call(std::string method, const std::string& path,
                         const nlohmann::json& body = nullptr,
                         std::string content_type = "application/json",
                         std::stop_token stop = {},
                         std::chrono::milliseconds timeout = std::chrono::seconds(60)) const;

 private:
  HttpRequest Request(std::string method, std::string url) const;
  Result<KubeReply> Send(HttpRequest request, std::stop_token stop,
                         std::chrono::milliseconds timeout = std::chrono::seconds(60)) const;
  // The rate limiter's wait for `request` (OK at once without a limiter).
  VoidResult Throttle(const HttpRequest& request, std::stop_token stop) const;

  KubeConfig config_;
  std::shared_ptr<KubeRateLimiter> limiter_;  // may be null
};

// RFC 4648 base64 decoding (padding optional); nullopt if `s` is not base64.
std::optional<std::string> DecodeBase64(std::string_view s);

}  // namespace modelcache::controller
