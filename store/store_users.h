#pragma once

// Who uses a local store: every daemon that shares a store (per-namespace daemons, per-node daemons
// on shared storage, a second watch directory) publishes the references it holds in
// <root>/users/<id>.json with a heartbeat, so that garbage collection in any process (a daemon's
// quota GC, `modelcache gc`) keeps what the others use (docs/store-layout.md, "Sharing a store").
//
//   <root>/users/<id>.json   {"formatVersion": 1, "id", "description", "heartbeat": <unix seconds>,
//                             "names": [...], "versions": [[name, version]...],
//                             "snapshots": [[repo-folder, commit]...]}
//
// A record is live while its heartbeat is less than kStoreUserExpiry old. The writer refreshes it
// every kStoreUserHeartbeat (and at once after each publish); a stopped daemon's record is left in
// place, so its references survive a restart, and expire kStoreUserExpiry after its last
// heartbeat. An expired record is removed by the next reader.
//
// Thread-safety: the functions keep no state; records are written by one rename each.

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "common/result.h"
#include "store/gc.h"

namespace modelcache::store {

inline constexpr std::chrono::seconds kStoreUserHeartbeat{60};
inline constexpr std::chrono::seconds kStoreUserExpiry{600};

struct StoreUserRecord {
  std::string id;           // a file name: [A-Za-z0-9._-]
  std::string description;  // for people: "modelcache run --watch-dir … (pid 12 on node-a)"
  int64_t heartbeat = 0;    // unix seconds
  GcReferences refs;
};

// A stable id for one daemon: its host name and a digest of `identity` (for example its state
// directory and mode), so that a restart takes over its own record.
std::string StoreUserId(const std::string& host, const std::string& identity);

// Writes <root>/users/<record.id>.json atomically. InvalidSpec for an unsafe id, StorageError on
// I/O.
VoidResult WriteStoreUser(const std::string& root, const StoreUserRecord& record);

struct StoreUsers {
  GcReferences refs;                 // the union of the live records' references
  std::vector<std::string> live;     // their ids
  std::vector<std::string> expired;  // ids whose records were expired (and removed)
};

// Reads every record but `self_id`'s, at `now` (unix seconds). A record that cannot be read or
// parsed is an error (StorageError naming the file): GC never guesses what another user holds.
Result<StoreUsers> ReadStoreUsers(const std::string& root, int64_t now,
                                  const std::string& self_id = "");

// Adds `from` to `into`.
void MergeReferences(GcReferences& into, const GcReferences& from);

}  // namespace modelcache::store
