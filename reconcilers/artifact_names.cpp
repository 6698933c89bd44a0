#include "reconcilers/internal/artifact_names.h"

#include <optional>

#include <spdlog/spdlog.h>

#include "store/local_store.h"
#include "store/name_claims.h"

namespace modelcache::reconcilers {

VoidResult ArtifactNames::Claim(const crds::ObjectKey& key, const crds::ModelCacheSpec& spec,
                                const std::string& store_root, std::stop_token stop) {
  if (store_root.empty()) {
    return {};  // an S3 store without a local cache: refused when its job would start
  }
  auto opened = store::LocalStore::Open(store_root);
  if (!opened) {
    return opened.error();
  }
  std::string root = (*opened)->root();
  std::string id = crds::ArtifactSpecIdentity(spec, hf_endpoint_);
  if (claim_scope_.empty()) {
    return store::CheckName(root, spec.artifact_name, id);
  }
  auto claim = store::ClaimName(root, spec.artifact_name, Holder(key), id, stop);
  if (!claim && claim.error().reason == Reason::Cancelled) {
    return claim.error();
  }
  std::pair<std::string, std::string> held(root, spec.artifact_name);
  std::optional<std::pair<std::string, std::string>> previous;
  {
    std::lock_guard lock(mu_);
    auto it = claimed_.find(key);
    if (it != claimed_.end() && it->second != held) {
      previous = it->second;
    }
    if (claim) {
      claimed_[key] = held;
    } else if (previous) {
      claimed_.erase(key);
    }
  }
  if (previous) {
    ReleaseName(key, previous->first, previous->second);
  }
  if (!claim) {
    Error error = claim.error();
    if (error.reason == Reason::ArtifactNameConflict) {
      auto record = store::ReadNameRecord(root, spec.artifact_name);
      spdlog::warn("{}: artifact name {} of store {} is owned by {}; not caching", key.ToString(),
                   spec.artifact_name, root,
                   record && *record ? (*record)->holders.front() : std::string("another"));
      error.retry_after = name_recheck_;
    }
    return error;
  }
  return {};
}

void ArtifactNames::Release(const crds::ObjectKey& key, const std::string& deleting_root,
                            const std::string& deleting_name) {
  std::optional<std::pair<std::string, std::string>> held;
  {
    std::lock_guard lock(mu_);
    auto it = claimed_.find(key);
    if (it != claimed_.end()) {
      held = it->second;
      claimed_.erase(it);
    }
  }
  if (!held && !claim_scope_.empty() && !deleting_root.empty()) {
    if (auto opened = store::LocalStore::Open(deleting_root)) {
      held.emplace((*opened)->root(), deleting_name);
    }
  }
  if (held) {
    ReleaseName(key, held->first, held->second);
  }
}

std::string ArtifactNames::Holder(const crds::ObjectKey& key) const {
  return claim_scope_ + " " + key.ToString();
}

void ArtifactNames::ReleaseName(const crds::ObjectKey& key, const std::string& root,
                                const std::string& name) {
  if (auto r = store::ReleaseName(root, name, Holder(key)); !r) {
    spdlog::warn("{}: cannot release artifact name {} of store {}: {}", key.ToString(), name, root,
                 r.error().message);
  } else {
    spdlog::info("{}: released artifact name {} of store {}", key.ToString(), name, root);
  }
}

}  // namespace modelcache::reconcilers
