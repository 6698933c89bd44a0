#include "store/s3_uploader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>

#include "common/files.h"
#include "common/guard.h"
#include "common/sha256.h"
#include "store/internal/layout.h"
#include "store/sigv4.h"

namespace modelcache::store {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
// Parts are hashed in blocks of this size (the only buffer a file part needs).
constexpr size_t kHashBlock = 1 << 20;
// aws-chunked chunk size for stream PUTs: S3's examples use 64 KiB; any size >= 8 KiB works.
constexpr size_t kChunkSize = 64 << 10;
// Parts of a stream of unknown length: the part size doubles every this many parts, so 10 000
// parts cover about 1000 x min_part_size x 1023 bytes.
constexpr uint64_t kPartsPerDoubling = 1000;


// Reads exactly n bytes at `offset` (short only at end of file).
Result<size_t> PreadFull(int fd, const std::string& path, uint64_t offset, char* out, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::pread(fd, out + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) {
      continue;
    }
    if (r < 0) {
      return Error(Reason::StorageError, "cannot read " + path + ": " + ErrnoMessage(errno));
    }
    if (r == 0) {
      break;
    }
    done += static_cast<size_t>(r);
  }
  return done;
}

bool IsSha256Hex(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

Error ChecksumError(const std::string& what, const std::string& expected,
                    const std::string& actual) {
  return {Reason::ChecksumMismatch,
          fmt::format("{}: sha256 is {}, expected {}", what, actual, expected)};
}

// One part to upload: its bytes come from `read` (a file range or a buffer that `buffer` keeps
// alive).
struct PartJob {
  int number = 0;
  uint64_t size = 0;
  std::function<Result<size_t>(uint64_t offset, char* out, size_t n)> read;
  std::shared_ptr<const std::string> buffer;  // stream parts
};

// One multipart upload: finds or starts it, uploads parts on a pool of workers, completes and
// confirms it. Also counts progress for UploadResult.
class MultipartRun {
 public:
  MultipartRun(S3Client& client, const UploadOptions& options, std::string bucket,
               std::string key, const UploadProgressFn& on_bytes, std::stop_token user_stop)
      : client_(client),
        options_(options),
        bucket_(std::move(bucket)),
        key_(std::move(key)),
        on_bytes_(on_bytes),
        user_stop_(user_stop),
        forward_stop_(user_stop, [this] { stop_.request_stop(); }) {}

  ~MultipartRun() { StopWorkers(); }
  MultipartRun(const MultipartRun&) = delete;
  MultipartRun& operator=(const MultipartRun&) = delete;

  std::string Target() const { return fmt::format("s3://{}/{}", bucket_, key_); }
  std::stop_token stop() const { return stop_.get_token(); }
  bool resumed() const { return resumed_; }

  // Continues the newest unfinished upload of the key (when allowed) or starts one carrying
  // x-amz-meta-sha256 = `sha256` (when known).
  VoidResult Begin(const std::string& sha256, bool allow_resume) {
    if (allow_resume && options_.resume) {
      auto uploads = client_.ListMultipartUploads(bucket_, key_, stop());
      if (!uploads) {
        return uploads.error();
      }
      // The newest upload first (clang-tidy 14 cannot parse the std::ranges::reverse_view of
      // libstdc++ 12 that modernize-loop-convert suggests).
      // NOLINTNEXTLINE(modernize-loop-convert)
      for (auto it = uploads->rbegin(); it != uploads->rend(); ++it) {
        if (it->key != key_) {
          continue;
        }
        auto parts = client_.ListParts(bucket_, key_, it->upload_id, stop());
        if (!parts) {
          // Completed or aborted meanwhile (NoSuchUpload): try the next one, or start anew.
          if (parts.error().message.find("NoSuchUpload") != std::string::npos) {
            continue;
          }
          return parts.error();
        }
        upload_id_ = it->upload_id;
        for (UploadedPart& p : *parts) {
          existing_[p.number] = std::move(p);
        }
        resumed_ = true;
        spdlog::info("{}: resuming multipart upload with {} parts already uploaded", Target(),
                     existing_.size());
        break;
      }
    }
    if (upload_id_.empty()) {
      S3Request create{"CreateMultipartUpload", "POST", bucket_, key_, {{"uploads", ""}},
                       {{"content-type", "application/octet-stream"}}, "", nullptr};
      if (!sha256.empty()) {
        create.headers.emplace_back(fmt::format("x-amz-meta-{}", kSha256MetaKey), sha256);
      }
      auto r = client_.Send(create, stop());
      if (!r) {
        return r.error();
      }
      std::optional<std::string> id = XmlText(r->body, "UploadId");
      if (!id || id->empty()) {
        return Error(Reason::StorageError,
                     fmt::format("S3 CreateMultipartUpload {}: answer has no UploadId", Target()));
      }
      upload_id_ = std::move(*id);
    }
    for (int i = 0; i < std::max(1, options_.parallel_parts); ++i) {
      workers_.emplace_back([this] {
        // The last resort: an exception fails this upload, not the daemon.
        if (!LogExceptions("S3 upload worker", [this] { WorkerLoop(); })) {
          Fail(Error(Reason::Internal, "an S3 upload worker stopped on an exception"));
        }
      });
    }
    return {};
  }

  // Queues a part; blocks while parallel_parts parts are queued or uploading (this bounds the
  // buffers of a stream). False once the run has failed or was stopped.
  bool Submit(PartJob job) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] {
      return failed_ || stop_.stop_requested() ||
             in_flight_ < static_cast<size_t>(std::max(1, options_.parallel_parts));
    });
    if (failed_ || stop_.stop_requested()) {
      return false;
    }
    ++in_flight_;
    queue_.push_back(std::move(job));
    cv_.notify_all();
    return true;
  }

  // Waits for the queued parts; the first error (or Cancelled) if a part failed.
  VoidResult Drain() {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return in_flight_ == 0 || failed_; });
    }
    StopWorkers();
    if (user_stop_.stop_requested()) {
      return Error(Reason::Cancelled, Target() + ": upload cancelled");
    }
    if (first_error_) {
      return *first_error_;
    }
    return {};
  }

  // Records a failure that is not a part's (a read error, a checksum mismatch) and stops the
  // workers.
  void Fail(Error error) {
    std::lock_guard lock(mu_);
    if (!first_error_) {
      first_error_ = std::move(error);
    }
    failed_ = true;
    stop_.request_stop();
    cv_.notify_all();
  }

  // Completes with the parts uploaded or reused, in order.
  VoidResult Complete(int part_count) {
    std::vector<UploadedPart> parts;
    parts.reserve(static_cast<size_t>(part_count));
    for (int n = 1; n <= part_count; ++n) {
      auto it = done_.find(n);
      if (it == done_.end()) {
        return Error(Reason::Internal, fmt::format("{}: part {} was never uploaded", Target(), n));
      }
      parts.push_back(it->second);
    }
    return client_.CompleteMultipartUpload(bucket_, key_, upload_id_, parts, user_stop_);
  }

  // Aborts the upload (with a fresh stop token: this runs because the caller's was requested).
  void Abort() {
    if (upload_id_.empty()) {
      return;
    }
    if (auto r = client_.AbortMultipartUpload(bucket_, key_, upload_id_, {}); !r) {
      spdlog::warn("{}: abort of multipart upload failed: {}", Target(), r.error().message);
    }
  }

  // Counts bytes sent and reports them (serialised).
  void Sent(uint64_t n) {
    bytes_sent_.fetch_add(n);
    Progress(n);
  }
  void Progress(uint64_t n) {
    if (on_bytes_) {
      std::lock_guard lock(progress_mu_);
      on_bytes_(n);
    }
  }

  uint64_t bytes_sent() const { return bytes_sent_.load(); }
  int parts_reused() const { return parts_reused_.load(); }

 private:
  void StopWorkers() {
    {
      std::lock_guard lock(mu_);
      closing_ = true;
      cv_.notify_all();
    }
    for (std::thread& t : workers_) {
      t.join();
    }
    workers_.clear();
  }

  void WorkerLoop() {
    for (;;) {
      PartJob job;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return closing_ || !queue_.empty(); });
        if (queue_.empty()) {
          return;
        }
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      VoidResult r = failed_ ? VoidResult() : UploadOne(job);
      std::lock_guard lock(mu_);
      if (!r && !failed_) {
        first_error_ = r.error();
        failed_ = true;
        stop_.request_stop();
      }
      --in_flight_;
      cv_.notify_all();
    }
  }

  VoidResult UploadOne(const PartJob& job) {
    // The part's digests: the sha256 when the payload is signed (S3 checks it), else the MD5
    // for Content-MD5 (S3 checks that). The MD5 is also what a part uploaded by an earlier run
    // is recognised by (its ETag), so it is computed for those too.
    auto listed = existing_.find(job.number);
    const bool reusable = listed != existing_.end() && listed->second.size == job.size;
    std::optional<Hasher> md5;
    if (!options_.sign_payload || reusable) {
      md5.emplace(Hasher::Kind::Md5);
    }
    std::optional<Hasher> sha256;
    if (options_.sign_payload) {
      sha256.emplace(Hasher::Kind::Sha256);
    }
    if (job.buffer) {
      if (md5) {
        md5->Update(job.buffer->data(), job.buffer->size());
      }
      if (sha256) {
        sha256->Update(*job.buffer);
      }
    } else {
      std::string block(static_cast<size_t>(std::min<uint64_t>(kHashBlock, job.size)), '\0');
      for (uint64_t off = 0; off < job.size;) {
        if (stop_.stop_requested()) {
          return Error(Reason::Cancelled, Target() + ": cancelled");
        }
        size_t want = static_cast<size_t>(std::min<uint64_t>(block.size(), job.size - off));
        auto n = job.read(off, block.data(), want);
        if (!n) {
          return n.error();
        }
        if (*n != want) {
          return Error(Reason::StorageError,
                       fmt::format("{}: source ended inside part {}", Target(), job.number));
        }
        if (md5) {
          md5->Update(block.data(), want);
        }
        if (sha256) {
          sha256->Update(block.data(), want);
        }
        off += want;
      }
    }
    std::string md5_raw = md5 ? md5->FinalRaw() : std::string();

    if (reusable && listed->second.etag == HexEncode(md5_raw)) {
      parts_reused_.fetch_add(1);
      Progress(job.size);
      std::lock_guard lock(mu_);
      done_[job.number] = listed->second;
      return {};
    }

    S3Body body;
    body.source.size = job.size;
    body.source.read = [this, &job](uint64_t offset, char* out, size_t n) -> Result<size_t> {
      auto r = job.read(offset, out, n);
      if (r) {
        Sent(*r);
      }
      return r;
    };
    if (sha256) {
      body.payload_hash = sha256->FinalHex();
    }
    S3Request request{"UploadPart",
                      "PUT",
                      bucket_,
                      key_,
                      {{"partNumber", std::to_string(job.number)}, {"uploadId", upload_id_}},
                      {{"content-type", "application/octet-stream"}},
                      "",
                      &body};
    if (!options_.sign_payload) {
      request.headers.emplace_back("content-md5", Base64(md5_raw));
    }
    auto r = client_.Send(request, stop());
    if (!r) {
      return r.error();
    }
    UploadedPart part{job.number, "", job.size};
    if (const std::string* etag = r->Header("etag")) {
      part.etag = *etag;
    }
    if (part.etag.size() >= 2 && part.etag.front() == '"' && part.etag.back() == '"') {
      part.etag = part.etag.substr(1, part.etag.size() - 2);
    }
    if (part.etag.empty()) {
      return Error(Reason::StorageError,
                   fmt::format("S3 UploadPart {} part {}: answer has no ETag", Target(), job.number));
    }
    std::lock_guard lock(mu_);
    done_[job.number] = std::move(part);
    return {};
  }

  S3Client& client_;
  const UploadOptions& options_;
  const std::string bucket_;
  const std::string key_;
  const UploadProgressFn& on_bytes_;
  std::stop_token user_stop_;
  std::stop_source stop_;  // requested on the caller's stop or the first failure
  std::stop_callback<std::function<void()>> forward_stop_;

  std::string upload_id_;
  bool resumed_ = false;
  std::map<int, UploadedPart> existing_;  // from ListParts; read-only once workers run

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<PartJob> queue_;
  size_t in_flight_ = 0;
  bool closing_ = false;
  std::atomic<bool> failed_{false};
  std::optional<Error> first_error_;
  std::map<int, UploadedPart> done_;
  std::vector<std::thread> workers_;

  std::mutex progress_mu_;
  std::atomic<uint64_t> bytes_sent_{0};
  std::atomic<int> parts_reused_{0};
};

}  // namespace

