#include "controller/kube/fleet_status.h"

#include <algorithm>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "controller/kube/node_report.h"
#include "controller/kube/node_watch.h"

namespace modelcache::controller {

using nlohmann::json;

namespace {

constexpr size_t kNamedNodes = 5;

// The index of `phase` in crds::kPhases (0, Pending, for an unknown one).
size_t PhaseRank(const std::string& phase) {
  for (size_t i = 0; i < crds::kPhases.size(); ++i) {
    if (crds::kPhases[i] == phase) {
      return i;
    }
  }
  return 0;
}

// Why a node's copy is not ready, from its report entry (null: none).
std::string WhyNotReady(const json& entry, const std::string& artifact_id, bool fill_pending) {
  if (entry.is_null()) {
    return fill_pending ? "waiting for the fill" : "no copy reported yet";
  }
  std::string phase = entry.value("phase", "");
  if (phase == crds::kPhaseReady) {
    return "holds " + entry.value("artifactId", "") + ", not " + artifact_id;
  }
  if (phase == crds::kPhaseFailed) {
    return "Failed: " + entry.value("reason", "") + ": " + entry.value("message", "");
  }
  // The phase alone (no percentage): the message is part of the status, and a status write per
  // progress step of every node would be more API traffic than it is worth.
  return phase;
}

}  // namespace

void IndexFleetView(FleetView& view) {
  view.entries.clear();
  for (const auto& [name, report] : view.reports) {
    auto status = report.find("status");
    if (status == report.end() || !status->is_object()) {
      continue;
    }
    auto caches = status->find("caches");
    if (caches == status->end() || !caches->is_array()) {
      continue;
    }
    for (const json& c : *caches) {
      if (!c.is_object()) {
        continue;
      }
      crds::ObjectKey key{c.value("namespace", ""), c.value("name", "")};
      view.entries[key].emplace(name, c);  // the first entry of a resource wins, as in a scan
    }
  }
  view.indexed = true;
}

NodesFold FoldNodes(const crds::ModelCache& object, const std::string& artifact_id,
                    const FleetView& view, std::chrono::system_clock::time_point now,
                    std::chrono::milliseconds liveness_window, bool fill_pending) {
  NodesFold fold;
  std::vector<std::string> not_ready;
  const std::map<std::string, json>* by_node = nullptr;
  if (view.indexed) {
    if (auto it = view.entries.find(object.key()); it != view.entries.end()) {
      by_node = &it->second;
    }
  }
  for (const auto& [name, node] : view.nodes) {
    auto report = view.reports.find(name);
    if (report == view.reports.end() || !report->second.contains("status")) {
      continue;  // no daemon runs there
    }
    const json& status = report->second["status"];
    std::string heartbeat = status.value("heartbeatTime", "");
    if (heartbeat.empty() || now - ParseRfc3339(heartbeat) > liveness_window) {
      continue;  // its daemon stopped reporting
    }
    if (!SelectorMatches(object.spec.node_selector, MetadataLabels(node))) {
      continue;
    }
    ++fold.counts.desired;
    json entry;
    if (view.indexed) {
      if (by_node != nullptr) {
        if (auto e = by_node->find(name); e != by_node->end()) {
          entry = e->second;
        }
      }
    } else if (auto caches = status.find("caches"); caches != status.end() && caches->is_array()) {
      for (const json& c : *caches) {
        if (c.value("namespace", "") == object.metadata.namespace_ &&
            c.value("name", "") == object.metadata.name) {
          entry = c;
          break;
        }
      }
    }
    std::string phase = entry.is_null() ? "" : entry.value("phase", "");
    std::string ranked = phase.empty() ? std::string(crds::kPhasePending) : phase;
    if (fold.phase.empty() || PhaseRank(ranked) < PhaseRank(fold.phase)) {
      fold.phase = ranked;
    }
    if (phase == crds::kPhaseReady && fold.revision.empty()) {
      fold.revision = entry.value("resolvedRevision", "");
    }
    if (phase == crds::kPhaseReady &&
        (artifact_id.empty() || entry.value("artifactId", "") == artifact_id)) {
      ++fold.counts.ready;
      continue;
    }
    if (phase == crds::kPhaseFailed) {
      ++fold.counts.failed;
    }
    not_ready.push_back(name + " (" + WhyNotReady(entry, artifact_id, fill_pending) + ")");
  }
  crds::Condition& c = fold.condition;
  c.type = std::string(crds::kConditionNodesReady);
  c.observed_generation = object.metadata.generation;
  std::string counts = std::to_string(fold.counts.ready) + " of " +
                       std::to_string(fold.counts.desired) + " nodes ready";
  if (fold.counts.desired == 0) {
    c.status = "False";
    c.reason = "NoNodes";
    c.message = "no live node (a ModelCacheNode with a recent heartbeat) matches spec.nodeSelector";
  } else if (fold.counts.ready == fold.counts.desired) {
    c.status = "True";
    c.reason = "NodesReady";
    c.message = counts;
  } else {
    c.status = "False";
    c.reason = fold.counts.failed > 0 ? "NodesFailed" : "NodesNotReady";
    c.message = counts + "; not ready: ";
    for (size_t i = 0; i < not_ready.size() && i < kNamedNodes; ++i) {
      c.message += (i == 0 ? "" : ", ") + not_ready[i];
    }
    if (not_ready.size() > kNamedNodes) {
      c.message += " and " + std::to_string(not_ready.size() - kNamedNodes) + " more";
    }
  }
  return fold;
}

bool ApplyNodesFold(crds::ModelCacheStatus& status, const NodesFold& fold,
                    const std::string& now) {
  bool changed = status.nodes != fold.counts;
  status.nodes = fold.counts;
  return crds::SetCondition(status.conditions, fold.condition, now) || changed;
}

FleetAggregator::FleetAggregator(const KubeClient& client, Options options, Clock& clock)
    : options_(std::move(options)),
      clock_(clock),
      nodes_(client, KubeCollection::Options{"/api/v1/nodes", ""}),
      reports_(client, KubeCollection::Options{NodeReportPath(), ""}) {}

FleetAggregator::~FleetAggregator() { Stop(); }

VoidResult FleetAggregator::Start() {
  for (KubeCollection* c : {&nodes_, &reports_}) {
    if (auto r = c->List(); !r) {
      return r;
    }
  }
  auto changed = [this] {
    std::lock_guard lock(mu_);
    changed_ = true;
    ++version_;
    cv_.notify_all();
  };
  nodes_.Start(changed);
  reports_.Start(changed);
  thread_ = std::jthread([this](std::stop_token stop) { Run(stop); });
  return {};
}

void FleetAggregator::Stop() {
  if (thread_.joinable()) {
    thread_.request_stop();
    {
      std::lock_guard lock(mu_);
      cv_.notify_all();
    }
    thread_.join();
  }
  nodes_.Stop();
  reports_.Stop();
}

bool FleetAggregator::AnyReports() const { return reports_.Size() > 0; }

std::shared_ptr<const FleetView> FleetAggregator::View() {
  uint64_t version = 0;
  {
    std::lock_guard lock(mu_);
    if (view_ && view_version_ == version_) {
      return view_;
    }
    version = version_;
  }
  // Built outside the lock (the collections have their own). A change that lands meanwhile may
  // already be in it; it bumped version_, so the next call builds again.
  auto view = std::make_shared<FleetView>();
  view->nodes = nodes_.Snapshot();
  view->reports = reports_.Snapshot();
  IndexFleetView(*view);
  std::lock_guard lock(mu_);
  if (!view_ || version >= view_version_) {
    view_ = view;
    view_version_ = version;
  }
  return view;
}

NodesFold FleetAggregator::Fold(const crds::ModelCache& object, const std::string& artifact_id) {
  std::shared_ptr<const FleetView> view = View();
  NodesFold fold =
      FoldNodes(object, artifact_id, *view, clock_.WallNow(), options_.liveness_window,
                options_.writer_fills && artifact_id.empty());
  std::lock_guard lock(mu_);
  folded_[object.key()] = fold.counts;
  messages_[object.key()] = fold.condition.message;
  return fold;
}

void FleetAggregator::Run(std::stop_token stop) {
  const auto period = std::min<std::chrono::milliseconds>(options_.liveness_window / 5,
                                                          std::chrono::seconds(10));
  while (!stop.stop_requested()) {
    {
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, stop, period, [this] { return changed_; });
      changed_ = false;
    }
    if (stop.stop_requested()) {
      return;
    }
    // Coalesce a burst of report writes (every node reports each change) into one look.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::shared_ptr<const FleetView> view = View();
    auto now = clock_.WallNow();
    std::vector<crds::ModelCache> resources = options_.resources();
    {
      // Forget resources that went.
      std::lock_guard lock(mu_);
      std::map<crds::ObjectKey, crds::NodesStatus> kept;
      std::map<crds::ObjectKey, std::string> kept_messages;
      for (const crds::ModelCache& object : resources) {
        if (auto it = folded_.find(object.key()); it != folded_.end()) {
          kept.insert(*it);
          kept_messages[object.key()] = messages_[object.key()];
        }
      }
      folded_.swap(kept);
      messages_.swap(kept_messages);
    }
    for (const crds::ModelCache& object : resources) {
      std::string artifact_id = object.status.artifact ? object.status.artifact->id : "";
      NodesFold fold = FoldNodes(object, artifact_id, *view, now, options_.liveness_window,
                                 options_.writer_fills && artifact_id.empty());
      bool moved = false;
      {
        std::lock_guard lock(mu_);
        auto it = folded_.find(object.key());
        moved = it == folded_.end() || it->second != fold.counts ||
                messages_[object.key()] != fold.condition.message;
      }
      if (moved) {
        options_.enqueue(object.key());
      }
    }
  }
}

}  // namespace modelcache::controller
