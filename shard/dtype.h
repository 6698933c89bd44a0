#pragma once

// Tensor element types as safetensors spells them, and conversion between the floating-point
// types a checkpoint is served in (float32, float16, bfloat16).
//
// Conversions round to nearest, ties to even, exactly as torch's `tensor.to(dtype)` does on the
// CPU: NaN stays NaN (sign kept, always quiet), infinities stay infinities, values beyond the
// target's range become infinities, and subnormals are produced and consumed exactly.
//
// All functions are pure and thread-safe.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "common/result.h"

namespace modelcache::shard {

enum class DType {
  Bool,
  U8,
  I8,
  F8E4M3,
  F8E5M2,
  I16,
  U16,
  F16,
  BF16,
  I32,
  U32,
  F32,
  I64,
  U64,
  F64
};

// "BF16", "F32", "F8_E4M3", … (the safetensors header spelling).
std::string_view DTypeName(DType dtype);
// Inverse of DTypeName; nullopt for anything else.
std::optional<DType> ParseDType(std::string_view name);
// Bytes per element.
size_t DTypeSize(DType dtype);
// F16, BF16 and F32: the types ConvertElements converts between.
bool IsConvertibleFloat(DType dtype);

// Parses a spec dtype: "auto" -> nullopt (keep each tensor's dtype), "float16" | "bfloat16" |
// "float32" (also "half", "bf16", "f16", "fp16", "float", "f32", "fp32") -> that type.
// InvalidSpec naming the value otherwise.
Result<std::optional<DType>> ParseTargetDType(std::string_view spec);
// The spec spelling of a convertible float type: "float16", "bfloat16", "float32".
std::string_view TargetDTypeName(DType dtype);

uint16_t FloatToBFloat16(float value);
uint16_t FloatToHalf(float value);
float BFloat16ToFloat(uint16_t bits);
float HalfToFloat(uint16_t bits);

// Converts `count` elements from `src` (type `from`) to `dst` (type `to`). Neither pointer needs
// any alignment. bf16 <-> f16 goes through f32, which is exact for bf16 -> f32, so the result is
// rounded once.
// REQUIRES: from == to, or both IsConvertibleFloat; src and dst do not overlap.
void ConvertElements(DType from, const void* src, DType to, void* dst, size_t count);

}  // namespace modelcache::shard
