#include "controller/kube/kube_client.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <thread>
#include <utility>

#include <spdlog/spdlog.h>

#include "crds/model_cache.h"

namespace modelcache::controller {

using nlohmann::json;

std::string KubeReply::reason() const {
  if (body.is_object() && body.contains("reason") && body["reason"].is_string()) {
    return body["reason"].get<std::string>();
  }
  return "";
}

Error ReplyError(const KubeReply& reply, std::string_view what) {
  std::string message;
  if (reply.body.is_object() && reply.body.contains("message") &&
      reply.body["message"].is_string()) {
    message = reply.body["message"].get<std::string>();
  }
  std::string text = std::string(what) + ": HTTP " + std::to_string(reply.status) + " " +
                     reply.reason() + (message.empty() ? "" : ": " + message);
  Reason reason = Reason::NetworkError;
  if (reply.status == 401 || reply.status == 403) {
    reason = Reason::Unauthorized;
  } else if (reply.status == 429) {
    reason = Reason::RateLimited;
  }
  return {reason, text};
}

VoidResult RetryAtStartup(const std::string& what, const std::function<VoidResult()>& step) {
  std::chrono::milliseconds delay{500};
  for (int attempt = 1;; ++attempt) {
    VoidResult r = step();
    if (r || !IsTransient(r.error().reason) || r.error().reason == Reason::Cancelled ||
        attempt == 5) {
      return r;
    }
    spdlog::warn("{}: {}; retrying in {} ms", what, r.error().message, delay.count());
    std::this_thread::sleep_for(delay);
    delay *= 2;
  }
}

std::map<std::string, std::string> MetadataLabels(const json& object) {
  std::map<std::string, std::string> labels;
  if (object.is_object() && object.contains("metadata") && object["metadata"].is_object() &&
      object["metadata"].contains("labels") && object["metadata"]["labels"].is_object()) {
    for (const auto& [key, value] : object["metadata"]["labels"].items()) {
      if (value.is_string()) {
        labels[key] = value.get<std::string>();
      }
    }
  }
  return labels;
}

std::optional<std::string> DecodeBase64(std::string_view s) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  size_t padding = 0;
  for (char c : s) {
    int v = -1;
    if (c >= 'A' && c <= 'Z') {
      v = c - 'A';
    } else if (c >= 'a' && c <= 'z') {
      v = c - 'a' + 26;
    } else if (c >= '0' && c <= '9') {
      v = c - '0' + 52;
    } else if (c == '+') {
      v = 62;
    } else if (c == '/') {
      v = 63;
    } else if (c == '=') {
      ++padding;
      continue;
    } else {
      return std::nullopt;
    }
    if (padding != 0) {
      return std::nullopt;  // data after padding
    }
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  if (bits >= 6 || padding > 2) {
    return std::nullopt;
  }
  return out;
}

KubeRateLimiter::KubeRateLimiter(KubeRateLimit limit, const Clock& clock)
    : limit_(limit), bucket_(limit.qps, limit.burst, clock) {}

VoidResult KubeRateLimiter::Wait(std::string_view what, std::stop_token stop) {
  std::chrono::nanoseconds delay = bucket_.Reserve();
  if (delay.count() <= 0) {
    return {};
  }
  std::unique_lock lock(mu_);
  ++waited_;
  if (cancelled_) {
    return Error(Reason::Cancelled, std::string(what) + ": shutting down");
  }
  // client-go logs a long client-side wait, so that a slow controller shows why.
  auto seconds = std::chrono::duration<double>(delay).count();
  if (delay > std::chrono::seconds(1)) {
    spdlog::info("kubernetes: {} waits {:.1f} s for the client-side rate limit (--kube-api-qps "
                 "{}, --kube-api-burst {})",
                 what, seconds, limit_.qps, limit_.burst);
  } else {
    spdlog::debug("kubernetes: {} waits {:.3f} s for the client-side rate limit", what, seconds);
  }
  cv_.wait_for(lock, stop, delay, [&] { return cancelled_; });
  if (cancelled_ || stop.stop_requested()) {
    return Error(Reason::Cancelled, std::string(what) + ": stopped while waiting for the "
                                                         "client-side rate limit");
  }
  return {};
}

void KubeRateLimiter::Cancel() {
  std::lock_guard lock(mu_);
  cancelled_ = true;
  cv_.notify_all();
}

uint64_t KubeRateLimiter::waited() const {
  std::lock_guard lock(mu_);
  return waited_;
}

KubeClient::KubeClient(KubeConfig config) : config_(std::move(config)) {}

KubeClient::KubeClient(KubeConfig config, std::shared_ptr<KubeRateLimiter> limiter)
    : config_(std::move(config)), limiter_(std::move(limiter)) {}

VoidResult KubeClient::Throttle(const HttpRequest& request, std::stop_token stop) const {
  if (!limiter_) {
    return {};
  }
  // The path without the server and the query: "PATCH /apis/…/modelcaches/NAME".
  std::string_view url = request.url;
  url.remove_prefix(std::min(url.size(), config_.server.size()));
  url = url.substr(0, url.find('?'));
  return limiter_->Wait(request.method + " " + std::string(url), stop);
}

std::string KubeClient::ModelCacheUrl(const std::string& ns, const std::string& name) const {
  std::string url = config_.server + "/apis/" + std::string(crds::kApiVersion);
  if (!ns.empty()) {
    url += "/namespaces/";
    url += UrlEncode(ns);
  }
  url += '/';
  url += crds::kPlural;
  if (!name.empty()) {
    url += '/';
    url += UrlEncode(name);
  }
  return url;
}

HttpRequest KubeClient::Request(std::string method, std::string url) const {
  HttpRequest req;
  req.method = std::move(method);
  req.url = std::move(url);
  req.tls = config_.tls;
  req.headers.emplace_back("Accept", "application/json");
  if (config_.token) {
    std::string token = config_.token();
    if (!token.empty()) {
      req.headers.emplace_back("Authorization", "Bearer " + token);
    }
  }
  return req;
}

Result<KubeReply> KubeClient::Send(HttpRequest request, std::stop_token stop,
                                   std::chrono::milliseconds timeout) const {
  if (auto waited = Throttle(request, stop); !waited) {
    return waited.error();
  }
  request.total_timeout = std::max(timeout, std::chrono::milliseconds(1));
  request.connect_timeout = std::min(request.connect_timeout, request.total_timeout);
  auto r = HttpClient::Send(request, stop);
  if (!r) {
    return r.error();
  }
  KubeReply reply;
  reply.status = r->status;
  reply.body = json::parse(r->body, nullptr, /*allow_exceptions=*/false);
  if (reply.body.is_discarded()) {
    reply.body = nullptr;
  }
  return reply;
}

Result<KubeReply> KubeClient::Call(std::string method, const std::string& path, const json& body,
                                   std::string content_type, std::stop_token stop,
                                   std::chrono::milliseconds timeout) const {
  HttpRequest req = Request(std::move(method), config_.server + path);
  if (!body.is_null()) {
    req.headers.emplace_back("Content-Type", std::move(content_type));
    req.body = body.dump();
  }
  return Send(std::move(req), stop, timeout);
}

Result<KubeReply> KubeClient::List(const std::string& ns, std::stop_token stop) const {
  return Send(Request("GET", ModelCacheUrl(ns)), stop);
}

Result<KubeReply> KubeClient::Get(const std::string& ns, const std::string& name,
                                  std::stop_token stop) const {
  return Send(Request("GET", ModelCacheUrl(ns, name)), stop);
}

namespace {

std::string MetaField(const json& object, const char* field) {
  if (object.contains("metadata") && object["metadata"].is_object() &&
      object["metadata"].contains(field) && object["metadata"][field].is_string()) {
    return object["metadata"][field].get<std::string>();
  }
  return "";
}

}  // namespace

Result<KubeReply> KubeClient::Update(const json& object, std::stop_token stop) const {
  HttpRequest req =
      Request("PUT", ModelCacheUrl(MetaField(object, "namespace"), MetaField(object, "name")));
  req.headers.emplace_back("Content-Type", "application/json");
  req.body = object.dump();
  return Send(std::move(req), stop);
}

Result<KubeReply> KubeClient::UpdateStatus(const json& object, std::stop_token stop) const {
  HttpRequest req = Request(
      "PUT", ModelCacheUrl(MetaField(object, "namespace"), MetaField(object, "name")) + "/status");
  req.headers.emplace_back("Content-Type", "application/json");
  req.body = object.dump();
  return Send(std::move(req), stop);
}

Result<KubeReply> KubeClient::MergePatch(const std::string& ns, const std::string& name,
                                         const json& patch, std::stop_token stop) const {
  HttpRequest req = Request("PATCH", ModelCacheUrl(ns, name));
  req.headers.emplace_back("Content-Type", "application/merge-patch+json");
  req.body = patch.dump();
  return Send(std::move(req), stop);
}

VoidResult KubeClient::Watch(const std::string& ns, const std::string& resource_version,
                             std::chrono::seconds timeout,
                             const std::function<bool(const WatchEvent&)>& on_event,
                             std::stop_token stop) const {
  return WatchCollection(ModelCacheUrl(ns), resource_version, timeout, on_event, stop);
}

VoidResult KubeClient::WatchCollection(const std::string& collection_url,
                                       const std::string& resource_version,
                                       std::chrono::seconds timeout,
                                       const std::function<bool(const WatchEvent&)>& on_event,
                                       std::stop_token stop) const {
  std::string url = collection_url +
                    (collection_url.find('?') == std::string::npos ? "?" : "&") +
                    "watch=1&allowWatchBookmarks=true&timeoutSeconds=" +
                    std::to_string(timeout.count());
  if (!resource_version.empty()) {
    url += "&resourceVersion=" + UrlEncode(resource_version);
  }
  HttpRequest req = Request("GET", url);
  // Only the (re)establishment of a watch is rate-limited, not its events.
  if (auto waited = Throttle(req, stop); !waited) {
    return waited;
  }
  // A quiet watch is normal: no stall limit; the server ends the stream after `timeout`, and the
  // total limit only catches a server that does not.
  req.stall_timeout = std::chrono::milliseconds(0);
  req.total_timeout = timeout + std::chrono::seconds(30);

  long status = 0;
  std::string error_body;
  std::string buffer;
  std::optional<Error> parse_error;
  bool stopped_by_callback = false;
  HttpStreamHandler handler;
  handler.on_headers = [&](const HttpResponse& r) {
    status = r.status;
    return true;
  };
  handler.on_data = [&](std::string_view data) {
    if (status < 200 || status >= 300) {
      error_body += data;
      return error_body.size() < (1 << 20);
    }
    buffer += data;
    size_t start = 0;
    size_t nl = 0;
    while ((nl = buffer.find('\n', start)) != std::string::npos) {
      std::string_view line(buffer.data() + start, nl - start);
      start = nl + 1;
      if (line.empty() || line == "\r") {
        continue;
      }
      json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded() || !j.is_object() || !j.contains("type") || !j["type"].is_string() ||
          !j.contains("object")) {
        parse_error = Error(Reason::NetworkError,
                            "watch " + collection_url +
                                ": not a watch event: " + std::string(line.substr(0, 200)));
        return false;
      }
      WatchEvent event{j["type"].get<std::string>(), std::move(j["object"])};
      if (!on_event(event)) {
        stopped_by_callback = true;
        return false;
      }
    }
    buffer.erase(0, start);
    return true;
  };
  auto r = HttpClient::Stream(req, handler, stop);
  if (parse_error) {
    return *parse_error;
  }
  if (stopped_by_callback) {
    return {};
  }
  if (!r) {
    return r.error();
  }
  if (r->status < 200 || r->status >= 300) {
    KubeReply reply{r->status, json::parse(error_body, nullptr, false)};
    if (reply.body.is_discarded()) {
      reply.body = nullptr;
    }
    if (reply.status == 410) {
      // Some servers answer an expired resourceVersion with HTTP 410 instead of an ERROR event;
      // callers see both the same way.
      json gone = reply.body.is_object() ? reply.body : json{{"kind", "Status"}, {"code", 410}};
      gone["code"] = 410;
      on_event(WatchEvent{"ERROR", gone});
      return {};
    }
    return ReplyError(reply, "watch " + collection_url);
  }
  return {};
}

