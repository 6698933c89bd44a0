#include "store/s3_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/fmt/fmt.h>

#include "common/files.h"
#include "common/guard.h"
#include "common/sha256.h"
#include "common/strings.h"
#include "store/internal/dir_lock.h"
#include "store/internal/s3_store_parts.h"
#include "store/s3_uploader.h"

namespace modelcache::store {

using internal::CheckNameVersion;
using internal::kManifestName;
using internal::ManifestDocument;
using internal::ParseManifest;

namespace {

namespace fs = std::filesystem;

using internal::kCurrentName;
using internal::kS3MaxCopySize;
using internal::kS3MaxParts;
using internal::kS3MinPartSize;

std::vector<std::string_view> Split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (;;) {
    size_t pos = s.find(sep, start);
    out.push_back(s.substr(start, pos == std::string_view::npos ? s.npos : pos - start));
    if (pos == std::string_view::npos) {
      return out;
    }
    start = pos + 1;
  }
}

bool ValidBucket(std::string_view b) {
  if (b.size() < 3 || b.size() > 63) {
    return false;
  }
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!alnum(b.front()) || !alnum(b.back()) || b.find("..") != std::string_view::npos) {
    return false;
  }
  return std::all_of(b.begin(), b.end(), [&](char c) { return alnum(c) || c == '.' || c == '-'; });
}

// A path segment that is safe as a file name on disk: not empty, "." or "..", no control
// character and no backslash. Every other byte (spaces, '+', '%', '=', '&', UTF-8) is a valid
// file name on the Hub and a valid S3 key; the S3 client encodes keys on the wire.
bool ValidSegment(std::string_view seg) {
  if (seg.empty() || seg == "." || seg == "..") {
    return false;
  }
  return std::none_of(seg.begin(), seg.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u < 0x20 || u == 0x7f || c == '\\';
  });
}

// A manifest path that stays inside the artifact directory: relative, no "." or ".." segments,
// no empty segment, not the marker itself.
bool SafeRelPath(std::string_view path) {
  if (path.empty() || path.front() == '/' || path == kManifestName) {
    return false;
  }
  for (std::string_view seg : Split(path, '/')) {
    if (!ValidSegment(seg)) {
      return false;
    }
  }
  return true;
}

// A single path component without whitespace: artifact names and versions, the segments of a
// store URI's prefix (written by operators, in URIs).
bool SafeComponent(std::string_view s) {
  return ValidSegment(s) && s.find_first_of("/ ") == std::string_view::npos;
}

// The uploader every object of the store goes through.
UploadOptions StoreUploadOptions() {
  UploadOptions options;
  options.skip_existing = false;  // PutFile has already looked
  // A daemon stopped mid-upload (SIGTERM) leaves the upload for the next start to resume.
  options.abort_on_stop = false;
  return options;
}

}  // namespace

namespace internal {

VoidResult CheckNameVersion(const std::string& name, const std::string& version) {
  if (!SafeComponent(name)) {
    return Error(Reason::InvalidSpec, "artifact name \"" + name + "\" is not a path component");
  }
  if (!version.empty() && !SafeComponent(version)) {
    return Error(Reason::InvalidSpec,
                 "artifact version \"" + version + "\" is not a path component");
  }
  return {};
}

std::string ManifestDocument(const ArtifactManifest& manifest) {
  // The same bytes as the local store's modelcache.json, so a pulled directory equals a local one.
  return ManifestToJson(manifest).dump(2) + "\n";
}

Result<ArtifactManifest> ParseManifest(const std::string& text, const std::string& where,
                                       const std::string& name, const std::string& version) {
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return Error(Reason::StorageError, where + " is not valid JSON");
  }
  auto manifest = ManifestFromJson(doc);
  if (!manifest) {
    return Error(Reason::StorageError, where + ": " + manifest.error().message);
  }
  ArtifactManifest check = *manifest;
  FinalizeIdentity(check);
  if (check.id != manifest->id || check.version != manifest->version ||
      manifest->version != version || manifest->name != name ||
      check.size_bytes != manifest->size_bytes) {
    return Error(Reason::StorageError, where + " does not match its id " + manifest->id +
                                           " (recomputed " + check.id + ")");
  }
  for (const ManifestFile& f : manifest->files) {
    if (!SafeRelPath(f.path)) {
      return Error(Reason::StorageError, where + ": file path \"" + f.path + "\" is not safe");
    }
  }
  return manifest;
}

}  // namespace internal

