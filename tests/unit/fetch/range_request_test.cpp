// How the engine reads an answer to one of its range requests (fetch/internal/range_request.h):
// the headers as libcurl hands them over, and the verdict at the first body byte, which decides
// whether a byte of the body is written.

#include "fetch/internal/range_request.h"

#include <string>

#include <gtest/gtest.h>

namespace modelcache::fetch::internal {
namespace {

using V = Request::Verdict;

// A request for bytes [first, end) of a 100-byte file answered with `status` and `headers`.
V Verdict(long status, HttpHeaders headers, uint64_t first = 10, uint64_t end = 20,
          bool ranged = true, std::string expected_etag = "") {
  Request r;
  r.first = first;
  r.end = end;
  r.ranged = ranged;
  r.file_size = 100;
  r.expected_etag = std::move(expected_etag);
  r.response.status = status;
  r.response.headers = std::move(headers);
  Classify(r);
  return r.verdict;
}

TEST(ClassifyTest, ThePartAskedForIsData) {
  EXPECT_EQ(Verdict(206, {{"content-range", "bytes 10-19/100"}}), V::Data);
  EXPECT_EQ(Verdict(206, {{"content-range", "bytes 10-19/*"}}), V::Data);
  EXPECT_EQ(Verdict(206, {{"content-range", "bytes 10-19/100"}, {"content-length", "10"}}),
            V::Data);
}

TEST(ClassifyTest, AnotherPartIsABadRange) {
  EXPECT_EQ(Verdict(206, {{"content-range", "bytes 0-19/100"}}), V::BadRange);
  EXPECT_EQ(Verdict(206, {}), V::BadRange);
  EXPECT_EQ(Verdict(206, {{"content-range", "bytes */100"}}), V::BadRange);
}

TEST(ClassifyTest, AnotherTotalOrETagIsAChangedFile) {
  EXPECT_EQ(Verdict(206, {{"content-range", "bytes 10-19/101"}}), V::Changed);
  EXPECT_EQ(Verdict(206, {{"content-range", "bytes 10-19/100"}, {"etag", "\"b\""}}, 10, 20, true,
                    "a"),
            V::Changed);
  // The Hub's X-Linked-Etag (the LFS blob's) wins over the ETag of the answer itself, and W/ and
  // quotes do not count.
  EXPECT_EQ(Verdict(206,
                    {{"content-range", "bytes 10-19/100"},
                     {"etag", "\"cdn\""},
                     {"x-linked-etag", "W/\"a\""}},
                    10, 20, true, "a"),
            V::Data);
}

TEST(ClassifyTest, AWholeFileForALaterRangeIsAnIgnoredRange) {
  EXPECT_EQ(Verdict(200, {{"content-length", "100"}}), V::IgnoredRange);
  EXPECT_EQ(Verdict(200, {{"content-length", "100"}}, 10, 100, false), V::IgnoredRange);
  // The whole file asked for (one range, or a stream from 0) is data.
  EXPECT_EQ(Verdict(200, {{"content-length", "100"}}, 0, 100, true), V::Data);
  EXPECT_EQ(Verdict(200, {}, 0, 100, false), V::Data);
  // A 200 to the first of several ranges: the server ignores Range, so the file goes as one stream.
  EXPECT_EQ(Verdict(200, {}, 0, 20, true), V::IgnoredRange);
}

TEST(ClassifyTest, ALengthThatDisagreesIsRefusedBeforeAByte) {
  EXPECT_EQ(Verdict(200, {{"content-length", "99"}}, 0, 100, false), V::WrongLength);
  EXPECT_EQ(Verdict(206, {{"content-range", "bytes 10-19/100"}, {"content-length", "91"}}),
            V::WrongLength);
  EXPECT_EQ(Verdict(206, {{"content-range", "bytes 10-19/100"}, {"content-length", "ten"}}),
            V::WrongLength);
}

TEST(ClassifyTest, OtherStatusesAreNotData) {
  for (long status : {301L, 302L, 403L, 404L, 416L, 500L, 0L}) {
    EXPECT_EQ(Verdict(status, {{"content-range", "bytes 10-19/100"}}), V::NotData) << status;
  }
}

TEST(NormalizeEtagTest, DropsWeaknessAndQuotes) {
  EXPECT_EQ(NormalizeEtag("\"abc\""), "abc");
  EXPECT_EQ(NormalizeEtag("W/\"abc\""), "abc");
  EXPECT_EQ(NormalizeEtag("abc"), "abc");
  EXPECT_EQ(NormalizeEtag("\""), "\"");
}

TEST(OnHeaderTest, CollectsTheLastAnswersHeadersLowerCased) {
  Request r;
  auto feed = [&r](std::string line) {
    return OnHeader(line.data(), 1, line.size(), &r) == line.size();
  };
  ASSERT_TRUE(feed("HTTP/1.1 302 Found\r\n"));
  ASSERT_TRUE(feed("Location: /x\r\n"));
  ASSERT_TRUE(feed("HTTP/1.1 206 Partial Content\r\n"));
  ASSERT_TRUE(feed("Content-Range:  bytes 0-1/2 \r\n"));
  ASSERT_TRUE(feed("\r\n"));
  EXPECT_EQ(r.response.status, 206);
  EXPECT_EQ(r.response.Header("location"), nullptr);
  ASSERT_NE(r.response.Header("content-range"), nullptr);
  EXPECT_EQ(*r.response.Header("content-range"), "bytes 0-1/2");
}

TEST(OnHeaderTest, AnEndlessHeaderStreamIsCutOff) {
  Request r;
  std::string status = "HTTP/1.1 200 OK\r\n";
  ASSERT_EQ(OnHeader(status.data(), 1, status.size(), &r), status.size());
  std::string line = "X-Filler: " + std::string(1000, 'a') + "\r\n";
  size_t taken = line.size();
  for (int i = 0; i < 1000 && taken == line.size(); ++i) {
    taken = OnHeader(line.data(), 1, line.size(), &r);
  }
  EXPECT_EQ(taken, 0u);
  EXPECT_TRUE(r.headers_too_large);
}

}  // namespace
}  // namespace modelcache::fetch::internal