S3Uploader::S3Uploader(S3Client& client, UploadOptions options)
    : client_(client), options_(options) {
  options_.parallel_parts = std::max(1, options_.parallel_parts);
  options_.min_part_size = std::max(options_.min_part_size, internal::kS3MinPartSize);
}

uint64_t S3Uploader::PartSizeFor(uint64_t size) const {
  uint64_t part = options_.min_part_size;
  if (size == kUnknownSize) {
    return part;
  }
  uint64_t needed = (size + internal::kS3MaxParts - 1) / internal::kS3MaxParts;
  needed = (needed + kMiB - 1) / kMiB * kMiB;
  return std::max(part, needed);
}

namespace {

// Part boundaries of a stream of unknown length: min_part_size for the first kPartsPerDoubling
// parts, then doubling.
uint64_t StreamPartSize(uint64_t base, int number) {
  uint64_t doublings = static_cast<uint64_t>(number - 1) / kPartsPerDoubling;
  return base << std::min<uint64_t>(doublings, 20);
}

// HeadObject confirmation: the object exists with `size` bytes and, when `sha256` is known,
// carries it as metadata. `metadata_mismatch` tells the caller a retry from scratch may help.
Result<ObjectInfo> Confirm(S3Client& client, const std::string& bucket, const std::string& key,
                           uint64_t size, const std::string& sha256, bool* metadata_mismatch,
                           std::stop_token stop) {
  *metadata_mismatch = false;
  auto head = client.HeadObject(bucket, key, stop);
  if (!head) {
    return head.error();
  }
  std::string target = fmt::format("s3://{}/{}", bucket, key);
  if (!*head) {
    return Error(Reason::StorageError, target + ": HeadObject finds no object after the upload");
  }
  if ((*head)->size != size) {
    return Error(Reason::StorageError,
                 fmt::format("{}: HeadObject reports {} bytes after uploading {}", target,
                             (*head)->size, size));
  }
  std::string meta = (*head)->Meta(kSha256MetaKey);
  if (!sha256.empty() && meta != sha256) {
    *metadata_mismatch = true;
    return Error(Reason::StorageError,
                 fmt::format("{}: HeadObject reports x-amz-meta-{} '{}', expected {}", target,
                             kSha256MetaKey, meta, sha256));
  }
  return std::move(**head);
}

// skip_existing: the object already at `key` when it has `size` bytes and carries `sha256` as
// metadata (an earlier upload of the same bytes), as a skipped upload's result; else nullopt.
Result<std::optional<UploadResult>> FindExisting(S3Client& client, const std::string& bucket,
                                                 const std::string& key, uint64_t size,
                                                 const std::string& sha256, std::stop_token stop) {
  auto head = client.HeadObject(bucket, key, stop);
  if (!head) {
    return head.error();
  }
  if (!*head || (*head)->size != size || (*head)->Meta(kSha256MetaKey) != sha256) {
    return std::optional<UploadResult>();
  }
  UploadResult result;
  result.object = std::move(**head);
  result.sha256_hex = sha256;
  result.size = size;
  result.skipped = true;
  return std::optional<UploadResult>(std::move(result));
}

}  // namespace

