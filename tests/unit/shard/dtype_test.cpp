#include "shard/dtype.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace modelcache::shard {
namespace {

float F(uint32_t bits) { return std::bit_cast<float>(bits); }
uint32_t U(float f) { return std::bit_cast<uint32_t>(f); }

// Reference f32 -> bf16: pick the nearer of the two bf16 neighbours in double arithmetic (exact
// for floats), ties to the even one; the neighbour past the largest finite value is 2^128.
uint16_t ReferenceBFloat16(float f) {
  uint32_t u = U(f);
  uint32_t sign = u & 0x80000000u;
  uint32_t abs = u & 0x7fffffffu;
  uint32_t lo = abs & 0xffff0000u;
  uint32_t hi = lo + 0x10000u;
  double x = std::fabs(static_cast<double>(f));
  double lo_v = static_cast<double>(F(lo));
  double hi_v = hi >= 0x7f800000u ? std::ldexp(1.0, 128) : static_cast<double>(F(hi));
  double dlo = x - lo_v;
  double dhi = hi_v - x;
  uint32_t pick = dlo < dhi ? lo : dhi < dlo ? hi : (((lo >> 16) & 1u) ? hi : lo);
  return static_cast<uint16_t>((sign | pick) >> 16);
}

uint16_t HardwareHalf(float f) {
  _Float16 h = static_cast<_Float16>(f);
  uint16_t bits;
  std::memcpy(&bits, &h, 2);
  return bits;
}

float HardwareHalfToFloat(uint16_t bits) {
  _Float16 h;
  std::memcpy(&h, &bits, 2);
  return static_cast<float>(h);
}

TEST(DTypeTest, NamesAndSizes) {
  EXPECT_EQ(DTypeName(DType::BF16), "BF16");
  EXPECT_EQ(DTypeName(DType::F8E4M3), "F8_E4M3");
  EXPECT_EQ(ParseDType("F16"), DType::F16);
  EXPECT_EQ(ParseDType("bf16"), std::nullopt);  // the header spelling is upper case
  EXPECT_EQ(DTypeSize(DType::F64), 8u);
  EXPECT_EQ(DTypeSize(DType::BF16), 2u);
  EXPECT_EQ(DTypeSize(DType::Bool), 1u);
  EXPECT_TRUE(IsConvertibleFloat(DType::F32));
  EXPECT_FALSE(IsConvertibleFloat(DType::I32));
}

TEST(DTypeTest, TargetSpellings) {
  EXPECT_EQ(*ParseTargetDType("auto"), std::nullopt);
  EXPECT_EQ(*ParseTargetDType("bfloat16"), DType::BF16);
  EXPECT_EQ(*ParseTargetDType("float16"), DType::F16);
  EXPECT_EQ(*ParseTargetDType("float32"), DType::F32);
  auto bad = ParseTargetDType("fp8");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().reason, Reason::InvalidSpec);
  EXPECT_EQ(TargetDTypeName(DType::BF16), "bfloat16");
}

TEST(DTypeTest, HalfRoundTripsEveryPattern) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    auto bits = static_cast<uint16_t>(h);
    float f = HalfToFloat(bits);
    float ref = HardwareHalfToFloat(bits);
    if (std::isnan(ref)) {
      ASSERT_TRUE(std::isnan(f)) << h;
      ASSERT_EQ(std::signbit(f), std::signbit(ref)) << h;
      uint16_t back = FloatToHalf(f);
      ASSERT_EQ(back & 0x7c00u, 0x7c00u) << h;
      ASSERT_NE(back & 0x03ffu, 0u) << h;  // still NaN
      ASSERT_NE(back & 0x0200u, 0u) << h;  // quiet
      ASSERT_EQ(back & 0x8000u, h & 0x8000u) << h;
      continue;
    }
    ASSERT_EQ(U(f), U(ref)) << h;
    ASSERT_EQ(FloatToHalf(f), bits) << h;
  }
}

TEST(DTypeTest, BFloat16RoundTripsEveryPattern) {
  for (uint32_t b = 0; b <= 0xffff; ++b) {
    auto bits = static_cast<uint16_t>(b);
    float f = BFloat16ToFloat(bits);
    ASSERT_EQ(U(f), b << 16);
    if (std::isnan(f)) {
      uint16_t back = FloatToBFloat16(f);
      ASSERT_TRUE(std::isnan(BFloat16ToFloat(back))) << b;
      ASSERT_EQ(back & 0x8000u, b & 0x8000u) << b;
      continue;
    }
    ASSERT_EQ(FloatToBFloat16(f), bits) << b;
  }
}

TEST(DTypeTest, FloatToHalfMatchesHardwareRounding) {
  std::mt19937 rng(7);
  std::vector<uint32_t> samples = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x477fe000u,
                                   0x477fefffu, 0x477ff000u, 0x477ff001u, 0x33000000u, 0x33000001u,
                                   0x32ffffffu, 0x33400000u, 0x38800000u, 0x387fe000u, 0x387ff000u,
                                   0x3f800000u, 0x3f801000u, 0x3f803000u, 0x7f7fffffu, 0x00000001u};
  for (int i = 0; i < 200000; ++i) {
    samples.push_back(rng());
  }
  // Dense coverage of the half range, where rounding matters most.
  for (uint32_t u = 0x33000000u; u < 0x47800000u; u += 0x1357u) {
    samples.push_back(u);
    samples.push_back(u | 0x80000000u);
  }
  for (uint32_t u : samples) {
    float f = F(u);
    if (std::isnan(f)) {
      uint16_t h = FloatToHalf(f);
      ASSERT_TRUE(std::isnan(HalfToFloat(h))) << std::hex << u;
      ASSERT_EQ(h >> 15, u >> 31) << std::hex << u;
      continue;
    }
    ASSERT_EQ(FloatToHalf(f), HardwareHalf(f)) << std::hex << u;
  }
}

