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
  std::vector<std::string> problems;
  using InodeId = std::pair<dev_t, ino_t>;
  std::set<InodeId> hashed_ok;  // artifact files that hashed to their manifest digest
  std::map<std::string, std::pair<InodeId, std::string>>
      served;  // unsharded: path -> inode, sha256

  auto manifest = store.ReadVersion(artifact.name, artifact.version);
  if (!manifest) {
    problems.push_back("artifact " + artifact.name + "/" + artifact.version + ": " +
                       manifest.error().message);
  } else if (!*manifest) {
    problems.push_back("artifact version " + artifact.name + "/" + artifact.version +
                       " is missing from the store");
  } else {
    std::string dir = store.artifacts_dir() + "/" + artifact.name + "/" + artifact.version;
    for (const auto& f : (*manifest)->files) {
      if (stop.stop_requested()) {
        return Error(Reason::Cancelled, "cancelled");
      }
      std::string path = dir + "/" + f.path;
      struct stat st {};
      if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
        problems.push_back(f.path + ": artifact file is missing");
        continue;
      }
      if (static_cast<uint64_t>(st.st_size) != f.size) {
        problems.push_back(f.path + ": artifact file has " + std::to_string(st.st_size) +
                           " bytes, its manifest says " + std::to_string(f.size));
        continue;
      }
      auto digest = Sha256File(path);
      if (!digest || *digest != f.sha256) {
        problems.push_back(f.path + ": artifact file changed on disk (sha256 does not match)");
        continue;
      }
      hashed_ok.insert({st.st_dev, st.st_ino});
      if ((*manifest)->shard.is_null()) {
        served[f.path] = {{st.st_dev, st.st_ino}, f.sha256};
      }
    }
  }

  if (!commit.empty()) {
    store::RepoRef repo{spec.source.type.empty() ? "model" : spec.source.type, spec.source.repo,
                        *hub};
    std::string snapshot = store.RepoDir(repo) + "/snapshots/" + commit;
    std::set<std::string> linked;
    std::error_code ec;
    if (!fs::is_directory(snapshot, ec)) {
      problems.push_back("snapshot " + commit + " of " + repo.id + " is missing");
    }
    for (fs::recursive_directory_iterator it(snapshot, ec), end; !ec && it != end;
         it.increment(ec)) {
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
      std::string etag = fs::read_symlink(it->path(), sec).filename().string();
      std::string blob = store.BlobPath(repo, etag);
      struct stat st {};
      if (::stat(blob.c_str(), &st) != 0) {
        problems.push_back(rel + ": blob " + etag + " is missing");
        continue;
      }
      // The link must name what the endpoint served for this path (the artifact's content), not
      // just some valid blob: a link re-pointed to another blob of the repo is drift too.
      if (auto want = served.find(rel);
          want != served.end() && want->second.first != InodeId{st.st_dev, st.st_ino}) {
        auto digest = etag.size() == 64 ? Result<std::string>(etag) : Sha256File(blob);
        if (!digest || *digest != want->second.second) {
          problems.push_back(rel + ": snapshot links blob " + etag +
                             ", not the content the artifact was cached with");
          continue;
        }
      }
      if (hashed_ok.count({st.st_dev, st.st_ino}) > 0) {
        continue;  // the same inode as an artifact file that was just hashed
      }
      if (auto ok = store.VerifyBlob(repo, etag, static_cast<uint64_t>(st.st_size)); !ok) {
        problems.push_back(rel + ": blob " + etag + " changed on disk");
      }
    }
    if (manifest && *manifest && (*manifest)->shard.is_null()) {
      for (const auto& f : (*manifest)->files) {
        if (linked.count(f.path) == 0 && fs::is_directory(snapshot, ec)) {
          problems.push_back(f.path + ": snapshot link is missing");
        }
      }
    }
  }
  std::string out;
  for (const auto& p : problems) {
    out += (out.empty() ? "" : "; ") + p;
  }
  return out;
}

}  // namespace modelcache::reconcilers
