#pragma once

// A minimal S3 client over common/http_client.h: the object and multipart-upload calls the
// artifact store needs, signed with SigV4 (signed payloads: x-amz-content-sha256 is the hex
// sha256 of the body, which S3 itself checks against the bytes it receives).
//
// Errors: every failed call is StorageError, "S3 <OP> s3://bucket/key: HTTP <status> <Code>:
// <Message>", where Code and Message come from the XML error body (the S3 code, e.g.
// AccessDenied, NoSuchBucket, SignatureDoesNotMatch, RequestTimeTooSkewed). Transport failures
// stay NetworkError and a stop request Cancelled. Credentials never appear in errors.
//
// Retries: the answers IsRetriableS3Error names (and NetworkError) are retried up to
// max_attempts with exponential backoff (base_backoff doubling, capped at max_backoff, or the
// server's Retry-After). Every call here is idempotent for S3 (a repeated PUT writes the same
// bytes; Complete of a completed upload answers NoSuchUpload, which is reported).
//
// Thread-safe: calls share only immutable configuration, so parts may be uploaded in parallel.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/http_client.h"
#include "common/result.h"
#include "store/aws_config.h"
#include "store/sigv4.h"

namespace modelcache::store {

struct S3ClientOptions {
  // Signing time; the wall clock unless a test fixes it.
  std::function<std::chrono::system_clock::time_point()> now;
  // Waits between retries; by default sleeps, returning early when `stop` is requested.
  std::function<void(std::chrono::milliseconds, std::stop_token)> sleep;
  int max_attempts = 5;
  std::chrono::milliseconds base_backoff{200};
  std::chrono::milliseconds max_backoff{10'000};
  // Each backoff wait is drawn uniformly from [(1 - jitter) * d, d], so parallel parts refused
  // together (SlowDown) do not come back together. A server's Retry-After is waited as given.
  double jitter = 0.5;
  TlsOptions tls;
};

// How a single PUT proves its content besides the signed payload hash.
enum class PutChecksum {
  ContentMd5,  // Content-MD5: every S3 implementation checks it (radosgw 16 included)
  Sha256,      // x-amz-checksum-sha256 (flexible checksums; AWS, recent radosgw, MinIO)
};

// User metadata to store with an object (x-amz-meta-<name>): names lower-case, without the
// prefix, values ASCII.
using ObjectMetadata = std::map<std::string, std::string>;

struct ObjectInfo {
  uint64_t size = 0;
  std::string etag;             // as sent, quotes removed
  std::string checksum_sha256;  // base64, when the object was stored with one
  std::string last_modified;
  ObjectMetadata metadata;
  // The value of user metadata `name` (lower-case), or "".
  std::string Meta(std::string_view name) const;
};

// An unfinished multipart upload (ListMultipartUploads).
struct MultipartUploadInfo {
  std::string key;
  std::string upload_id;
  std::string initiated;  // ISO 8601, as S3 sends it (sorts by time)
};

// A request body read while it is sent, for large parts and streams (see HttpBodySource).
struct S3Body {
  HttpBodySource source;
  // x-amz-content-sha256: the hex sha256 of the body (S3 checks it) or kUnsignedPayload.
  std::string payload_hash = std::string(kUnsignedPayload);
  // > 0: sent aws-chunked (x-amz-content-sha256 STREAMING-AWS4-HMAC-SHA256-PAYLOAD) in chunks of
  // this many bytes, each signed and checked by S3; payload_hash is then not used. The request
  // gets content-encoding aws-chunked and x-amz-decoded-content-length.
  size_t chunk_size = 0;
};

// A request the typed calls do not cover (the uploader builds its own): sent signed, retried and
// mapped to errors exactly like them.
struct S3Request {
  std::string op;  // the S3 operation name, for messages ("UploadPart")
  std::string method;
  std::string bucket;
  std::string key;
  std::vector<std::pair<std::string, std::string>> query;
  HttpHeaders headers;  // lower-case names; host and the signature headers are added
  std::string body;     // a signed payload, unless `streamed` is set
  const S3Body* streamed = nullptr;
};

struct ListedObject {
  std::string key;
  uint64_t size = 0;
  std::string etag;
};

struct ListPage {
  std::vector<ListedObject> objects;
  std::vector<std::string> common_prefixes;  // with a delimiter only
  // Pass back to get the next page; empty on the last page.
  std::string next_continuation_token;
};

struct UploadedPart {
  int number = 0;
  std::string etag;  // quotes removed
  uint64_t size = 0;
};

// An inclusive byte range; `last` empty means to the end of the object.
struct ByteRange {
  uint64_t first = 0;
  std::optional<uint64_t> last;
};

class S3Client {
 public:
  explicit S3Client(AwsConfig config, S3ClientOptions options = {});

  VoidResult PutObject(const std::string& bucket, const std::string& key, std::string_view body,
                       PutChecksum checksum = PutChecksum::ContentMd5, std::stop_token stop = {},
                       const ObjectMetadata& metadata = {});
  // The whole object, or `range` of it (S3 answers 206).
  Result<std::string> GetObject(const std::string& bucket, const std::string& key,
                                std::optional<ByteRange> range = std::nullopt,
                                std::stop_token stop = {});
  // nullopt when the object does not exist (404).
  Result<std::optional<ObjectInfo>> HeadObject(const std::string& bucket, const std::string& key,
                                               std::stop_token stop = {});
  // Deleting a missing object succeeds, as in S3.
  VoidResult DeleteObject(const std::string& bucket, const std::string& key,
                          std::stop_token stop = {});
  // One page of keys under `prefix`, in key order. `delimiter` "/" groups deeper keys into
  // common_prefixes.
  Result<ListPage> ListObjectsV2(const std::string& bucket, const std::string& prefix,
                                 const std::string& continuation_token = "",
                                 const std::string& delimiter = "", int max_keys = 1000,
                                 std::stop_token stop = {});

