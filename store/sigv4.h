#pragma once

// AWS Signature Version 4 (header and query authentication, and aws-chunked streaming uploads),
// as S3 verifies it. The canonical URI is encoded the S3 way: every byte of each path segment
// except the unreserved ones is percent-encoded once, '/' is kept, and the path is never
// normalised ("//a/../b" is signed as it stands).
//
// Everything here is a pure function of its inputs (no clock, no environment), so the published
// AWS test vectors can be reproduced exactly. Thread-safe; a ChunkSigner is not (one per upload).

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/http_client.h"

namespace modelcache::store {

struct AwsCredentials {
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  // empty unless temporary credentials
};

// The x-amz-content-sha256 values that are not a payload hash.
inline constexpr std::string_view kUnsignedPayload = "UNSIGNED-PAYLOAD";
inline constexpr std::string_view kStreamingPayload = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
// sha256 of the empty string.
inline constexpr std::string_view kEmptySha256 =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

// Where and when a signature is valid: region, service ("s3") and the signing time.
struct SigningScope {
  std::string region;
  std::string service = "s3";
  std::chrono::system_clock::time_point time;

  // "20150830T123600Z".
  std::string AmzDate() const;
  // "20150830".
  std::string Date() const;
  // "20150830/us-east-1/s3/aws4_request".
  std::string CredentialScope() const;
};

// A request as the signer sees it. `path` and the query names/values are NOT encoded: the signer
// encodes them (and the caller sends the same encoding, see EncodePath/EncodeQuery). `headers`
// must contain host; names may be in any case and repeated (values are then joined with ',').
struct SigningRequest {
  std::string method;
  std::string path = "/";
  std::vector<std::pair<std::string, std::string>> query;
  HttpHeaders headers;
  // Hex sha256 of the body, kUnsignedPayload or kStreamingPayload. It is only hashed into the
  // signature; the caller adds the x-amz-content-sha256 header (S3 requires it) to `headers`.
  std::string payload_hash = std::string(kEmptySha256);
};

struct SignedRequest {
  // The headers the signer added and the request must carry: x-amz-date, x-amz-security-token
  // (with a session token) and authorization, in that order.
  HttpHeaders headers;
  std::string canonical_request;
  std::string string_to_sign;
  std::string signature;       // lower-case hex
  std::string signed_headers;  // "host;x-amz-date"
};

// SigV4 URI encoding: unreserved characters (A-Z a-z 0-9 - . _ ~) as they are, every other byte as
// %XX with upper-case hex; '/' kept only when `keep_slash`.
std::string SigV4Encode(std::string_view s, bool keep_slash);

// The canonical URI of an S3 path ("/bucket/a b" -> "/bucket/a%20b"); also what goes on the wire.
std::string EncodePath(std::string_view path);

// The canonical query string: names and values encoded, sorted by name then value, joined with
// '&'; a parameter without value is "name=". Also what goes on the wire.
std::string EncodeQuery(const std::vector<std::pair<std::string, std::string>>& query);

// HMAC-SHA256 (raw 32 bytes) and lower-case hex.
std::string HmacSha256(std::string_view key, std::string_view data);
std::string HexEncode(std::string_view bytes);

// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request").
std::string DeriveSigningKey(std::string_view secret, const SigningScope& scope);

// Signs with the Authorization header. Adds x-amz-date (and x-amz-security-token) to the signed
// headers; the request's own headers are not modified.
SignedRequest SignRequest(const SigningRequest& request, const AwsCredentials& credentials,
                          const SigningScope& scope);

// A presigned URL's query (query authentication, payload UNSIGNED-PAYLOAD, only host signed unless
// more headers are given): returns the full encoded query string to append after '?', including
// X-Amz-Signature. `expires` must be 1 s .. 7 days (S3's limit); not checked here.
std::string PresignQuery(const SigningRequest& request, const AwsCredentials& credentials,
                         const SigningScope& scope, std::chrono::seconds expires);

// Signs the chunks of an aws-chunked upload (x-amz-content-sha256:
// STREAMING-AWS4-HMAC-SHA256-PAYLOAD). Each chunk's signature chains the previous one, starting
// from the seed signature of the request itself; the last chunk is empty.
class ChunkSigner {
 public:
  ChunkSigner(const AwsCredentials& credentials, SigningScope scope, std::string seed_signature);

  // The signature of the next chunk; advances the chain.
  std::string SignChunk(std::string_view data);
  // The chunk as it goes on the wire: "<hex size>;chunk-signature=<sig>\r\n<data>\r\n".
  std::string EncodeChunk(std::string_view data);

  // The Content-Length of an aws-chunked body carrying `payload` bytes in chunks of `chunk_size`
  // (the last may be shorter), including the final empty chunk.
  static uint64_t EncodedLength(uint64_t payload, uint64_t chunk_size);

 private:
  std::string signing_key_;
  SigningScope scope_;
  std::string previous_;
};

}  // namespace modelcache::store
