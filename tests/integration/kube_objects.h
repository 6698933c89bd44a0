#pragma once

// What the integration tests of the Kubernetes mode share: the API-server imitation's options,
// ModelCache objects as the API server stores them, and reading their conditions.

#include <chrono>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/fixtures/kube/fake_apiserver.h"

namespace modelcache::itest {

// The bearer token the tests give the controller's service account.
inline constexpr char kControllerToken[] = "controller-token";

// The imitation with watch bookmarks every 200 ms (a real API server sends one about a minute).
inline testing::FakeApiServerOptions ApiOptions() {
  testing::FakeApiServerOptions o;
  o.bookmark_interval = std::chrono::milliseconds(200);
  return o;
}

// A ModelCache in namespace "default" caching `repo`; `extra_spec` is merged into its spec.
inline nlohmann::json ModelCacheObject(const std::string& name, const std::string& repo,
                                       const nlohmann::json& extra_spec = nlohmann::json::object()) {
  nlohmann::json spec = {{"source", {{"repo", repo}}}};
  spec.update(extra_spec);
  return {{"apiVersion", "modelcache.dev/v1alpha1"},
          {"kind", "ModelCache"},
          {"metadata", {{"name", name}, {"namespace", "default"}}},
          {"spec", spec}};
}

// The Ready condition of `object` (an empty object if it has none).
inline nlohmann::json ReadyCondition(const nlohmann::json& object) {
  if (object.contains("status") && object["status"].contains("conditions")) {
    for (const nlohmann::json& c : object["status"]["conditions"]) {
      if (c.value("type", "") == "Ready") {
        return c;
      }
    }
  }
  return nlohmann::json::object();
}

}  // namespace modelcache::itest
