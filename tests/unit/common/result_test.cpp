#include "common/result.h"

#include <gtest/gtest.h>

namespace modelcache {
namespace {

TEST(ReasonTest, NamesRoundTrip) {
  for (Reason r : {Reason::InvalidSpec, Reason::RepoNotFound, Reason::RevisionNotFound,
                   Reason::Unauthorized, Reason::RateLimited, Reason::NetworkError,
                   Reason::ChecksumMismatch, Reason::InsufficientStorage,
                   Reason::UnsupportedArchitecture, Reason::ShardConfigInvalid,
                   Reason::StorageError}) {
    auto parsed = ParseReason(ReasonName(r));
    ASSERT_TRUE(parsed.has_value()) << ReasonName(r);
    EXPECT_EQ(*parsed, r);
  }
  EXPECT_EQ(ReasonName(Reason::Internal), "InternalError");
  EXPECT_FALSE(ParseReason("NoSuchWord").has_value());
}

TEST(ReasonTest, TransientVersusPermanent) {
  EXPECT_TRUE(IsTransient(Reason::NetworkError));
  EXPECT_TRUE(IsTransient(Reason::RateLimited));
  EXPECT_FALSE(IsTransient(Reason::RepoNotFound));
  EXPECT_FALSE(IsTransient(Reason::InvalidSpec));
  EXPECT_FALSE(IsTransient(Reason::Unauthorized));
}

TEST(ResultTest, HoldsValueOrError) {
  Result<int> ok = 5;
  ASSERT_TRUE(ok.has_value());
  EXPECT_EQ(*ok, 5);
  Result<int> bad = Error(Reason::RepoNotFound, "nope");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().reason, Reason::RepoNotFound);
  EXPECT_EQ(bad.error().ToString(), "RepoNotFound: nope");
  VoidResult v;
  EXPECT_TRUE(v);
  VoidResult e = Error(Reason::StorageError, "disk");
  EXPECT_FALSE(e);
}

}  // namespace
}  // namespace modelcache
