#include "fetch/s3_stream.h"

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>

#include "common/guard.h"
#include "common/http_client.h"
#include "common/sha256.h"
#include "fetch/internal/hub_http.h"

namespace modelcache::fetch {
namespace {

constexpr size_t kPipeBytes = 4 << 20;
constexpr int kMaxS3Redirects = 10;

// Bytes [begin, end) of a file, fetched from `url` (the /resolve URL, or a CDN URL an earlier
// range was redirected to), through a pipe of `pipe_bytes`.
struct ByteRange {
  uint64_t begin = 0;
  uint64_t end = 0;
  std::string url;
  size_t pipe_bytes = kPipeBytes;
};

// The download runs on its own thread (HttpClient pushes bytes, the uploader pulls them); a
// bounded queue of chunks joins the two. A whole file is checked against its git blob sha1 when
// it has one; a range of it never is (its caller reads whole files for that).
class HubReader {
 public:
  HubReader(const HubOptions& hub, const HubFileSource& file, std::stop_token stop)
      : HubReader(hub, file, std::move(stop), ByteRange{0, file.size, file.url, kPipeBytes}) {}
  HubReader(const HubOptions& hub, const HubFileSource& file, std::stop_token stop,
            ByteRange range)
      : hub_(hub),
        file_(file),
        range_(std::move(range)),
        url_(range_.url),
        offset_(range_.begin),
        forward_(stop, [this] { Close(); }) {
    if (file_.expected_git_sha1 && range_.begin == 0 && range_.end == file_.size) {
      sha1_.emplace(GitBlobHasher(file_.size));
    }
    thread_ = std::thread([this] {
      // The last resort: an exception fails this file's upload, never the daemon.
      if (!LogExceptions("download of " + file_.path, [this] { Produce(); })) {
        Finish(Error(Reason::Internal, file_.path + ": the download stopped on an exception"));
      }
    });
  }
  ~HubReader() {
    Close();
    thread_.join();
  }
  HubReader(const HubReader&) = delete;
  HubReader& operator=(const HubReader&) = delete;

  // The URL the bytes came from once they flow (the CDN's, after the Hub's redirect), else "".
  std::string data_url() {
    std::lock_guard lock(mu_);
    return data_url_;
  }

