#include "controller/directory/directory_source.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <string>
#include <utility>

#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>

#include "common/files.h"
#include "common/guard.h"
#include "common/sha256.h"

namespace modelcache::controller {

namespace {

// Every change that can alter what a directory holds. IN_MODIFY is left out on purpose: a file
// being written is read once it is closed (IN_CLOSE_WRITE) or renamed into place (IN_MOVED_TO).
// IN_CREATE matters for symlinks and directories, which are never "closed after writing".
constexpr uint32_t kWatchMask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE |
                                IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR;

bool IsYamlName(std::string_view name) {
  auto ends_with = [&](std::string_view suffix) {
    return name.size() > suffix.size() && name.substr(name.size() - suffix.size()) == suffix;
  };
  return ends_with(".yaml") || ends_with(".yml");
}

std::string JoinRel(const std::string& rel, const std::string& name) {
  return rel.empty() ? name : rel + "/" + name;
}

bool UnderDir(const std::string& path, const std::string& dir) {
  return dir.empty() || (path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 &&
                         path[dir.size()] == '/');
}

int64_t Nanos(const timespec& ts) {
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

std::string StripTrailingSlashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') {
    path.pop_back();
  }
  return path;
}

// The whole file, or the errno of the failure. Stops after max_bytes + 1 bytes: a longer result
// means "too large", and a 50 MB file is never held in memory. ESTALE if what opened is not the
// file (dev, ino) that the walk checked: a symlink swapped in between must not lead the read out
// of the tree.
std::pair<std::optional<std::string>, int> ReadWholeFile(const std::string& path,
                                                         size_t max_bytes, dev_t dev, ino_t ino) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return {std::nullopt, errno};
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_dev != dev || st.st_ino != ino) {
    ::close(fd);
    return {std::nullopt, ESTALE};
  }
  std::string out;
  std::array<char, size_t{16} * 1024> buf;
  while (true) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      int err = errno;
      ::close(fd);
      return {std::nullopt, err};
    }
    if (n == 0) {
      break;
    }
    out.append(buf.data(), static_cast<size_t>(n));
    if (out.size() > max_bytes) {
      out.resize(max_bytes + 1);
      break;
    }
  }
  ::close(fd);
  return {std::move(out), 0};
}

// A uid in UUID form, stable for one namespace/name and creation time, so that a restart keeps it
// and a resource deleted and declared again later gets a new one.
std::string MakeUid(const crds::ObjectKey& key, const std::string& creation_timestamp) {
  std::string h = Sha256Hex(key.ToString() + "@" + creation_timestamp);
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) +
         "-" + h.substr(20, 12);
}

std::string DuplicateMessage(const std::vector<std::string>& origins) {
  if (origins.size() == 2) {
    return "declared twice: " + origins[0] + " and " + origins[1];
  }
  std::string list;
  for (size_t i = 0; i < origins.size(); ++i) {
    if (i > 0) {
      list += i + 1 == origins.size() ? " and " : ", ";
    }
    list += origins[i];
  }
  return fmt::format("declared {} times: {}", origins.size(), list);
}

}  // namespace

DirectorySource::DirectorySource(std::string dir, std::chrono::milliseconds resync_period,
                                 const StatusStore* previous, Clock& clock)
    : dir_(StripTrailingSlashes(std::move(dir))),
      resync_period_(resync_period),
      previous_(previous),
      clock_(clock) {
  size_t slash = dir_.rfind('/');
  root_name_ = slash == std::string::npos ? dir_ : dir_.substr(slash + 1);
}

DirectorySource::~DirectorySource() { Stop(); }

