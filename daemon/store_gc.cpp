#include "daemon/store_gc.h"

#include <algorithm>
#include <filesystem>
#include <utility>

#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>

#include "common/guard.h"
#include "common/units.h"
#include "store/store_users.h"

namespace modelcache::controller {
namespace {

// A spec.storage.uri as a normalized local path ("" for s3:// and other schemes). Percent-escapes
// are rare in store paths; an escaped uri simply does not match and is skipped.
std::string LocalRoot(const std::string& uri) {
  std::string path = uri;
  if (path.rfind("file://", 0) == 0) {
    path = path.substr(7);
  } else if (path.find("://") != std::string::npos) {
    return "";
  }
  std::error_code ec;
  std::string norm = std::filesystem::absolute(path, ec).lexically_normal().string();
  while (norm.size() > 1 && norm.back() == '/') {
    norm.pop_back();
  }
  return norm;
}

}  // namespace

store::GcReferences ReferencesOf(const std::vector<crds::ModelCache>& objects,
                                 const std::string& store_root) {
  store::GcReferences refs;
  std::string root = LocalRoot(store_root);
  for (const auto& o : objects) {
    if (!o.spec.storage.uri.empty() && LocalRoot(o.spec.storage.uri) != root) {
      continue;
    }
    if (!o.spec.artifact_name.empty()) {
      refs.names.insert(o.spec.artifact_name);
    }
    if (o.status.artifact && !o.status.artifact->name.empty()) {
      refs.names.insert(o.status.artifact->name);
      refs.versions.insert({o.status.artifact->name, o.status.artifact->version});
    }
    if (!o.status.resolved_revision.empty() && !o.spec.source.repo.empty()) {
      std::string type = o.spec.source.type.empty() ? "model" : o.spec.source.type;
      refs.snapshots.insert(
          {store::RepoFolderName({type, o.spec.source.repo}), o.status.resolved_revision});
    }
  }
  return refs;
}

StoreCollector::StoreCollector(
    Options options, std::function<Result<store::GcReferences>()> references,
    std::function<void(const std::vector<std::string>& names, bool all)> affected)
    : options_(std::move(options)),
      references_(std::move(references)),
      affected_(std::move(affected)) {
  options_.gc.dry_run = false;
}

StoreCollector::~StoreCollector() { Stop(); }

void StoreCollector::Stop() {
  if (thread_.joinable()) {
    thread_.request_stop();
    cv_.notify_all();
    thread_.join();
    // The record outlives the daemon (until it expires): make it say what the daemon held last.
    LogExceptions("store user record", [this] {
      if (auto refs = references_()) {
        Publish(*refs);
      }
    });
  }
}

void StoreCollector::Start() {
  if (!enabled() && options_.user_id.empty()) {
    return;
  }
  thread_ = std::jthread([this](std::stop_token stop) {
    auto heartbeat =
        std::chrono::duration_cast<std::chrono::milliseconds>(store::kStoreUserHeartbeat);
    auto period = enabled() ? std::min(heartbeat, options_.interval) : heartbeat;
    auto next_gc = std::chrono::steady_clock::now();
    bool triggered = true;
    while (!stop.stop_requested()) {
      if (enabled() && (triggered || std::chrono::steady_clock::now() >= next_gc)) {
        LogExceptions("store collector", [this] { RunOnce(); });
        next_gc = std::chrono::steady_clock::now() + options_.interval;
      } else if (!options_.user_id.empty()) {
        LogExceptions("store user record", [this] {
          if (auto refs = references_()) {
            Publish(*refs);
          }
        });
      }
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, stop, period, [this] { return triggered_ || touched_; });
      triggered = std::exchange(triggered_, false);
      touched_ = false;
    }
  });
}

void StoreCollector::Trigger() {
  {
    std::lock_guard lock(mu_);
    triggered_ = true;
  }
  cv_.notify_all();
}

void StoreCollector::Touch() {
  {
    std::lock_guard lock(mu_);
    touched_ = true;
  }
  cv_.notify_all();
}

void StoreCollector::Publish(const store::GcReferences& refs) {
  if (options_.user_id.empty()) {
    return;
  }
  store::StoreUserRecord record;
  record.id = options_.user_id;
  record.description = options_.user_description;
  record.heartbeat = std::chrono::duration_cast<std::chrono::seconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
  record.refs = refs;
  if (auto r = store::WriteStoreUser(options_.store_root, record); !r) {
    spdlog::warn("store user record: {}", r.error().message);
  }
}

std::optional<crds::Condition> StoreCollector::ConditionFor(const std::string& name) const {
  std::lock_guard lock(mu_);
  crds::Condition c;
  c.type = "Retained";
  c.status = "True";
  if (!over_limits_.empty()) {
    c.reason = "Kept";
    c.message = over_limits_;
    return c;
  }
  auto it = evicted_.find(name);
  if (it == evicted_.end()) {
    return std::nullopt;
  }
  c.reason = "Evicted";
  c.message = it->second;
  return c;
}

void StoreCollector::RunOnce() {
  auto opened = store::LocalStore::Open(options_.store_root);
  if (!opened) {
    spdlog::warn("gc: {}", opened.error().message);
    return;
  }
  auto refs = references_();
  if (!refs) {
    spdlog::warn("gc: skipped, cannot gather references: {}", refs.error().message);
    return;
  }
  Publish(*refs);
  // Every other daemon of this store: what they reference is kept too.
  auto others = store::ReadStoreUsers((*opened)->root(),
                                      std::chrono::duration_cast<std::chrono::seconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count(),
                                      options_.user_id);
  if (!others) {
    spdlog::warn("gc: skipped, cannot read the store's users: {}", others.error().message);
    return;
  }
  store::MergeReferences(*refs, others->refs);
  auto report = store::RunGc(**opened, *refs, options_.gc);
  if (!report) {
    spdlog::warn("gc: {}", report.error().message);
    return;
  }
  std::vector<std::string> names;
  std::string over;
  if (report->over_limits) {
    over = "the store is over its limits (" + FormatBytes(report->used_bytes) + " used, " +
           FormatBytes(report->free_bytes) + " free; " + FormatBytes(report->needed_bytes) +
           " to free) and everything left is referenced; this artifact was kept";
  }
  if (!report->items.empty() || report->over_limits) {
    spdlog::info("gc: removed {} items, freed {} ({} used, {} free before){}{}",
                 report->items.size(), FormatBytes(report->freed_bytes),
                 FormatBytes(report->used_bytes), FormatBytes(report->free_bytes),
                 report->over_limits ? "; still over the limits: the rest is referenced" : "",
                 report->busy.empty() ? "" : "; busy, left for later: " + report->busy.front());
  }
  for (const auto& item : report->items) {
    spdlog::info("gc: removed {} {} ({}): {}", store::GcKindName(item.kind), item.path,
                 FormatBytes(item.freed_bytes), item.why);
  }
  bool was_over = false;
  {
    std::lock_guard lock(mu_);
    for (const auto& [name, versions] : report->evicted_versions) {
      std::string list;
      for (const auto& v : versions) {
        list += (list.empty() ? "" : ", ") + v;
      }
      evicted_[name] = fmt::format(
          "store garbage collection evicted {} older version{} of {} ({}); the version in use is "
          "kept",
          versions.size(), versions.size() == 1 ? "" : "s", name, list);
      names.push_back(name);
    }
    was_over = !over_limits_.empty();
    over_limits_ = over;
  }
  if (affected_ && (!names.empty() || was_over != report->over_limits)) {
    affected_(names, was_over != report->over_limits);
  }
}

}  // namespace modelcache::controller
