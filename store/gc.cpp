#include "store/gc.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <thread>
#include <tuple>

#include <nlohmann/json.hpp>
#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>

#include "common/files.h"
#include "common/units.h"
#include "store/internal/layout.h"

namespace modelcache::store {

namespace fs = std::filesystem;

namespace {

using internal::kTmpMarker;

constexpr std::string_view kIncompleteSuffix = ".incomplete";

int64_t MtimeNs(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
}

// A repo of another endpoint's hub cache is named "<hub>/<folder>" (RepoStoreName): one file per
// name, '/' written as '@' (in no hub key, folder or artifact name).
std::string LockPath(const std::string& root, const std::string& kind, const std::string& name) {
  std::string file = name;
  std::replace(file.begin(), file.end(), '/', '@');
  return root + "/locks/inuse/" + kind + "-" + file + ".lock";
}

// The huggingface_hub folder of a store name ("<hub>/models--x" -> "models--x"): references
// name a repo and commit, not the endpoint they came from, so they keep it in every hub cache.
std::string PlainFolder(const std::string& store_name) {
  size_t slash = store_name.rfind('/');
  return slash == std::string::npos ? store_name : store_name.substr(slash + 1);
}

// Records a regular file's inode (lstat: a symlink is not content).
void AddInode(StoreInventory& inv, const struct stat& st) {
  InodeId id{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
  auto [it, inserted] = inv.inodes.try_emplace(id);
  if (inserted) {
    it->second.size = static_cast<uint64_t>(st.st_size);
    it->second.links = static_cast<uint64_t>(st.st_nlink);
    inv.used_bytes += it->second.size;
  }
}

std::optional<std::string> ReadLinkTarget(const std::string& path) {
  std::error_code ec;
  fs::path target = fs::read_symlink(path, ec);
  if (ec) {
    return std::nullopt;
  }
  return target.string();
}

void ScanVersion(StoreInventory& inv, VersionInfo& v) {
  std::error_code ec;
  for (fs::recursive_directory_iterator it(v.path, ec), end; !ec && it != end; it.increment(ec)) {
    struct stat st {};
    std::string full = it->path().string();
    if (::lstat(full.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
      continue;
    }
    AddInode(inv, st);
    v.files.emplace_back(full.substr(v.path.size() + 1), InodeId{static_cast<uint64_t>(st.st_dev),
                                                                 static_cast<uint64_t>(st.st_ino)});
  }
  auto text = ReadFile(v.path + "/modelcache.json");
  if (!text) {
    return;
  }
  nlohmann::json doc = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return;
  }
  auto manifest = ManifestFromJson(doc);
  if (manifest && !manifest->source_repo.empty() && !manifest->source_type.empty()) {
    v.source_folder = RepoFolderName({manifest->source_type, manifest->source_repo});
    v.source_commit = manifest->source_commit;
  }
}

void ScanArtifacts(const LocalStore& store, StoreInventory& inv) {
  std::error_code ec;
  for (fs::directory_iterator names(store.artifacts_dir(), ec), end; !ec && names != end;
       names.increment(ec)) {
    std::string name = names->path().filename().string();
    std::error_code nec;
    if (name.empty() || name.front() == '.' || names->is_symlink(nec) ||
        !names->is_directory(nec)) {
      continue;
    }
    inv.names.insert(name);
    for (fs::directory_iterator it(names->path(), nec), e2; !nec && it != e2; it.increment(nec)) {
      std::string entry = it->path().filename().string();
      std::string path = it->path().string();
      if (entry == "current") {
        if (auto target = ReadLinkTarget(path)) {
          inv.current[name] = *target;
        }
        continue;
      }
      struct stat st {};
      if (entry.front() == '.' || entry.find(kTmpMarker) != std::string::npos ||
          ::lstat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
        continue;  // staging, trash, temporary names: CleanupStaging's business
      }
      VersionInfo v;
      v.name = name;
      v.version = entry;
      v.path = path;
      v.mtime_ns = MtimeNs(st);
      ScanVersion(inv, v);
      inv.versions.push_back(std::move(v));
    }
  }
}

// Attaches modelcache's record of what it wrote to `s` (path -> link target etag: `links`).
void AttachRecord(const LocalStore& store, StoreInventory& inv, SnapshotInfo& s,
                  const std::map<std::string, std::string>& links) {
  auto record = store.ReadWritten(RepoFromStoreName(s.folder), s.commit);
  if (!record || !*record) {
    return;  // not modelcache's (or unreadable): never removed
  }
  s.recorded = true;
  std::set<std::string> foreign;
  for (const auto& [path, etag] : links) {
    auto it = (*record)->find(path);
    if (it != (*record)->end() && it->second == etag) {
      s.written[path] = etag;
    } else {
      foreign.insert(etag);
    }
  }
  for (const auto& [path, etag] : s.written) {
    if (foreign.count(etag) == 0) {
      s.own_etags.insert(etag);
    }
  }
  for (const auto& [path, etag] : **record) {
    inv.written_blobs.insert({s.folder, etag});
  }
}

// `hub`: "" for <root>/hub, else the key of <root>/hubs/<hub>.
void ScanRepo(const LocalStore& store, StoreInventory& inv, const fs::path& repo,
              const std::string& hub) {
  std::string folder = (hub.empty() ? "" : hub + "/") + repo.filename().string();
  std::set<std::string> seen;
  std::error_code ec;
  // snapshots/<commit>/...: links to ../../blobs/<etag>
  for (fs::directory_iterator it(repo / "snapshots", ec), end; !ec && it != end; it.increment(ec)) {
    std::string commit = it->path().filename().string();
    struct stat st {};
    if (commit.find(kTmpMarker) != std::string::npos || ::lstat(it->path().c_str(), &st) != 0 ||
        !S_ISDIR(st.st_mode)) {
      continue;
    }
    SnapshotInfo s;
    s.folder = folder;
    s.commit = commit;
    s.path = it->path().string();
    s.mtime_ns = MtimeNs(st);
    std::map<std::string, std::string> links;
    std::error_code wec;
    for (fs::recursive_directory_iterator w(it->path(), wec), e2; !wec && w != e2;
         w.increment(wec)) {
      std::error_code sec;
      if (!w->is_symlink(sec)) {
        continue;
      }
      if (auto target = ReadLinkTarget(w->path().string())) {
        std::string etag = fs::path(*target).filename().string();
        s.etags.insert(etag);
        links[w->path().string().substr(s.path.size() + 1)] = etag;
      }
    }
    AttachRecord(store, inv, s, links);
    seen.insert(commit);
    inv.snapshots.push_back(std::move(s));
  }
  // Records of commits with no snapshot (yet): a job that failed before linking left blobs.
  std::string records = store.root() + "/written/" + folder;
  for (fs::directory_iterator it(records, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    struct stat st {};
    if (!name.ends_with(".json") || name.find(kTmpMarker) != std::string::npos ||
        ::lstat(it->path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
      continue;
    }
    std::string commit = name.substr(0, name.size() - 5);
    if (seen.count(commit) > 0) {
      continue;
    }
    SnapshotInfo s;
    s.folder = folder;
    s.commit = commit;
    s.path = (repo / "snapshots" / commit).string();
    s.mtime_ns = MtimeNs(st);
    AttachRecord(store, inv, s, {});
    if (s.recorded) {
      inv.snapshots.push_back(std::move(s));
    }
  }
  ec.clear();
  // blobs/
  for (fs::directory_iterator it(repo / "blobs", ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    struct stat st {};
    if (::lstat(it->path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
      continue;
    }
    AddInode(inv, st);  // .incomplete files take space too
    if (name.ends_with(kIncompleteSuffix) || name.find(kTmpMarker) != std::string::npos) {
      continue;
    }
    BlobInfo b;
    b.folder = folder;
    b.etag = name;
    b.path = it->path().string();
    b.mtime_ns = MtimeNs(st);
    b.inode = {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
    inv.blobs.push_back(std::move(b));
  }
  // refs/ (nested for refs/pr/1)
  fs::path refs = repo / "refs";
  for (fs::recursive_directory_iterator it(refs, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code sec;
    std::string name = it->path().filename().string();
    if (!it->is_regular_file(sec) || name.find(kTmpMarker) != std::string::npos) {
      continue;
    }
    if (auto content = ReadFile(it->path().string())) {
      // By name (fs::relative would resolve symlinks in the store's path).
      inv.refs[folder][it->path().string().substr(refs.string().size() + 1)] = *content;
    }
  }
}

// The removal simulation behind PlanGc: links left per inode and per blob, and what is gone.
class Simulation {
 public:
  Simulation(const StoreInventory& inv, GcReport& report) : inv_(inv), report_(report) {
    for (const auto& [id, info] : inv.inodes) {
      links_[id] = info.links;
    }
    for (size_t i = 0; i < inv.blobs.size(); ++i) {
      blob_index_[{inv.blobs[i].folder, inv.blobs[i].etag}] = i;
    }
    for (const auto& s : inv.snapshots) {
      for (const auto& etag : s.etags) {
        snapshot_links_[{s.folder, etag}]++;
      }
    }
  }

  uint64_t Unlink(const InodeId& id) {
    auto it = links_.find(id);
    if (it == links_.end() || it->second == 0) {
      return 0;
    }
    if (--it->second == 0) {
      return inv_.inodes.at(id).size;
    }
    return 0;
  }

  void Add(GcItem item) {
    report_.freed_bytes += item.freed_bytes;
    report_.items.push_back(std::move(item));
  }

  void RemoveVersion(const VersionInfo& v, bool removes_current, const std::string& why) {
    GcItem item;
    item.kind = GcKind::Version;
    item.path = v.path;
    item.name = v.name;
    item.version = v.version;
    item.removes_current = removes_current;
    item.why = why;
    for (const auto& [rel, id] : v.files) {
      item.freed_bytes += Unlink(id);
    }
    Add(std::move(item));
    report_.evicted_versions[v.name].push_back(v.version);
  }

  bool SnapshotRemoved(const SnapshotInfo& s) const {
    return removed_snapshots_.count({s.folder, s.commit}) > 0;
  }

  // The snapshot, then the blobs that no remaining snapshot links.
  void RemoveSnapshot(const SnapshotInfo& s, const std::string& why) {
    removed_snapshots_.insert({s.folder, s.commit});
    GcItem item;
    item.kind = GcKind::Snapshot;
    item.path = s.path;
    item.folder = s.folder;
    item.id = s.commit;
    item.why = why;
    Add(std::move(item));
    // Only its own links go; a blob goes once nothing links it, if modelcache wrote it.
    for (const auto& etag : s.own_etags) {
      if (--snapshot_links_[{s.folder, etag}] == 0) {
        auto b = blob_index_.find({s.folder, etag});
        if (b != blob_index_.end() && inv_.written_blobs.count({s.folder, etag}) > 0) {
          RemoveBlob(inv_.blobs[b->second], "no remaining snapshot links it");
        }
      }
    }
  }

  void RemoveBlob(const BlobInfo& b, const std::string& why) {
    if (!removed_blobs_.insert({b.folder, b.etag}).second) {
      return;
    }
    GcItem item;
    item.kind = GcKind::Blob;
    item.path = b.path;
    item.folder = b.folder;
    item.id = b.etag;
    item.why = why;
    item.freed_bytes = Unlink(b.inode);
    Add(std::move(item));
  }

  bool Linked(const BlobInfo& b) const {
    auto it = snapshot_links_.find({b.folder, b.etag});
    return it != snapshot_links_.end() && it->second > 0;
  }

 private:
  const StoreInventory& inv_;
  GcReport& report_;
  std::map<InodeId, uint64_t> links_;
  std::map<std::pair<std::string, std::string>, size_t> blob_index_;
  std::map<std::pair<std::string, std::string>, int> snapshot_links_;
  std::set<std::pair<std::string, std::string>> removed_snapshots_;
  std::set<std::pair<std::string, std::string>> removed_blobs_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// In-use locks.

// GC holds the exclusive lock for the few milliseconds its removals take: a waiter polls every
// 20 ms at most.
constexpr std::chrono::milliseconds kInUsePoll{20};

Result<InUseLock> LockInUse(const std::string& root, const std::string& kind,
                            const std::string& name, std::stop_token stop) {
  return FileLock::Lock(LockPath(root, kind, name), LockMode::Shared, std::move(stop), kInUsePoll);
}

Result<InUseLock> LockExclusive(const std::string& root, const std::string& kind,
                                const std::string& name, std::stop_token stop) {
  return FileLock::Lock(LockPath(root, kind, name), LockMode::Exclusive, std::move(stop),
                        kInUsePoll);
}

Result<InUseLock> TryLockExclusive(const std::string& root, const std::string& kind,
                                   const std::string& name) {
  return FileLock::TryLock(LockPath(root, kind, name), LockMode::Exclusive);
}

// ---------------------------------------------------------------------------------------------
// Scan.

Result<StoreInventory> ScanStore(const LocalStore& store) {
  StoreInventory inv;
  std::error_code ec;
  if (!fs::is_directory(store.artifacts_dir(), ec) || !fs::is_directory(store.hub_dir(), ec)) {
    return Error(Reason::StorageError, "cannot scan " + store.root() + ": not a modelcache store");
  }
  ScanArtifacts(store, inv);
  for (const std::string& hub_dir : store.ListHubDirs()) {
    std::string hub = hub_dir == store.hub_dir() ? "" : fs::path(hub_dir).filename().string();
    for (fs::directory_iterator repos(hub_dir, ec), end; !ec && repos != end; repos.increment(ec)) {
      std::string folder = repos->path().filename().string();
      std::error_code rec;
      if (folder.find("--") == std::string::npos || repos->is_symlink(rec) ||
          !repos->is_directory(rec)) {
        continue;
      }
      ScanRepo(store, inv, repos->path(), hub);
    }
    if (ec) {
      return Error(Reason::StorageError, "cannot list " + hub_dir + ": " + ec.message());
    }
  }
  return inv;
}

// ---------------------------------------------------------------------------------------------
// Plan.

bool HasLimits(const GcOptions& options) { return options.max_bytes > 0 || options.min_free > 0; }

std::string_view GcKindName(GcKind kind) {
  switch (kind) {
    case GcKind::Version:
      return "version";
    case GcKind::Snapshot:
      return "snapshot";
    case GcKind::Blob:
      return "blob";
  }
  return "version";
}

GcReport PlanGc(const StoreInventory& inv, const GcReferences& refs, const GcOptions& options,
                uint64_t free_bytes) {
  GcReport report;
  report.used_bytes = inv.used_bytes;
  report.free_bytes = free_bytes;
  uint64_t need = 0;
  if (options.max_bytes > 0 && inv.used_bytes > options.max_bytes) {
    need = inv.used_bytes - options.max_bytes;
  }
  if (options.min_free > 0 && free_bytes < options.min_free) {
    need = std::max(need, options.min_free - free_bytes);
  }
  const bool limited = HasLimits(options);
  if (limited && need == 0) {
    return report;  // within the limits: nothing to do
  }
  report.needed_bytes = need;
  auto done = [&] { return limited && report.freed_bytes >= need; };

  // Which versions are kept.
  std::map<std::string, std::vector<const VersionInfo*>> by_name;
  for (const auto& v : inv.versions) {
    by_name[v.name].push_back(&v);
  }
  std::set<std::string> referenced_names = refs.names;
  for (const auto& [name, version] : refs.versions) {
    referenced_names.insert(name);
  }
  std::set<const VersionInfo*> kept;
  for (auto& [name, versions] : by_name) {
    if (referenced_names.count(name) == 0) {
      continue;
    }
    std::sort(versions.begin(), versions.end(), [](const VersionInfo* a, const VersionInfo* b) {
      return std::tie(b->mtime_ns, b->version) < std::tie(a->mtime_ns, a->version);  // newest first
    });
    auto cur = inv.current.find(name);
    for (size_t i = 0; i < versions.size(); ++i) {
      const VersionInfo* v = versions[i];
      if (static_cast<int>(i) < options.keep_versions || refs.versions.count({name, v->version}) ||
          (cur != inv.current.end() && cur->second == v->version)) {
        kept.insert(v);
      }
    }
  }
  std::set<std::pair<std::string, std::string>> kept_snapshots = refs.snapshots;
  for (const VersionInfo* v : kept) {
    if (!v->source_folder.empty()) {
      kept_snapshots.insert({v->source_folder, v->source_commit});
    }
  }

  std::vector<const VersionInfo*> versions;
  for (const auto& v : inv.versions) {
    if (kept.count(&v) == 0) {
      versions.push_back(&v);
    }
  }
  std::sort(versions.begin(), versions.end(), [](const VersionInfo* a, const VersionInfo* b) {
    return std::tie(a->mtime_ns, a->name, a->version) < std::tie(b->mtime_ns, b->name, b->version);
  });
  std::vector<const SnapshotInfo*> snapshots;
  for (const auto& s : inv.snapshots) {
    if (s.recorded && kept_snapshots.count({PlainFolder(s.folder), s.commit}) == 0) {
      snapshots.push_back(&s);
    }
  }
  std::sort(snapshots.begin(), snapshots.end(), [](const SnapshotInfo* a, const SnapshotInfo* b) {
    return std::tie(a->mtime_ns, a->folder, a->commit) <
           std::tie(b->mtime_ns, b->folder, b->commit);
  });

  Simulation sim(inv, report);
  // 1. Versions, oldest first, each with the snapshot it was built from when nothing keeps it.
  for (const VersionInfo* v : versions) {
    if (done()) {
      break;
    }
    bool referenced = referenced_names.count(v->name) > 0;
    auto cur = inv.current.find(v->name);
    bool is_current = cur != inv.current.end() && cur->second == v->version;
    std::string why = referenced
                          ? "not referenced, older than the " +
                                std::to_string(options.keep_versions) + " newest of " + v->name
                          : "no resource references artifact " + v->name;
    if (is_current) {
      why += " (removes its current link)";
    }
    sim.RemoveVersion(*v, is_current, why);
    for (const SnapshotInfo* s : snapshots) {
      if (PlainFolder(s->folder) == v->source_folder && s->commit == v->source_commit &&
          !sim.SnapshotRemoved(*s)) {
        sim.RemoveSnapshot(*s, "built the removed version " + v->name + "/" + v->version +
                                   "; no resource uses this commit");
      }
    }
  }
  // 2. Snapshots no resource uses, oldest first, with the blobs only they linked.
  for (const SnapshotInfo* s : snapshots) {
    if (done()) {
      break;
    }
    if (!sim.SnapshotRemoved(*s)) {
      sim.RemoveSnapshot(*s, "no resource uses this commit");
    }
  }
  // 3. Blobs no snapshot links at all (left by a failed or cancelled job, or a removed link).
  std::vector<const BlobInfo*> blobs;
  for (const auto& b : inv.blobs) {
    blobs.push_back(&b);
  }
  std::sort(blobs.begin(), blobs.end(), [](const BlobInfo* a, const BlobInfo* b) {
    return std::tie(a->mtime_ns, a->folder, a->etag) < std::tie(b->mtime_ns, b->folder, b->etag);
  });
  for (const BlobInfo* b : blobs) {
    if (done()) {
      break;
    }
    // A blob no record names is not modelcache's (a huggingface_hub download, or a store of an
    // earlier release): never removed.
    if (!sim.Linked(*b) && inv.written_blobs.count({b->folder, b->etag}) > 0) {
      sim.RemoveBlob(*b, "no snapshot links it");
    }
  }
  report.over_limits = limited && report.freed_bytes < need;
  return report;
}

// ---------------------------------------------------------------------------------------------
// Run.

namespace {

// Exclusive in-use locks taken during one run, so each repo or name is locked once.
class LockSet {
 public:
  LockSet(std::string root, GcReport& report) : root_(std::move(root)), report_(report) {}

  // True if `kind`/`name` is ours to change; false (and named in report.busy) if in use.
  bool Acquire(const std::string& kind, const std::string& name) {
    auto key = kind + " " + name;
    auto it = held_.find(key);
    if (it != held_.end()) {
      return it->second.held();
    }
    auto lock = TryLockExclusive(root_, kind, name);
    if (!lock) {
      spdlog::warn("gc: {}", lock.error().message);
      lock = InUseLock();
    }
    bool held = lock->held();
    if (!held) {
      report_.busy.push_back(key);
    }
    held_.emplace(key, std::move(*lock));
    return held;
  }

 private:
  std::string root_;
  GcReport& report_;
  std::map<std::string, InUseLock> held_;
};

VoidResult RemoveVersionDir(const LocalStore& store, const GcItem& item) {
  std::string dir = store.artifacts_dir() + "/" + item.name;
  std::string current = dir + "/current";
  auto target = ReadLinkTarget(current);
  if (target && *target == item.version) {
    if (!item.removes_current) {
      return Error(Reason::StorageError, "it became current again");
    }
    if (::unlink(current.c_str()) != 0 && errno != ENOENT) {
      return Error(Reason::StorageError, "cannot remove " + current + ": " + ErrnoMessage(errno));
    }
  }
  // One rename makes the version disappear whole; the trash is deleted after (and by
  // CleanupStaging if we crash in between).
  std::string trash = dir + "/.trash-" + UniqueSuffix();
  if (::rename(item.path.c_str(), trash.c_str()) != 0) {
    return Error(Reason::StorageError,
                 "cannot move " + item.path + " aside: " + ErrnoMessage(errno));
  }
  // No fsync: after a crash the version is back or is trash, and either is removed next time.
  std::error_code ec;
  fs::remove_all(trash, ec);
  if (item.removes_current) {
    // The whole name is going; its directory goes once it is empty.
    ::rmdir(dir.c_str());
  }
  return {};
}

VoidResult RemoveSnapshotDir(const LocalStore& store, const StoreInventory& inv,
                             const GcItem& item) {
  RepoRef repo = RepoFromStoreName(item.folder);
  std::string repo_dir = store.RepoDir(repo);
  auto snapshot = std::find_if(inv.snapshots.begin(), inv.snapshots.end(), [&](const auto& s) {
    return s.folder == item.folder && s.commit == item.id;
  });
  if (snapshot == inv.snapshots.end() || !snapshot->recorded) {
    return Error(Reason::Internal, "not a snapshot modelcache recorded");
  }
  // When every link is ours the whole snapshot goes, refs to it first (a ref must not name a
  // commit that is gone); links of a huggingface_hub download of the same commit stay, and so do
  // the refs then.
  bool whole = true;
  std::error_code wec;
  for (fs::recursive_directory_iterator w(item.path, wec), end; !wec && w != end;
       w.increment(wec)) {
    std::error_code sec;
    if (w->is_symlink(sec) &&
        snapshot->written.count(w->path().string().substr(item.path.size() + 1)) == 0) {
      whole = false;
    }
  }
  auto refs = inv.refs.find(item.folder);
  if (whole && refs != inv.refs.end()) {
    for (const auto& [ref, commit] : refs->second) {
      std::string path = fmt::format("{}/refs/{}", repo_dir, ref);
      auto now = ReadFile(path);
      if (now && *now == item.id) {
        ::unlink(path.c_str());
      }
    }
  }
  // Our links (still pointing where the record says), then the directories they leave empty.
  for (const auto& [path, etag] : snapshot->written) {
    std::string link = item.path + "/" + path;
    auto target = ReadLinkTarget(link);
    if (target && fs::path(*target).filename().string() == etag) {
      ::unlink(link.c_str());
    }
    for (fs::path dir = fs::path(link).parent_path(); dir.string().size() > item.path.size();
         dir = dir.parent_path()) {
      if (::rmdir(dir.c_str()) != 0) {
        break;
      }
    }
  }
  ::unlink(store.WrittenRecordPath(repo, item.id).c_str());
  if (whole) {
    ::rmdir(item.path.c_str());
  }
  return {};
}

}  // namespace

Result<GcReport> RunGc(LocalStore& store, const GcReferences& refs, const GcOptions& options) {
  auto inv = ScanStore(store);
  if (!inv) {
    return inv.error();
  }
  auto free_space = options.free_space ? options.free_space : FreeBytes;
  uint64_t free_bytes = 0;
  if (auto f = free_space(store.root())) {
    free_bytes = *f;
  } else if (options.min_free > 0) {
    return f.error();
  }
  GcReport plan = PlanGc(*inv, refs, options, free_bytes);
  if (options.dry_run) {
    return plan;
  }
  GcReport report;
  report.used_bytes = plan.used_bytes;
  report.free_bytes = plan.free_bytes;
  report.needed_bytes = plan.needed_bytes;
  LockSet locks(store.root(), report);
  for (const GcItem& item : plan.items) {
    VoidResult removed;
    if (item.kind == GcKind::Version) {
      if (!locks.Acquire("artifact", item.name)) {
        continue;
      }
      removed = RemoveVersionDir(store, item);
    } else {
      if (!locks.Acquire("repo", item.folder)) {
        continue;
      }
      if (item.kind == GcKind::Snapshot) {
        removed = RemoveSnapshotDir(store, *inv, item);
      } else {
        // Also under huggingface_hub's download lock, in case it is fetching this blob now.
        auto blob_lock = store.TryLockBlob(RepoFromStoreName(item.folder), item.id);
        if (!blob_lock || !*blob_lock) {
          report.busy.push_back("blob " + item.path);
          continue;
        }
        if (::unlink(item.path.c_str()) != 0 && errno != ENOENT) {
          removed = Error(Reason::StorageError,
                          "cannot remove " + item.path + ": " + ErrnoMessage(errno));
        }
      }
    }
    if (!removed) {
      spdlog::warn("gc: kept {}: {}", item.path, removed.error().message);
      continue;
    }
    report.freed_bytes += item.freed_bytes;
    if (item.kind == GcKind::Version) {
      report.evicted_versions[item.name].push_back(item.version);
    }
    report.items.push_back(item);
  }
  report.over_limits = HasLimits(options) && report.freed_bytes < report.needed_bytes;
  return report;
}

}  // namespace modelcache::store