  // Server-side copy of a whole object (at most 5 GiB, S3's limit for one CopyObject) with its
  // metadata, or with `replace_metadata` instead when given (x-amz-metadata-directive REPLACE);
  // no data passes through the client. A 200 answer with an <Error> body is a failure.
  VoidResult CopyObject(const std::string& bucket, const std::string& source_key,
                        const std::string& key, std::stop_token stop = {},
                        const ObjectMetadata* replace_metadata = nullptr);

  // Returns the upload id. `metadata` is stored with the completed object.
  Result<std::string> CreateMultipartUpload(const std::string& bucket, const std::string& key,
                                            std::stop_token stop = {},
                                            const ObjectMetadata& metadata = {});
  // Parts are numbered 1..10000; every part but the last must be at least 5 MiB. Sent with
  // Content-MD5.
  Result<UploadedPart> UploadPart(const std::string& bucket, const std::string& key,
                                  const std::string& upload_id, int part_number,
                                  std::string_view body, std::stop_token stop = {});
  // Server-side copy of bytes [first, last] of `source_key` (same bucket) as part `part_number`
  // (UploadPartCopy): how objects over CopyObject's 5 GiB are copied. Every part but the last
  // must be at least 5 MiB and none over 5 GiB. A 200 answer with an <Error> body is a failure.
  Result<UploadedPart> UploadPartCopy(const std::string& bucket, const std::string& key,
                                      const std::string& upload_id, int part_number,
                                      const std::string& source_key, uint64_t first,
                                      uint64_t last, std::stop_token stop = {});
  // Every part uploaded so far (all pages), by part number.
  Result<std::vector<UploadedPart>> ListParts(const std::string& bucket, const std::string& key,
                                              const std::string& upload_id,
                                              std::stop_token stop = {});
  // `parts` in ascending part number. Do not rely on the answer's ETag (radosgw may send it
  // empty): confirm the object with HeadObject.
  VoidResult CompleteMultipartUpload(const std::string& bucket, const std::string& key,
                                     const std::string& upload_id,
                                     const std::vector<UploadedPart>& parts,
                                     std::stop_token stop = {});
  VoidResult AbortMultipartUpload(const std::string& bucket, const std::string& key,
                                  const std::string& upload_id, std::stop_token stop = {});

  // Unfinished multipart uploads of keys starting with `prefix` (all pages), in key order and,
  // per key, by initiation time.
  Result<std::vector<MultipartUploadInfo>> ListMultipartUploads(const std::string& bucket,
                                                                const std::string& prefix,
                                                                std::stop_token stop = {});

  // A presigned GET URL of the object (query-string authentication, SigV4, UNSIGNED-PAYLOAD, only
  // host signed), valid for `expires` (1 s to 7 days, S3's limit) from now: any HTTP client can
  // fetch it, with Range, without further headers. The URL is a credential for that object until
  // it expires: never log it whole (its query holds the signature and any session token).
  // InvalidSpec when the endpoint has no scheme.
  Result<std::string> PresignGetObject(const std::string& bucket, const std::string& key,
                                       std::chrono::seconds expires) const;

  // Sends `request`: a 2xx answer (or 404 to a HEAD) is returned, anything else is an error as
  // described at the top; retried likewise (a streamed body is read again from offset 0).
  Result<HttpResponse> Send(const S3Request& request, std::stop_token stop = {}) const;

  const AwsConfig& config() const { return config_; }

 private:
  struct Call;
  // Where a request for `key` in `bucket` goes: path-style or virtual-hosted per the config.
  struct Target {
    std::string scheme, host, path;  // path not encoded
  };
  Result<Target> TargetOf(const std::string& bucket, const std::string& key) const;
  Result<HttpResponse> Execute(const Call& call, std::stop_token stop,
                               const S3Body* streamed = nullptr) const;
  Result<HttpResponse> SendOnce(const Call& call, std::stop_token stop,
                                const S3Body* streamed) const;

  AwsConfig config_;
  S3ClientOptions options_;
};

// Minimal XML reading for S3's answers (no XML library is among the project's dependencies):
// the text of the first <tag>…</tag> at or after `from`, entity-decoded (&amp; &lt; &gt; &quot;
// &apos; and numeric references). Tags are matched exactly, without attributes or namespaces
// prefixes, which is all S3 sends. nullopt when absent.
std::optional<std::string> XmlText(std::string_view xml, std::string_view tag, size_t from = 0);
// The inner XML of every <tag>…</tag> element, in order (not nested within each other).
std::vector<std::string_view> XmlElements(std::string_view xml, std::string_view tag);
// Whether an S3 error answer may succeed when repeated: HTTP 500, 502, 503 or 504, or the codes
// SlowDown, InternalError, ServiceUnavailable and RequestTimeout. Any other (NoSuchKey,
// AccessDenied, SignatureDoesNotMatch, …) answers the same again. S3Client retries exactly these,
// and so does the transfer engine for presigned S3 URLs (fetch/s3_pull.h).
bool IsRetriableS3Error(long status, std::string_view code);

// Escapes & < > " ' for element text.
std::string XmlEscape(std::string_view text);

// Base64 (standard alphabet, padded), for Content-MD5 and x-amz-checksum-sha256.
std::string Base64(std::string_view bytes);

}  // namespace modelcache::store
