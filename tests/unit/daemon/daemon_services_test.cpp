#include "daemon/daemon_services.h"

#include <gtest/gtest.h>

namespace modelcache::controller {
namespace {

TEST(ListenOptionTest, OffAndEmptyMeanNoEndpoint) {
  auto off = ParseListenOption("off");
  ASSERT_TRUE(off);
  EXPECT_FALSE(off->has_value());
  auto empty = ParseListenOption("");
  ASSERT_TRUE(empty);
  EXPECT_FALSE(empty->has_value());
  auto on = ParseListenOption("127.0.0.1:9100");
  ASSERT_TRUE(on && on->has_value());
  EXPECT_EQ((*on)->port, 9100);
  auto bad = ParseListenOption("9100");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().reason, Reason::InvalidSpec);
}

}  // namespace
}  // namespace modelcache::controller