std::string S3Location::Key(std::string_view rel) const {
  if (prefix.empty()) {
    return std::string(rel);
  }
  return rel.empty() ? prefix : prefix + "/" + std::string(rel);
}

std::string S3Location::Uri(std::string_view rel) const {
  std::string key = Key(rel);
  return key.empty() ? "s3://" + bucket : "s3://" + bucket + "/" + key;
}

Result<S3Location> ParseS3StoreUri(std::string_view uri) {
  constexpr std::string_view kScheme = "s3://";
  if (uri.substr(0, kScheme.size()) != kScheme) {
    return Error(Reason::InvalidSpec, fmt::format("{}: not an s3:// URI", uri));
  }
  std::string_view rest = uri.substr(kScheme.size());
  size_t slash = rest.find('/');
  S3Location loc;
  loc.bucket = std::string(rest.substr(0, slash));
  if (!ValidBucket(loc.bucket)) {
    return Error(Reason::InvalidSpec,
                 fmt::format("{}: \"{}\" is not a valid S3 bucket name (3-63 of a-z 0-9 . -)", uri,
                             loc.bucket));
  }
  if (slash != std::string_view::npos) {
    std::string_view prefix = rest.substr(slash + 1);
    if (!prefix.empty() && prefix.back() == '/') {
      prefix.remove_suffix(1);
    }
    if (!prefix.empty()) {
      for (std::string_view seg : Split(prefix, '/')) {
        if (!SafeComponent(seg)) {
          return Error(Reason::InvalidSpec,
                       fmt::format("{}: the prefix must not contain empty, \".\" or \"..\" "
                                   "segments, whitespace or control characters",
                                   uri));
        }
      }
    }
    loc.prefix = std::string(prefix);
  }
  return loc;
}

Result<S3ArtifactRef> ParseS3ArtifactUri(std::string_view uri) {
  auto invalid = [&] {
    return Error(Reason::InvalidSpec,
                 fmt::format("{}: must be s3://BUCKET[/PREFIX]/artifacts/NAME[/VERSION]", uri));
  };
  std::string_view trimmed = uri;
  if (!trimmed.empty() && trimmed.back() == '/') {
    trimmed.remove_suffix(1);
  }
  auto loc = ParseS3StoreUri(trimmed);
  if (!loc) {
    return loc.error();
  }
  if (loc->prefix.empty()) {
    return invalid();
  }
  std::vector<std::string_view> segs = Split(loc->prefix, '/');
  size_t n = segs.size();
  S3ArtifactRef ref;
  size_t artifacts = 0;
  if (n >= 2 && segs[n - 2] == "artifacts") {
    artifacts = n - 2;
    ref.name = std::string(segs[n - 1]);
  } else if (n >= 3 && segs[n - 3] == "artifacts") {
    artifacts = n - 3;
    ref.name = std::string(segs[n - 2]);
    ref.version = std::string(segs[n - 1]);
  } else {
    return invalid();
  }
  ref.store.bucket = loc->bucket;
  for (size_t i = 0; i < artifacts; ++i) {
    if (!ref.store.prefix.empty()) {
      ref.store.prefix += '/';
    }
    ref.store.prefix += segs[i];
  }
  return ref;
}

S3ArtifactStore::S3ArtifactStore(S3Location location, std::shared_ptr<S3Client> client,
                                 S3StoreOptions options)
    : location_(std::move(location)), client_(std::move(client)), options_(options) {
  // Below one part's minimum a multipart copy gains nothing (and an empty object has no part).
  options_.max_copy_object_size =
      std::clamp(options_.max_copy_object_size, kS3MinPartSize, kS3MaxCopySize);
  options_.copy_part_size = std::clamp(options_.copy_part_size, kS3MinPartSize, kS3MaxCopySize);
  options_.parallel_part_copies = std::max(1, options_.parallel_part_copies);
}

