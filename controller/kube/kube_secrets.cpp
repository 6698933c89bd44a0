#include "controller/kube/kube_secrets.h"

#include <utility>

#include <spdlog/spdlog.h>

namespace modelcache::controller {
namespace {

// A missing or unreadable Secret can be fixed without touching any resource (kubectl create
// secret, an RBAC change): the resources that need it are looked at again after this long.
constexpr std::chrono::seconds kRecheck{30};

bool IsAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

// DNS-1123 label: at most 63 of [a-z0-9-], starting and ending alphanumeric.
bool IsDnsLabel(std::string_view s) {
  if (s.empty() || s.size() > 63 || !IsAlnum(s.front()) || !IsAlnum(s.back())) {
    return false;
  }
  for (char c : s) {
    if (!IsAlnum(c) && c != '-') {
      return false;
    }
  }
  return true;
}

// DNS-1123 subdomain (what Secret names are): at most 253, dot-separated labels.
bool IsDnsSubdomain(std::string_view s) {
  if (s.empty() || s.size() > 253) {
    return false;
  }
  size_t start = 0;
  while (true) {
    size_t dot = s.find('.', start);
    if (!IsDnsLabel(s.substr(start, dot == std::string_view::npos ? s.npos : dot - start))) {
      return false;
    }
    if (dot == std::string_view::npos) {
      return true;
    }
    start = dot + 1;
  }
}

}  // namespace

Result<SecretName> ParseSecretName(std::string_view value, const std::string& default_namespace,
                                   std::string_view flag) {
  SecretName out;
  size_t slash = value.find('/');
  if (slash == std::string_view::npos) {
    out.namespace_ = default_namespace;
    out.name = std::string(value);
  } else {
    out.namespace_ = std::string(value.substr(0, slash));
    out.name = std::string(value.substr(slash + 1));
    if (!IsDnsLabel(out.namespace_)) {
      return Error(Reason::InvalidSpec,
                   std::string(flag) + " " + std::string(value) + ": namespace \"" +
                       out.namespace_ + "\" is not a DNS-1123 label (NAME or NAMESPACE/NAME)");
    }
  }
  if (!IsDnsSubdomain(out.name)) {
    return Error(Reason::InvalidSpec,
                 std::string(flag) + " " + std::string(value) + ": \"" + out.name +
                     "\" is not a Secret name (a DNS-1123 subdomain; NAME or NAMESPACE/NAME)");
  }
  return out;
}

Result<std::string> ReadHubToken(const KubeClient& client, const std::string& ns,
                                 const crds::SecretKeyRef& ref) {
  std::string what = "spec.source.tokenSecretRef: Secret \"" + ref.name + "\" key \"" + ref.key +
                     "\" in namespace \"" + ns + "\"";
  auto unusable = [&](std::string_view cause) -> Error {
    spdlog::warn("{}: not used as a Hub token: {}", what, cause);
    return {Reason::InvalidSpec,
            what + " is not usable as a Hub token (it must exist and carry the label " +
                kHubTokenLabel + "=true)",
            kRecheck};
  };
  auto secret = client.GetSecret(ns, ref.name);
  if (!secret) {
    const Error& e = secret.error();
    if (e.reason == Reason::InvalidSpec || e.reason == Reason::Unauthorized) {
      return unusable(e.message);
    }
    return Error(e.reason, what + ": " + e.message, e.retry_after);
  }
  auto label = secret->labels.find(kHubTokenLabel);
  if (label == secret->labels.end() || label->second != "true") {
    return unusable(std::string("the Secret has no label ") + kHubTokenLabel + "=true");
  }
  auto value = secret->data.find(ref.key);
  if (value == secret->data.end()) {
    return unusable("the Secret has no such key");
  }
  return std::move(value->second);
}

KubeSecretReader::KubeSecretReader(const KubeClient& client, const Clock& clock,
                                   std::chrono::milliseconds cache_time)
    : client_(client), clock_(clock), cache_time_(cache_time) {}

Result<std::map<std::string, std::string>> KubeSecretReader::Read(const SecretName& secret) {
  std::string key = secret.ToString();
  {
    std::lock_guard lock(mu_);
    auto it = cache_.find(key);
    if (it != cache_.end() && clock_.Now() - it->second.read_at < cache_time_) {
      return it->second.data;
    }
  }
  // Not under the lock: a slow API server must not hold up readers of other Secrets. Two
  // readers of one expired entry may both GET it; the later answer wins.
  Clock::TimePoint now = clock_.Now();
  auto data = client_.GetSecretData(secret.namespace_, secret.name);
  if (!data) {
    Error e = data.error();
    if (e.reason == Reason::InvalidSpec || e.reason == Reason::Unauthorized) {
      e.retry_after = kRecheck;
    }
    std::lock_guard lock(mu_);
    cache_.erase(key);
    return e;
  }
  std::lock_guard lock(mu_);
  cache_[key] = Entry{now, *data};
  return data;
}

}  // namespace modelcache::controller
