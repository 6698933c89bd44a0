#include "common/strings.h"

#include <gtest/gtest.h>

namespace modelcache {
namespace {

TEST(StringsTest, TrimRemovesTheGivenCharactersAtBothEnds) {
  EXPECT_EQ(Trim("  a b \t\r\n"), "a b");
  EXPECT_EQ(Trim("\n\t x"), "x");
  EXPECT_EQ(Trim("x"), "x");
  EXPECT_EQ(Trim(""), "");
  EXPECT_EQ(Trim(" \t\r\n "), "");
  EXPECT_EQ(Trim("--a-b--", "-"), "a-b");
  // Only the ends: inner white space stays.
  EXPECT_EQ(Trim(" a \n b "), "a \n b");
}

TEST(StringsTest, TrimLeftAndTrimRightTouchOneEnd) {
  EXPECT_EQ(TrimLeft(" \ta \n"), "a \n");
  EXPECT_EQ(TrimRight(" \ta \n"), " \ta");
  EXPECT_EQ(TrimLeft("   "), "");
  EXPECT_EQ(TrimRight("   "), "");
  // An HTTP header value: optional white space (space, tab) in front, the line's CRLF behind.
  EXPECT_EQ(TrimRight(TrimLeft(" \r value \r\n", " \t")), "\r value");
  EXPECT_EQ(TrimRight("token\n\n", "\n\r "), "token");
  EXPECT_EQ(TrimRight("token\t\n", "\n\r "), "token\t");
}

TEST(StringsTest, TrimViewsIntoItsArgument) {
  std::string s = "  abc  ";
  std::string_view t = Trim(s);
  EXPECT_EQ(t.data(), s.data() + 2);
  EXPECT_EQ(t.size(), 3u);
}

TEST(StringsTest, AsciiLowerChangesOnlyAsciiCapitals) {
  EXPECT_EQ(AsciiLower("Content-MD5"), "content-md5");
  EXPECT_EQ(AsciiLower("HTTPS://Example.COM/Path"), "https://example.com/path");
  EXPECT_EQ(AsciiLower("\xC3\x84rger @[]`{}"), "\xC3\x84rger @[]`{}");  // UTF-8 and neighbours
  EXPECT_EQ(AsciiLower(""), "");
}

TEST(StringsTest, PercentEncodeKeepsOnlyUnreservedBytesAndSlashWhenAsked) {
  EXPECT_EQ(PercentEncode("AZaz09-._~", false), "AZaz09-._~");
  EXPECT_EQ(PercentEncode("a b/c+d%", false), "a%20b%2Fc%2Bd%25");
  EXPECT_EQ(PercentEncode("/srv/models/a b", true), "/srv/models/a%20b");
  // UTF-8 bytes one by one, upper-case hex; NUL too.
  EXPECT_EQ(PercentEncode("\xc3\xa9", true), "%C3%A9");
  EXPECT_EQ(PercentEncode(std::string_view("a\0b", 3), true), "a%00b");
  EXPECT_EQ(PercentEncode("", true), "");
}

}  // namespace

}  // namespace modelcache