Result<UploadResult> S3Uploader::UploadFile(const std::string& bucket, const std::string& key,
                                            const std::string& path,
                                            const std::string& expected_sha256_hex,
                                            const UploadProgressFn& on_bytes,
                                            std::stop_token stop) {
  const std::string target = fmt::format("s3://{}/{}", bucket, key);
  if (!expected_sha256_hex.empty() && !IsSha256Hex(expected_sha256_hex)) {
    return Error(Reason::InvalidSpec,
                 fmt::format("upload of {} to {}: expected sha256 '{}' is not 64 lower-case hex "
                             "digits",
                             path, target, expected_sha256_hex));
  }
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return Error(Reason::StorageError, "cannot open " + path + ": " + ErrnoMessage(errno));
  }
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return Error(Reason::StorageError, "cannot stat " + path + ": " + ErrnoMessage(errno));
  }
  const auto size = static_cast<uint64_t>(st.st_size);

  if (options_.skip_existing && !expected_sha256_hex.empty()) {
    auto existing = FindExisting(client_, bucket, key, size, expected_sha256_hex, stop);
    if (!existing) {
      return existing.error();
    }
    if (*existing) {
      return std::move(**existing);
    }
  }

  UploadResult result;
  result.size = size;

  if (size <= options_.single_put_threshold) {
    std::string body(static_cast<size_t>(size), '\0');
    auto n = PreadFull(fd, path, 0, body.data(), body.size());
    if (!n) {
      return n.error();
    }
    if (*n != size) {
      return Error(Reason::StorageError, path + " shrank while being read");
    }
    std::string sha256 = Sha256Hex(body);
    if (!expected_sha256_hex.empty() && sha256 != expected_sha256_hex) {
      return ChecksumError(path, expected_sha256_hex, sha256);
    }
    std::string md5 = Md5Raw(body);
    S3Request put{"PutObject", "PUT", bucket, key, {},
                  {{"content-type", "application/octet-stream"},
                   {"content-md5", Base64(md5)},
                   {fmt::format("x-amz-meta-{}", kSha256MetaKey), sha256}},
                  "", nullptr};
    // The body is signed as it is (S3Client hashes it), or sent UNSIGNED-PAYLOAD.
    S3Body unsigned_body;
    if (!options_.sign_payload) {
      unsigned_body.source = {size, [&body](uint64_t off, char* out, size_t len) -> Result<size_t> {
                                std::memcpy(out, body.data() + off, len);
                                return len;
                              }};
      put.streamed = &unsigned_body;
    } else {
      put.body = body;
    }
    auto r = client_.Send(put, stop);
    if (!r) {
      return r.error();
    }
    result.bytes_sent = size;
    if (on_bytes) {
      on_bytes(size);
    }
    bool mismatch = false;
    auto info = Confirm(client_, bucket, key, size, sha256, &mismatch, stop);
    if (!info) {
      return info.error();
    }
    result.object = std::move(*info);
    result.sha256_hex = sha256;
    return result;
  }

  // The object's sha256 goes into the upload's metadata, so it must be known first.
  std::string sha256 = expected_sha256_hex;
  if (sha256.empty()) {
    auto h = Sha256File(path);
    if (!h) {
      return h.error();
    }
    sha256 = *h;
  }
  // The file is read once, in order, like a stream: each part is read into its buffer (at most
  // parallel_parts of them), the whole file's sha256 is checked as the bytes pass, and the part
  // is hashed and sent from memory, so no byte is read from the file twice.
  for (int round = 0; round < 2; ++round) {
    uint64_t offset = 0;
    UploadReadFn read = [&](char* out, size_t n) -> Result<size_t> {
      auto r = PreadFull(fd, path, offset, out, n);
      if (r) {
        offset += *r;
      }
      return r;
    };
    bool foreign = false;
    auto r = StreamImpl(bucket, key, read, size, sha256, on_bytes, stop, round == 0, &foreign);
    if (!r && foreign && round == 0) {
      // The upload we continued had been started for other content under this key: its
      // metadata is not ours. Upload once more from scratch.
      spdlog::warn("{}: resumed upload carried other metadata; uploading again", target);
      continue;
    }
    if (!r && r.error().reason == Reason::ChecksumMismatch) {
      return Error(Reason::ChecksumMismatch, path + ": " + r.error().message);
    }
    return r;
  }
  return Error(Reason::Internal, target + ": upload retried without success");
}