Result<std::unique_ptr<S3ArtifactStore>> S3ArtifactStore::Open(std::string_view uri,
                                                               AwsConfig config,
                                                               S3ClientOptions options,
                                                               S3StoreOptions store_options) {
  auto loc = ParseS3StoreUri(uri);
  if (!loc) {
    return loc.error();
  }
  return std::make_unique<S3ArtifactStore>(
      std::move(*loc), std::make_shared<S3Client>(std::move(config), std::move(options)),
      store_options);
}

std::string S3ArtifactStore::VersionKey(const std::string& name, const std::string& version) const {
  return location_.Key("artifacts/" + name + "/" + version);
}

std::string S3ArtifactStore::FileKey(const std::string& name, const std::string& version,
                                     const std::string& path) const {
  return VersionKey(name, version) + "/" + path;
}

std::string S3ArtifactStore::CurrentKey(const std::string& name) const {
  return location_.Key("artifacts/" + name + "/" + std::string(kCurrentName));
}

Result<bool> S3ArtifactStore::HasObject(const std::string& key, uint64_t size,
                                        const std::string& sha256, std::stop_token stop) {
  auto info = client_->HeadObject(location_.bucket, key, stop);
  if (!info) {
    return info.error();
  }
  if (!*info || (*info)->size != size) {
    return false;
  }
  return (*info)->Meta(kSha256MetaKey) == sha256;
}

Result<std::map<std::string, std::string>> S3ArtifactStore::CopySources(const std::string& name,
                                                                        std::stop_token stop) {
  std::map<std::string, std::string> sources;
  auto current = ReadCurrent(name, stop);
  if (!current) {
    // A damaged current only costs the copies: the files are uploaded instead.
    if (current.error().reason == Reason::StorageError) {
      return sources;
    }
    return current.error();
  }
  if (*current) {
    for (const ManifestFile& f : (*current)->files) {
      sources.emplace(f.sha256, FileKey(name, (*current)->version, f.path));
    }
  }
  return sources;
}

Result<S3ArtifactStore::PutOutcome> S3ArtifactStore::PutFile(
    const ArtifactManifest& manifest, const ManifestFile& file, const std::string& local_path,
    const std::map<std::string, std::string>& copy_sources, std::atomic<uint64_t>& bytes_done,
    std::stop_token stop) {
  // Puts the local file with its sha256 as metadata; the uploader also checks the bytes it read
  // against that sha256.
  ObjectUploadFn upload = [&](S3Uploader& uploader, const std::string& bucket,
                              const std::string& key, const UploadProgressFn& on_bytes) {
    auto result = uploader.UploadFile(bucket, key, local_path, file.sha256, on_bytes, stop);
    return result ? VoidResult() : VoidResult(result.error());
  };
  return PutObject(manifest, file, upload, copy_sources, bytes_done, stop);
}

Result<S3ArtifactStore::PutOutcome> S3ArtifactStore::PutObject(
    const ArtifactManifest& manifest, const ManifestFile& file, const ObjectUploadFn& upload,
    const std::map<std::string, std::string>& copy_sources, std::atomic<uint64_t>& bytes_done,
    std::stop_token stop) {
  if (!SafeRelPath(file.path)) {
    return Error(Reason::InvalidSpec, "artifact file path \"" + file.path + "\" is not safe");
  }
  std::string key = FileKey(manifest.name, manifest.version, file.path);
  auto present = HasObject(key, file.size, file.sha256, stop);
  if (!present) {
    return present.error();
  }
  if (*present) {
    bytes_done += file.size;
    return PutOutcome::AlreadyPresent;
  }
  auto source = copy_sources.find(file.sha256);
  if (source != copy_sources.end() && source->second != key) {
    // The source must still hold these bytes (it may have been deleted or overwritten since its
    // manifest was read); otherwise fall through to an upload.
    auto source_ok = HasObject(source->second, file.size, file.sha256, stop);
    if (!source_ok) {
      return source_ok.error();
    }
    if (*source_ok) {
      VoidResult copy = file.size <= options_.max_copy_object_size
                            ? client_->CopyObject(location_.bucket, source->second, key, stop)
                            : CopyInParts(source->second, key, file, stop);
      if (!copy) {
        return copy.error();
      }
      auto copied = HasObject(key, file.size, file.sha256, stop);
      if (!copied) {
        return copied.error();
      }
      if (*copied) {
        bytes_done += file.size;
        return PutOutcome::Copied;
      }
    }
  }
  // Only this call's bytes are taken back on failure: several PutObjects may share bytes_done.
  uint64_t sent = 0;  // the uploader serialises its progress calls
  S3Uploader uploader(*client_, StoreUploadOptions());
  if (auto r = upload(uploader, location_.bucket, key,
                      [&](uint64_t bytes) {
                        sent += bytes;
                        bytes_done += bytes;
                      });
      !r) {
    bytes_done -= sent;
    return r.error();
  }
  // Never trust the upload's answer alone (radosgw may answer a completed multipart upload with
  // an empty ETag): the object must now be there with the right size and sha256.
  auto confirmed = HasObject(key, file.size, file.sha256, stop);
  if (!confirmed) {
    return confirmed.error();
  }
  if (!*confirmed) {
    return Error(Reason::StorageError,
                 fmt::format("s3://{}/{}: after the upload the object does not have {} bytes and "
                             "sha256 {}",
                             location_.bucket, key, file.size, file.sha256));
  }
  return PutOutcome::Uploaded;
}

