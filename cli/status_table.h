#pragma once

// What `modelcache get` prints, in kubectl's formats: a table (NAME PHASE REVISION ARTIFACT AGE,
// `-o wide` adding PROGRESS and MESSAGE) or a `List` of full objects as JSON or YAML.
//
// Pure functions of their arguments; thread-safe.

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "crds/model_cache.h"

namespace modelcache::controller {

// One header line and one line per object, in the given order, each line ending in '\n'. Columns
// are left-aligned and padded like kubectl's tabwriter (width = widest cell + 3, at least 6; the
// last column unpadded):
//   NAME         PHASE         REVISION       ARTIFACT                          AGE
//   qwen3-0-6b   Downloading   c1899de289a0   qwen3-0-6b@sha256:0123456789ab   5m
// REVISION is the first 12 hex digits of status.resolvedRevision; ARTIFACT is status.artifact.id
// with the digest cut to 12 hex digits; AGE counts from metadata.creationTimestamp to `now` as
// kubectl does ("45s", "3m20s", "3h", "4d"). `wide` adds PROGRESS ("41% 1.2 GiB/2.9 GiB
// 85.0 MiB/s") and MESSAGE (the Ready condition's message). Missing values are empty cells.
// With no objects it returns kubectl's "No resources found in <namespace> namespace.\n"
// ("No resources found.\n" if `namespace_name` is empty), which kubectl writes to stderr.
std::string FormatTable(const std::vector<crds::ModelCache>& objects, bool wide,
                        std::chrono::system_clock::time_point now,
                        std::string_view namespace_name = {});

// `-o json` / `-o yaml`: {"apiVersion":"v1","kind":"List","items":[<crds::ToJson of each>]},
// keys sorted, JSON indented by 4 spaces like kubectl; YAML block style with strings that would
// read back as another type ("True", "1", "2026-11-24T03:46:12Z") double-quoted. Ends in '\n'.
std::string FormatList(const std::vector<crds::ModelCache>& objects, bool yaml);

// kubectl's age (apimachinery duration.HumanDuration): "0s", "59s", "119s", "2m", "3m20s",
// "10m", "179m", "3h", "7h59m", "8h", "47h", "2d", "7d23h", "8d", "729d", "2y", "3y120d", "8y";
// "<invalid>" when more than a second in the future.
std::string FormatAge(std::chrono::system_clock::duration age);

// "name@sha256:<64 hex>" -> "name@sha256:<first 12 hex>"; other ids unchanged.
std::string ShortArtifactId(std::string_view id);

}  // namespace modelcache::controller
