// The fleet fold (controller/kube/fleet_status.h): which nodes are desired, ready, failed, and what
// NodesReady says.

#include "controller/kube/fleet_status.h"

#include <chrono>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "common/sha256.h"
#include "controller/kube/fleet_writer.h"
#include "controller/kube/node_report.h"

namespace modelcache::controller {
namespace {

using nlohmann::json;
using std::chrono::minutes;
using std::chrono::seconds;

const auto kNow = std::chrono::system_clock::time_point(seconds(1'800'000'000));

json Node(const std::map<std::string, std::string>& labels) {
  return {{"metadata", {{"labels", labels}}}};
}

json Report(std::chrono::system_clock::time_point heartbeat, const json& caches) {
  return {{"status", {{"heartbeatTime", FormatRfc3339(heartbeat)}, {"caches", caches}}}};
}

json Entry(const std::string& phase, const std::string& artifact = "m@sha256:1",
           const std::string& reason = "", const std::string& message = "") {
  return {{"namespace", "default"}, {"name", "m"},       {"phase", phase},
          {"artifactId", artifact}, {"reason", reason}, {"message", message}};
}

crds::ModelCache Object(const std::map<std::string, std::string>& selector) {
  crds::ModelCache mc;
  mc.metadata.namespace_ = "default";
  mc.metadata.name = "m";
  mc.metadata.generation = 3;
  mc.spec.node_selector = selector;
  return mc;
}

TEST(FleetFoldTest, CountsLiveMatchingNodesAndNamesThoseNotReady) {
  FleetView view;
  view.nodes = {{"a", Node({{"gpu", "l40s"}})}, {"b", Node({{"gpu", "l40s"}})},
                {"c", Node({{"gpu", "l40s"}})}, {"d", Node({{"gpu", "h100"}})},
                {"e", Node({{"gpu", "l40s"}})}, {"f", Node({{"gpu", "l40s"}})}};
  view.reports = {
      {"a", Report(kNow - seconds(10), json::array({Entry("Ready")}))},
      {"b", Report(kNow, json::array({Entry("Downloading")}))},
      {"c", Report(kNow, json::array({Entry("Failed", "", "ChecksumMismatch", "bad blob")}))},
      // Not desired: labels do not match, heartbeat too old, no report at all (f).
      {"d", Report(kNow, json::array({Entry("Ready")}))},
      {"e", Report(kNow - minutes(4), json::array({Entry("Ready")}))},
      {"gone", Report(kNow, json::array({Entry("Ready")}))},  // no such Node
  };
  NodesFold fold = FoldNodes(Object({{"gpu", "l40s"}}), "", view, kNow, minutes(3));
  EXPECT_EQ(fold.counts, (crds::NodesStatus{3, 1, 1}));
  EXPECT_EQ(fold.condition.type, "NodesReady");
  EXPECT_EQ(fold.condition.status, "False");
  EXPECT_EQ(fold.condition.reason, "NodesFailed");
  EXPECT_EQ(fold.condition.observed_generation, 3);
  EXPECT_EQ(fold.condition.message,
            "1 of 3 nodes ready; not ready: b (Downloading), c (Failed: ChecksumMismatch: bad "
            "blob)");

  // A shorter window drops a; the committed version must match when given.
  fold = FoldNodes(Object({{"gpu", "l40s"}}), "m@sha256:2", view, kNow, seconds(5));
  EXPECT_EQ(fold.counts, (crds::NodesStatus{2, 0, 1}));
  fold = FoldNodes(Object({{"gpu", "l40s"}}), "m@sha256:2", view, kNow, minutes(3));
  EXPECT_EQ(fold.counts.ready, 0);
  EXPECT_NE(fold.condition.message.find("a (holds m@sha256:1, not m@sha256:2)"),
            std::string::npos)
      << fold.condition.message;
}

// The aggregator folds from an index of the report entries by resource (IndexFleetView): the
// same answers as a scan of every report, for this resource and for the others beside it.
TEST(FleetFoldTest, TheIndexedViewFoldsAsTheScanDoes) {
  FleetView view;
  json other = Entry("Downloading");
  other["name"] = "other";
  json elsewhere = Entry("Ready");
  elsewhere["namespace"] = "team";
  view.nodes = {{"a", Node({})}, {"b", Node({})}, {"c", Node({})}, {"d", Node({})}};
  view.reports = {
      {"a", Report(kNow, json::array({other, Entry("Ready")}))},
      {"b", Report(kNow, json::array({Entry("Failed", "", "ChecksumMismatch", "bad"), other}))},
      {"c", Report(kNow, json::array({other, elsewhere}))},  // m of another namespace only
      {"d", {{"status", {{"heartbeatTime", FormatRfc3339(kNow)}, {"caches", "not a list"}}}}},
  };
  FleetView indexed = view;
  IndexFleetView(indexed);
  ASSERT_TRUE(indexed.indexed);
  crds::ModelCache m = Object({});
  crds::ModelCache o = Object({});
  o.metadata.name = "other";
  crds::ModelCache t = Object({});
  t.metadata.namespace_ = "team";
  for (const crds::ModelCache& object : {m, o, t}) {
    for (const std::string& id : {std::string(), std::string("m@sha256:1")}) {
      NodesFold scanned = FoldNodes(object, id, view, kNow, minutes(3));
      NodesFold looked_up = FoldNodes(object, id, indexed, kNow, minutes(3));
      EXPECT_EQ(looked_up.counts, scanned.counts) << object.key().ToString();
      EXPECT_EQ(looked_up.condition.message, scanned.condition.message);
      EXPECT_EQ(looked_up.phase, scanned.phase);
    }
  }
  EXPECT_EQ(FoldNodes(m, "", indexed, kNow, minutes(3)).counts, (crds::NodesStatus{4, 1, 1}));
  EXPECT_EQ(FoldNodes(o, "", indexed, kNow, minutes(3)).condition.message,
            "0 of 4 nodes ready; not ready: a (Downloading), b (Downloading), c (Downloading), "
            "d (no copy reported yet)");
  EXPECT_EQ(FoldNodes(t, "", indexed, kNow, minutes(3)).counts, (crds::NodesStatus{4, 1, 0}));
}

TEST(FleetFoldTest, TrueOnlyWhenEveryDesiredNodeIsReadyAndThereIsOne) {
  FleetView view;
  view.nodes = {{"a", Node({})}, {"b", Node({})}};
  view.reports = {{"a", Report(kNow, json::array({Entry("Ready")}))},
                  {"b", Report(kNow, json::array({Entry("Ready")}))}};
  NodesFold fold = FoldNodes(Object({}), "m@sha256:1", view, kNow, minutes(3));
  EXPECT_EQ(fold.counts, (crds::NodesStatus{2, 2, 0}));
  EXPECT_EQ(fold.condition.status, "True");
  EXPECT_EQ(fold.condition.reason, "NodesReady");
  EXPECT_EQ(fold.condition.message, "2 of 2 nodes ready");

  fold = FoldNodes(Object({{"zone", "x"}}), "", view, kNow, minutes(3));
  EXPECT_EQ(fold.counts, (crds::NodesStatus{0, 0, 0}));
  EXPECT_EQ(fold.condition.status, "False");
  EXPECT_EQ(fold.condition.reason, "NoNodes");

  // At most five nodes are named.
  for (int i = 0; i < 8; ++i) {
    std::string name = "n" + std::to_string(i);
    view.nodes[name] = Node({});
    view.reports[name] = Report(kNow, json::array());
  }
  fold = FoldNodes(Object({}), "", view, kNow, minutes(3));
  EXPECT_EQ(fold.counts, (crds::NodesStatus{10, 2, 0}));
  EXPECT_EQ(fold.condition.message,
            "2 of 10 nodes ready; not ready: n0 (no copy reported yet), n1 (no copy reported "
            "yet), n2 (no copy reported yet), n3 (no copy reported yet), n4 (no copy reported "
            "yet) and 3 more");

  // While the controller fills, a node without an entry waits for it (the node copies the
  // committed version only): still not ready, and said so.
  view.nodes["n0"] = Node({{"gpu", "l40s"}});
  NodesFold waiting =
      FoldNodes(Object({{"gpu", "l40s"}}), "", view, kNow, minutes(3), /*fill_pending=*/true);
  EXPECT_EQ(waiting.counts, (crds::NodesStatus{1, 0, 0}));
  EXPECT_EQ(waiting.condition.status, "False");
  EXPECT_EQ(waiting.condition.message, "0 of 1 nodes ready; not ready: n0 (waiting for the fill)");
  view.nodes["n0"] = Node({});

  crds::ModelCacheStatus status;
  EXPECT_TRUE(ApplyNodesFold(status, fold, "2026-12-07T00:00:00Z"));
  EXPECT_FALSE(ApplyNodesFold(status, fold, "2026-12-07T00:01:00Z"));
  ASSERT_TRUE(status.nodes.has_value());
  EXPECT_EQ(status.nodes->desired, 10);
  ASSERT_EQ(status.conditions.size(), 1u);
  EXPECT_EQ(status.conditions[0].last_transition_time, "2026-12-07T00:00:00Z");
}

// DaemonSet-only: the elected node's status follows the nodes.
TEST(FleetWriterTest, PhaseAndReadyFollowTheDesiredNodes) {
  FleetView view;
  view.nodes = {{"a", Node({{"gpu", "l40s"}})}, {"b", Node({{"gpu", "l40s"}})},
                {"c", Node({{"gpu", "x"}})}};
  json downloading = Entry("Downloading");
  json ready = Entry("Ready");
  ready["resolvedRevision"] = std::string(40, 'c');
  view.reports = {{"a", Report(kNow, json::array({ready}))},
                  {"b", Report(kNow, json::array({downloading}))},
                  {"c", Report(kNow, json::array({Entry("Resolving")}))}};  // not desired
  crds::ModelCache object = Object({{"gpu", "l40s"}});
  NodesFold fold = FoldNodes(object, "", view, kNow, minutes(3));
  crds::ModelCacheStatus status = ComposeFleetStatus(object, {}, fold, "2026-12-07T00:00:00Z");
  EXPECT_EQ(status.phase, "Downloading");
  EXPECT_EQ(status.resolved_revision, std::string(40, 'c'));
  EXPECT_EQ(status.observed_generation, 3);
  const crds::Condition* r = crds::FindCondition(status.conditions, "Ready");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->status, "False");
  EXPECT_EQ(r->message, "1 of 2 nodes ready; not ready: b (Downloading)");

  view.reports["b"] = Report(kNow, json::array({ready}));
  fold = FoldNodes(object, "", view, kNow, minutes(3));
  status = ComposeFleetStatus(object, status, fold, "2026-12-07T00:01:00Z");
  EXPECT_EQ(status.phase, "Ready");
  EXPECT_EQ(crds::FindCondition(status.conditions, "Ready")->status, "True");
  EXPECT_EQ(crds::FindCondition(status.conditions, "NodesReady")->status, "True");

  view.reports["b"] = Report(kNow, json::array({Entry("Failed", "", "RepoNotFound", "gone")}));
  fold = FoldNodes(object, "", view, kNow, minutes(3));
  EXPECT_EQ(ComposeFleetStatus(object, status, fold, "2026-12-07T00:02:00Z").phase, "Failed");
  fold = FoldNodes(Object({{"zone", "none"}}), "", view, kNow, minutes(3));
  EXPECT_EQ(ComposeFleetStatus(object, status, fold, "2026-12-07T00:02:00Z").phase, "Pending");
}

TEST(CacheLabelKeyTest, NamespaceDotNameAndAHashedFormBeyond63Characters) {
  EXPECT_EQ(CacheLabelKey("default", "qwen3-0-6b"), "default.qwen3-0-6b");
  std::string ns(40, 'n');
  std::string name(23, 'm');  // 40 + 1 + 23 = 64
  std::string key = CacheLabelKey(ns, name);
  ASSERT_EQ(key.size(), 63u);
  EXPECT_EQ(key.substr(0, 50), (ns + "." + name).substr(0, 50));
  EXPECT_EQ(key[50], '-');
  EXPECT_EQ(key.substr(51), Sha256Hex(ns + "." + name).substr(0, 12));
  EXPECT_EQ(CacheLabelKey(ns, std::string(22, 'm')).size(), 63u);  // exactly 63: as it is
  EXPECT_EQ(CacheLabelKey(ns, std::string(22, 'm')), ns + "." + std::string(22, 'm'));
}

}  // namespace
}  // namespace modelcache::controller