Result<S3ArtifactStore::PutOutcome> S3ArtifactStore::PutStaged(
    const ArtifactManifest& manifest, const ManifestFile& file, const std::string& staged_key,
    const std::map<std::string, std::string>& copy_sources, std::atomic<uint64_t>& bytes_done,
    std::stop_token stop) {
  ObjectUploadFn copy = [&](S3Uploader&, const std::string& bucket, const std::string& key,
                            const UploadProgressFn& on_bytes) -> VoidResult {
    const ObjectMetadata metadata{{std::string(kSha256MetaKey), file.sha256}};
    VoidResult r = file.size <= options_.max_copy_object_size
                       ? client_->CopyObject(bucket, staged_key, key, stop, &metadata)
                       : CopyInParts(staged_key, key, file, stop);
    if (r) {
      on_bytes(file.size);
    }
    return r;
  };
  return PutObject(manifest, file, copy, copy_sources, bytes_done, stop);
}

std::string S3ArtifactStore::IncomingKey(const std::string& name, const std::string& stream,
                                         const std::string& path) const {
  return location_.Key("artifacts/" + name + "/.incoming/" + stream + "/" + path);
}

Result<PublishedArtifact> S3ArtifactStore::Publish(const std::string& local_dir,
                                                   const ArtifactManifest& manifest,
                                                   S3TransferProgress& progress,
                                                   std::stop_token stop) {
  if (auto r = CheckNameVersion(manifest.name, manifest.version); !r) {
    return r.error();
  }
  progress.files_total = static_cast<int64_t>(manifest.files.size());
  progress.bytes_total = manifest.size_bytes;
  auto sources = CopySources(manifest.name, stop);
  if (!sources) {
    return sources.error();
  }
  for (const ManifestFile& f : manifest.files) {
    if (stop.stop_requested()) {
      return Error(Reason::Cancelled, "upload cancelled");
    }
    auto outcome =
        PutFile(manifest, f, local_dir + "/" + f.path, *sources, progress.bytes_done, stop);
    if (!outcome) {
      return outcome.error();
    }
    if (*outcome != PutOutcome::Uploaded) {
      ++progress.files_deduplicated;
    }
    ++progress.files_done;
  }
  return Commit(manifest, stop);
}