VoidResult DirectorySource::Start(ObjectCache& cache, EnqueueFn enqueue) {
  std::lock_guard lock(start_mu_);
  if (cache_ != nullptr) {
    return Error(Reason::Internal, "DirectorySource started twice");
  }
  struct stat st {};
  if (::stat(dir_.c_str(), &st) != 0) {
    return Error(Reason::StorageError, "watch directory " + dir_ + ": " + ErrnoMessage(errno));
  }
  if (!S_ISDIR(st.st_mode)) {
    return Error(Reason::StorageError, "watch directory " + dir_ + ": not a directory");
  }
  inotify_fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (inotify_fd_ < 0) {
    int err = errno;
    return Error(Reason::StorageError,
                 "cannot watch " + dir_ + ": inotify_init1: " + ErrnoMessage(err) +
                     (err == EMFILE ? " (raise sysctl fs.inotify.max_user_instances)" : ""));
  }
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) {
    int err = errno;
    ::close(inotify_fd_);
    inotify_fd_ = -1;
    return Error(Reason::StorageError, "eventfd: " + ErrnoMessage(err));
  }
  cache_ = &cache;
  enqueue_ = std::move(enqueue);
  WatchParent();
  Scan(/*reread_all=*/true, /*enqueue_all=*/true);
  synced_ = true;
  thread_ = std::thread([this] {
    // The last resort: an exception is logged and the watch starts over (after a pause, so a
    // persistent one does not spin); Stop() still ends it through wake_fd_.
    while (!LogExceptions("directory source", [this] { Run(); })) {
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
  });
  return {};
}

bool DirectorySource::HasSynced() const { return synced_; }

void DirectorySource::Stop() {
  std::lock_guard lock(start_mu_);
  if (thread_.joinable()) {
    uint64_t one = 1;
    ssize_t n = ::write(wake_fd_, &one, sizeof(one));
    (void)n;  // an eventfd write of 1 cannot fail short of a counter overflow
    thread_.join();
  }
  if (inotify_fd_ >= 0) {
    ::close(inotify_fd_);
    inotify_fd_ = -1;
  }
  if (wake_fd_ >= 0) {
    ::close(wake_fd_);
    wake_fd_ = -1;
  }
}

uint64_t DirectorySource::scans() const { return scans_; }
uint64_t DirectorySource::files_read() const { return files_read_; }

void DirectorySource::WatchParent() {
  // Replacing the watched directory itself (git-sync renames a new symlink over it) changes
  // nothing inside the old target, so only the parent sees it happen.
  size_t slash = dir_.rfind('/');
  std::string parent =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : dir_.substr(0, slash));
  int wd = ::inotify_add_watch(inotify_fd_, parent.c_str(), kWatchMask);
  if (wd < 0) {
    spdlog::warn("cannot watch {} for replacements of {}: {}", parent, dir_, ErrnoMessage(errno));
    return;
  }
  parent_wd_ = wd;
}

void DirectorySource::Run() {
  using Steady = std::chrono::steady_clock;
  std::optional<Steady::time_point> next_resync;
  if (resync_period_.count() > 0) {
    next_resync = Steady::now() + resync_period_;
  }
  // A plain time point and a flag rather than std::optional: GCC 12 at -O2 reports a false
  // maybe-uninitialized read of an optional time_point here.
  bool pending = false;
  Steady::time_point first_event{};
  Steady::time_point last_event{};
  while (true) {
    std::optional<Steady::time_point> deadline = next_resync;
    if (pending) {
      // Debounce: wait for a quiet period, but not forever under a steady stream of events.
      auto due = std::min(last_event + kDebounce, first_event + kMaxDebounce);
      deadline = deadline ? std::min(*deadline, due) : due;
    }
    int timeout_ms = -1;
    if (deadline) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - Steady::now());
      timeout_ms = static_cast<int>(std::max<int64_t>(0, left.count()));
    }
    std::array<pollfd, 2> fds = {{{inotify_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}}};
    int n = ::poll(fds.data(), fds.size(), timeout_ms);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      spdlog::error("watching {}: poll: {}; the directory is no longer watched", dir_,
                    ErrnoMessage(errno));
      return;
    }
    if ((fds[1].revents & POLLIN) != 0) {
      return;
    }
    auto now = Steady::now();
    if ((fds[0].revents & POLLIN) != 0 && DrainEvents()) {
      if (!pending) {
        pending = true;
        first_event = now;
      }
      last_event = now;
    }
    if (next_resync && now >= *next_resync) {
      spdlog::debug("resyncing {}", dir_);
      Scan(/*reread_all=*/true, /*enqueue_all=*/true);
      pending = false;
      next_resync = Steady::now() + resync_period_;
      continue;
    }
    if (pending && now >= std::min(last_event + kDebounce, first_event + kMaxDebounce)) {
      pending = false;
      Scan(/*reread_all=*/false, /*enqueue_all=*/false);
    }
  }
}