TEST(DTypeTest, FloatToBFloat16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBFloat16(F(0x3f808000u)), 0x3f80);  // tie, lower is even
  EXPECT_EQ(FloatToBFloat16(F(0x3f818000u)), 0x3f82);  // tie, upper is even
  EXPECT_EQ(FloatToBFloat16(F(0x3f808001u)), 0x3f81);  // just above the tie
  EXPECT_EQ(FloatToBFloat16(F(0x7f7fffffu)), 0x7f80);  // max float overflows to infinity
  EXPECT_EQ(FloatToBFloat16(F(0xff800000u)), 0xff80);  // -inf
  EXPECT_EQ(FloatToBFloat16(-0.0f), 0x8000);
  EXPECT_EQ(FloatToBFloat16(F(0x00000001u)), 0x0000);  // smallest subnormal rounds to zero
  EXPECT_EQ(FloatToBFloat16(F(0x00018000u)), 0x0002);  // subnormal tie to even
  // A signalling NaN whose payload lives only in the dropped bits stays a NaN.
  uint16_t nan = FloatToBFloat16(F(0x7f800001u));
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(nan)));
  EXPECT_EQ(FloatToBFloat16(F(0xffc00000u)) & 0x8000, 0x8000);
  std::mt19937 rng(11);
  for (int i = 0; i < 300000; ++i) {
    uint32_t u = rng();
    float f = F(u);
    if (std::isnan(f)) {
      continue;
    }
    ASSERT_EQ(FloatToBFloat16(f), ReferenceBFloat16(f)) << std::hex << u;
  }
}

TEST(DTypeTest, HalfEdgeCases) {
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65519.996f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);  // halfway to 65536 rounds to even: infinity
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // tie to even (zero)
  EXPECT_EQ(FloatToHalf(std::ldexp(3.0f, -25)), 0x0002);  // tie to even (two)
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(FloatToHalf(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfToFloat(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_TRUE(std::isinf(HalfToFloat(0x7c00)));
}

TEST(DTypeTest, ConvertElementsHandlesUnalignedBuffersAndEveryPair) {
  std::vector<float> values = {0.0f,
                               -0.0f,
                               1.0f,
                               -2.5f,
                               65504.0f,
                               1e-8f,
                               3.14159f,
                               std::numeric_limits<float>::infinity(),
                               std::numeric_limits<float>::quiet_NaN(),
                               1e30f};
  const size_t n = values.size();
  std::vector<unsigned char> f32(n * 4 + 1), bf16(n * 2 + 1), f16(n * 2 + 1), back(n * 4 + 1);
  std::memcpy(f32.data() + 1, values.data(), n * 4);
  ConvertElements(DType::F32, f32.data() + 1, DType::BF16, bf16.data() + 1, n);
  ConvertElements(DType::F32, f32.data() + 1, DType::F16, f16.data() + 1, n);
  for (size_t i = 0; i < n; ++i) {
    uint16_t b, h;
    std::memcpy(&b, bf16.data() + 1 + i * 2, 2);
    std::memcpy(&h, f16.data() + 1 + i * 2, 2);
    EXPECT_EQ(b, FloatToBFloat16(values[i])) << i;
    EXPECT_EQ(h, FloatToHalf(values[i])) << i;
  }
  // bf16 -> f16 rounds once, like going through f32 by hand.
  std::vector<unsigned char> via(n * 2 + 1);
  ConvertElements(DType::BF16, bf16.data() + 1, DType::F16, via.data() + 1, n);
  for (size_t i = 0; i < n; ++i) {
    uint16_t b, h;
    std::memcpy(&b, bf16.data() + 1 + i * 2, 2);
    std::memcpy(&h, via.data() + 1 + i * 2, 2);
    EXPECT_EQ(h, FloatToHalf(BFloat16ToFloat(b))) << i;
  }
  // f16 -> f32 -> f16 is the identity on non-NaN values; same-dtype is a copy.
  ConvertElements(DType::F16, f16.data() + 1, DType::F32, back.data() + 1, n);
  std::vector<unsigned char> again(n * 2 + 1);
  ConvertElements(DType::F32, back.data() + 1, DType::F16, again.data() + 1, n);
  for (size_t i = 0; i < n; ++i) {
    if (!std::isnan(values[i])) {
      EXPECT_EQ(std::memcmp(f16.data() + 1 + i * 2, again.data() + 1 + i * 2, 2), 0) << i;
    }
  }
  std::vector<unsigned char> copy(n * 2 + 1);
  ConvertElements(DType::BF16, bf16.data() + 1, DType::BF16, copy.data() + 1, n);
  EXPECT_EQ(std::memcmp(copy.data() + 1, bf16.data() + 1, n * 2), 0);
}

}  // namespace
}  // namespace modelcache::shard