Result<KubeClient::Secret> KubeClient::GetSecret(const std::string& ns, const std::string& name,
                                                 std::stop_token stop) const {
  std::string url =
      config_.server + "/api/v1/namespaces/" + UrlEncode(ns) + "/secrets/" + UrlEncode(name);
  auto r = Send(Request("GET", url), stop);
  if (!r) {
    return r.error();
  }
  std::string what = "secret " + ns + "/" + name;
  if (r->status == 404) {
    return Error(Reason::InvalidSpec, what + " not found");
  }
  if (!r->ok()) {
    return ReplyError(*r, "get " + what);
  }
  Secret secret;
  const json& body = r->body;
  secret.labels = MetadataLabels(body);
  if (body.is_object() && body.contains("data") && body["data"].is_object()) {
    for (const auto& [key, value] : body["data"].items()) {
      std::optional<std::string> decoded =
          value.is_string() ? DecodeBase64(value.get<std::string>()) : std::nullopt;
      if (!decoded) {
        return Error(Reason::InvalidSpec, fmt::format("{}: data.{} is not base64", what, key));
      }
      secret.data[key] = std::move(*decoded);
    }
  }
  if (body.is_object() && body.contains("stringData") && body["stringData"].is_object()) {
    for (const auto& [key, value] : body["stringData"].items()) {
      if (value.is_string()) {
        secret.data[key] = value.get<std::string>();
      }
    }
  }
  return secret;
}

Result<std::map<std::string, std::string>> KubeClient::GetSecretData(const std::string& ns,
                                                                     const std::string& name,
                                                                     std::stop_token stop) const {
  auto secret = GetSecret(ns, name, stop);
  if (!secret) {
    return secret.error();
  }
  return std::move(secret->data);
}

}  // namespace modelcache::controller