bool DirectorySource::DrainEvents() {
  bool relevant = false;
  alignas(inotify_event) std::array<char, size_t{64} * 1024> buf;
  while (true) {
    ssize_t n = ::read(inotify_fd_, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return relevant;  // EAGAIN: drained
    }
    for (ssize_t off = 0; off < n;) {
      const auto* ev = reinterpret_cast<const inotify_event*>(buf.data() + off);
      off += static_cast<ssize_t>(sizeof(inotify_event) + ev->len);
      if ((ev->mask & IN_Q_OVERFLOW) != 0) {
        spdlog::warn("inotify queue overflowed for {}; rereading every file", dir_);
        reread_all_ = true;
        relevant = true;
        continue;
      }
      std::string name = ev->len > 0 ? std::string(ev->name) : std::string();
      bool in_tree = watches_.count(ev->wd) > 0;
      if (ev->wd == parent_wd_) {
        if ((ev->mask & IN_IGNORED) != 0) {
          parent_wd_ = -1;  // the parent went away; WatchParent() retries at the next scan
        } else if (name == root_name_) {
          reread_all_ = true;  // the directory itself was replaced
          relevant = true;
        }
        if (!in_tree) {
          continue;
        }
      }
      if ((ev->mask & IN_IGNORED) != 0 && !in_tree) {
        continue;  // the echo of a watch that Scan() removed itself
      }
      relevant = true;
      auto it = watches_.find(ev->wd);
      if (it != watches_.end() && !name.empty()) {
        named_.insert(JoinRel(it->second, name));
      }
    }
  }
}

