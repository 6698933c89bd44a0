#include "reconcilers/internal/verify_job.h"

#include <sys/stat.h>

#include <filesystem>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "common/sha256.h"
#include "fetch/hub_client.h"
#include "store/local_store.h"

namespace modelcache::reconcilers {

namespace fs = std::filesystem;

namespace {

using InodeId = std::pair<dev_t, ino_t>;

// What a drift check found so far.
struct Findings {
  std::vector<std::string> problems;
  std::set<InodeId> hashed_ok;  // artifact files that hashed to their manifest digest
  // Unsharded: path -> the inode and sha256 of the artifact file (what the endpoint served).
  std::map<std::string, std::pair<InodeId, std::string>> served;
};

// Every file of the artifact version in `manifest`: present, regular, of its size and sha256.
VoidResult CheckArtifactFiles(const store::LocalStore& store, const crds::ArtifactStatus& artifact,
                              const store::ArtifactManifest& manifest, std::stop_token stop,
                              Findings& found) {
  std::string dir = store.VersionDir(artifact.name, artifact.version);
  for (const auto& f : manifest.files) {
    if (stop.stop_requested()) {
      return Error(Reason::Cancelled, "cancelled");
    }
    std::string path = dir + "/" + f.path;
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
      found.problems.push_back(f.path + ": artifact file is missing");
      continue;
    }
    if (static_cast<uint64_t>(st.st_size) != f.size) {
      found.problems.push_back(f.path + ": artifact file has " + std::to_string(st.st_size) +
                               " bytes, its manifest says " + std::to_string(f.size));
      continue;
    }
    auto digest = Sha256File(path);
    if (!digest || *digest != f.sha256) {
      found.problems.push_back(f.path + ": artifact file changed on disk (sha256 does not match)");
      continue;
    }
    found.hashed_ok.insert({st.st_dev, st.st_ino});
    if (manifest.shard.is_null()) {
      found.served[f.path] = {{st.st_dev, st.st_ino}, f.sha256};
    }
  }
  return {};
}

// One link `rel` of the snapshot, to blob `etag`: the blob is present, is what the endpoint
// served for the path (unsharded), and hashes to its name (unless it is an artifact file's inode
// that was just hashed).
void CheckSnapshotLink(const store::LocalStore& store, const store::RepoRef& repo,
                       const std::string& rel, const std::string& etag, Findings& found) {
  std::string blob = store.BlobPath(repo, etag);
  struct stat st {};
  if (::stat(blob.c_str(), &st) != 0) {
    found.problems.push_back(rel + ": blob " + etag + " is missing");
    return;
  }
  // The link must name what the endpoint served for this path (the artifact's content), not
  // just some valid blob: a link re-pointed to another blob of the repo is drift too.
  if (auto want = found.served.find(rel);
      want != found.served.end() && want->second.first != InodeId{st.st_dev, st.st_ino}) {
    auto digest = etag.size() == 64 ? Result<std::string>(etag) : Sha256File(blob);
    if (!digest || *digest != want->second.second) {
      found.problems.push_back(rel + ": snapshot links blob " + etag +
                               ", not the content the artifact was cached with");
      return;
    }
  }
  if (found.hashed_ok.count({st.st_dev, st.st_ino}) > 0) {
    return;  // the same inode as an artifact file that was just hashed
  }
  if (auto ok = store.VerifyBlob(repo, etag, static_cast<uint64_t>(st.st_size)); !ok) {
    found.problems.push_back(rel + ": blob " + etag + " changed on disk");
  }
}

// The snapshot at `commit`: every link of a file `spec` selects (CheckSnapshotLink), and for an
// unsharded artifact (`manifest`, when it could be read) a link for every artifact file.
VoidResult CheckSnapshot(store::LocalStore& store, const store::RepoRef& repo,
                         const crds::ModelCacheSpec& spec, const std::string& commit,
                         const store::ArtifactManifest* manifest, std::stop_token stop,
                         Findings& found) {
  std::string snapshot = store.SnapshotDir(repo, commit);
  std::set<std::string> linked;
  std::error_code ec;
  if (!fs::is_directory(snapshot, ec)) {
    found.problems.push_back("snapshot " + commit + " of " + repo.id + " is missing");
  }
  for (fs::recursive_directory_iterator it(snapshot, ec), end; !ec && it != end; it.increment(ec)) {
    if (stop.stop_requested()) {
      return Error(Reason::Cancelled, "cancelled");
    }
    std::error_code sec;
    if (!it->is_symlink(sec)) {
      continue;
    }
    // By name: fs::relative would follow the link.
    std::string rel = it->path().string().substr(snapshot.size() + 1);
    if (!fetch::MatchesPatterns(rel, spec.source.include, spec.source.exclude)) {
      continue;  // selected by another resource of the same commit
    }
    linked.insert(rel);
    CheckSnapshotLink(store, repo, rel, fs::read_symlink(it->path(), sec).filename().string(),
                      found);
  }
  if (manifest != nullptr && manifest->shard.is_null()) {
    for (const auto& f : manifest->files) {
      if (linked.count(f.path) == 0 && fs::is_directory(snapshot, ec)) {
        found.problems.push_back(f.path + ": snapshot link is missing");
      }
    }
  }
  return {};
}

}  // namespace

Result<std::string> FindDrift(const std::string& store_root, const crds::ModelCacheSpec& spec,
                              const crds::ArtifactStatus& artifact, const std::string& commit,
                              const std::string& endpoint, const std::string& own_endpoint,
                              std::stop_token stop) {
  auto opened = store::LocalStore::Open(store_root);
  if (!opened) {
    return opened.error();
  }
  store::LocalStore& store = **opened;
  // The snapshot's own endpoint's cache: what that endpoint served is what it must still link.
  auto hub = store.HubFor(endpoint, own_endpoint);
  if (!hub) {
    return hub.error();
  }
  Findings found;
  auto manifest = store.ReadVersion(artifact.name, artifact.version);
  if (!manifest) {
    found.problems.push_back("artifact " + artifact.name + "/" + artifact.version + ": " +
                             manifest.error().message);
  } else if (!*manifest) {
    found.problems.push_back("artifact version " + artifact.name + "/" + artifact.version +
                             " is missing from the store");
  } else if (auto r = CheckArtifactFiles(store, artifact, **manifest, stop, found); !r) {
    return r.error();
  }
  if (!commit.empty()) {
    store::RepoRef repo{spec.source.type.empty() ? "model" : spec.source.type, spec.source.repo,
                        *hub};
    const store::ArtifactManifest* read = manifest && *manifest ? &**manifest : nullptr;
    if (auto r = CheckSnapshot(store, repo, spec, commit, read, stop, found); !r) {
      return r.error();
    }
  }
  std::string out;
  for (const auto& p : found.problems) {
    out += (out.empty() ? "" : "; ") + p;
  }
  return out;
}

}  // namespace modelcache::reconcilers
