#include "common/result.h"

#include <filesystem>
#include <stdexcept>

#include <gtest/gtest.h>

#include "common/guard.h"

namespace modelcache {
namespace {

TEST(ReasonTest, NamesRoundTrip) {
  for (Reason r : {Reason::InvalidSpec, Reason::RepoNotFound, Reason::RevisionNotFound,
                   Reason::Unauthorized, Reason::RateLimited, Reason::NetworkError,
                   Reason::ChecksumMismatch, Reason::InsufficientStorage,
                   Reason::UnsupportedArchitecture, Reason::ShardConfigInvalid,
                   Reason::StorageError, Reason::ArtifactNameConflict,
                   Reason::EndpointStalled}) {
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
  EXPECT_FALSE(IsTransient(Reason::EndpointStalled));
  EXPECT_FALSE(IsTransient(Reason::InvalidSpec));
  EXPECT_FALSE(IsTransient(Reason::Unauthorized));
  EXPECT_FALSE(IsTransient(Reason::ArtifactNameConflict));
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

// The last-resort guard of thread entry points (common/guard.h): what the original crash threw
// (a filesystem_error for a name over 255 bytes) becomes an InternalError value.
TEST(GuardTest, AnExceptionBecomesAnInternalErrorOfThatJob) {
  Result<int> r = ResultOrInternalError("cache job default/x", []() -> Result<int> {
    (void)std::filesystem::is_directory(std::string(300, 'x') + "/y");  // throws: File name too long
    return 1;
  });
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::Internal);
  EXPECT_NE(r.error().message.find("cache job default/x"), std::string::npos);
  EXPECT_NE(r.error().message.find("File name too long"), std::string::npos) << r.error().message;

  Result<int> fine = ResultOrInternalError("job", []() -> Result<int> { return 7; });
  ASSERT_TRUE(fine);
  EXPECT_EQ(*fine, 7);
  EXPECT_FALSE(LogExceptions("loop", [] { throw 42; }));
  EXPECT_TRUE(LogExceptions("loop", [] {}));
}

}  // namespace
}  // namespace modelcache
