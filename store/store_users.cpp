#include "store/store_users.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "common/files.h"
#include "common/sha256.h"

namespace modelcache::store {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kSuffix = ".json";

bool IsSafeId(const std::string& id) {
  return !id.empty() && id.front() != '.' && id.size() <= 200 &&
         std::all_of(id.begin(), id.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  c == '-' || c == '_' || c == '.';
         });
}

std::string UsersDir(const std::string& root) { return root + "/users"; }

Result<StoreUserRecord> ParseRecord(const std::string& path) {
  auto text = ReadFile(path);
  if (!text) {
    return text.error();
  }
  nlohmann::json doc = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  auto bad = [&](const std::string& what) {
    return Error(Reason::StorageError, "store user record " + path + ": " + what);
  };
  if (!doc.is_object() || doc.value("formatVersion", 0) != 1 || !doc.contains("heartbeat") ||
      !doc["heartbeat"].is_number_integer()) {
    return bad("not a formatVersion 1 record with a heartbeat");
  }
  StoreUserRecord r;
  r.id = doc.value("id", "");
  r.description = doc.value("description", "");
  r.heartbeat = doc["heartbeat"].get<int64_t>();
  try {
    for (const auto& n : doc.value("names", nlohmann::json::array())) {
      r.refs.names.insert(n.get<std::string>());
    }
    for (const auto& v : doc.value("versions", nlohmann::json::array())) {
      r.refs.versions.insert({v.at(0).get<std::string>(), v.at(1).get<std::string>()});
    }
    for (const auto& s : doc.value("snapshots", nlohmann::json::array())) {
      r.refs.snapshots.insert({s.at(0).get<std::string>(), s.at(1).get<std::string>()});
    }
  } catch (const nlohmann::json::exception& e) {
    return bad(std::string("malformed references: ") + e.what());
  }
  return r;
}

}  // namespace

std::string StoreUserId(const std::string& host, const std::string& identity) {
  std::string safe;
  for (char c : host.substr(0, 64)) {
    bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              c == '-' || c == '.';
    safe += ok ? c : '_';
  }
  if (safe.empty() || safe.front() == '.') {
    safe = "host" + safe;
  }
  return safe + "-" + Sha256Hex(identity).substr(0, 12);
}

VoidResult WriteStoreUser(const std::string& root, const StoreUserRecord& record) {
  if (!IsSafeId(record.id)) {
    return Error(Reason::InvalidSpec, "store user id '" + record.id + "' is not a safe file name");
  }
  nlohmann::json doc = {{"formatVersion", 1},
                        {"id", record.id},
                        {"description", record.description},
                        {"heartbeat", record.heartbeat},
                        {"names", record.refs.names},
                        {"versions", nlohmann::json::array()},
                        {"snapshots", nlohmann::json::array()}};
  for (const auto& [name, version] : record.refs.versions) {
    doc["versions"].push_back({name, version});
  }
  for (const auto& [folder, commit] : record.refs.snapshots) {
    doc["snapshots"].push_back({folder, commit});
  }
  if (auto r = MakeDirs(UsersDir(root)); !r) {
    return r;
  }
  return WriteFileAtomic(UsersDir(root) + "/" + record.id + std::string(kSuffix), doc.dump(1));
}

Result<StoreUsers> ReadStoreUsers(const std::string& root, int64_t now,
                                  const std::string& self_id) {
  StoreUsers users;
  std::error_code ec;
  const std::string dir = UsersDir(root);
  if (!fs::exists(dir, ec)) {
    return users;
  }
  std::vector<fs::path> files;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (name.size() > kSuffix.size() && name.substr(name.size() - kSuffix.size()) == kSuffix &&
        name.front() != '.' && name != self_id + std::string(kSuffix)) {
      files.push_back(it->path());
    }
  }
  if (ec) {
    return Error(Reason::StorageError, "cannot list " + dir + ": " + ec.message());
  }
  std::sort(files.begin(), files.end());
  const int64_t expiry = kStoreUserExpiry.count();
  for (const auto& path : files) {
    auto record = ParseRecord(path.string());
    if (!record) {
      if (!fs::exists(path, ec)) {
        continue;  // removed between the listing and the read (expired by another reader)
      }
      return record.error();
    }
    std::string id = path.stem().string();
    if (now - record->heartbeat >= expiry) {
      spdlog::info("store user {} ({}) expired: no heartbeat for {} s; its references are dropped",
                   id, record->description, now - record->heartbeat);
      fs::remove(path, ec);
      users.expired.push_back(id);
      continue;
    }
    MergeReferences(users.refs, record->refs);
    users.live.push_back(id);
  }
  return users;
}

void MergeReferences(GcReferences& into, const GcReferences& from) {
  into.names.insert(from.names.begin(), from.names.end());
  into.versions.insert(from.versions.begin(), from.versions.end());
  into.snapshots.insert(from.snapshots.begin(), from.snapshots.end());
}

}  // namespace modelcache::store
