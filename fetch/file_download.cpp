#include "fetch/internal/file_download.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <iterator>
#include <utility>

#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>

#include "common/files.h"
#include "fetch/internal/block_pool.h"
#include "fetch/internal/hub_http.h"
#include "store/s3_client.h"

namespace modelcache::fetch::internal {
namespace {

constexpr size_t kHashPiece = 1 << 20;
constexpr int kMaxFileRedirects = 10;

// " AccessDenied": the <Code> of an XML error body, as object stores (S3, the CDNs in front of
// them) send, so that a refused presigned URL says why; "" if there is none. Only the code: other
// elements of such bodies (SignatureDoesNotMatch's StringToSign) are not for messages.
std::string DataHostCode(const HttpResponse& response) {
  const std::string& body = response.body;
  size_t open = body.find("<Code>");
  size_t close = open == std::string::npos ? open : body.find("</Code>", open);
  if (close == std::string::npos || close - open - 6 > 64) {
    return "";
  }
  std::string code = body.substr(open + 6, close - open - 6);
  for (char ch : code) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) {
      return "";
    }
  }
  return code.empty() ? "" : " " + code;
}

// A NetworkError for a request that ended with `code`, marked stalled for the stall timeout.
Error NetworkFailure(std::string message, CURLcode code) {
  Error e(Reason::NetworkError, std::move(message));
  e.stalled = code == CURLE_OPERATION_TIMEDOUT;
  return e;
}

// "<origin> answered HTTP <status>[ <S3 code>] for <path>": a data host's refusal.
Error DataHostRefusal(const Request& r, const FileTask& t) {
  return {Reason::NetworkError, fmt::format("{} answered HTTP {}{} for {}", Origin(r.url),
                                            r.response.status, DataHostCode(r.response), t.path)};
}

}  // namespace

uint64_t FileDownload::ChunkSize() const {
  return ChunkSizeFor(task_->size, job_.opts.max_connections_per_job, job_.opts.min_chunk_size,
                      job_.opts.chunk_size);
}

void FileDownload::StartHashing() {
  sha256_hasher_.emplace(Hasher::Kind::Sha256);
  if (task_->expected_git_sha1) {
    sha1_hasher_.emplace(GitBlobHasher(task_->size));
  }
}

VoidResult FileDownload::LoadMap(uint64_t chunk_size) {
  const FileTask& t = *task_;
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    return Error(Reason::StorageError, "cannot stat " + t.incomplete_path + ": " +
                                           ErrnoMessage(errno));
  }
  auto have = static_cast<uint64_t>(st.st_size);
  if (mapped_) {
    if (auto text = ReadFile(map_path()); text && have == t.size) {
      if (auto map = ParseChunkMap(*text, t.size); map) {
        chunks_ = std::move(map->chunks);
        etag_ = std::move(map->etag);
        return {};
      }
      spdlog::warn("{}: unreadable chunk map; starting over", map_path());
      have = 0;
    } else if (::access(map_path().c_str(), F_OK) == 0) {
      have = 0;  // a map without its preallocated file: the data is not what it describes
    }
  }
  // No map: the file is a plain prefix of the blob (a one-chunk file).
  if (have > t.size) {
    have = 0;
  }
  if (have == 0 && st.st_size != 0 && ::ftruncate(fd_, 0) != 0) {
    return Error(Reason::StorageError, "cannot truncate " + t.incomplete_path + ": " +
                                           ErrnoMessage(errno));
  }
  if (!mapped_) {
    chunks_.push_back(std::make_unique<Chunk>(0, t.size, have));
    return {};
  }
  chunks_ = SplitChunks(t.size, chunk_size, have);
  return {};
}

