#include "controller/directory/file_status_store.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "common/files.h"

namespace modelcache::controller {

namespace {

bool PathSafe(const std::string& part) {
  return !part.empty() && part != "." && part != ".." && part.find('/') == std::string::npos &&
         part.find('\0') == std::string::npos;
}

// Reads and parses one status file. nullopt if it does not exist.
Result<std::optional<crds::ModelCache>> ReadObjectFile(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return std::optional<crds::ModelCache>();
    }
    return Error(Reason::StorageError, "cannot stat " + path + ": " + ErrnoMessage(errno));
  }
  auto text = ReadFile(path);
  if (!text) {
    return text.error();
  }
  nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Error(Reason::StorageError, path + ": corrupt status file: not a JSON object");
  }
  auto object = crds::FromJson(j);
  if (!object) {
    return Error(Reason::StorageError, path + ": corrupt status file: " + object.error().message);
  }
  return std::optional<crds::ModelCache>(std::move(*object));
}

// Names in `dir` (not "." or ".."), sorted. Empty if `dir` does not exist.
Result<std::vector<std::string>> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) {
      return names;
    }
    return Error(Reason::StorageError, "cannot list " + dir + ": " + ErrnoMessage(errno));
  }
  // readdir is thread-safe on distinct DIR streams (glibc; POSIX.1-2024).
  while (dirent* e = ::readdir(d)) {  // NOLINT(concurrency-mt-unsafe)
    std::string name = e->d_name;
    if (name != "." && name != "..") {
      names.push_back(std::move(name));
    }
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

VoidResult CheckKeyIsPathSafe(const crds::ObjectKey& key) {
  if (!PathSafe(key.namespace_)) {
    return Error(Reason::InvalidSpec, "metadata.namespace: Invalid value: \"" + key.namespace_ +
                                          "\": not usable as a "
                                          "file name");
  }
  if (!PathSafe(key.name)) {
    return Error(Reason::InvalidSpec,
                 "metadata.name: Invalid value: \"" + key.name + "\": not usable as a file name");
  }
  return {};
}

FileStatusStore::FileStatusStore(std::string state_dir)
    : status_dir_(std::move(state_dir) + "/status") {}

std::string FileStatusStore::PathFor(const crds::ObjectKey& key) const {
  return status_dir_ + "/" + key.namespace_ + "/" + key.name + ".json";
}

Result<std::optional<crds::ModelCache>> FileStatusStore::Read(const crds::ObjectKey& key) const {
  if (auto ok = CheckKeyIsPathSafe(key); !ok) {
    return ok.error();
  }
  return ReadObjectFile(PathFor(key));
}

VoidResult FileStatusStore::Write(const crds::ModelCache& object_with_status) {
  crds::ObjectKey key = object_with_status.key();
  if (auto ok = CheckKeyIsPathSafe(key); !ok) {
    return ok.error();
  }
  std::string text = crds::ToJson(object_with_status).dump(2) + "\n";
  return WriteFileAtomic(PathFor(key), text);
}

VoidResult FileStatusStore::Remove(const crds::ObjectKey& key) {
  if (auto ok = CheckKeyIsPathSafe(key); !ok) {
    return ok.error();
  }
  std::string path = PathFor(key);
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) {
      return {};
    }
    return Error(Reason::StorageError, "cannot remove " + path + ": " + ErrnoMessage(errno));
  }
  // The namespace directory stays: removing it could race a concurrent Write() of another key
  // in the same namespace that has just created it.
  return SyncDir(status_dir_ + "/" + key.namespace_);
}

Result<std::vector<crds::ModelCache>> FileStatusStore::List() const {
  std::vector<crds::ModelCache> out;
  auto namespaces = ListDir(status_dir_);
  if (!namespaces) {
    return namespaces.error();
  }
  for (const auto& ns : *namespaces) {
    std::string ns_dir = status_dir_ + "/" + ns;
    auto names = ListDir(ns_dir);
    if (!names) {
      spdlog::warn("skipping status namespace {}: {}", ns_dir, names.error().message);
      continue;
    }
    for (const auto& file : *names) {
      // Temporary files of an unfinished WriteFileAtomic end in ".tmp.<suffix>", not ".json".
      if (!file.ends_with(".json") || file.front() == '.') {
        continue;
      }
      std::string path = ns_dir;
      path += '/';
      path += file;
      auto object = ReadObjectFile(path);
      if (!object) {
        spdlog::warn("skipping status file: {}", object.error().message);
        continue;
      }
      if (!object->has_value()) {
        continue;  // removed since the listing
      }
      crds::ObjectKey key = (*object)->key();
      if (key.namespace_ != ns || key.name + ".json" != file) {
        spdlog::warn("skipping status file {}: it holds {}", path, key.ToString());
        continue;
      }
      out.push_back(std::move(**object));
    }
  }
  return out;
}

}  // namespace modelcache::controller