  // UploadReadFn: the next bytes, 0 at the end; the download's error once it failed.
  Result<size_t> Read(char* out, size_t n) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !queue_.empty() || done_ || closed_; });
    if (queue_.empty()) {
      if (error_) {
        return *error_;
      }
      if (closed_ && !done_) {
        return Error(Reason::Cancelled, file_.path + ": cancelled");
      }
      return size_t{0};
    }
    size_t copied = 0;
    while (copied < n && !queue_.empty()) {
      std::string& front = queue_.front();
      size_t take = std::min(n - copied, front.size() - front_pos_);
      std::copy_n(front.data() + front_pos_, take, out + copied);
      copied += take;
      front_pos_ += take;
      if (front_pos_ == front.size()) {
        queued_ -= front.size();
        queue_.pop_front();
        front_pos_ = 0;
      }
    }
    cv_.notify_all();
    return copied;
  }

 private:
  void Close() {
    std::lock_guard lock(mu_);
    closed_ = true;
    stop_.request_stop();
    cv_.notify_all();
  }

  // Blocks while the pipe is full; false once the reader went away.
  bool Push(std::string_view data) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return queued_ < range_.pipe_bytes || closed_; });
    if (closed_) {
      return false;
    }
    queue_.emplace_back(data);
    queued_ += data.size();
    cv_.notify_all();
    return true;
  }

  void Finish(std::optional<Error> error) {
    std::lock_guard lock(mu_);
    done_ = true;
    error_ = std::move(error);
    cv_.notify_all();
  }

  void Produce() {
    int failures = 0;
    for (;;) {
      uint64_t before = offset_;
      auto attempt = Attempt();
      if (attempt) {
        Finish(std::nullopt);
        return;
      }
      Error e = attempt.error();
      bool transient = e.reason == Reason::NetworkError || e.reason == Reason::RateLimited;
      // Progress (the budget is per stall, not per file) is more than a stalled attempt moves: a
      // server dripping a byte a second would otherwise be retried without end.
      uint64_t stall_bytes =
          kStallBytesPerSecond *
          static_cast<uint64_t>(
              std::chrono::duration_cast<std::chrono::seconds>(hub_.stall_timeout).count());
      if (offset_ > before + stall_bytes) {
        failures = 0;
      }
      if (!transient || stop_.stop_requested() || ++failures >= hub_.max_attempts) {
        Finish(std::move(e));
        return;
      }
      spdlog::info("{}: {}; resuming from byte {}", file_.path, e.message, offset_);
      if (!internal::SleepFor(e.retry_after.value_or(internal::BackoffDelay(hub_, failures)),
                              stop_.get_token())) {
        Finish(Error(Reason::Cancelled, file_.path + ": cancelled"));
        return;
      }
    }
  }

  // One GET (following redirects by hand, as huggingface_hub does) from offset_; the whole
  // range when it returns success.
  VoidResult Attempt() {
    const bool whole_tail = range_.end == file_.size;
    std::string url = url_;
    for (int hop = 0; hop <= kMaxS3Redirects; ++hop) {
      HttpRequest req;
      req.url = url;
      req.headers = internal::HubHeaders(hub_, url);
      req.stall_timeout = hub_.stall_timeout;
      req.stall_bytes_per_second = kStallBytesPerSecond;
      if (offset_ > 0 || !whole_tail) {
        req.headers.emplace_back("Range", whole_tail
                                              ? fmt::format("bytes={}-", offset_)
                                              : fmt::format("bytes={}-{}", offset_, range_.end - 1));
      }
      long status = 0;
      uint64_t skip = 0;  // bytes of a 200 answer we already have
      std::optional<Error> local;
      HttpStreamHandler handler;
      handler.on_headers = [&](const HttpResponse& r) {
        status = r.status;
        if (status == 200) {
          skip = offset_;  // Range ignored: drop what the uploader already has
        } else if (status == 206) {
          const std::string* range = r.Header("content-range");
          unsigned long long first = 0;
          if (range == nullptr || std::sscanf(range->c_str(), "bytes %llu-", &first) != 1 ||
              first != offset_) {
            local = Error(Reason::NetworkError,
                          file_.path + ": Content-Range does not start at the requested byte");
            return false;
          }
        }
        if (status == 200 || status == 206) {
          std::lock_guard lock(mu_);
          data_url_ = url;
        }
        return true;
      };
      handler.on_data = [&](std::string_view data) {
        if (status != 200 && status != 206) {
          return true;  // a redirect's or an error's body
        }
        if (skip > 0) {
          size_t drop = static_cast<size_t>(std::min<uint64_t>(skip, data.size()));
          data.remove_prefix(drop);
          skip -= drop;
        }
        if (data.empty()) {
          return true;
        }
        if (offset_ + data.size() > range_.end) {
          if (whole_tail) {
            local = Error(Reason::ChecksumMismatch,
                          fmt::format("{}: the Hub sent more than the expected {} bytes",
                                      file_.path, file_.size));
            return false;
          }
          // More than the range (a server that ignored Range): the rest is another range's.
          data = data.substr(0, static_cast<size_t>(range_.end - offset_));
          offset_ += data.size();
          Push(data);
          return false;
        }
        if (sha1_) {
          sha1_->Update(data);
        }
        offset_ += data.size();
        return Push(data);
      };
      auto answer = HttpClient::Stream(req, handler, stop_.get_token());
      std::string what = fmt::format("{} ({})", file_.path, internal::WithoutQuery(url));
      if (local) {
        return *local;
      }
      if (stop_.stop_requested()) {
        return Error(Reason::Cancelled, file_.path + ": cancelled");
      }
      if (!whole_tail && offset_ == range_.end) {
        return {};  // the range is in, however it ended
      }
      if (!answer) {
        return Error(Reason::NetworkError, internal::ScrubUrl(answer.error().message, url));
      }
      if (status >= 300 && status < 400) {
        const std::string* location = answer->Header("location");
        if (location == nullptr) {
          return Error(Reason::NetworkError,
                       fmt::format("{} answered HTTP {} without a Location", what, status));
        }
        url = internal::ResolveLocation(url, *location);
        continue;
      }
      if (status == 200 || status == 206) {
        if (offset_ < range_.end) {
          return Error(Reason::NetworkError,
                       fmt::format("{}: connection ended after {} of {} bytes", what, offset_,
                                   range_.end));
        }
        if (sha1_) {
          std::string got = sha1_->FinalHex();
          if (got != *file_.expected_git_sha1) {
            return Error(Reason::ChecksumMismatch,
                         fmt::format("{}: git blob sha1 is {}, expected {}", file_.path, got,
                                     *file_.expected_git_sha1));
          }
        }
        return {};
      }
      auto [type, repo] = internal::RepoOf(hub_.endpoint, file_.url);
      Error mapped = HubClient::MapError(*answer, what, hub_.endpoint, repo, type);
      if (!internal::IsRetryableStatus(status) &&
          internal::Origin(url) != internal::Origin(hub_.endpoint)) {
        // A CDN refusing a signed URL (expired): the next attempt asks the Hub again.
        url_ = file_.url;
        return Error(Reason::NetworkError, fmt::format("{} answered HTTP {} for {}",
                                                       internal::Origin(url), status, file_.path));
      }
      return mapped;  // 408/429/5xx are NetworkError or RateLimited: retried by Produce
    }
    return Error(Reason::NetworkError, file_.path + ": too many redirects");
  }

  const HubOptions& hub_;
  const HubFileSource& file_;
  const ByteRange range_;
  std::string url_;  // where an attempt starts (producer thread only)
  std::stop_source stop_;
  std::optional<Hasher> sha1_;
  uint64_t offset_ = 0;  // end of the bytes handed to the pipe (producer thread only)
  std::string data_url_;  // guarded by mu_

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;
  size_t front_pos_ = 0;
  size_t queued_ = 0;
  bool done_ = false;
  bool closed_ = false;
  std::optional<Error> error_;
  std::stop_callback<std::function<void()>> forward_;
  std::thread thread_;
};

