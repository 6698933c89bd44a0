#include <vector>

#include <gtest/gtest.h>

#include "crds/model_cache.h"

namespace modelcache::crds {
namespace {

Condition Ready(const char* status, const char* reason, const char* message, int64_t gen) {
  return Condition{"Ready", status, reason, message, "", gen};
}

TEST(ConditionsTest, AddsANewConditionWithTransitionTimeNow) {
  std::vector<Condition> cs;
  EXPECT_TRUE(SetCondition(cs, Ready("False", "Pending", "waiting", 1), "t1"));
  ASSERT_EQ(cs.size(), 1u);
  EXPECT_EQ(cs[0].last_transition_time, "t1");
  EXPECT_EQ(FindCondition(cs, "Ready"), &cs[0]);
  EXPECT_EQ(FindCondition(cs, "Stalled"), nullptr);
}

TEST(ConditionsTest, TransitionTimeMovesOnlyWhenStatusChanges) {
  std::vector<Condition> cs;
  ASSERT_TRUE(SetCondition(cs, Ready("False", "Pending", "waiting", 1), "t1"));
  // Same everything: no change, nothing moves.
  EXPECT_FALSE(SetCondition(cs, Ready("False", "Pending", "waiting", 1), "t2"));
  EXPECT_EQ(cs[0].last_transition_time, "t1");
  // New reason and message, same status: changed, but the transition time stays.
  EXPECT_TRUE(SetCondition(cs, Ready("False", "NetworkError", "connection reset", 1), "t3"));
  EXPECT_EQ(cs[0].reason, "NetworkError");
  EXPECT_EQ(cs[0].message, "connection reset");
  EXPECT_EQ(cs[0].last_transition_time, "t1");
  // New observedGeneration alone is a change too.
  EXPECT_TRUE(SetCondition(cs, Ready("False", "NetworkError", "connection reset", 2), "t4"));
  EXPECT_EQ(cs[0].observed_generation, 2);
  EXPECT_EQ(cs[0].last_transition_time, "t1");
  // Status flips: the transition time moves.
  EXPECT_TRUE(SetCondition(cs, Ready("True", "Ready", "done", 2), "t5"));
  EXPECT_EQ(cs[0].status, "True");
  EXPECT_EQ(cs[0].last_transition_time, "t5");
  EXPECT_EQ(cs.size(), 1u);
}

TEST(ConditionsTest, CallerSuppliedTransitionTimeIsKept) {
  std::vector<Condition> cs;
  Condition c = Ready("True", "Ready", "", 1);
  c.last_transition_time = "t0";
  ASSERT_TRUE(SetCondition(cs, c, "t1"));
  EXPECT_EQ(cs[0].last_transition_time, "t0");
  Condition flip = Ready("False", "RepoNotFound", "gone", 1);
  flip.last_transition_time = "t2";
  ASSERT_TRUE(SetCondition(cs, flip, "t3"));
  EXPECT_EQ(cs[0].last_transition_time, "t2");
}

TEST(ConditionsTest, TypesAreIndependent) {
  std::vector<Condition> cs;
  ASSERT_TRUE(SetCondition(cs, Ready("True", "Ready", "", 1), "t1"));
  Condition stalled{"Stalled", "False", "Fine", "", "", 1};
  ASSERT_TRUE(SetCondition(cs, stalled, "t2"));
  ASSERT_EQ(cs.size(), 2u);
  EXPECT_FALSE(SetCondition(cs, Ready("True", "Ready", "", 1), "t3"));
  EXPECT_EQ(FindCondition(cs, "Stalled")->last_transition_time, "t2");
  EXPECT_EQ(FindCondition(cs, "Ready")->last_transition_time, "t1");
}

}  // namespace
}  // namespace modelcache::crds
