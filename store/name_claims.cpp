#include "store/name_claims.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include <nlohmann/json.hpp>

#include "common/files.h"
#include "store/gc.h"

namespace modelcache::store {
namespace {

using nlohmann::json;

constexpr const char* kLockKind = "claim";

VoidResult CheckNameComponent(const std::string& name) {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
      name.front() == '.') {
    return Error(Reason::InvalidSpec, "artifact name \"" + name + "\" is not a single path name");
  }
  return {};
}

VoidResult WriteRecord(const std::string& root, const NameRecord& record) {
  std::string path = NameRecordPath(root, record.name);
  if (record.holders.empty()) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return Error(Reason::StorageError, "cannot remove " + path + ": " + ErrnoMessage(errno));
    }
    return {};
  }
  json doc = {{"formatVersion", 1},
              {"name", record.name},
              {"specId", record.spec_id},
              {"holders", record.holders}};
  return WriteFileAtomic(path, doc.dump(2) + "\n");
}

Error Conflict(const std::string& root, const std::string& name) {
  return {Reason::ArtifactNameConflict,
          "spec.artifactName: \"" + name + "\" in store " + root +
              " belongs to another resource with a different spec; choose another "
              "artifactName (or give this resource the owner's spec to share it)"};
}

// The exclusive lock of `name` and its record as read under it.
Result<std::pair<InUseLock, std::optional<NameRecord>>> LockAndRead(
    const std::string& root, const std::string& name, std::stop_token stop) {
  if (auto ok = CheckNameComponent(name); !ok) {
    return ok.error();
  }
  auto lock = LockExclusive(root, kLockKind, name, stop);
  if (!lock) {
    return lock.error();
  }
  auto read = ReadNameRecord(root, name);
  if (!read) {
    return read.error();
  }
  return std::pair<InUseLock, std::optional<NameRecord>>(std::move(*lock), std::move(*read));
}

}  // namespace

std::string NameRecordPath(const std::string& root, const std::string& name) {
  return root + "/artifacts/" + name + "/owner.json";
}

Result<std::optional<NameRecord>> ReadNameRecord(const std::string& root,
                                                 const std::string& name) {
  std::string path = NameRecordPath(root, name);
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) {
      return std::optional<NameRecord>();
    }
    return Error(Reason::StorageError, "cannot read " + path + ": " + ErrnoMessage(errno));
  }
  // A record is a few hundred bytes; anything much larger is not one of ours.
  auto text = ReadFile(path, 1 << 20);
  if (!text) {
    return text.error();
  }
  json doc = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  NameRecord record;
  if (!doc.is_object() || !doc.contains("specId") || !doc["specId"].is_string() ||
      !doc.contains("holders") || !doc["holders"].is_array()) {
    return Error(Reason::StorageError,
                 path + ": not an artifact name record (specId and holders are required)");
  }
  record.name = name;
  record.spec_id = doc["specId"].get<std::string>();
  for (const auto& h : doc["holders"]) {
    if (!h.is_string()) {
      return Error(Reason::StorageError, path + ": holders must be strings");
    }
    record.holders.push_back(h.get<std::string>());
  }
  if (record.holders.empty()) {
    return std::optional<NameRecord>();
  }
  return std::optional<NameRecord>(std::move(record));
}

Result<ClaimOutcome> ClaimName(const std::string& root, const std::string& name,
                               const std::string& holder, const std::string& spec_id,
                               std::stop_token stop) {
  auto locked = LockAndRead(root, name, stop);
  if (!locked) {
    return locked.error();
  }
  auto& [lock, read] = *locked;
  NameRecord record = read.value_or(NameRecord{name, spec_id, {}});
  auto& holders = record.holders;
  auto it = std::find(holders.begin(), holders.end(), holder);
  ClaimOutcome outcome = ClaimOutcome::Shared;
  if (holders.empty() || it == holders.begin()) {
    // Adopting a free name, or the owner (whose spec may have changed: it keeps the name, and
    // sharers of the old spec lose it).
    outcome = ClaimOutcome::Owner;
    if (record.spec_id != spec_id) {
      holders.assign(1, holder);
      record.spec_id = spec_id;
    } else if (holders.empty()) {
      holders.push_back(holder);
    } else {
      return outcome;  // nothing changed
    }
  } else if (record.spec_id != spec_id) {
    if (it != holders.end()) {
      holders.erase(it);  // a sharer whose spec moved away from the owner's
      if (auto w = WriteRecord(root, record); !w) {
        return w.error();
      }
    }
    return Conflict(root, name);
  } else if (it == holders.end()) {
    holders.push_back(holder);
  } else {
    return outcome;  // already sharing
  }
  if (auto w = WriteRecord(root, record); !w) {
    return w.error();
  }
  return outcome;
}

VoidResult CheckName(const std::string& root, const std::string& name,
                     const std::string& spec_id) {
  if (auto ok = CheckNameComponent(name); !ok) {
    return ok.error();
  }
  auto read = ReadNameRecord(root, name);
  if (!read) {
    return read.error();
  }
  if (*read && (*read)->spec_id != spec_id) {
    return Conflict(root, name);
  }
  return {};
}

VoidResult ReleaseName(const std::string& root, const std::string& name,
                       const std::string& holder, std::stop_token stop) {
  auto locked = LockAndRead(root, name, stop);
  if (!locked) {
    return locked.error();
  }
  auto& [lock, read] = *locked;
  if (!read) {
    return {};
  }
  NameRecord record = std::move(*read);
  auto it = std::find(record.holders.begin(), record.holders.end(), holder);
  if (it == record.holders.end()) {
    return {};
  }
  record.holders.erase(it);
  return WriteRecord(root, record);
}

}  // namespace modelcache::store
