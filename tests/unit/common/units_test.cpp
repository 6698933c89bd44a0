#include "common/units.h"

#include <gtest/gtest.h>

namespace modelcache {
namespace {

using std::chrono::milliseconds;

TEST(DurationTest, ParsesGoStyle) {
  EXPECT_EQ(*ParseDuration("1h"), milliseconds(3'600'000));
  EXPECT_EQ(*ParseDuration("1h30m"), milliseconds(5'400'000));
  EXPECT_EQ(*ParseDuration("45s"), milliseconds(45'000));
  EXPECT_EQ(*ParseDuration("500ms"), milliseconds(500));
  EXPECT_EQ(*ParseDuration("0"), milliseconds(0));
  EXPECT_EQ(*ParseDuration("1.5h"), milliseconds(5'400'000));
}

TEST(DurationTest, RejectsGarbage) {
  for (const char* bad : {"", "h", "10", "1x", "-1h", "1h-", "one hour", "1..h", "1.2.3s", ".s"}) {
    auto r = ParseDuration(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().reason, Reason::InvalidSpec);
  }
}

TEST(DurationTest, Formats) {
  EXPECT_EQ(FormatDuration(milliseconds(0)), "0s");
  EXPECT_EQ(FormatDuration(milliseconds(90'000)), "1m30s");
  EXPECT_EQ(FormatDuration(milliseconds(3'600'000)), "1h");
  EXPECT_EQ(FormatDuration(milliseconds(250)), "250ms");
}

TEST(ByteSizeTest, ParsesUnits) {
  EXPECT_EQ(*ParseByteSize("5GiB"), 5ULL << 30);
  EXPECT_EQ(*ParseByteSize("500MiB"), 500ULL << 20);
  EXPECT_EQ(*ParseByteSize("10Ki"), 10ULL << 10);
  EXPECT_EQ(*ParseByteSize("2G"), 2'000'000'000ULL);
  EXPECT_EQ(*ParseByteSize("1024"), 1024ULL);
  EXPECT_EQ(*ParseByteSize("1.5GB"), 1'500'000'000ULL);
  EXPECT_FALSE(ParseByteSize("GiB"));
  EXPECT_FALSE(ParseByteSize("5XB"));
  EXPECT_FALSE(ParseByteSize(""));
  EXPECT_FALSE(ParseByteSize("1.2.3GiB"));
  EXPECT_FALSE(ParseByteSize("100PiB00"));
  EXPECT_FALSE(ParseByteSize("20000PiB"));
}

TEST(ByteSizeTest, Formats) {
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(3ULL << 29), "1.5 GiB");
}

}  // namespace
}  // namespace modelcache
