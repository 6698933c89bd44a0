#include "fetch/downloader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>

#include "common/files.h"
#include "common/http_client.h"
#include "common/sha256.h"
#include "fetch/internal/hub_http.h"

namespace modelcache::fetch {
namespace {

using internal::FileSize;
using internal::ParentDir;
using internal::RepoOf;

constexpr size_t kReadChunk = 1 << 20;
constexpr int kMaxRedirects = 10;
constexpr auto kRateWindow = std::chrono::seconds(5);
constexpr auto kRateSample = std::chrono::milliseconds(250);

// Bytes still to write for `task`: nothing if its final file is in place, else what the partial
// file lacks (all of it if the partial file is longer than the file, since it gets truncated).
uint64_t BytesNeeded(const FileTask& task) {
  if (auto final_size = FileSize(task.final_path); final_size && *final_size == task.size) {
    return 0;
  }
  uint64_t have = FileSize(task.incomplete_path).value_or(0);
  return have > task.size ? task.size : task.size - have;
}

VoidResult CheckFreeSpace(const std::vector<FileTask>& tasks, const std::vector<size_t>& which) {
  std::vector<internal::SpaceNeed> needs;
  for (size_t i : which) {
    needs.push_back({tasks[i].incomplete_path, BytesNeeded(tasks[i])});
  }
  return internal::CheckFreeSpace(needs);
}

// Adds the bytes of one file to the shared counters as they change, so that discarding a partial
// file takes its bytes back out.
class ProgressShare {
 public:
  explicit ProgressShare(TransferProgress& progress) : progress_(progress) {}
  void Set(uint64_t bytes) {
    if (bytes >= counted_) {
      progress_.bytes_done.fetch_add(bytes - counted_);
    } else {
      progress_.bytes_done.fetch_sub(counted_ - bytes);
    }
    counted_ = bytes;
  }

 private:
  TransferProgress& progress_;
  uint64_t counted_ = 0;
};

// What one request chain (resolve URL, maybe a redirect) achieved.
struct Attempt {
  enum Kind { Complete, Retry, Fail } kind = Retry;
  Error error;
  bool progressed = false;  // bytes were written: huggingface_hub resets its retry budget then
};

// Fetches one task. Not thread-safe; one per task and thread.
class FileFetch {
 public:
  FileFetch(const HubOptions& options, const FileTask& task, TransferProgress& progress,
            std::atomic<uint64_t>& downloaded, std::stop_token stop)
      : options_(options),
        task_(task),
        progress_(progress),
        share_(progress),
        downloaded_(downloaded),
        stop_(std::move(stop)) {}
  ~FileFetch() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }
  FileFetch(const FileFetch&) = delete;
  FileFetch& operator=(const FileFetch&) = delete;

  Result<FileResult> Run();

 private:
  Result<FileResult> UseExisting();
  VoidResult OpenPartial();
  VoidResult Discard();
  VoidResult WriteChunk(std::string_view data);
  Attempt TryOnce();
  // Checks size and digests; on success the digests are returned, else ChecksumMismatch.
  Result<std::string> Verify();
  VoidResult Publish();
  Error MapError(const HttpResponse& answer, const std::string& what) const {
    auto [type, repo] = RepoOf(options_.endpoint, task_.url);
    return HubClient::MapError(answer, what, options_.endpoint, repo, type);
  }
  Error CancelledError() const {
    return Error(Reason::Cancelled,
                 fmt::format("download of {} cancelled; {} of {} bytes kept in {}", task_.path,
                             offset_, task_.size, task_.incomplete_path));
  }

  const HubOptions& options_;
  const FileTask& task_;
  TransferProgress& progress_;
  ProgressShare share_;
  std::atomic<uint64_t>& downloaded_;
  std::stop_token stop_;

