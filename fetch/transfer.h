#pragma once

// The fetch layer's seam: a Transfer fetches Hub files into local storage. Each file lands in a
// stable `.incomplete` path, resumes from what is already there (Range), is verified (size,
// sha256, git blob sha1), fsynced and only then renamed to its final path, so nothing
// half-written is ever visible. The implementation is fetch::TransferEngine
// (fetch/transfer_engine.h); tests may plug in their own.
//
// The protocol follows huggingface_hub's http_get: GET the /resolve URL with the token and without
// following redirects; a 302/307 to another host (the CDN, a signed URL) is fetched WITHOUT the
// Authorization header, a relative or same-host one with it. A ranged request answered 200 means
// the server ignored Range: the partial data is discarded and the file starts over; 416 means the
// partial data is bogus and is discarded likewise.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/result.h"
#include "fetch/hub_client.h"

namespace modelcache::fetch {

// One file to fetch into the local store.
struct FileTask {
  std::string path;   // path in repo, for messages
  std::string url;    // the /resolve URL (the auth header is sent to the hub host only)
  uint64_t size = 0;  // the expected size (the tree's "size"); verified
  std::optional<std::string> expected_sha256;    // LFS files
  std::optional<std::string> expected_git_sha1;  // regular files
  // Where partial data lives between attempts and restarts (a stable name, so a restart resumes).
  std::string incomplete_path;
  // Renamed here (after fsync) only once verified; its directory is created if needed.
  std::string final_path;
  // Optional: the file's bytes in order, as they are hashed (the data on disk, from the
  // downloader's memory where it still holds it, else read back): `offset` is where `bytes` start.
  // It starts again from 0 whenever the file does (resumed after a restart: the data already on
  // disk first; fetched again after a failed verification or a discarded partial). Called on the
  // Run's thread; an error fails the Run. Bytes handed over are not verified yet: the file is only
  // verified once Run returns it. Not called for a file that is already in place.
  std::function<VoidResult(uint64_t offset, std::string_view bytes)> on_data;
};

struct FileResult {
  std::string path;
  std::string sha256;
  uint64_t size = 0;
  bool downloaded = false;  // false if final_path already existed
};

// Shared with the reconciler, which reads it from another thread for status. Run() never resets
// it: it adds to bytes_done and files_done as bytes arrive and files complete (or are found in
// place). If bytes_total and files_total are both 0 when Run() starts, it sets them to its batch
// (each blob counted once); otherwise they are the caller's, who may seed them and the done
// counters with files it did not hand over (already in the store).
struct TransferProgress {
  // bytes_done counts bytes verified or on disk, including resumed ones; it goes down again when
  // a partial file is discarded (server ignored Range, checksum mismatch). A cancelled Run leaves
  // its partial bytes counted (they stay on disk), so use a fresh TransferProgress per job.
  std::atomic<uint64_t> bytes_total{0}, bytes_done{0};
  std::atomic<int64_t> files_total{0}, files_done{0};
  std::atomic<uint64_t> bytes_per_second{0};  // moving average over the last ~5 s
};

// How a Transfer fetches presigned S3 URLs (a pull of an artifact version, fetch/s3_pull.h): no
// token goes anywhere (the presigned query is the only credential) and there is no Hub to ask for
// a fresh location. An error answer is classified as S3Client classifies its own
// (store::IsRetriableS3Error): 5xx, SlowDown and the like are retried up to max_attempts, any
// other (NoSuchKey, AccessDenied) fails at once as StorageError; both name the host, the HTTP
// status, the S3 code and the file (never the URL's query, which holds the signature).
struct S3PullOptions {
  int max_attempts = 5;  // per request, for transient errors
  // Waits between attempts: base, 2*base, 4*base, ... capped at backoff_cap, each with jitter.
  std::chrono::milliseconds backoff_base{1000};
  std::chrono::milliseconds backoff_cap{30000};
};

// Where a Transfer's files come from: the Hub (endpoint, token, retries) or presigned S3 URLs.
using TransferSource = std::variant<HubOptions, S3PullOptions>;

class Transfer {
 public:
  virtual ~Transfer() = default;
  // Downloads every task, verifies each file, and renames it into place. Files whose final_path
  // exists with the expected size are not fetched again (their sha256 is taken from
  // expected_sha256, or computed if unknown); one with another size is fetched and replaced.
  // Tasks sharing a final_path (identical files at several paths: one blob) are fetched once;
  // the later ones report downloaded = false. bytes_total counts each blob once.
  // Returns one FileResult per task, in order, or the first permanent error:
  //   InsufficientStorage  not enough free space for the bytes still needed (checked before
  //                        writing, per filesystem), or ENOSPC while writing (partial data kept);
  //   ChecksumMismatch     size or digest still wrong after max_attempts (names both digests);
  //   RepoNotFound, RevisionNotFound, Unauthorized  the Hub refused (not retried);
  //   RateLimited, NetworkError  transient failures that outlasted max_attempts;
  //   StorageError         the local filesystem failed otherwise;
  //   Cancelled            `stop` was requested (partial data stays in incomplete_path).
  // Thread-safe; progress may be read concurrently.
  virtual Result<std::vector<FileResult>> Run(const std::vector<FileTask>& tasks,
                                              TransferProgress& progress, std::stop_token stop) = 0;
};

}  // namespace modelcache::fetch