Result<UploadResult> S3Uploader::UploadStream(const std::string& bucket, const std::string& key,
                                              const UploadReadFn& read, uint64_t size,
                                              const std::string& expected_sha256_hex,
                                              const UploadProgressFn& on_bytes,
                                              std::stop_token stop) {
  const std::string target = fmt::format("s3://{}/{}", bucket, key);
  if (!expected_sha256_hex.empty() && !IsSha256Hex(expected_sha256_hex)) {
    return Error(Reason::InvalidSpec,
                 fmt::format("upload to {}: expected sha256 '{}' is not 64 lower-case hex digits",
                             target, expected_sha256_hex));
  }
  if (options_.skip_existing && !expected_sha256_hex.empty() && size != kUnknownSize) {
    auto existing = FindExisting(client_, bucket, key, size, expected_sha256_hex, stop);
    if (!existing) {
      return existing.error();
    }
    if (*existing) {
      return std::move(**existing);
    }
  }
  bool foreign = false;
  return StreamImpl(bucket, key, read, size, expected_sha256_hex, on_bytes, stop, true, &foreign);
}

Result<UploadResult> S3Uploader::StreamImpl(const std::string& bucket, const std::string& key,
                                            const UploadReadFn& read, uint64_t size,
                                            const std::string& expected_sha256_hex,
                                            const UploadProgressFn& on_bytes,
                                            std::stop_token stop, bool allow_resume,
                                            bool* foreign) {
  const std::string target = fmt::format("s3://{}/{}", bucket, key);
  const bool known = size != kUnknownSize;
  Hasher whole(Hasher::Kind::Sha256);
  uint64_t total = 0;
  // Fills `buffer` up to its size; stops early only at the end of the stream.
  auto fill = [&](std::string& buffer) -> Result<size_t> {
    size_t got = 0;
    while (got < buffer.size()) {
      if (stop.stop_requested()) {
        return Error(Reason::Cancelled, target + ": upload cancelled");
      }
      auto n = read(buffer.data() + got, buffer.size() - got);
      if (!n) {
        return n.error();
      }
      if (*n == 0) {
        break;
      }
      if (*n > buffer.size() - got) {
        return Error(Reason::Internal, target + ": stream read returned more than asked");
      }
      whole.Update(buffer.data() + got, *n);
      got += *n;
      total += *n;
      if (known && total > size) {
        return Error(Reason::ChecksumMismatch,
                     fmt::format("{}: stream is longer than the announced {} bytes", target, size));
      }
    }
    buffer.resize(got);
    return got;
  };
  auto check_end = [&]() -> Result<std::string> {
    if (known && total != size) {
      return Error(Reason::ChecksumMismatch,
                   fmt::format("{}: stream ended after {} of the announced {} bytes", target,
                               total, size));
    }
    std::string sha256 = whole.FinalHex();
    if (!expected_sha256_hex.empty() && sha256 != expected_sha256_hex) {
      return ChecksumError(target, expected_sha256_hex, sha256);
    }
    return sha256;
  };

  const uint64_t first_part = known ? PartSizeFor(size) : options_.min_part_size;
  UploadResult result;

  // Small streams (known to fit, or ending within the first part): one aws-chunked PUT.
  const bool single = known && size <= options_.single_put_threshold;
  const auto first_size = static_cast<size_t>(single ? size : first_part);
  std::string first(first_size, '\0');
  auto got = fill(first);
  if (!got) {
    return got.error();
  }
  // A full first part of a known size may be the whole stream.
  const bool ended = single || *got < first_size || (known && total == size);
  if (ended) {
    std::string probe(1, '\0');
    auto more = fill(probe);  // must be the end (length checks happen in fill / check_end)
    if (!more) {
      return more.error();
    }
    if (*more != 0) {
      return Error(Reason::ChecksumMismatch,
                   fmt::format("{}: stream is longer than the announced {} bytes", target, size));
    }
    auto sha256 = check_end();
    if (!sha256) {
      return sha256.error();
    }
    Hasher md5(Hasher::Kind::Md5);
    md5.Update(first.data(), first.size());
    S3Body body;
    body.chunk_size = kChunkSize;
    body.source = {first.size(), [&first](uint64_t off, char* out, size_t len) -> Result<size_t> {
                     std::memcpy(out, first.data() + off, len);
                     return len;
                   }};
    S3Request put{"PutObject", "PUT", bucket, key, {},
                  {{"content-type", "application/octet-stream"},
                   {"content-md5", Base64(md5.FinalRaw())},
                   {fmt::format("x-amz-meta-{}", kSha256MetaKey), *sha256}},
                  "", &body};
    // radosgw 16 refuses an aws-chunked body carrying no data (XAmzContentSHA256Mismatch): an
    // empty object goes as a plain signed PUT.
    if (first.empty()) {
      put.streamed = nullptr;
    }
    auto r = client_.Send(put, stop);
    if (!r) {
      return r.error();
    }
    result.bytes_sent = first.size();
    if (on_bytes) {
      on_bytes(first.size());
    }
    bool mismatch = false;
    auto info = Confirm(client_, bucket, key, first.size(), *sha256, &mismatch, stop);
    if (!info) {
      return info.error();
    }
    result.object = std::move(*info);
    result.sha256_hex = std::move(*sha256);
    result.size = total;
    return result;
  }

  // Multipart: parts are buffered (the stream cannot be re-read), at most parallel_parts of them.
  // A stream cannot be replayed either, so a resumed upload whose metadata turns out foreign is
  // reported, not redone.
  MultipartRun run(client_, options_, bucket, key, on_bytes, stop);
  if (auto r = run.Begin(expected_sha256_hex, allow_resume); !r) {
    return r.error();
  }
  auto fail = [&](Error error) -> Error {
    run.Fail(error);
    (void)run.Drain();
    if (error.reason == Reason::ChecksumMismatch ||
        (error.reason == Reason::Cancelled && options_.abort_on_stop)) {
      run.Abort();
    }
    return error;
  };

  int parts = 0;
  auto submit = [&](std::string&& data) {
    ++parts;
    auto buffer = std::make_shared<const std::string>(std::move(data));
    PartJob job;
    job.number = parts;
    job.size = buffer->size();
    job.buffer = buffer;
    job.read = [buffer](uint64_t off, char* out, size_t len) -> Result<size_t> {
      std::memcpy(out, buffer->data() + off, len);
      return len;
    };
    return run.Submit(std::move(job));
  };
  bool submitted = submit(std::move(first));
  while (submitted) {
    uint64_t next_size = known ? first_part : StreamPartSize(first_part, parts + 1);
    if (known) {
      next_size = std::min<uint64_t>(next_size, size - std::min(size, total));
    }
    if (known && next_size == 0) {
      std::string probe(1, '\0');
      auto more = fill(probe);
      if (!more) {
        return fail(more.error());
      }
      break;
    }
    if (parts + 1 > static_cast<int>(internal::kS3MaxParts)) {
      return fail(Error(Reason::StorageError,
                        fmt::format("{}: stream needs more than {} parts", target, internal::kS3MaxParts)));
    }
    std::string data(static_cast<size_t>(next_size), '\0');
    auto n = fill(data);
    if (!n) {
      return fail(n.error());
    }
    if (*n == 0) {
      break;
    }
    bool last = *n < next_size;
    submitted = submit(std::move(data));
    if (last) {
      break;
    }
  }
  if (!submitted) {
    // A part failed (or the caller stopped): the stream was not read to its end.
    VoidResult r = run.Drain();
    Error error = r ? Error(Reason::Internal, target + ": upload stopped without an error")
                    : r.error();
    if (error.reason == Reason::ChecksumMismatch ||
        (error.reason == Reason::Cancelled && options_.abort_on_stop)) {
      run.Abort();
    }
    return error;
  }
  auto sha256 = check_end();
  if (!sha256) {
    return fail(sha256.error());
  }
  if (auto r = run.Drain(); !r) {
    if (r.error().reason == Reason::Cancelled && options_.abort_on_stop) {
      run.Abort();
    }
    return r.error();
  }
  if (auto r = run.Complete(parts); !r) {
    return r.error();
  }
  bool mismatch = false;
  auto info = Confirm(client_, bucket, key, total, expected_sha256_hex, &mismatch, stop);
  if (!info) {
    *foreign = mismatch && run.resumed();
    return info.error();
  }
  result.object = std::move(*info);
  result.sha256_hex = std::move(*sha256);
  result.size = total;
  result.multipart = true;
  result.parts = parts;
  result.parts_reused = run.parts_reused();
  result.bytes_sent = run.bytes_sent();
  return result;
}

}  // namespace modelcache::store