  int fd_ = -1;
  uint64_t offset_ = 0;  // bytes in the partial file, all of them hashed
  Hasher sha256_{Hasher::Kind::Sha256};
  std::optional<Hasher> sha1_;
};

Result<FileResult> FileFetch::UseExisting() {
  std::string sha256;
  if (task_.expected_sha256) {
    sha256 = *task_.expected_sha256;
  } else {
    auto digest = Sha256File(task_.final_path);
    if (!digest) {
      return digest.error();
    }
    sha256 = *digest;
  }
  share_.Set(task_.size);
  progress_.files_done.fetch_add(1);
  return FileResult{task_.path, sha256, task_.size, false};
}

VoidResult FileFetch::OpenPartial() {
  if (auto r = MakeDirs(ParentDir(task_.incomplete_path)); !r) {
    return r.error();
  }
  fd_ = ::open(task_.incomplete_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    return Error(Reason::StorageError,
                 "cannot open " + task_.incomplete_path + ": " + ErrnoMessage(errno));
  }
  if (task_.expected_git_sha1) {
    sha1_.emplace(GitBlobHasher(task_.size));
  }
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    return Error(Reason::StorageError,
                 "cannot stat " + task_.incomplete_path + ": " + ErrnoMessage(errno));
  }
  auto have = static_cast<uint64_t>(st.st_size);
  if (have > task_.size) {
    return Discard();  // not a prefix of this file
  }
  // Resuming: the digests must cover the whole file, so what earlier attempts wrote is hashed
  // again from disk before new bytes are appended.
  std::string buf(kReadChunk, '\0');
  while (offset_ < have) {
    if (stop_.stop_requested()) {
      return CancelledError();
    }
    size_t want = static_cast<size_t>(std::min<uint64_t>(kReadChunk, have - offset_));
    ssize_t n = ::pread(fd_, buf.data(), want, static_cast<off_t>(offset_));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return Error(Reason::StorageError,
                   "cannot read " + task_.incomplete_path + ": " +
                       (n < 0 ? ErrnoMessage(errno) : std::string("unexpected end of file")));
    }
    std::string_view chunk(buf.data(), static_cast<size_t>(n));
    sha256_.Update(chunk);
    if (sha1_) {
      sha1_->Update(chunk);
    }
    offset_ += static_cast<uint64_t>(n);
  }
  share_.Set(offset_);
  return {};
}

VoidResult FileFetch::Discard() {
  if (::ftruncate(fd_, 0) != 0) {
    return Error(Reason::StorageError,
                 "cannot truncate " + task_.incomplete_path + ": " + ErrnoMessage(errno));
  }
  offset_ = 0;
  sha256_ = Hasher(Hasher::Kind::Sha256);
  if (sha1_) {
    sha1_.emplace(GitBlobHasher(task_.size));
  }
  share_.Set(0);
  return {};
}

VoidResult FileFetch::WriteChunk(std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::pwrite(fd_, data.data(), data.size(), static_cast<off_t>(offset_));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      int err = errno;
      if (err == ENOSPC || err == EDQUOT) {
        return Error(
            Reason::InsufficientStorage,
            fmt::format("no space left writing {} ({}): {} of {} bytes of {} are kept "
                        "for resume",
                        task_.incomplete_path, ErrnoMessage(err), offset_, task_.size, task_.path));
      }
      return Error(Reason::StorageError,
                   "cannot write " + task_.incomplete_path + ": " + ErrnoMessage(err));
    }
    // Hash exactly what reached the file, so a partial write keeps digests and offset in step.
    std::string_view written = data.substr(0, static_cast<size_t>(n));
    sha256_.Update(written);
    if (sha1_) {
      sha1_->Update(written);
    }
    offset_ += static_cast<uint64_t>(n);
    downloaded_.fetch_add(static_cast<uint64_t>(n));
    share_.Set(offset_);
    data.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