VoidResult FileDownload::Preallocate() {
  const FileTask& t = *task_;
  int err = ::posix_fallocate(fd_, 0, static_cast<off_t>(t.size));
  if (IoReason(err) == Reason::InsufficientStorage) {
    return Error(Reason::InsufficientStorage,
                 fmt::format("no space left to allocate {} bytes for {} in {}", t.size, t.path,
                             t.incomplete_path));
  }
  if (err != 0 && err != EOPNOTSUPP && err != EINVAL) {
    return Error(Reason::StorageError,
                 "cannot allocate " + t.incomplete_path + ": " + ErrnoMessage(err));
  }
  if (err != 0 && ::ftruncate(fd_, static_cast<off_t>(t.size)) != 0) {
    return Error(Reason::StorageError,
                 "cannot size " + t.incomplete_path + ": " + ErrnoMessage(errno));
  }
  return {};
}

VoidResult FileDownload::Activate() {
  const FileTask& t = *task_;
  if (auto r = MakeDirs(ParentDir(t.incomplete_path)); !r) {
    return r.error();
  }
  fd_ = ::open(t.incomplete_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    return Error(Reason::StorageError,
                 "cannot open " + t.incomplete_path + ": " + ErrnoMessage(errno));
  }
  uint64_t chunk_size = ChunkSize();
  mapped_ = t.size > chunk_size;
  if (auto r = LoadMap(chunk_size); !r) {
    return r.error();
  }
  if (mapped_) {
    if (auto r = Preallocate(); !r) {
      return r.error();
    }
    // From here on the file is as long as the blob: only the map tells what is data.
    PersistMap(true);
    // -1 where the filesystem has no O_DIRECT: the blocks then go through the page cache.
    direct_fd_ = ::open(t.incomplete_path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  }
  StartHashing();
  job_.progress.bytes_done.fetch_add(OnDisk(chunks_));
  phase_ = Phase::Active;
  return {};
}

void FileDownload::PersistMap(bool force) {
  if (!mapped_ || fd_ < 0) {
    return;
  }
  auto now = Clock::now();
  // Ranges that are still being received count too: a long range would otherwise be recorded only
  // once it completes, and a kill before that would lose all of it.
  uint64_t on_disk = OnDisk(chunks_);
  if (!force && ((!dirty_ && on_disk == persisted_) ||
                 now - last_persist_ < job_.opts.persist_interval)) {
    return;
  }
  // Claims are read before the data is synced, so the map never names bytes that are not durable.
  uint64_t claimed = 0;
  std::string text = ChunkMapText(task_->size, etag_, chunks_, &claimed);
  int fd = ::dup(fd_);
  if (fd < 0) {
    spdlog::warn("cannot dup {}: {}", task_->incomplete_path, ErrnoMessage(errno));
    return;
  }
  job_.persister.Persist(fd, map_path(), std::move(text));
  dirty_ = false;
  persisted_ = claimed;
  last_persist_ = now;
}

std::unique_ptr<Request> FileDownload::NextRequest(Clock::time_point now) {
  for (size_t ci = 0; ci < chunks_.size(); ++ci) {
    Chunk& c = *chunks_[ci];
    if (c.in_flight || c.complete() || now < c.not_before) {
      continue;
    }
    if (data_url_.empty() && !in_flight_.empty()) {
      return nullptr;
    }
    auto r = std::make_unique<Request>();
    r->url = data_url_.empty() ? task_->url : data_url_;
    r->headers = HubHeaders(job_.source.hub, r->url);
    uint64_t done = c.done.load(std::memory_order_acquire);
    if (single_stream_ && done > 0) {
      // The server ignores Range: there is no resuming, only starting over.
      job_.progress.bytes_done.fetch_sub(done);
      c.done.store(0);
      done = 0;
      hashed_ = 0;
      DropHeld();
      StartHashing();
    }
    r->first = c.start + done;
    r->end = c.end;
    r->ranged = !single_stream_;
    if (r->ranged) {
      r->headers.emplace_back("Range", fmt::format("bytes={}-{}", r->first, c.end - 1));
    }
    r->file_size = task_->size;
    r->expected_etag = etag_;
    r->fd = fd_;
    r->chunk_done = &c.done;
    r->bytes_done = &job_.progress.bytes_done;
    r->downloaded = &job_.downloaded;
    r->pwrite_hook = &job_.opts.pwrite_for_test;
    r->staged = mapped_;
    r->direct_fd = direct_fd_;
    r->generation = generation_;
    r->queue = &job_.queue;
    r->file = slot_;
    r->chunk = ci;
    c.in_flight = true;
    in_flight_.push_back(r.get());
    return r;
  }
  return nullptr;
}

void FileDownload::StartReset(bool single_stream, const std::string& new_etag) {
  if (!reset_pending_) {
    reset_pending_ = true;
    for (Request* r : in_flight_) {
      r->abort.store(true);
    }
  }
  single_stream_ = single_stream_ || single_stream;
  etag_ = new_etag;
}

VoidResult FileDownload::FinishReset() {
  job_.progress.bytes_done.fetch_sub(OnDisk(chunks_));
  const FileTask& t = *task_;
  chunks_.clear();
  if (single_stream_) {
    chunks_.push_back(std::make_unique<Chunk>(0, t.size, 0));
  } else {
    chunks_ = SplitChunks(t.size, ChunkSize(), 0);
  }
  hashed_ = 0;
  DropHeld();
  StartHashing();
  reset_pending_ = false;
  if (!mapped_ && ::ftruncate(fd_, 0) != 0) {
    return Error(Reason::StorageError,
                 "cannot truncate " + t.incomplete_path + ": " + ErrnoMessage(errno));
  }
  PersistMap(true);
  return {};
}

VoidResult FileDownload::Reset(bool single_stream, const std::string& new_etag) {
  StartReset(single_stream, new_etag);
  return in_flight_.empty() ? FinishReset() : VoidResult{};
}

std::string FileDownload::TransferFailure(CURLcode code) const {
  if (code == CURLE_OPERATION_TIMEDOUT) {
    return fmt::format(
        "stalled: less than {} bytes/s for {} s", job_.stall_floor,
        std::chrono::duration_cast<std::chrono::seconds>(job_.opts.stall_timeout).count());
  }
  return curl_easy_strerror(code);
}

VoidResult FileDownload::Retry(Chunk& c, Error error, bool progressed) {
  const HubOptions& hub = job_.source.hub;
  if (progressed) {
    c.failures = 0;
  }
  c.failures += 1;
  if (c.failures >= hub.max_attempts) {
    error.message += fmt::format(" (after {} attempts)", c.failures);
    return error;
  }
  std::chrono::milliseconds wait = BackoffDelay(hub, c.failures);
  if (error.retry_after) {
    if (*error.retry_after > hub.backoff_cap) {
      return error;  // the caller requeues after retry_after instead of waiting here
    }
    wait = *error.retry_after;
  }
  spdlog::debug("{}: {}; retrying in {} ms", task_->path, error.ToString(), wait.count());
  c.not_before = Clock::now() + wait;
  return {};
}

VoidResult FileDownload::Completed(Request& r, bool stopping) {
  Chunk& c = *chunks_[r.chunk];
  c.in_flight = false;
  in_flight_.erase(std::find(in_flight_.begin(), in_flight_.end(), &r));
  dirty_ = dirty_ || r.pos > r.first;
  if (reset_pending_) {
    return in_flight_.empty() ? FinishReset() : VoidResult{};
  }
  if (r.cancelled || stopping) {
    return {};
  }
  const FileTask& t = *task_;
  std::string what = fmt::format("{} ({})", t.path, WithoutQuery(r.url));
  // Data that arrived resets the request's failure count, unless the request ended as stalled
  // (a server dripping a byte a second) or got no further than an earlier attempt (a server that
  // ignores Range and ends early every time): either would otherwise be retried without end.
  bool progressed = r.pos > std::max(r.first, c.furthest) && r.code != CURLE_OPERATION_TIMEDOUT;
  c.furthest = std::max(c.furthest, r.pos);
  if (r.write_error) {
    Error e = *r.write_error;
    e.message = e.reason == Reason::InsufficientStorage
                    ? fmt::format("no space left writing {} ({}); {} of {} bytes of {} are kept "
                                  "for resume",
                                  t.incomplete_path, e.message, OnDisk(chunks_), t.size, t.path)
                    : fmt::format("cannot write {}: {}", t.incomplete_path, e.message);
    return e;
  }
  if (r.headers_too_large) {
    return Retry(c,
                 Error(Reason::NetworkError, fmt::format("{}: the answer's headers exceed {} bytes",
                                                         what, kMaxResponseHeaderBytes)),
                 progressed);
  }
  using V = Request::Verdict;
  switch (r.verdict) {
    case V::IgnoredRange:
      spdlog::info("{}: the server ignored Range; fetching it as one stream", what);
      return Reset(true, etag_);
    case V::Changed:
      changes_ += 1;
      if (changes_ >= job_.source.hub.max_attempts) {
        return Error(Reason::NetworkError,
                     fmt::format("{} kept changing during the download", what));
      }
      spdlog::warn("{} changed during the download (ETag {} instead of {}); starting over", what,
                   r.etag_seen, etag_);
      return Reset(false, r.etag_seen);
    case V::BadRange:
    case V::Overflow:
      return Retry(c,
                   Error(Reason::NetworkError,
                         fmt::format("{} answered bytes other than the range asked for", what)),
                   progressed);
    case V::WrongLength: {
      const std::string* length = r.response.Header("content-length");
      return Retry(
          c,
          Error(Reason::NetworkError,
                fmt::format("{} answered Content-Length {} for bytes {}-{} of a {}-byte file "
                            "(the size in the tree listing)",
                            what, length != nullptr ? PrintablePath(*length) : "?", r.first, r.end,
                            t.size)),
          progressed);
    }
    case V::Data:
      return OnData(r, c, what, progressed);
    case V::None:
    case V::NotData:
      break;
  }
  if (r.code != CURLE_OK || r.response.status == 0) {
    return Retry(c, NetworkFailure(fmt::format("{}: {}", what, TransferFailure(r.code)), r.code),
                 progressed);
  }
  if (r.response.status >= 300 && r.response.status < 400) {
    return OnRedirect(r, what);
  }
  return OnErrorAnswer(r, c, what, progressed);
}

VoidResult FileDownload::OnData(Request& r, Chunk& c, const std::string& what, bool progressed) {
  if (etag_.empty() && !r.etag_seen.empty()) {
    etag_ = r.etag_seen;
  }
  if (data_url_.empty()) {
    data_url_ = r.url;  // the Hub serves it itself: no need to ask one at a time
  }
  if (c.complete()) {
    redirects_ = 0;
    return {};
  }
  return Retry(c,
               NetworkFailure(r.code != CURLE_OK
                                  ? ScrubUrl(fmt::format("{}: {}", what, TransferFailure(r.code)),
                                             r.url)
                                  : fmt::format("{} ended at byte {} of {}", what, r.pos, c.end),
                              r.code),
               progressed);
}

VoidResult FileDownload::OnRedirect(Request& r, const std::string& what) {
  long status = r.response.status;
  const std::string* location = r.response.Header("location");
  if (location == nullptr) {
    return Error(Reason::NetworkError,
                 fmt::format("{} answered HTTP {} without a Location", what, status));
  }
  if (++redirects_ > kMaxFileRedirects) {
    return Error(Reason::NetworkError,
                 fmt::format("more than {} redirects for {}", kMaxFileRedirects, task_->path));
  }
  std::string next = ResolveLocation(r.url, *location);
  if (!IsHttpUrl(next)) {
    return Error(Reason::NetworkError,
                 fmt::format("{} redirects to {}: only http:// and https:// URLs are fetched",
                             what, PrintablePath(WithoutQuery(next))));
  }
  data_url_ = std::move(next);
  return {};  // scheduled again at once, to the new location
}

VoidResult FileDownload::OnErrorAnswer(Request& r, Chunk& c, const std::string& what,
                                       bool progressed) {
  const FileTask& t = *task_;
  const HubOptions& hub = job_.source.hub;
  long status = r.response.status;
  if (job_.source.presigned_s3 && status != 416) {
    // Presigned S3 URLs: there is no Hub to ask for a fresh location, and S3 says with its code
    // whether an answer can change (SlowDown, a 503) or not (NoSuchKey: the object was deleted;
    // AccessDenied): classified as S3Client classifies its own calls.
    std::string code = DataHostCode(r.response);
    if (!store::IsRetriableS3Error(status, code.empty() ? "" : code.substr(1))) {
      return Error(Reason::StorageError, fmt::format("{} answered HTTP {}{} for {}",
                                                     Origin(r.url), status, code, t.path));
    }
  }
  bool on_hub = Origin(r.url) == Origin(hub.endpoint);
  if (!on_hub && (status == 403 || status == 410)) {
    // An expired or revoked signed URL: the Hub hands out a fresh one (unless another request
    // already fetched a newer one).
    if (r.url == data_url_) {
      data_url_.clear();
    }
    return Retry(c, DataHostRefusal(r, t), progressed);
  }
  if (status == 416) {
    return Reset(false, "");
  }
  auto [type, repo] = RepoOf(hub.endpoint, t.url);
  Error mapped = HubClient::MapError(r.response, what, hub.endpoint, repo, type);
  if (IsRetryableStatus(status)) {
    return Retry(c, std::move(mapped), progressed);
  }
  if (!on_hub) {
    if (r.url == data_url_) {
      data_url_.clear();
    }
    return Retry(c, DataHostRefusal(r, t), progressed);
  }
  return mapped;
}

VoidResult FileDownload::Hash(std::string_view piece) {
  sha256_hasher_->Update(piece);
  if (sha1_hasher_) {
    sha1_hasher_->Update(piece);
  }
  if (task_->on_data) {
    if (auto r = task_->on_data(hashed_, piece); !r) {
      return r;
    }
  }
  hashed_ += piece.size();
  return {};
}

VoidResult FileDownload::HashFromFile(uint64_t until, uint64_t& budget, std::string& buf) {
  auto want = static_cast<size_t>(std::min<uint64_t>({kHashPiece, until - hashed_, budget}));
  buf.resize(want);
  ssize_t n = ::pread(fd_, buf.data(), want, static_cast<off_t>(hashed_));
  if (n < 0 && errno == EINTR) {
    return {};  // the caller's loop asks again
  }
  if (n <= 0) {
    return Error(Reason::StorageError,
                 "cannot read " + task_->incomplete_path + ": " +
                     (n < 0 ? ErrnoMessage(errno) : std::string("unexpected end of file")));
  }
  if (auto r = Hash(std::string_view(buf.data(), static_cast<size_t>(n))); !r) {
    return r;
  }
  job_.hashed_from_file += static_cast<uint64_t>(n);
  budget -= std::min<uint64_t>(budget, static_cast<uint64_t>(n));
  return {};
}

VoidResult FileDownload::AdvanceHash(uint64_t& budget) {
  uint64_t limit = ContiguousEnd(chunks_);
  std::string buf;
  while (hashed_ < limit && budget > 0) {
    // From memory while a held block has the next bytes; from the file otherwise.
    auto held = held_.upper_bound(hashed_);
    if (held != held_.begin()) {
      --held;
      Block* b = held->second;
      if (b->offset + b->len > hashed_) {
        auto skip = static_cast<size_t>(hashed_ - b->offset);
        if (auto r = Hash(std::string_view(b->data.get() + skip, b->len - skip)); !r) {
          return r;
        }
        job_.hashed_from_memory += b->len - skip;
        budget -= std::min<uint64_t>(budget, b->len - skip);
      }
      held_.erase(held);
      job_.held_blocks -= 1;
      job_.pool.Put(b);
      continue;
    }
    uint64_t until = limit;
    if (auto next = held_.upper_bound(hashed_); next != held_.end()) {
      until = std::min(until, next->first);
    }
    if (auto r = HashFromFile(until, budget, buf); !r) {
      return r;
    }
  }
  if (hashed_ == task_->size && in_flight_.empty()) {
    return Verify();
  }
  return {};
}

VoidResult FileDownload::Verify() {
  const FileTask& t = *task_;
  std::string sha256 = sha256_hasher_->FinalHex();
  std::optional<std::string> sha1;
  if (sha1_hasher_) {
    sha1 = sha1_hasher_->FinalHex();
  }
  std::optional<Error> mismatch;
  if (t.expected_sha256 && *t.expected_sha256 != sha256) {
    mismatch = Error(Reason::ChecksumMismatch,
                     fmt::format("{}: expected sha256 {}, got {} ({} bytes from {})", t.path,
                                 *t.expected_sha256, sha256, t.size, WithoutQuery(t.url)));
  } else if (t.expected_git_sha1 && sha1 && *t.expected_git_sha1 != *sha1) {
    mismatch = Error(Reason::ChecksumMismatch,
                     fmt::format("{}: expected git blob sha1 {}, got {} ({} bytes from {})",
                                 t.path, *t.expected_git_sha1, *sha1, t.size,
                                 WithoutQuery(t.url)));
  }
  if (!mismatch) {
    if (mapped_) {
      job_.persister.Drain();  // the publisher removes the map; none may be written after that
    }
    CloseDirect();
    sha256_ = std::move(sha256);
    phase_ = Phase::Verified;
    return {};
  }
  verify_failures_ += 1;
  spdlog::warn("{}", mismatch->message);
  if (verify_failures_ < job_.source.hub.max_attempts) {
    StartReset(false, etag_);
    return FinishReset();
  }
  // Nothing half-verified stays behind to be resumed from.
  job_.progress.bytes_done.fetch_sub(OnDisk(chunks_));
  job_.persister.Drain();  // or a queued map would reappear after the unlink
  ::close(fd_);
  fd_ = -1;
  CloseDirect();
  ::unlink(t.incomplete_path.c_str());
  ::unlink(map_path().c_str());
  phase_ = Phase::Done;
  mismatch->message += fmt::format(" (after {} attempts)", verify_failures_);
  return *mismatch;
}

int FileDownload::TakeForPublishing() {
  phase_ = Phase::Publishing;
  return std::exchange(fd_, -1);
}

bool FileDownload::Keep(Block* b) {
  if (b->generation != generation_ || reset_pending_ || phase_ != Phase::Active ||
      b->offset + b->len <= hashed_) {
    return false;
  }
  held_.emplace(b->offset, b);
  job_.held_blocks += 1;
  return true;
}

void FileDownload::ReleaseFurthestHeld() {
  auto last = std::prev(held_.end());
  job_.pool.Put(last->second);
  held_.erase(last);
  job_.held_blocks -= 1;
}

void FileDownload::DropHeld() {
  for (auto& [offset, b] : held_) {
    job_.pool.Put(b);
  }
  job_.held_blocks -= static_cast<int>(held_.size());
  held_.clear();
  generation_ += 1;
}

void FileDownload::CloseDirect() {
  if (direct_fd_ >= 0) {
    ::close(direct_fd_);
    direct_fd_ = -1;
  }
}

FileDownload::Clock::time_point FileDownload::NextRetry(Clock::time_point deadline) const {
  if (phase_ != Phase::Active || reset_pending_) {
    return deadline;
  }
  for (const auto& c : chunks_) {
    if (!c->in_flight && !c->complete()) {
      deadline = std::min(deadline, c->not_before);
    }
  }
  return deadline;
}

void FileDownload::Close() {
  DropHeld();
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  CloseDirect();
}

}  // namespace modelcache::fetch::internal
