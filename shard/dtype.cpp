#include "shard/dtype.h"

#include <array>
#include <bit>
#include <cstring>
#include <string>
#include <utility>

namespace modelcache::shard {
namespace {

struct DTypeEntry {
  DType dtype;
  std::string_view name;
  size_t size;
};

constexpr std::array<DTypeEntry, 15> kDTypes = {{
    {DType::Bool, "BOOL", 1},
    {DType::U8, "U8", 1},
    {DType::I8, "I8", 1},
    {DType::F8E4M3, "F8_E4M3", 1},
    {DType::F8E5M2, "F8_E5M2", 1},
    {DType::I16, "I16", 2},
    {DType::U16, "U16", 2},
    {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2},
    {DType::I32, "I32", 4},
    {DType::U32, "U32", 4},
    {DType::F32, "F32", 4},
    {DType::I64, "I64", 8},
    {DType::U64, "U64", 8},
    {DType::F64, "F64", 8},
}};

const DTypeEntry& Entry(DType dtype) {
  for (const auto& e : kDTypes) {
    if (e.dtype == dtype) {
      return e;
    }
  }
  return kDTypes[0];  // unreachable: every enumerator is in the table
}

uint32_t Bits(float f) { return std::bit_cast<uint32_t>(f); }
float FromBits(uint32_t u) { return std::bit_cast<float>(u); }

// Unaligned element access: mmap'd safetensors data has no alignment guarantee, and UBSan (rightly)
// rejects misaligned loads through typed pointers.
template <typename T>
T Load(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <typename T>
void Store(unsigned char* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

float LoadFloat(DType from, const unsigned char* p) {
  switch (from) {
    case DType::F16:
      return HalfToFloat(Load<uint16_t>(p));
    case DType::BF16:
      return BFloat16ToFloat(Load<uint16_t>(p));
    default:
      return Load<float>(p);
  }
}

void StoreFloat(DType to, unsigned char* p, float v) {
  switch (to) {
    case DType::F16:
      Store<uint16_t>(p, FloatToHalf(v));
      break;
    case DType::BF16:
      Store<uint16_t>(p, FloatToBFloat16(v));
      break;
    default:
      Store<float>(p, v);
      break;
  }
}

}  // namespace

std::string_view DTypeName(DType dtype) { return Entry(dtype).name; }

std::optional<DType> ParseDType(std::string_view name) {
  for (const auto& e : kDTypes) {
    if (e.name == name) {
      return e.dtype;
    }
  }
  return std::nullopt;
}

size_t DTypeSize(DType dtype) { return Entry(dtype).size; }

bool IsConvertibleFloat(DType dtype) {
  return dtype == DType::F16 || dtype == DType::BF16 || dtype == DType::F32;
}

Result<std::optional<DType>> ParseTargetDType(std::string_view spec) {
  if (spec == "auto" || spec.empty()) {
    return std::optional<DType>();
  }
  if (spec == "float16" || spec == "half" || spec == "f16" || spec == "fp16") {
    return std::optional<DType>(DType::F16);
  }
  if (spec == "bfloat16" || spec == "bf16") {
    return std::optional<DType>(DType::BF16);
  }
  if (spec == "float32" || spec == "float" || spec == "f32" || spec == "fp32") {
    return std::optional<DType>(DType::F32);
  }
  return Error(Reason::InvalidSpec,
               "dtype '" + std::string(spec) + "' is not one of auto, float16, bfloat16, float32");
}

std::string_view TargetDTypeName(DType dtype) {
  switch (dtype) {
    case DType::F16:
      return "float16";
    case DType::BF16:
      return "bfloat16";
    case DType::F32:
      return "float32";
    default:
      return DTypeName(dtype);
  }
}

uint16_t FloatToBFloat16(float value) {
  uint32_t u = Bits(value);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    // NaN: keep sign and the top payload bits, force the quiet bit so truncation cannot turn a
    // signalling NaN with a low-only payload into an infinity.
    return static_cast<uint16_t>((u >> 16) | 0x0040u);
  }
  // Round to nearest even on the 16 dropped bits. Overflow carries into the exponent and yields
  // infinity, which is the correctly rounded result.
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

float BFloat16ToFloat(uint16_t bits) { return FromBits(static_cast<uint32_t>(bits) << 16); }

uint16_t FloatToHalf(float value) {
  uint32_t u = Bits(value);
  auto sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) {
    // NaN: quiet, keep the top 9 payload bits.
    return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x01ffu));
  }
  if (abs >= 0x477ff000u) {
    // >= 65520 (halfway between the largest half, 65504, and 65536) rounds to infinity; this also
    // covers infinity itself.
    return static_cast<uint16_t>(sign | 0x7c00u);
  }
  if (abs < 0x38800000u) {
    // Below the smallest normal half (2^-14): the result is subnormal or zero. Values below 2^-25
    // (half of the smallest subnormal, 2^-24) round to zero; exactly 2^-25 is a tie to even (0).
    if (abs < 0x33000000u) {
      return sign;
    }
    uint32_t exponent = abs >> 23;                      // 102..112
    uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;  // with the implicit bit
    uint32_t shift = 126 - exponent;                    // 14..24: puts the value in units of 2^-24
    uint32_t half_mantissa = mantissa >> shift;
    uint32_t rest = mantissa & ((1u << shift) - 1u);
    uint32_t halfway = 1u << (shift - 1u);
    if (rest > halfway || (rest == halfway && (half_mantissa & 1u))) {
      ++half_mantissa;  // may carry into the smallest normal, which is the right encoding
    }
    return static_cast<uint16_t>(sign | half_mantissa);
  }
  // Normal range: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits.
  uint32_t rebased = abs - (112u << 23);
  uint32_t rounding = 0x0fffu + ((rebased >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((rebased + rounding) >> 13));
}

float HalfToFloat(uint16_t bits) {
  uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0x1fu) {
    return FromBits(sign | 0x7f800000u | (mantissa << 13));  // Inf or NaN, payload kept
  }
  if (exponent == 0) {
    if (mantissa == 0) {
      return FromBits(sign);
    }
    // Subnormal: normalise. value = mantissa * 2^-24.
    int e = -1;
    do {
      ++e;
      mantissa <<= 1;
    } while ((mantissa & 0x400u) == 0);
    mantissa &= 0x3ffu;
    return FromBits(sign | ((112u - static_cast<uint32_t>(e)) << 23) | (mantissa << 13));
  }
  return FromBits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

void ConvertElements(DType from, const void* src, DType to, void* dst, size_t count) {
  const auto* s = static_cast<const unsigned char*>(src);
  auto* d = static_cast<unsigned char*>(dst);
  if (from == to) {
    std::memcpy(d, s, count * DTypeSize(from));
    return;
  }
  size_t in = DTypeSize(from);
  size_t out = DTypeSize(to);
  if (from == DType::F32 && to == DType::BF16) {
    for (size_t i = 0; i < count; ++i) {
      Store<uint16_t>(d + i * 2, FloatToBFloat16(Load<float>(s + i * 4)));
    }
    return;
  }
  if (from == DType::BF16 && to == DType::F32) {
    for (size_t i = 0; i < count; ++i) {
      Store<uint32_t>(d + i * 4, static_cast<uint32_t>(Load<uint16_t>(s + i * 2)) << 16);
    }
    return;
  }
  for (size_t i = 0; i < count; ++i) {
    StoreFloat(to, d + i * out, LoadFloat(from, s + i * in));
  }
}

}  // namespace modelcache::shard