Attempt FileFetch::TryOnce() {
  const std::string hub_origin = internal::Origin(options_.endpoint);
  const uint64_t start_offset = offset_;
  std::string url = task_.url;
  for (int hop = 0; hop <= kMaxRedirects; ++hop) {
    HttpRequest req;
    req.url = url;
    // The token goes to the Hub only: a redirect to another host is a signed CDN URL.
    req.headers = internal::HubHeaders(options_, url);
    if (offset_ > 0) {
      req.headers.emplace_back("Range", fmt::format("bytes={}-", offset_));
    }
    long status = 0;
    bool writing = false;
    bool overflow = false;
    bool bad_range = false;
    std::optional<Error> local_error;
    HttpStreamHandler handler;
    handler.on_headers = [&](const HttpResponse& r) {
      status = r.status;
      if (status == 200) {
        if (offset_ > 0) {
          // The server ignored Range (huggingface_hub: "e.g. CloudFront with Accept-Encoding:
          // gzip"): what we have would be duplicated, so start over.
          spdlog::info("{}: server ignored Range at byte {}; restarting from 0", task_.path,
                       offset_);
          if (auto r2 = Discard(); !r2) {
            local_error = r2.error();
            return false;
          }
        }
        writing = true;
      } else if (status == 206) {
        const std::string* range = r.Header("content-range");
        unsigned long long first = 0;
        if (range == nullptr || std::sscanf(range->c_str(), "bytes %llu-", &first) != 1 ||
            first != offset_) {
          bad_range = true;
          return false;
        }
        writing = true;
      }
      return true;
    };
    handler.on_data = [&](std::string_view data) {
      if (stop_.stop_requested()) {
        return false;
      }
      if (!writing) {
        return true;  // the body of a redirect or an error answer
      }
      if (offset_ + data.size() > task_.size) {
        overflow = true;
        return false;
      }
      if (auto r = WriteChunk(data); !r) {
        local_error = r.error();
        return false;
      }
      return true;
    };
    auto answer = HttpClient::Stream(req, handler, stop_);
    bool progressed = offset_ > start_offset;
    std::string what = fmt::format("{} ({})", task_.path, internal::WithoutQuery(url));

    if (local_error) {
      return {Attempt::Fail, *local_error, progressed};
    }
    if (stop_.stop_requested()) {
      return {Attempt::Fail, CancelledError(), progressed};
    }
    if (overflow || bad_range) {
      if (auto r = Discard(); !r) {
        return {Attempt::Fail, r.error(), progressed};
      }
      std::string why = overflow ? fmt::format("sent more than the expected {} bytes", task_.size)
                                 : "answered with a Content-Range that does not start at the "
                                   "requested byte";
      return {Attempt::Retry, Error(Reason::NetworkError, fmt::format("{} {}", what, why)), false};
    }
    if (!answer) {
      // A dropped connection: the next attempt resumes from the last byte written.
      return {Attempt::Retry,
              Error(Reason::NetworkError, internal::ScrubUrl(answer.error().message, url)),
              progressed};
    }
    status = answer->status;
    if (status >= 300 && status < 400) {
      const std::string* location = answer->Header("location");
      if (location == nullptr) {
        return {Attempt::Fail,
                Error(Reason::NetworkError,
                      fmt::format("{} answered HTTP {} without a Location", what, status)),
                progressed};
      }
      url = internal::ResolveLocation(url, *location);
      continue;
    }
    if (status == 200 || status == 206) {
      if (offset_ < task_.size) {
        return {Attempt::Retry,
                Error(Reason::NetworkError,
                      fmt::format("{} ended after {} of {} bytes", what, offset_, task_.size)),
                progressed};
      }
      return {Attempt::Complete, Error(), progressed};
    }
    if (status == 416) {
      // Our partial data does not fit the file the server has: it is not a prefix of it.
      if (auto r = Discard(); !r) {
        return {Attempt::Fail, r.error(), progressed};
      }
      return {Attempt::Retry, MapError(*answer, what), false};
    }
    Error mapped = MapError(*answer, what);
    if (internal::IsRetryableStatus(status)) {
      return {Attempt::Retry, mapped, progressed};
    }
    if (internal::Origin(url) != hub_origin) {
      // A CDN refusing a signed URL (expired signature): the next attempt asks the Hub again.
      return {Attempt::Retry,
              Error(Reason::NetworkError, fmt::format("{} answered HTTP {} for {}",
                                                      internal::Origin(url), status, task_.path)),
              progressed};
    }
    return {Attempt::Fail, mapped, progressed};
  }
  return {Attempt::Fail,
          Error(Reason::NetworkError,
                fmt::format("more than {} redirects for {}", kMaxRedirects, task_.path)),
          false};
}

