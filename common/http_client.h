#pragma once

// HTTP over libcurl's easy interface, for control-plane requests (Hub API, Kubernetes API, S3
// requests) and simple streamed downloads. An HTTP error status is not an Error here: callers map
// status codes to reasons, because only they know what a 404 means. Transport failures (connect,
// reset, timeout, TLS) are NetworkError; a stop request is Cancelled.
//
// Only http:// and https:// URLs are fetched (also after a redirect); the headers of one response
// are capped at kMaxResponseHeaderBytes (an endless header stream is a NetworkError).
//
// Thread-safe: each thread keeps its own curl handle, so connections are reused per thread.

#include <chrono>
#include <cstdint>
#include <functional>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"

namespace modelcache {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

// The most header bytes one response may carry; real servers send a few KiB.
inline constexpr size_t kMaxResponseHeaderBytes = 256 << 10;

// True when `url` is http:// or https:// (case-insensitive scheme): the only schemes fetched.
bool IsHttpUrl(std::string_view url);

struct TlsOptions {
  // The CAs trusted: ca_file and/or ca_pem, and then only they; both empty: the system store.
  std::string ca_file;            // PEM bundle
  std::string ca_pem;             // PEM data in memory (kubeconfig certificate-authority-data)
  std::string client_cert_file;   // PEM
  std::string client_key_file;    // PEM
  bool insecure_skip_verify = false;
};

// A request body produced while it is sent, instead of HttpRequest::body: exactly `size` bytes
// (sent as Content-Length), pulled in order by `read(offset, buffer, n)`, which fills up to `n`
// bytes of the body starting at `offset` and returns how many (at least 1 while offset < size).
// Reads are positional so that curl can rewind (a re-sent request starts again at offset 0).
// An error from `read` aborts the request and is returned as it is.
struct HttpBodySource {
  uint64_t size = 0;
  std::function<Result<size_t>(uint64_t offset, char* buffer, size_t n)> read;
};

struct HttpRequest {
  std::string method = "GET";
  std::string url;
  HttpHeaders headers;
  std::string body;
  // When set, the body comes from here (and `body` is ignored). Must outlive the call.
  const HttpBodySource* body_source = nullptr;
  // Follow 3xx answers (curl drops a custom Authorization header when the host changes).
  bool follow_redirects = false;
  std::chrono::milliseconds connect_timeout{10'000};
  // Abort when fewer than stall_bytes_per_second arrive per second for this long (a stalled or
  // dripping transfer); 0 = never.
  std::chrono::milliseconds stall_timeout{30'000};
  uint64_t stall_bytes_per_second = 1;
  // Send() only: a buffered body larger than this aborts the request (NetworkError naming the
  // cap); 0 = no cap. Bodies are never decoded (no Accept-Encoding is offered and curl's
  // decoding is off), so this caps the bytes held in memory, a gzip bomb included.
  uint64_t max_body_bytes = 0;
  // Whole-request limit; 0 = none.
  std::chrono::milliseconds total_timeout{0};
  TlsOptions tls;
};

struct HttpResponse {
  long status = 0;
  // Headers of the final response, names lower-cased, in arrival order.
  HttpHeaders headers;
  std::string body;
  std::string effective_url;

  // The first header with this name (case-insensitive), or nullptr.
  const std::string* Header(std::string_view name) const;
};

// Streaming callbacks. on_headers runs once per final response, before any body byte; returning
// false aborts the transfer (Cancelled). on_data receives body bytes; false aborts likewise.
struct HttpStreamHandler {
  std::function<bool(const HttpResponse&)> on_headers;
  std::function<bool(std::string_view)> on_data;
};

class HttpClient {
 public:
  // Sends the request and buffers the body in the response.
  static Result<HttpResponse> Send(const HttpRequest& request, std::stop_token stop = {});
  // Sends the request and hands the body to `handler`; the response's body stays empty.
  static Result<HttpResponse> Stream(const HttpRequest& request, HttpStreamHandler& handler,
                                     std::stop_token stop = {});
};

// RFC 3986 percent-encoding. `keep` lists the characters left as they are besides unreserved
// ones (A-Z a-z 0-9 - . _ ~): "/" keeps path separators.
std::string UrlEncode(std::string_view s, std::string_view keep = "");
std::string UrlDecode(std::string_view s);

// Parses an RFC 8288 Link header and returns the URL with rel="next", or "".
std::string LinkNext(const std::string& link_header);

// Parses Retry-After given in seconds (HTTP-dates are not supported, as in huggingface_hub).
std::optional<std::chrono::milliseconds> ParseRetryAfter(const std::string* value);

}  // namespace modelcache
