#include "controller/kube/node_watch.h"

#include <chrono>
#include <thread>
#include <utility>

#include <spdlog/spdlog.h>

#include "controller/kube/node_report.h"

namespace modelcache::controller {

bool SelectorMatches(const Labels& selector, const Labels& labels) {
  for (const auto& [key, value] : selector) {
    auto it = labels.find(key);
    if (it == labels.end() || it->second != value) {
      return false;
    }
  }
  return true;
}

NodeWatch::NodeWatch(const KubeClient& client, std::string node_name)
    : node_name_(std::move(node_name)),
      node_(client, KubeCollection::Options{"/api/v1/nodes", "metadata.name=" + node_name_}) {}

NodeWatch::~NodeWatch() { Stop(); }

VoidResult NodeWatch::Read() {
  // A connection the server dropped is worth a retry or two before start-up fails.
  VoidResult listed = node_.List();
  for (int attempt = 1; !listed && listed.error().reason == Reason::NetworkError && attempt < 3;
       ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200) * attempt);
    listed = node_.List();
  }
  if (!listed) {
    return Error(listed.error().reason, "--node-name: " + listed.error().message);
  }
  if (!node_.Get(node_name_)) {
    return Error(Reason::InvalidSpec, "--node-name: node \"" + node_name_ + "\" not found");
  }
  Refresh();
  return {};
}

bool NodeWatch::Refresh() {
  auto node = node_.Get(node_name_);
  if (!node) {
    return false;  // deleted: the daemon keeps the last labels (its report goes with the Node)
  }
  Labels labels = MetadataLabels(*node);
  Labels cache_labels;
  for (auto it = labels.begin(); it != labels.end();) {
    if (it->first.rfind(kCacheLabelPrefix, 0) == 0) {
      cache_labels.insert(*it);
      it = labels.erase(it);
    } else {
      ++it;
    }
  }
  std::lock_guard lock(mu_);
  cache_labels_ = std::move(cache_labels);
  uid_ = (*node)["metadata"].value("uid", "");
  bool changed = labels != labels_;
  labels_ = std::move(labels);
  return changed;
}

void NodeWatch::Start(std::function<void(const Labels&)> on_change) {
  notifier_ = std::jthread([this, on_change = std::move(on_change)](std::stop_token stop) {
    while (true) {
      {
        std::unique_lock lock(mu_);
        if (!cv_.wait(lock, stop, [this] { return changed_; })) {
          return;  // stopped
        }
        changed_ = false;
      }
      spdlog::info("node {}: labels changed", node_name_);
      on_change(labels());
    }
  });
  // Called inside the watch's request: only hand over.
  node_.Start([this] {
    if (Refresh()) {
      std::lock_guard lock(mu_);
      changed_ = true;
      cv_.notify_all();
    }
  });
}

void NodeWatch::Stop() {
  node_.Stop();
  if (notifier_.joinable()) {
    notifier_.request_stop();
    notifier_.join();
  }
}

Labels NodeWatch::labels() const {
  std::lock_guard lock(mu_);
  return labels_;
}

Labels NodeWatch::cache_labels() const {
  std::lock_guard lock(mu_);
  return cache_labels_;
}

std::string NodeWatch::uid() const {
  std::lock_guard lock(mu_);
  return uid_;
}

}  // namespace modelcache::controller
