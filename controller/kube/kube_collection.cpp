#include "controller/kube/kube_collection.h"

#include <algorithm>
#include <condition_variable>
#include <utility>

#include <spdlog/spdlog.h>

#include "common/http_client.h"

namespace modelcache::controller {

using nlohmann::json;

namespace {

std::string NameOf(const json& object) {
  return object.contains("metadata") && object["metadata"].is_object()
             ? object["metadata"].value("name", "")
             : "";
}

}  // namespace

KubeCollection::KubeCollection(const KubeClient& client, Options options)
    : client_(client), options_(std::move(options)) {}

KubeCollection::~KubeCollection() { Stop(); }

VoidResult KubeCollection::List() { return ListOnce({}); }

VoidResult KubeCollection::ListOnce(std::stop_token stop) {
  std::string path = options_.path;
  if (!options_.field_selector.empty()) {
    path += "?fieldSelector=" + UrlEncode(options_.field_selector);
  }
  auto reply = client_.Call("GET", path, nullptr, "application/json", stop);
  if (!reply) {
    return reply.error();
  }
  if (!reply->ok()) {
    return ReplyError(*reply, "list " + options_.path);
  }
  const json& body = reply->body;
  if (!body.is_object() || !body.contains("items") || !body["items"].is_array()) {
    return Error(Reason::InvalidSpec, "list " + options_.path + ": the answer is not a list");
  }
  std::map<std::string, json> objects;
  for (const json& item : body["items"]) {
    if (std::string name = NameOf(item); !name.empty()) {
      objects[name] = item;
    }
  }
  std::lock_guard lock(mu_);
  objects_ = std::move(objects);
  resource_version_ = body.contains("metadata") ? body["metadata"].value("resourceVersion", "")
                                                : "";
  return {};
}

void KubeCollection::Start(std::function<void()> on_change) {
  on_change_ = std::move(on_change);
  thread_ = std::jthread([this](std::stop_token stop) { Run(stop); });
}

void KubeCollection::Stop() {
  if (thread_.joinable()) {
    thread_.request_stop();
    thread_.join();
  }
}

std::map<std::string, json> KubeCollection::Snapshot() const {
  std::lock_guard lock(mu_);
  return objects_;
}

std::optional<json> KubeCollection::Get(const std::string& name) const {
  std::lock_guard lock(mu_);
  auto it = objects_.find(name);
  return it == objects_.end() ? std::nullopt : std::optional<json>(it->second);
}

size_t KubeCollection::Size() const {
  std::lock_guard lock(mu_);
  return objects_.size();
}

void KubeCollection::Changed() {
  if (on_change_) {
    on_change_();
  }
}

void KubeCollection::Run(std::stop_token stop) {
  std::mutex sleep_mu;
  std::condition_variable_any sleep_cv;
  auto sleep = [&](std::chrono::milliseconds d) {
    std::unique_lock lock(sleep_mu);
    sleep_cv.wait_for(lock, stop, d, [] { return false; });
  };
  std::string collection = client_.config().server + options_.path;
  if (!options_.field_selector.empty()) {
    collection += "?fieldSelector=" + UrlEncode(options_.field_selector);
  }
  std::chrono::milliseconds backoff = options_.initial_backoff;
  while (!stop.stop_requested()) {
    std::string from;
    {
      std::lock_guard lock(mu_);
      from = resource_version_;
    }
    if (from.empty()) {
      if (auto r = ListOnce(stop); !r) {
        if (stop.stop_requested()) {
          return;
        }
        spdlog::warn("{}: {}", options_.path, r.error().message);
        sleep(backoff);
        backoff = std::min(backoff * 2, options_.max_backoff);
        continue;
      }
      Changed();
      std::lock_guard lock(mu_);
      from = resource_version_;
    }
    bool expired = false;
    bool delivered = false;
    auto r = client_.WatchCollection(
        collection, from, options_.watch_timeout,
        [&](const WatchEvent& e) {
          if (e.type == "ERROR") {
            expired = true;
            return false;
          }
          std::string rv = e.object.contains("metadata")
                               ? e.object["metadata"].value("resourceVersion", "")
                               : "";
          bool changed = false;
          {
            std::lock_guard lock(mu_);
            if (!rv.empty()) {
              resource_version_ = rv;
            }
            std::string name = NameOf(e.object);
            if (e.type == "ADDED" || e.type == "MODIFIED") {
              objects_[name] = e.object;
              changed = true;
            } else if (e.type == "DELETED") {
              changed = objects_.erase(name) > 0;
            }
          }
          if (changed) {
            delivered = true;
            Changed();
          }
          return true;
        },
        stop);
    if (stop.stop_requested()) {
      return;
    }
    if (expired || !r) {
      if (!r) {
        spdlog::warn("{}: watch: {}", options_.path, r.error().message);
        sleep(backoff);
        backoff = delivered ? options_.initial_backoff : std::min(backoff * 2, options_.max_backoff);
      }
      std::lock_guard lock(mu_);
      resource_version_.clear();  // list again
      continue;
    }
    backoff = options_.initial_backoff;
  }
}

}  // namespace modelcache::controller
