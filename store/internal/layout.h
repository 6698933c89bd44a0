#pragma once

// The names both stores (and the collector) give the parts of the layout (docs/store-layout.md).
// Not part of store/'s interface.

#include <cstdint>
#include <string_view>

namespace modelcache::store::internal {

// An artifact version's manifest, beside its files.
inline constexpr std::string_view kManifestName = "modelcache.json";
// The name under artifacts/<name>/ that points at the current version.
inline constexpr std::string_view kCurrentName = "current";
// Marks every temporary name the local store creates, so cleanup and the collector find crash
// leftovers without guessing (huggingface_hub's own names never contain it).
inline constexpr std::string_view kTmpMarker = ".modelcache-tmp-";

// S3's limits on multipart uploads and copies: the smallest part (but the last), the largest part
// count, and the largest single CopyObject or part.
inline constexpr uint64_t kS3MinPartSize = 5ULL << 20;
inline constexpr uint64_t kS3MaxParts = 10'000;
inline constexpr uint64_t kS3MaxCopySize = 5ULL << 30;

}  // namespace modelcache::store::internal
