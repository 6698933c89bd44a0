// The engine's staging memory (fetch/internal/block_pool.h): at most `max` blocks in use, one
// overdraw for a callback that cannot give bytes back, and a wake for the transfers that waited.

#include "fetch/internal/block_pool.h"

#include <cstdint>

#include <gtest/gtest.h>

namespace modelcache::fetch::internal {
namespace {

TEST(BlockPoolTest, BlocksAreAlignedForODirect) {
  BlockPool pool(1, [] {});
  Block* b = pool.Get(false);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b->data.get()) % kDirectAlign, 0u);
  pool.Put(b);
}

TEST(BlockPoolTest, ARefusedGetIsWokenByThePutThatFreesABlock) {
  int wakes = 0;
  BlockPool pool(2, [&] { ++wakes; });
  Block* a = pool.Get(false);
  Block* b = pool.Get(false);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_FALSE(pool.Wanted());
  EXPECT_EQ(pool.Get(false), nullptr);
  EXPECT_TRUE(pool.Wanted());
  pool.Put(a);
  EXPECT_EQ(wakes, 1);
  EXPECT_FALSE(pool.Wanted());
  pool.Put(b);
  EXPECT_EQ(wakes, 1);  // nobody waited
  // Put back blocks are reused.
  Block* again = pool.Get(false);
  EXPECT_TRUE(again == a || again == b);
  pool.Put(again);
}

TEST(BlockPoolTest, AnOverdrawPausesTransfersUntilTheBlockIsBack) {
  int wakes = 0;
  BlockPool pool(1, [&] { ++wakes; });
  Block* a = pool.Get(false);
  ASSERT_NE(a, nullptr);
  EXPECT_TRUE(pool.Available());
  EXPECT_FALSE(pool.Overdrawn());
  Block* extra = pool.Get(true);  // the bytes are taken: it may not wait
  ASSERT_NE(extra, nullptr);
  EXPECT_FALSE(pool.Available());
  EXPECT_TRUE(pool.Overdrawn());  // and asks for a wake
  pool.Put(extra);                // freed, not kept: the pool holds `max` at most
  EXPECT_EQ(wakes, 1);
  EXPECT_TRUE(pool.Available());
  EXPECT_FALSE(pool.Overdrawn());
  pool.Put(a);
}

}  // namespace
}  // namespace modelcache::fetch::internal