Result<PublishedArtifact> S3ArtifactStore::Commit(const ArtifactManifest& manifest,
                                                  std::stop_token stop) {
  if (auto r = CheckNameVersion(manifest.name, manifest.version); !r) {
    return r.error();
  }
  if (manifest.version.empty()) {
    return Error(Reason::Internal, "Commit of a manifest without its identity");
  }
  // The marker is only written over files that are all there: a committed version is complete.
  for (const ManifestFile& f : manifest.files) {
    std::string key = FileKey(manifest.name, manifest.version, f.path);
    auto present = HasObject(key, f.size, f.sha256, stop);
    if (!present) {
      return present.error();
    }
    if (!*present) {
      return Error(Reason::StorageError,
                   fmt::format("cannot commit {}: s3://{}/{} is missing or differs from the "
                               "manifest ({} bytes, sha256 {})",
                               manifest.id, location_.bucket, key, f.size, f.sha256));
    }
  }
  auto existing = ReadVersion(manifest.name, manifest.version, stop);
  if (!existing) {
    return existing.error();
  }
  if (*existing && (*existing)->id != manifest.id) {
    return Error(Reason::StorageError,
                 fmt::format("version {} holds {}, not {}",
                             location_.Uri("artifacts/" + manifest.name + "/" + manifest.version),
                             (*existing)->id, manifest.id));
  }
  if (!*existing) {
    std::string key =
        VersionKey(manifest.name, manifest.version) + "/" + std::string(kManifestName);
    if (auto r = client_->PutObject(location_.bucket, key, ManifestDocument(manifest),
                                    PutChecksum::ContentMd5, stop);
        !r) {
      return r.error();
    }
  }
  auto current = ReadCurrentVersion(manifest.name, stop);
  if (!current) {
    return current.error();
  }
  if (!*current || **current != manifest.version) {
    if (auto r = client_->PutObject(location_.bucket, CurrentKey(manifest.name), manifest.version,
                                    PutChecksum::ContentMd5, stop);
        !r) {
      return r.error();
    }
  }
  return Describe(manifest);
}

Result<std::optional<std::string>> S3ArtifactStore::ReadCurrentVersion(const std::string& name,
                                                                       std::stop_token stop) {
  if (auto r = CheckNameVersion(name, ""); !r) {
    return r.error();
  }
  std::string key = CurrentKey(name);
  auto info = client_->HeadObject(location_.bucket, key, stop);
  if (!info) {
    return info.error();
  }
  if (!*info) {
    return std::optional<std::string>();
  }
  auto body = client_->GetObject(location_.bucket, key, std::nullopt, stop);
  if (!body) {
    return body.error();
  }
  std::string version(TrimRight(*body, "\n\r"));
  if (!SafeComponent(version)) {
    return Error(Reason::StorageError,
                 fmt::format("s3://{}/{} does not hold a version name", location_.bucket, key));
  }
  return std::optional<std::string>(std::move(version));
}

Result<std::optional<ArtifactManifest>> S3ArtifactStore::ReadVersion(const std::string& name,
                                                                     const std::string& version,
                                                                     std::stop_token stop) {
  if (auto r = CheckNameVersion(name, version); !r) {
    return r.error();
  }
  std::string key = VersionKey(name, version) + "/" + std::string(kManifestName);
  auto info = client_->HeadObject(location_.bucket, key, stop);
  if (!info) {
    return info.error();
  }
  if (!*info) {
    return std::optional<ArtifactManifest>();
  }
  auto body = client_->GetObject(location_.bucket, key, std::nullopt, stop);
  if (!body) {
    return body.error();
  }
  auto manifest =
      ParseManifest(*body, fmt::format("s3://{}/{}", location_.bucket, key), name, version);
  if (!manifest) {
    return manifest.error();
  }
  return std::optional<ArtifactManifest>(std::move(*manifest));
}

Result<std::optional<ArtifactManifest>> S3ArtifactStore::ReadCurrent(const std::string& name,
                                                                     std::stop_token stop) {
  auto version = ReadCurrentVersion(name, stop);
  if (!version) {
    return version.error();
  }
  if (!*version) {
    return std::optional<ArtifactManifest>();
  }
  auto manifest = ReadVersion(name, **version, stop);
  if (!manifest) {
    return manifest.error();
  }
  if (!*manifest) {
    return Error(Reason::StorageError,
                 fmt::format("{} names version {}, which has no modelcache.json",
                             location_.Uri("artifacts/" + name + "/current"), **version));
  }
  return manifest;
}