Result<std::string> FileFetch::Verify() {
  std::string sha256 = sha256_.FinalHex();
  std::optional<std::string> sha1;
  if (sha1_) {
    sha1 = sha1_->FinalHex();
  }
  if (task_.expected_sha256 && *task_.expected_sha256 != sha256) {
    return Error(
        Reason::ChecksumMismatch,
        fmt::format("{}: expected sha256 {}, got {} ({} bytes from {})", task_.path,
                    *task_.expected_sha256, sha256, offset_, internal::WithoutQuery(task_.url)));
  }
  if (task_.expected_git_sha1 && sha1 && *task_.expected_git_sha1 != *sha1) {
    return Error(
        Reason::ChecksumMismatch,
        fmt::format("{}: expected git blob sha1 {}, got {} ({} bytes from {})", task_.path,
                    *task_.expected_git_sha1, *sha1, offset_, internal::WithoutQuery(task_.url)));
  }
  return sha256;
}

VoidResult FileFetch::Publish() {
  if (::fsync(fd_) != 0) {
    return Error(Reason::StorageError,
                 "cannot sync " + task_.incomplete_path + ": " + ErrnoMessage(errno));
  }
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    return Error(Reason::StorageError,
                 "cannot close " + task_.incomplete_path + ": " + ErrnoMessage(errno));
  }
  std::string dir = ParentDir(task_.final_path);
  if (auto r = MakeDirs(dir); !r) {
    return r.error();
  }
  if (::rename(task_.incomplete_path.c_str(), task_.final_path.c_str()) != 0) {
    return Error(Reason::StorageError, "cannot rename " + task_.incomplete_path + " to " +
                                           task_.final_path + ": " + ErrnoMessage(errno));
  }
  return SyncDir(dir);
}

Result<FileResult> FileFetch::Run() {
  if (auto existing = FileSize(task_.final_path); existing) {
    if (*existing == task_.size) {
      return UseExisting();
    }
    spdlog::warn("{} has {} bytes instead of {}; fetching it again", task_.final_path, *existing,
                 task_.size);
  }
  if (auto r = OpenPartial(); !r) {
    return r.error();
  }
  int failures = 0;
  while (true) {
    Error error;
    if (offset_ == task_.size) {
      auto digest = Verify();
      if (digest) {
        if (auto r = Publish(); !r) {
          return r.error();
        }
        progress_.files_done.fetch_add(1);
        return FileResult{task_.path, *digest, task_.size, true};
      }
      error = digest.error();
      spdlog::warn("{}", error.message);
      if (auto r = Discard(); !r) {
        return r.error();
      }
    } else {
      Attempt attempt = TryOnce();
      if (attempt.kind == Attempt::Complete) {
        continue;
      }
      if (attempt.kind == Attempt::Fail) {
        return attempt.error;
      }
      if (attempt.progressed) {
        failures = 0;
      }
      error = std::move(attempt.error);
    }
    ++failures;
    if (failures >= options_.max_attempts) {
      if (error.reason == Reason::ChecksumMismatch) {
        // Nothing half-verified stays behind to be resumed from.
        ::close(fd_);
        fd_ = -1;
        ::unlink(task_.incomplete_path.c_str());
      }
      error.message += fmt::format(" (after {} attempts)", failures);
      return error;
    }
    std::chrono::milliseconds wait = internal::BackoffDelay(options_, failures);
    if (error.retry_after) {
      if (*error.retry_after > options_.backoff_cap) {
        return error;  // the caller requeues after retry_after instead of holding a worker
      }
      wait = *error.retry_after;
    }
    spdlog::debug("{}: {}; retrying in {} ms", task_.path, error.ToString(), wait.count());
    if (!internal::SleepFor(wait, stop_)) {
      return CancelledError();
    }
  }
}

// Samples the downloaded-bytes counter and publishes the rate over the last kRateWindow.
void MeasureRate(std::stop_token stop, const std::atomic<uint64_t>& downloaded,
                 TransferProgress& progress) {
  using Clock = std::chrono::steady_clock;
  std::deque<std::pair<Clock::time_point, uint64_t>> samples;
  samples.emplace_back(Clock::now(), downloaded.load());
  while (internal::SleepFor(kRateSample, stop)) {
    auto now = Clock::now();
    samples.emplace_back(now, downloaded.load());
    while (samples.size() > 2 && now - samples.front().first > kRateWindow) {
      samples.pop_front();
    }
    auto span = std::chrono::duration<double>(now - samples.front().first).count();
    if (span > 0) {
      progress.bytes_per_second.store(static_cast<uint64_t>(
          static_cast<double>(samples.back().second - samples.front().second) / span));
    }
  }
}

