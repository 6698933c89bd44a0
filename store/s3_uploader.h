#pragma once

// Verified, parallel, resumable uploads of files and byte streams into S3 through bounded memory.
//
// Shape of an upload:
//   - size <= single_put_threshold: one PutObject. Streams of that size are sent aws-chunked
//     (x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD, every chunk signed).
//   - larger: a multipart upload. The part size is min_part_size, grown (in whole MiB) so the
//     object fits in S3's 10 000 parts; for a stream of unknown length it grows with the part
//     number instead. Up to parallel_parts parts are in flight, each in its buffer (a file is
//     read once, in order, like a stream), so memory stays under (parallel_parts + 1) x
//     part_size whatever the object size.
//   - every part is checked by S3 against the bytes it received: by default its sha256 is
//     signed (x-amz-content-sha256; S3 answers XAmzContentSHA256Mismatch otherwise), or, without
//     sign_payload, it carries Content-MD5 (UNSIGNED-PAYLOAD). radosgw 16 checks both; sha256
//     is the cheaper here (SHA extensions: ~1.7 GB/s against MD5's ~0.5 GB/s per core). Failed parts are retried by S3Client (500, 503 SlowDown, network errors)
//     with exponential backoff and jitter, re-reading the part from the file or its buffer.
//   - the whole object's sha256 is computed as the bytes pass and compared with the expected
//     one; a mismatch aborts the multipart upload and fails with ChecksumMismatch. It is stored
//     as user metadata (x-amz-meta-sha256, see kSha256MetaKey), so readers and dedup can
//     check objects without reading them.
//   - the result is confirmed with HeadObject (size and x-amz-meta-sha256), never with the
//     ETag of CompleteMultipartUpload (radosgw sends it empty).
//
// Resume: no local state. A new multipart upload first looks for an unfinished one of the
// same key (ListMultipartUploads, newest first), lists its parts and re-uploads only the
// parts that are missing or whose size or MD5 (the part ETag) differs from the local bytes.
// Because part boundaries are a pure function of the object size (or of the part number for
// unknown lengths), a restarted process finds the same parts. If the resumed upload turns out
// to carry other metadata (another content under the same key), the finished object fails the
// HeadObject check and the upload is done once more from scratch.
//
// Cancel: when `stop` is requested, in-flight parts are cut short, the multipart upload is
// aborted (unless abort_on_stop is false, which leaves it to be resumed) and Cancelled is
// returned. Any other failure leaves the multipart upload in place to be resumed; buckets
// should carry an AbortIncompleteMultipartUpload lifecycle rule for the ones never resumed.
//
// Errors: StorageError with the S3 code (from S3Client), NetworkError after retries, Cancelled,
// ChecksumMismatch (the bytes did not hash to the expected sha256, or the stream's length
// differed from the announced size), and StorageError when a local file cannot be read.
//
// Thread-safety: an S3Uploader may run several uploads at once from different threads; each
// upload uses its own worker threads. The S3Client must outlive the uploader.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <stop_token>
#include <string>

#include "common/result.h"
#include "store/s3_client.h"

namespace modelcache::store {

// The user-metadata name (without x-amz-meta-) holding the object's lower-case hex sha256.
inline constexpr std::string_view kSha256MetaKey = "sha256";

// Stream length not known in advance.
inline constexpr uint64_t kUnknownSize = std::numeric_limits<uint64_t>::max();

struct UploadOptions {
  // Parts in flight at once (threads per upload).
  int parallel_parts = 8;
  // Smallest part size; S3 refuses parts under 5 MiB except the last.
  uint64_t min_part_size = 8ull << 20;
  // Objects up to this size go in one PUT.
  uint64_t single_put_threshold = 16ull << 20;
  // Sign the payloads of parts and file PUTs (x-amz-content-sha256 = their sha256, checked by
  // S3); false: UNSIGNED-PAYLOAD with Content-MD5 (checked by S3 as well). Small file PUTs carry
  // Content-MD5 either way; stream PUTs are always signed, aws-chunked.
  bool sign_payload = true;
  // Look for an unfinished multipart upload of the same key and continue it.
  bool resume = true;
  // Abort the multipart upload when `stop` is requested (false: leave it to be resumed).
  bool abort_on_stop = true;
  // When the expected sha256 is known and the object already exists with the same size and
  // x-amz-meta-sha256, do not upload it again.
  bool skip_existing = true;
};

struct UploadResult {
  ObjectInfo object;        // as confirmed by HeadObject
  std::string sha256_hex;   // of the bytes uploaded (equal to the expected one when given)
  uint64_t size = 0;
  bool skipped = false;     // already present (skip_existing)
  bool multipart = false;
  int parts = 0;            // parts of the object (0 for a single PUT)
  int parts_reused = 0;     // parts found already uploaded by an earlier, interrupted run
  uint64_t bytes_sent = 0;  // body bytes sent by this run, retries included
};

// Fills `buffer` with up to `size` bytes and returns how many; 0 means the end of the stream.
// May fill less than asked before the end. Called from one thread at a time.
using UploadReadFn = std::function<Result<size_t>(char* buffer, size_t size)>;

// Progress: called with the number of bytes just sent (a part's retry may count again), and with
// the size of each part found already uploaded by an earlier run. Calls are serialised by the
// uploader, possibly from its worker threads.
using UploadProgressFn = std::function<void(uint64_t bytes)>;

class S3Uploader {
 public:
  explicit S3Uploader(S3Client& client, UploadOptions options = {});

  // Uploads the file at `path` to s3://bucket/key. `expected_sha256_hex` is the file's sha256
  // if known ("" otherwise): the bytes read are checked against it, and it is what
  // skip_existing compares.
  Result<UploadResult> UploadFile(const std::string& bucket, const std::string& key,
                                  const std::string& path, const std::string& expected_sha256_hex,
                                  const UploadProgressFn& on_bytes = {}, std::stop_token stop = {});

  // Uploads the bytes `read` yields. A known size up to single_put_threshold, or a stream ending
  // within its first part, goes in one aws-chunked PUT; anything longer is multipart. `size` is the exact length when known (a different length
  // fails with ChecksumMismatch and nothing is published) or kUnknownSize. Without an
  // expected sha256 the object gets no x-amz-meta-sha256 when it goes multipart (metadata is
  // fixed when the upload starts); UploadResult::sha256_hex still reports it.
  Result<UploadResult> UploadStream(const std::string& bucket, const std::string& key,
                                    const UploadReadFn& read, uint64_t size,
                                    const std::string& expected_sha256_hex,
                                    const UploadProgressFn& on_bytes = {},
                                    std::stop_token stop = {});

  // The part size used for an object of `size` bytes (kUnknownSize: the first part's size).
  uint64_t PartSizeFor(uint64_t size) const;

  const UploadOptions& options() const { return options_; }

 private:
  // UploadStream without the skip_existing check; `allow_resume` false starts a new upload.
  // *foreign is set when the object fails the metadata check after continuing an upload that
  // had been started for other content (the caller may then start over).
  Result<UploadResult> StreamImpl(const std::string& bucket, const std::string& key,
                                  const UploadReadFn& read, uint64_t size,
                                  const std::string& expected_sha256_hex,
                                  const UploadProgressFn& on_bytes, std::stop_token stop,
                                  bool allow_resume, bool* foreign);

  S3Client& client_;
  UploadOptions options_;
};

}  // namespace modelcache::store