Result<std::vector<std::string>> S3ArtifactStore::ListVersions(const std::string& name,
                                                               std::stop_token stop) {
  if (auto r = CheckNameVersion(name, ""); !r) {
    return r.error();
  }
  std::string prefix = location_.Key("artifacts/" + name + "/");
  std::string suffix = "/";
  suffix += kManifestName;
  std::vector<std::string> versions;
  std::string token;
  do {
    auto page = client_->ListObjectsV2(location_.bucket, prefix, token, "", 1000, stop);
    if (!page) {
      return page.error();
    }
    for (const ListedObject& o : page->objects) {
      std::string_view rel = std::string_view(o.key).substr(prefix.size());
      if (rel.size() > suffix.size() && rel.substr(rel.size() - suffix.size()) == suffix) {
        std::string_view version = rel.substr(0, rel.size() - suffix.size());
        if (SafeComponent(version)) {
          versions.emplace_back(version);
        }
      }
    }
    token = page->next_continuation_token;
  } while (!token.empty());
  std::sort(versions.begin(), versions.end());
  return versions;
}

std::string S3ArtifactStore::Uri() const { return location_.Uri(); }

std::string S3ArtifactStore::IncomingUri(const std::string& name, const std::string& stream) const {
  return location_.Uri("artifacts/" + name + "/.incoming/" + stream);
}

bool S3ArtifactStore::Holds(const PublishedArtifact& artifact, std::stop_token stop) {
  if (artifact.uri != location_.Uri("artifacts/" + artifact.name + "/" + artifact.version)) {
    return false;
  }
  auto version = ReadVersion(artifact.name, artifact.version, std::move(stop));
  return version && version->has_value() && (*version)->id == artifact.id;
}

PublishedArtifact S3ArtifactStore::Describe(const ArtifactManifest& manifest) const {
  PublishedArtifact a;
  a.name = manifest.name;
  a.version = manifest.version;
  a.id = manifest.id;
  a.uri = location_.Uri("artifacts/" + manifest.name + "/" + manifest.version);
  a.size_bytes = manifest.size_bytes;
  a.files = static_cast<int64_t>(manifest.files.size());
  return a;
}

VoidResult S3ArtifactStore::CopyInParts(const std::string& source_key, const std::string& key,
                                        const ManifestFile& file, std::stop_token stop) {
  const std::string& bucket = location_.bucket;
  uint64_t part_size =
      std::clamp((file.size + kS3MaxParts - 1) / kS3MaxParts, options_.copy_part_size, kS3MaxCopySize);
  auto parts_total = static_cast<int>((file.size + part_size - 1) / part_size);
  auto upload_id = client_->CreateMultipartUpload(
      bucket, key, stop, {{std::string(kSha256MetaKey), file.sha256}});
  if (!upload_id) {
    return upload_id.error();
  }
  std::vector<UploadedPart> parts(static_cast<size_t>(parts_total));
  std::atomic<int> next{0};
  std::mutex mu;
  std::optional<Error> failure;  // guarded by mu
  auto worker = [&] {
    for (int i = next++; i < parts_total; i = next++) {
      {
        std::lock_guard lock(mu);
        if (failure) {
          return;
        }
      }
      uint64_t first = static_cast<uint64_t>(i) * part_size;
      uint64_t last = std::min(file.size, first + part_size) - 1;
      auto part = ResultOrInternalError("copying part of " + key, [&] {
        return client_->UploadPartCopy(bucket, key, *upload_id, i + 1, source_key, first, last,
                                       stop);
      });
      std::lock_guard lock(mu);
      if (!part) {
        if (!failure) {
          failure = part.error();
        }
        return;
      }
      parts[static_cast<size_t>(i)] = std::move(*part);
    }
  };
  {
    const int workers = std::min(options_.parallel_part_copies, parts_total);
    std::vector<std::jthread> threads;
    threads.reserve(static_cast<size_t>(std::max(0, workers)));
    for (int t = 0; t < workers; ++t) {
      threads.emplace_back(worker);
    }
  }
  VoidResult done = failure ? VoidResult(*failure)
                            : client_->CompleteMultipartUpload(bucket, key, *upload_id, parts, stop);
  if (!done) {
    // Nothing of it is needed again: a retry copies afresh. Best effort; the error is the copy's.
    (void)client_->AbortMultipartUpload(bucket, key, *upload_id);
  }
  return done;
}

}  // namespace modelcache::store