class SimpleTransfer final : public Transfer {
 public:
  SimpleTransfer(HubOptions options, int parallel_files)
      : options_(std::move(options)), parallel_files_(std::max(1, parallel_files)) {
    while (!options_.endpoint.empty() && options_.endpoint.back() == '/') {
      options_.endpoint.pop_back();
    }
  }

  Result<std::vector<FileResult>> Run(const std::vector<FileTask>& tasks,
                                      TransferProgress& progress, std::stop_token stop) override;

 private:
  HubOptions options_;
  int parallel_files_;
};

Result<std::vector<FileResult>> SimpleTransfer::Run(const std::vector<FileTask>& tasks,
                                                    TransferProgress& progress,
                                                    std::stop_token stop) {
  // Identical files at several paths share one blob (same etag, same final path): each blob is
  // fetched once, or two workers would write the same .incomplete file.
  std::vector<size_t> unique;
  std::vector<size_t> primary(tasks.size());
  std::map<std::string, size_t> first_of;
  uint64_t total = 0;
  for (size_t i = 0; i < tasks.size(); ++i) {
    auto [it, inserted] = first_of.emplace(tasks[i].final_path, i);
    primary[i] = it->second;
    if (inserted) {
      unique.push_back(i);
      total += tasks[i].size;
    }
  }
  // A caller that knows the whole job (files already in the store, which it did not hand over)
  // sets the totals and seeds the done counters itself; otherwise the batch is the job.
  if (progress.bytes_total.load() == 0 && progress.files_total.load() == 0) {
    progress.bytes_total.store(total);
    progress.files_total.store(static_cast<int64_t>(tasks.size()));
  }
  progress.bytes_per_second.store(0);
  if (auto r = CheckFreeSpace(tasks, unique); !r) {
    return r.error();
  }

  // One failing file stops the others: the whole batch is retried later anyway, and partial
  // data stays for resume.
  std::stop_source batch;
  std::stop_callback forward(stop, [&batch] { batch.request_stop(); });
  std::vector<std::optional<FileResult>> results(tasks.size());
  std::mutex mu;
  std::optional<Error> first_error;
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> downloaded{0};
  {
    std::jthread meter(
        [&](std::stop_token meter_stop) { MeasureRate(meter_stop, downloaded, progress); });
    std::vector<std::jthread> workers;
    size_t n_workers = std::min<size_t>(static_cast<size_t>(parallel_files_), unique.size());
    for (size_t w = 0; w < n_workers; ++w) {
      workers.emplace_back([&] {
        for (size_t u = next.fetch_add(1); u < unique.size(); u = next.fetch_add(1)) {
          if (batch.stop_requested()) {
            return;
          }
          size_t i = unique[u];
          FileFetch fetch(options_, tasks[i], progress, downloaded, batch.get_token());
          auto result = fetch.Run();
          if (result) {
            results[i] = std::move(*result);
            continue;
          }
          std::lock_guard lock(mu);
          // Cancelled answers that our own batch stop caused are not the cause.
          if (!first_error &&
              !(result.error().reason == Reason::Cancelled && batch.stop_requested())) {
            first_error = result.error();
          }
          batch.request_stop();
          return;
        }
      });
    }
    workers.clear();  // joins
  }
  progress.bytes_per_second.store(0);
  if (first_error) {
    return *first_error;
  }
  if (stop.stop_requested()) {
    return Error(Reason::Cancelled, "download cancelled; partial files are kept for resume");
  }
  std::vector<FileResult> out;
  out.reserve(tasks.size());
  for (size_t i = 0; i < tasks.size(); ++i) {
    const std::optional<FileResult>& r = results[primary[i]];
    if (!r) {
      return Error(Reason::Internal, "a download finished without a result");
    }
    out.push_back(*r);
    if (primary[i] != i) {
      out.back().path = tasks[i].path;
      out.back().downloaded = false;  // its blob came with another path
      progress.files_done.fetch_add(1);
    }
  }
  return out;
}

}  // namespace

std::unique_ptr<Transfer> NewSimpleTransfer(HubOptions options, int parallel_files) {
  return std::make_unique<SimpleTransfer>(std::move(options), parallel_files);
}

}  // namespace modelcache::fetch
