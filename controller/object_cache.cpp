#include "controller/object_cache.h"

#include <algorithm>
#include <set>
#include <utility>

namespace modelcache::controller {

std::string_view OriginFile(std::string_view origin) {
  size_t colon = origin.rfind(':');
  if (colon == std::string_view::npos || colon + 1 == origin.size()) {
    return origin;
  }
  bool digits = std::all_of(origin.begin() + static_cast<std::ptrdiff_t>(colon) + 1, origin.end(),
                            [](char c) { return c >= '0' && c <= '9'; });
  return digits ? origin.substr(0, colon) : origin;
}

std::string TenantOf(const CachedObject& entry) {
  if (entry.origin == kKubernetesOrigin || entry.origin.empty()) {
    return entry.object.metadata.namespace_;
  }
  std::string_view file = OriginFile(entry.origin);
  size_t slash = file.find('/');
  return std::string(slash == std::string_view::npos ? file : file.substr(0, slash + 1));
}

namespace {

bool SameError(const std::optional<Error>& a, const std::optional<Error>& b) {
  if (a.has_value() != b.has_value()) {
    return false;
  }
  return !a || (a->reason == b->reason && a->message == b->message);
}

}  // namespace

bool ObjectChanged(const CachedObject& a, const CachedObject& b) {
  return !(a.object.spec == b.object.spec) ||
         a.object.metadata.generation != b.object.metadata.generation ||
         a.object.metadata.deletion_timestamp != b.object.metadata.deletion_timestamp ||
         !SameError(a.source_error, b.source_error);
}

std::optional<CachedObject> ObjectCache::Get(const crds::ObjectKey& key) const {
  std::lock_guard lock(mu_);
  auto it = objects_.find(key);
  if (it == objects_.end()) {
    return std::nullopt;
  }
  return it->second;
}

std::vector<CachedObject> ObjectCache::List() const {
  std::lock_guard lock(mu_);
  std::vector<CachedObject> out;
  out.reserve(objects_.size());
  for (const auto& [key, entry] : objects_) {
    out.push_back(entry);
  }
  return out;
}

std::vector<crds::ObjectKey> ObjectCache::Keys() const {
  std::lock_guard lock(mu_);
  std::vector<crds::ObjectKey> out;
  out.reserve(objects_.size());
  for (const auto& [key, entry] : objects_) {
    out.push_back(key);
  }
  return out;
}

size_t ObjectCache::Size() const {
  std::lock_guard lock(mu_);
  return objects_.size();
}

bool ObjectCache::Upsert(CachedObject entry) {
  std::lock_guard lock(mu_);
  crds::ObjectKey key = entry.object.key();
  auto it = objects_.find(key);
  if (it == objects_.end()) {
    objects_.emplace(std::move(key), std::move(entry));
    return true;
  }
  bool changed = ObjectChanged(it->second, entry);
  it->second = std::move(entry);
  return changed;
}

bool ObjectCache::Delete(const crds::ObjectKey& key) {
  std::lock_guard lock(mu_);
  return objects_.erase(key) > 0;
}

std::vector<crds::ObjectKey> ObjectCache::ReplaceOrigin(std::string_view file,
                                                        std::vector<CachedObject> entries) {
  std::set<crds::ObjectKey> incoming;
  for (const auto& e : entries) {
    incoming.insert(e.object.key());
  }
  std::set<crds::ObjectKey> changed;
  std::lock_guard lock(mu_);
  for (auto it = objects_.begin(); it != objects_.end();) {
    if (OriginFile(it->second.origin) == file && incoming.count(it->first) == 0) {
      changed.insert(it->first);
      it = objects_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& e : entries) {
    crds::ObjectKey key = e.object.key();
    auto it = objects_.find(key);
    if (it == objects_.end()) {
      changed.insert(key);
      objects_.emplace(std::move(key), std::move(e));
    } else {
      if (ObjectChanged(it->second, e)) {
        changed.insert(key);
      }
      it->second = std::move(e);
    }
  }
  return {changed.begin(), changed.end()};
}

std::vector<crds::ObjectKey> ObjectCache::ReplaceAll(std::vector<CachedObject> entries) {
  std::map<crds::ObjectKey, CachedObject> next;
  for (auto& e : entries) {
    crds::ObjectKey key = e.object.key();
    next.insert_or_assign(std::move(key), std::move(e));
  }
  std::vector<crds::ObjectKey> changed;
  std::lock_guard lock(mu_);
  // Both maps are ordered: one merge pass finds additions, removals and changes in key order.
  auto old_it = objects_.begin();
  auto new_it = next.begin();
  while (old_it != objects_.end() || new_it != next.end()) {
    if (new_it == next.end() || (old_it != objects_.end() && old_it->first < new_it->first)) {
      changed.push_back(old_it->first);
      ++old_it;
    } else if (old_it == objects_.end() || new_it->first < old_it->first) {
      changed.push_back(new_it->first);
      ++new_it;
    } else {
      if (ObjectChanged(old_it->second, new_it->second)) {
        changed.push_back(new_it->first);
      }
      ++old_it;
      ++new_it;
    }
  }
  objects_ = std::move(next);
  return changed;
}

}  // namespace modelcache::controller
