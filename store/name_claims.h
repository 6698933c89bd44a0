#pragma once

// Who an artifact name belongs to. An artifact name is global to its store, so the first resource
// that claims it owns it; another resource may share it only with the same spec identity (the
// fields that define the artifact's content), and anything else fails with ArtifactNameConflict
// before it could move `current`. The record lives with the name:
//
//   <root>/artifacts/<name>/owner.json   {"name", "specId", "holders": [owner, sharers…]}
//
// and every change to it is a read-modify-write under the exclusive lock
// <root>/locks/inuse/claim-<name>.lock (flock), written with WriteFileAtomic: two resources of one
// daemon, or two daemons on one store, never both win a name. docs/store-layout.md describes it.
//
// Rules (ClaimName):
//   * no record (a new name, or a store written before records existed): the claimer adopts the
//     name and becomes its owner;
//   * the owner may change its spec: it keeps the name, the record takes its new spec identity,
//     and sharers with the old identity are dropped (their next claim conflicts);
//   * another holder with the record's spec identity shares the name (same inputs give the same
//     content-addressed version, so it cannot move `current` anywhere the owner would not);
//   * anyone else gets ArtifactNameConflict, and is not recorded.
// ReleaseName removes a holder (a deleted resource); the next sharer becomes the owner, and the
// record goes with the last holder, freeing the name.
//
// Thread-safety: free functions without state; safe from many threads and processes.

#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "common/result.h"

namespace modelcache::store {

struct NameRecord {
  std::string name;
  std::string spec_id;               // the spec identity every holder shares
  std::vector<std::string> holders;  // holders[0] owns the name; the rest share it
};

enum class ClaimOutcome { Owner, Shared };

// <root>/artifacts/<name>/owner.json
std::string NameRecordPath(const std::string& root, const std::string& name);

// The record of `name`; nullopt when nobody holds it. StorageError naming the file when it is
// unreadable or malformed.
Result<std::optional<NameRecord>> ReadNameRecord(const std::string& root, const std::string& name);

// Claims `name` of the local store at `root` for `holder` (a resource's identity, e.g.
// "kubernetes ns/name") with spec identity `spec_id`, by the rules above. ArtifactNameConflict
// (the message names the store and the artifact name, never the other holder) when another
// resource holds it with a different spec; StorageError on I/O; Cancelled on `stop`.
Result<ClaimOutcome> ClaimName(const std::string& root, const std::string& name,
                               const std::string& holder, const std::string& spec_id,
                               std::stop_token stop = {});

// ClaimName's verdict without recording anything (a one-off command that must not take a
// resource's `current` but holds no name of its own): OK when nobody holds `name` or its holders
// have `spec_id`.
VoidResult CheckName(const std::string& root, const std::string& name, const std::string& spec_id);

// Removes `holder` from the record of `name`; the record goes when no holder is left. OK when
// `holder` holds nothing there.
VoidResult ReleaseName(const std::string& root, const std::string& name, const std::string& holder,
                       std::stop_token stop = {});

}  // namespace modelcache::store
