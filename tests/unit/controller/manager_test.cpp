#include "controller/manager.h"

#include <gtest/gtest.h>

namespace modelcache::controller {
namespace {

using reconcilers::Outcome;
using reconcilers::Requeue;

const crds::Condition& Ready(const crds::ModelCacheStatus& s) {
  const crds::Condition* c = crds::FindCondition(s.conditions, "Ready");
  EXPECT_NE(c, nullptr);
  return *c;
}

crds::ModelCacheStatus ReadyStatus() {
  crds::ModelCacheStatus s;
  s.phase = "Ready";
  s.artifact = crds::ArtifactStatus{"m", "v1", "m@sha256:abc", "file:///s", "/s", 10, 1};
  return Manager::ComposeStatus({}, Outcome{s, Requeue::Done()}, 1, "2026-11-24T00:00:00Z");
}

TEST(ComposeStatusTest, ProgressPhasesAreReadyFalseWithThePhaseAsReason) {
  crds::ModelCacheStatus s;
  s.phase = "Downloading";
  s.progress = crds::ProgressStatus{512, 1024, 1, 2, 0};
  auto out = Manager::ComposeStatus({}, Outcome{s, Requeue::After(std::chrono::seconds(1))}, 3,
                                    "2026-11-24T00:00:00Z");
  EXPECT_EQ(out.observed_generation, 3);
  EXPECT_EQ(Ready(out).status, "False");
  EXPECT_EQ(Ready(out).reason, "Downloading");
  EXPECT_EQ(Ready(out).observed_generation, 3);
  EXPECT_NE(Ready(out).message.find("50%"), std::string::npos) << Ready(out).message;
  EXPECT_EQ(Ready(out).last_transition_time, "2026-11-24T00:00:00Z");
}

TEST(ComposeStatusTest, ReadyIsTrueAndTransitionTimeOnlyMovesOnStatusChange) {
  auto ready = ReadyStatus();
  EXPECT_EQ(Ready(ready).status, "True");
  EXPECT_EQ(Ready(ready).reason, "ArtifactReady");
  // Same status again, later: lastTransitionTime stays.
  auto again = Manager::ComposeStatus(ready, Outcome{ready, Requeue::Done()}, 1,
                                      "2026-11-24T01:00:00Z");
  EXPECT_EQ(Ready(again).last_transition_time, "2026-11-24T00:00:00Z");
}

TEST(ComposeStatusTest, PermanentErrorFailsWithTheReasonWord) {
  crds::ModelCacheStatus prev;
  prev.phase = "Resolving";
  auto out = Manager::ComposeStatus(prev, Error(Reason::RepoNotFound, "repository x not found"),
                                    2, "2026-11-24T00:00:00Z");
  EXPECT_EQ(out.phase, "Failed");
  EXPECT_EQ(Ready(out).status, "False");
  EXPECT_EQ(Ready(out).reason, "RepoNotFound");
  EXPECT_EQ(Ready(out).message, "repository x not found");
  EXPECT_EQ(out.observed_generation, 2);
}

TEST(ComposeStatusTest, TransientErrorKeepsThePhaseAndSaysItWillRetry) {
  crds::ModelCacheStatus prev;
  prev.phase = "Downloading";
  auto out = Manager::ComposeStatus(prev, Error(Reason::NetworkError, "connection reset"), 1,
                                    "2026-11-24T00:00:00Z");
  EXPECT_EQ(out.phase, "Downloading");
  EXPECT_EQ(Ready(out).reason, "NetworkError");
  EXPECT_NE(Ready(out).message.find("will retry"), std::string::npos);
}

TEST(ComposeStatusTest, FailedRefreshOfAReadyResourceStaysReady) {
  auto ready = ReadyStatus();
  auto out = Manager::ComposeStatus(ready, Error(Reason::NetworkError, "hub unreachable"), 1,
                                    "2026-11-24T02:00:00Z");
  EXPECT_EQ(out.phase, "Ready");
  EXPECT_EQ(Ready(out).status, "True");
  EXPECT_EQ(Ready(out).last_transition_time, "2026-11-24T00:00:00Z");
  EXPECT_NE(Ready(out).message.find("refresh failed"), std::string::npos);
  // A second failure does not stack messages.
  auto twice = Manager::ComposeStatus(out, Error(Reason::NetworkError, "hub unreachable"), 1,
                                      "2026-11-24T03:00:00Z");
  EXPECT_EQ(Ready(twice).message, Ready(out).message);
  // Success clears it.
  auto healed = Manager::ComposeStatus(twice, Outcome{ready, Requeue::Done()}, 1,
                                       "2026-11-24T04:00:00Z");
  EXPECT_EQ(Ready(healed).message.find("refresh failed"), std::string::npos);
}

}  // namespace
}  // namespace modelcache::controller