void DirectorySource::WalkDir(const std::string& abs, const std::string& rel,
                              std::set<std::pair<dev_t, ino_t>>& seen, Walk& walk) {
  // Watch before listing: a file created after the listing then still produces an event.
  int wd = ::inotify_add_watch(inotify_fd_, abs.c_str(), kWatchMask);
  if (wd >= 0) {
    walk.watches.emplace(wd, rel);
  } else if (!watch_failure_logged_) {
    int err = errno;
    watch_failure_logged_ = true;
    spdlog::warn("cannot watch {}: {}{}; changes there are seen at the next resync", abs,
                 ErrnoMessage(err),
                 err == ENOSPC ? " (raise sysctl fs.inotify.max_user_watches)" : "");
  }
  DIR* d = ::opendir(abs.c_str());
  if (d == nullptr) {
    spdlog::warn("cannot list {}: {}; keeping what was loaded from it", abs, ErrnoMessage(errno));
    walk.unreadable_dirs.push_back(rel);
    return;
  }
  std::vector<std::string> names;
  // readdir is thread-safe on distinct DIR streams (glibc; POSIX.1-2024).
  while (dirent* e = ::readdir(d)) {  // NOLINT(concurrency-mt-unsafe)
    // Hidden names are skipped: ".git", editors' and sync tools' temporaries, and the
    // "..data"/"..<timestamp>" directories of Kubernetes volumes (read through the visible
    // symlinks that point into them).
    if (e->d_name[0] != '.') {
      names.emplace_back(e->d_name);
    }
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  for (const auto& name : names) {
    std::string child_abs = abs;
    child_abs += '/';
    child_abs += name;
    std::string child_rel = JoinRel(rel, name);
    struct stat st {};
    if (::lstat(child_abs.c_str(), &st) != 0) {
      continue;  // vanished
    }
    bool link = S_ISLNK(st.st_mode);
    if (link && ::stat(child_abs.c_str(), &st) != 0) {
      if (errno == ELOOP) {
        walk.refused_links[child_rel] = "a symlink loop; not followed";
      }
      continue;  // dangling, or a loop
    }
    if (link && (S_ISDIR(st.st_mode) || (S_ISREG(st.st_mode) && IsYamlName(name)))) {
      // Resolved the way the kernel will when it is opened; a manifest tree lends the daemon no
      // access to what lies outside it.
      std::array<char, PATH_MAX> real{};
      if (::realpath(child_abs.c_str(), real.data()) == nullptr) {
        continue;  // changed since the stat: the next scan sees it
      }
      std::string target(real.data());
      if (walk.root != "/" && target != walk.root && !UnderDir(target, walk.root)) {
        walk.refused_links[child_rel] =
            "a symlink to " + target + ", outside " + walk.root + "; not followed";
        continue;
      }
    }
    if (S_ISDIR(st.st_mode)) {
      // Each real directory once: symlink loops end here, and a directory reachable by two
      // paths does not declare its resources twice.
      if (seen.insert({st.st_dev, st.st_ino}).second) {
        WalkDir(child_abs, child_rel, seen, walk);
      }
    } else if (S_ISREG(st.st_mode) && IsYamlName(name)) {
      if (seen.insert({st.st_dev, st.st_ino}).second) {
        walk.files.emplace(child_rel, FileId{st.st_dev, st.st_ino, st.st_size, Nanos(st.st_mtim),
                                             Nanos(st.st_ctim)});
      }
    }
  }
}

bool DirectorySource::WalkTree(Walk& walk) {
  struct stat st {};
  if (::stat(dir_.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return false;
  }
  // Resolved at each walk: git-sync swaps the symlink that dir_ may be.
  std::array<char, PATH_MAX> real{};
  if (::realpath(dir_.c_str(), real.data()) == nullptr) {
    return false;
  }
  walk.root = real.data();
  std::set<std::pair<dev_t, ino_t>> seen{{st.st_dev, st.st_ino}};
  WalkDir(dir_, "", seen, walk);
  return std::find(walk.unreadable_dirs.begin(), walk.unreadable_dirs.end(), "") ==
         walk.unreadable_dirs.end();
}

bool DirectorySource::LoadFile(const std::string& rel, FileState& state) {
  auto set_file_error = [&](Error err) {
    if (!state.error || state.error->message != err.message) {
      spdlog::error("{}", err.message);
    }
    // The objects this file declared before stay, marked with the error: a typo while editing
    // must not look like a deletion (which would cancel their work).
    for (auto& decl : state.decls) {
      decl.error = err;
    }
    state.error = std::move(err);
  };

  auto [text, err] =
      ReadWholeFile(dir_ + "/" + rel, crds::kMaxManifestBytes, state.id.dev, state.id.ino);
  if (!text) {
    if (err == ENOENT) {
      return false;
    }
    if (err == ESTALE) {
      // Replaced since the walk; the event of that change brings another scan, which checks
      // the new file first. Until then what the file declared stays as it was.
      state.id = {};
      return true;
    }
    state.content_hash.clear();
    set_file_error(Error(Reason::StorageError, rel + ": cannot read: " + ErrnoMessage(err)));
    return true;
  }
  ++files_read_;
  std::string hash = Sha256Hex(*text);
  if (hash == state.content_hash) {
    return true;  // touched or re-linked, same bytes: nothing to do
  }
  state.content_hash = hash;

  auto docs = crds::ParseYamlDocuments(*text, rel);
  if (!docs) {
    set_file_error(docs.error());
    return true;
  }
  std::vector<Decl> decls;
  std::vector<std::string> problems;  // documents that cannot be keyed
  for (auto& doc : *docs) {
    for (const auto& [line, field] : doc.unknown_fields) {
      spdlog::warn("{}:{}: unknown field {} (ignored)", rel, line, field);
    }
    for (const auto& [line, fe] : doc.errors) {
      problems.push_back(fmt::format("{}:{}: {}", rel, line, fe.ToString()));
    }
    if (!doc.errors.empty() || !doc.object) {
      continue;
    }
    Decl decl;
    decl.object = std::move(*doc.object);
    decl.line = doc.line;
    crds::ApplyDefaults(decl.object);
    // Status in a manifest (a pasted `get -o yaml`) is not desired state.
    decl.object.status = {};
    if (auto ok = CheckKeyIsPathSafe(decl.object.key()); !ok) {
      // A name that cannot be a status file ("..", "a/b", a NUL) is not a DNS-1123 label
      // either; Validate's wording quotes it with control characters escaped.
      std::string why;
      for (const crds::FieldError& e : crds::Validate(decl.object)) {
        if (e.field == "metadata.name" || e.field == "metadata.namespace") {
          why += (why.empty() ? "" : "; ") + e.ToString();
        }
      }
      problems.push_back(
          fmt::format("{}:{}: {}", rel, doc.line, why.empty() ? ok.error().message : why));
      continue;
    }
    auto errors = crds::Validate(decl.object);
    if (!errors.empty()) {
      decl.error = Error(Reason::InvalidSpec, crds::JoinErrors(errors));
    }
    decls.push_back(std::move(decl));
  }
  if (!problems.empty()) {
    std::string message;
    for (const auto& p : problems) {
      message += (message.empty() ? "" : "; ") + p;
    }
    Error error(Reason::InvalidSpec, message);
    if (!state.error || state.error->message != message) {
      spdlog::error("{}", message);
    }
    // A document that cannot be keyed is most likely the new version of one that this file
    // declared before and no longer declares: keep that one, marked with the error.
    for (auto& old : state.decls) {
      bool still_declared = std::any_of(decls.begin(), decls.end(), [&](const Decl& d) {
        return d.object.key() == old.object.key();
      });
      if (!still_declared) {
        old.error = error;
        decls.push_back(std::move(old));
      }
    }
    state.error = std::move(error);
  } else if (state.error) {
    spdlog::info("{}: loaded again after an error", rel);
    state.error.reset();
  }
  state.decls = std::move(decls);
  return true;
}

void DirectorySource::FillMetadata(crds::ModelCache& object) {
  crds::ObjectKey key = object.key();
  std::string hash = crds::SpecHash(object.spec);
  auto it = records_.find(key);
  if (it == records_.end()) {
    Record record;
    record.spec_hash = hash;
    std::optional<crds::ModelCache> prev;
    if (previous_ != nullptr) {
      auto read = previous_->Read(key);
      if (!read) {
        spdlog::warn("{}: previous status unreadable, starting at generation 1: {}", key.ToString(),
                     read.error().message);
      } else {
        prev = std::move(*read);
      }
    }
    if (prev && prev->metadata.generation > 0) {
      auto annotation = prev->metadata.annotations.find(std::string(kSpecHashAnnotation));
      bool same_spec = annotation != prev->metadata.annotations.end() && annotation->second == hash;
      record.generation = prev->metadata.generation + (same_spec ? 0 : 1);
    } else {
      record.generation = 1;
    }
    record.creation_timestamp = prev && !prev->metadata.creation_timestamp.empty()
                                    ? prev->metadata.creation_timestamp
                                    : FormatRfc3339(clock_.WallNow());
    record.uid = prev && !prev->metadata.uid.empty() ? prev->metadata.uid
                                                     : MakeUid(key, record.creation_timestamp);
    it = records_.emplace(key, std::move(record)).first;
  } else if (it->second.spec_hash != hash) {
    it->second.spec_hash = hash;
    ++it->second.generation;
  }
  const Record& record = it->second;
  object.metadata.generation = record.generation;
  object.metadata.creation_timestamp = record.creation_timestamp;
  object.metadata.uid = record.uid;
  object.metadata.resource_version.clear();
  object.metadata.deletion_timestamp.reset();
  object.metadata.annotations[std::string(kSpecHashAnnotation)] = hash;
}

std::vector<CachedObject> DirectorySource::Desired() {
  // Every declaration of each key, in path order and then line order.
  std::map<crds::ObjectKey, std::vector<std::pair<std::string, const Decl*>>> by_key;
  for (const auto& [rel, state] : files_) {
    for (const auto& decl : state.decls) {
      by_key[decl.object.key()].emplace_back(fmt::format("{}:{}", rel, decl.line), &decl);
    }
  }
  std::vector<CachedObject> out;
  out.reserve(by_key.size());
  for (const auto& [key, decls] : by_key) {
    CachedObject entry;
    entry.object = decls.front().second->object;
    entry.origin = decls.front().first;
    entry.source_error = decls.front().second->error;
    if (decls.size() > 1) {
      std::vector<std::string> origins;
      for (const auto& d : decls) {
        origins.push_back(d.first);
      }
      entry.source_error = Error(Reason::InvalidSpec, DuplicateMessage(origins));
    }
    FillMetadata(entry.object);
    out.push_back(std::move(entry));
  }
  for (auto it = records_.begin(); it != records_.end();) {
    it = by_key.count(it->first) > 0 ? std::next(it) : records_.erase(it);
  }
  return out;
}

void DirectorySource::Scan(bool reread_all, bool enqueue_all) {
  reread_all = reread_all || reread_all_;
  reread_all_ = false;
  std::set<std::string> named;
  named.swap(named_);
  if (parent_wd_ < 0) {
    WatchParent();
  }

  Walk walk;
  if (!WalkTree(walk)) {
    if (!root_missing_logged_) {
      spdlog::error(
          "watch directory {} is missing or unreadable; keeping the {} resources "
          "loaded from it until it returns",
          dir_, cache_->Size());
      root_missing_logged_ = true;
    }
    ++scans_;
    if (enqueue_all) {
      for (const auto& key : cache_->Keys()) {
        enqueue_(key);
      }
    }
    return;
  }
  if (root_missing_logged_) {
    spdlog::info("watch directory {} is back", dir_);
    root_missing_logged_ = false;
  }

  for (const auto& [wd, rel] : watches_) {
    if (walk.watches.count(wd) == 0 && wd != parent_wd_) {
      // EINVAL when the kernel already dropped it (the directory was deleted): harmless.
      ::inotify_rm_watch(inotify_fd_, wd);
    }
  }
  watches_ = std::move(walk.watches);
  for (const auto& [rel, why] : walk.refused_links) {
    auto old = refused_links_.find(rel);
    if (old == refused_links_.end() || old->second != why) {
      spdlog::error("{}/{}: {}", dir_, rel, why);
    }
  }
  refused_links_ = std::move(walk.refused_links);

  std::map<std::string, FileState> next;
  for (const auto& [rel, id] : walk.files) {
    FileState state;
    auto old = files_.find(rel);
    if (old != files_.end()) {
      state = std::move(old->second);
      if (!reread_all && state.id == id && named.count(rel) == 0) {
        next.emplace(rel, std::move(state));
        continue;
      }
    }
    state.id = id;
    if (LoadFile(rel, state)) {
      next.emplace(rel, std::move(state));
    }
  }
  // Files below a directory that could not be listed keep their last state.
  for (auto& [rel, state] : files_) {
    if (walk.files.count(rel) > 0) {
      continue;
    }
    const std::string& path = rel;
    bool unreadable = std::any_of(walk.unreadable_dirs.begin(), walk.unreadable_dirs.end(),
                                  [&](const std::string& dir) { return UnderDir(path, dir); });
    if (unreadable) {
      next.emplace(rel, std::move(state));
    }
  }
  files_ = std::move(next);

  std::vector<crds::ObjectKey> changed = cache_->ReplaceAll(Desired());
  ++scans_;
  spdlog::debug("scanned {}: {} files, {} keys changed", dir_, files_.size(), changed.size());
  if (enqueue_all) {
    // Every key, and also those that were just deleted.
    std::set<crds::ObjectKey> all(changed.begin(), changed.end());
    for (auto& key : cache_->Keys()) {
      all.insert(std::move(key));
    }
    changed.assign(all.begin(), all.end());
  }
  for (const auto& key : changed) {
    enqueue_(key);
  }
}

}  // namespace modelcache::controller
