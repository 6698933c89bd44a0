#include "controller/kube/node_report.h"

#include <algorithm>
#include <utility>

#include <spdlog/spdlog.h>

#include "common/http_client.h"
#include "common/sha256.h"

namespace modelcache::controller {

using nlohmann::json;

namespace {
constexpr std::chrono::milliseconds kCarriedRecheck{1000};
}  // namespace

std::string NodeReportPath(const std::string& name) {
  std::string path = "/apis/" + std::string(crds::kGroup) + "/" + std::string(crds::kVersion) +
                     "/" + std::string(kNodeReportPlural);
  return name.empty() ? path : path + "/" + UrlEncode(name);
}

std::string CacheLabelKey(const std::string& ns, const std::string& name) {
  std::string key = ns + "." + name;
  if (key.size() <= 63) {
    return key;
  }
  return key.substr(0, 50) + "-" + Sha256Hex(key).substr(0, 12);
}

namespace {

// artifacts/<name>/current beside the version directory status.artifact.path names: the path a
// workload on the node mounts, which follows new versions.
std::string StablePath(const crds::ModelCacheStatus& s) {
  if (!s.artifact || s.artifact->path.empty()) {
    return "";
  }
  const std::string& path = s.artifact->path;
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(0, slash) + "/current";
}

}  // namespace

json NodeCacheEntry(const crds::ModelCache& object) {
  const crds::ModelCacheStatus& s = object.status;
  json entry = {{"namespace", object.metadata.namespace_},
                {"name", object.metadata.name},
                {"phase", s.phase.empty() ? std::string(crds::kPhasePending) : s.phase},
                {"resolvedRevision", s.resolved_revision},
                {"artifactId", s.artifact ? s.artifact->id : ""},
                {"path", StablePath(s)},
                {"bytesDone", 0},
                {"bytesTotal", 0},
                {"reason", ""},
                {"message", ""}};
  if (s.progress) {
    entry["bytesDone"] = s.progress->bytes_done;
    entry["bytesTotal"] = s.progress->bytes_total;
  } else if (s.artifact && s.phase == crds::kPhaseReady) {
    entry["bytesDone"] = s.artifact->size_bytes;
    entry["bytesTotal"] = s.artifact->size_bytes;
  }
  if (const crds::Condition* ready = crds::FindCondition(s.conditions, "Ready")) {
    entry["reason"] = ready->reason;
    entry["message"] = ready->message;
  }
  return entry;
}

NodeReporter::NodeReporter(const KubeClient& client, NodeReportOptions options, Clock& clock)
    : client_(client), options_(std::move(options)), clock_(clock) {}

NodeReporter::~NodeReporter() { Stop(); }

VoidResult NodeReporter::Start() {
  if (auto r = EnsureReport(); !r) {
    return r;
  }
  thread_ = std::jthread([this](std::stop_token stop) { Run(stop); });
  return {};
}

void NodeReporter::Stop() {
  if (thread_.joinable()) {
    thread_.request_stop();
    {
      std::lock_guard lock(mu_);
      cv_.notify_all();
    }
    thread_.join();
  }
}

VoidResult NodeReporter::EnsureReport() {
  const std::string what = "ModelCacheNode " + options_.node_name;
  json owner = json::array({{{"apiVersion", "v1"},
                             {"kind", "Node"},
                             {"name", options_.node_name},
                             {"uid", options_.node_uid}}});
  auto got = client_.Call("GET", NodeReportPath(options_.node_name));
  if (!got) {
    return got.error();
  }
  if (got->ok()) {
    const json& meta = got->body["metadata"];
    if (!meta.contains("ownerReferences") || meta["ownerReferences"] != owner) {
      // A Node of the same name was recreated before the garbage collector took the old report.
      auto patched = client_.Call("PATCH", NodeReportPath(options_.node_name),
                                  {{"metadata", {{"ownerReferences", owner}}}},
                                  "application/merge-patch+json");
      if (!patched) {
        return patched.error();
      }
      if (!patched->ok()) {
        return ReplyError(*patched, "patch " + what);
      }
    }
    if (options_.source_has && got->body.contains("status") &&
        got->body["status"].contains("caches") && got->body["status"]["caches"].is_array()) {
      std::lock_guard lock(mu_);
      for (const json& entry : got->body["status"]["caches"]) {
        crds::ObjectKey key{entry.value("namespace", ""), entry.value("name", "")};
        if (!key.name.empty() && statuses_.count(key) == 0) {
          carried_[key] = entry;
        }
      }
    }
    return {};
  }
  if (got->status != 404) {
    return ReplyError(*got, "get " + what);
  }
  json report = {{"apiVersion", std::string(crds::kApiVersion)},
                 {"kind", std::string(kNodeReportKind)},
                 {"metadata", {{"name", options_.node_name}, {"ownerReferences", owner}}}};
  auto created = client_.Call("POST", NodeReportPath(), report);
  if (!created) {
    return created.error();
  }
  if (!created->ok() && created->status != 409) {  // 409: made meanwhile, by an earlier run
    return ReplyError(*created, "create " + what);
  }
  return {};
}

json NodeReporter::ComposeStatus() {
  if (options_.source_synced && options_.source_synced()) {
    // The first full list is in: entries of resources gone while this node was away go.
    for (auto it = carried_.begin(); it != carried_.end();) {
      it = options_.source_has(it->first) ? std::next(it) : carried_.erase(it);
    }
  }
  std::map<crds::ObjectKey, json> entries = carried_;
  for (const auto& [key, object] : statuses_) {
    entries[key] = NodeCacheEntry(object);
  }
  json caches = json::array();
  int64_t ready = 0;
  for (auto& [key, entry] : entries) {
    ready += entry.value("phase", "") == crds::kPhaseReady ? 1 : 0;
    caches.push_back(std::move(entry));
  }
  json status = {{"heartbeatTime", FormatRfc3339(clock_.WallNow())},
                 {"cachesReady", ready},
                 {"cachesTotal", static_cast<int64_t>(caches.size())},
                 {"caches", caches}};
  if (options_.measure_store) {
    auto now = clock_.Now();
    // A walk of the store: on the heartbeat, or when the Ready copies changed (a copy published
    // or gone), not on every progress step.
    if (!usage_ || now - usage_at_ >= options_.heartbeat_interval || ready != usage_ready_) {
      usage_ready_ = ready;
      if (auto usage = options_.measure_store(); usage) {
        usage_ = *usage;
        usage_at_ = now;
      } else {
        spdlog::warn("node report: {}", usage.error().message);
      }
    }
    if (usage_) {
      status["store"] = {{"usedBytes", usage_->first}, {"freeBytes", usage_->second}};
    }
  }
  return status;
}

VoidResult NodeReporter::Publish() {
  json status;
  {
    std::lock_guard lock(mu_);
    status = ComposeStatus();
    dirty_ = false;
  }
  // A merge patch replaces status.caches as a whole (RFC 7386 replaces arrays): the report is
  // exactly this node's current view. No resourceVersion: the daemon is the only writer.
  auto reply = client_.Call("PATCH", NodeReportPath(options_.node_name) + "/status",
                            {{"status", status}}, "application/merge-patch+json");
  VoidResult result;
  if (!reply) {
    result = reply.error();
  } else if (reply->status == 404) {
    // Deleted under us (by hand, or with a Node that has been recreated): make it again.
    result = EnsureReport();
    if (result) {
      result = Error(Reason::NetworkError, "ModelCacheNode " + options_.node_name +
                                               " was missing; created it again");
    }
  } else if (!reply->ok()) {
    result = ReplyError(*reply, "write ModelCacheNode " + options_.node_name + " status");
  }
  if (result && options_.cache_labels) {
    result = LabelNode(status["caches"]);
  }
  std::lock_guard lock(mu_);
  if (result) {
    ++publishes_;
  } else {
    dirty_ = true;
  }
  return result;
}

VoidResult NodeReporter::LabelNode(const json& caches) {
  std::map<std::string, std::string> want;
  for (const json& c : caches) {
    if (c.value("phase", "") == crds::kPhaseReady) {
      want[std::string(kCacheLabelPrefix) +
           CacheLabelKey(c.value("namespace", ""), c.value("name", ""))] =
          std::string(kCacheLabelValue);
    }
  }
  std::map<std::string, std::string> have = options_.cache_labels();
  if (want == have) {
    return {};
  }
  json labels = json::object();
  for (const auto& [key, value] : have) {
    if (want.count(key) == 0) {
      labels[key] = nullptr;  // removes it
    }
  }
  for (const auto& [key, value] : want) {
    labels[key] = value;
  }
  auto reply = client_.Call("PATCH", "/api/v1/nodes/" + UrlEncode(options_.node_name),
                            {{"metadata", {{"labels", labels}}}},
                            "application/strategic-merge-patch+json");
  if (!reply) {
    return reply.error();
  }
  if (!reply->ok()) {
    return ReplyError(*reply, "label node " + options_.node_name);
  }
  return {};
}

void NodeReporter::Run(std::stop_token stop) {
  auto last = std::chrono::steady_clock::time_point{};
  while (!stop.stop_requested()) {
    auto result = Publish();
    last = std::chrono::steady_clock::now();
    if (!result) {
      spdlog::warn("node report: {}", result.error().message);
    }
    std::unique_lock lock(mu_);
    if (!result) {
      cv_.wait_for(lock, stop, options_.retry_interval, [] { return false; });
      continue;
    }
    // Wait for a change (or the heartbeat), then let a burst of changes settle into one write.
    // While entries carried over from an earlier run wait for the source's first list, look again
    // soon: a resource deleted while the node was away must leave the report without waiting for
    // a change or the heartbeat.
    auto next = last + (carried_.empty() ? options_.heartbeat_interval
                                         : std::min<std::chrono::milliseconds>(
                                               options_.heartbeat_interval, kCarriedRecheck));
    cv_.wait_until(lock, stop, next, [this] { return dirty_; });
    if (dirty_) {
      cv_.wait_until(lock, stop, last + options_.min_interval, [] { return false; });
    }
  }
}

Result<std::optional<crds::ModelCache>> NodeReporter::Read(const crds::ObjectKey& key) const {
  std::lock_guard lock(mu_);
  auto it = statuses_.find(key);
  if (it == statuses_.end()) {
    return std::optional<crds::ModelCache>();
  }
  return std::optional<crds::ModelCache>(it->second);
}

VoidResult NodeReporter::Write(const crds::ModelCache& object_with_status) {
  std::lock_guard lock(mu_);
  statuses_[object_with_status.key()] = object_with_status;
  carried_.erase(object_with_status.key());
  dirty_ = true;
  cv_.notify_all();
  return {};
}

VoidResult NodeReporter::Remove(const crds::ObjectKey& key) {
  std::lock_guard lock(mu_);
  bool had = statuses_.erase(key) + carried_.erase(key) > 0;
  if (had) {
    dirty_ = true;
    cv_.notify_all();
  }
  return {};
}

Result<std::vector<crds::ModelCache>> NodeReporter::List() const {
  std::lock_guard lock(mu_);
  std::vector<crds::ModelCache> out;
  for (const auto& [key, object] : statuses_) {
    out.push_back(object);
  }
  return out;
}

uint64_t NodeReporter::publishes() const {
  std::lock_guard lock(mu_);
  return publishes_;
}

}  // namespace modelcache::controller