// A file read as consecutive ranges of `segment_size` bytes, up to `connections` of them in
// flight, each on its own HubReader whose pipe holds its whole range (so a range behind the one
// being read never stalls its connection); Read hands the bytes over in file order. Once a range
// has been redirected, the next ones start at the URL it got its bytes from (the CDN's signed
// URL; the Hub is asked again if the CDN refuses it), as the transfer engine does. Memory:
// connections x segment_size.
class RangedHubReader {
 public:
  RangedHubReader(const HubOptions& hub, const HubFileSource& file, std::stop_token stop,
                  const StreamOptions& options)
      : hub_(hub),
        file_(file),
        stop_(std::move(stop)),
        connections_(static_cast<size_t>(std::max(1, options.connections))),
        segment_(std::max<uint64_t>(options.segment_size, 1)),
        url_(file.url) {
    Refill();
  }

  // UploadReadFn, as HubReader::Read.
  Result<size_t> Read(char* out, size_t n) {
    while (!readers_.empty()) {
      auto got = readers_.front()->Read(out, n);
      if (!got || *got > 0) {
        return got;
      }
      if (std::string used = readers_.front()->data_url(); !used.empty()) {
        url_ = std::move(used);
      }
      readers_.pop_front();
      Refill();
    }
    return size_t{0};
  }

 private:
  void Refill() {
    while (readers_.size() < connections_ && next_ < file_.size) {
      uint64_t end = std::min(file_.size, next_ + segment_);
      readers_.push_back(std::make_unique<HubReader>(
          hub_, file_, stop_, ByteRange{next_, end, url_, static_cast<size_t>(end - next_)}));
      next_ = end;
    }
  }

  const HubOptions& hub_;
  const HubFileSource& file_;
  std::stop_token stop_;
  const size_t connections_;
  const uint64_t segment_;
  std::string url_;
  uint64_t next_ = 0;
  std::deque<std::unique_ptr<HubReader>> readers_;
};

}  // namespace

Result<store::UploadResult> StreamHubFileToS3(const HubOptions& hub, store::S3Uploader& uploader,
                                              const HubFileSource& file,
                                              const std::string& bucket, const std::string& key,
                                              const store::UploadProgressFn& on_bytes,
                                              std::stop_token stop, const StreamOptions& options) {
  const std::string sha256 = file.expected_sha256.value_or("");
  if (!file.expected_git_sha1 && options.connections > 1 && file.size > options.segment_size) {
    RangedHubReader reader(hub, file, stop, options);
    store::UploadReadFn read = [&reader](char* out, size_t n) { return reader.Read(out, n); };
    return uploader.UploadStream(bucket, key, read, file.size, sha256, on_bytes, stop);
  }
  HubReader reader(hub, file, stop);
  store::UploadReadFn read = [&reader](char* out, size_t n) { return reader.Read(out, n); };
  return uploader.UploadStream(bucket, key, read, file.size, sha256, on_bytes, stop);
}

Result<std::string> ReadHubFile(const HubOptions& hub, const HubFileSource& file,
                                uint64_t max_bytes, std::stop_token stop) {
  if (file.size > max_bytes) {
    return Error(Reason::InvalidSpec,
                 fmt::format("{}: a regular (non-LFS) file of {} bytes is larger than the {} bytes "
                             "read into memory to hash it",
                             file.path, file.size, max_bytes));
  }
  HubReader reader(hub, file, stop);
  std::string data(static_cast<size_t>(file.size), '\0');
  size_t got = 0;
  for (;;) {
    char extra = 0;
    // One byte past the announced size is read into `extra` so that the end is seen.
    auto n = got < data.size() ? reader.Read(data.data() + got, data.size() - got)
                               : reader.Read(&extra, 1);
    if (!n) {
      return n.error();
    }
    if (*n == 0) {
      break;
    }
    if (got == data.size()) {
      return Error(Reason::ChecksumMismatch,
                   fmt::format("{}: the Hub sent more than the expected {} bytes", file.path,
                               file.size));
    }
    got += *n;
  }
  if (got != data.size()) {
    return Error(Reason::NetworkError,
                 fmt::format("{}: got {} of {} bytes", file.path, got, file.size));
  }
  return data;
}

}  // namespace modelcache::fetch
