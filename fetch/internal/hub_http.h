#pragma once

// Pieces of the Hub protocol shared by the API client and the downloader: origins (who gets the
// token), redirect targets, which answers are transient, and interruptible backoff.

#include <chrono>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/http_client.h"
#include "common/result.h"
#include "fetch/hub_client.h"

namespace modelcache::fetch::internal {

// "scheme://host[:port]" of an absolute URL, lower-cased; "" if `url` is not absolute. Two URLs
// are the same host for the token's purpose when their origins are equal (huggingface_hub compares
// netlocs, which include the port).
std::string Origin(std::string_view url);

// The URL a Location header points to, seen from `base`: absolute as is; "//host/p" takes base's
// scheme; "/p" replaces base's path and query; "p" is relative to base's directory.
std::string ResolveLocation(const std::string& base, const std::string& location);

// `url` without "?query" or "#fragment": signed CDN URLs must not end up in messages.
std::string WithoutQuery(std::string_view url);

// Answers worth another attempt: 408, 429 and 5xx (huggingface_hub retries 408, 429, 500, 502,
// 503, 504; other 5xx are as transient on a mirror).
bool IsRetryableStatus(long status);

// How long the server asked us to wait: Retry-After in seconds, else RateLimit "...;r=0;t=N".
std::optional<std::chrono::milliseconds> ServerRetryAfter(const HttpResponse& response);

// The wait before the next attempt after `failures` consecutive failures (1-based): exponential
// from options.backoff_base, capped at options.backoff_cap, with jitter in [d/2, d].
std::chrono::milliseconds BackoffDelay(const HubOptions& options, int failures);

// Sleeps for `d` unless `stop` is requested first; returns false if it was.
bool SleepFor(std::chrono::milliseconds d, std::stop_token stop);

// Request headers for `url`: Accept-Encoding identity always (a gzip answer would defeat Range
// and size checks), Authorization only when `url` is on the endpoint's origin.
HttpHeaders HubHeaders(const HubOptions& options, const std::string& url);

// Replaces every occurrence of `url` in a transport error message by its query-less form.
std::string ScrubUrl(std::string message, const std::string& url);

// The repo a /resolve URL built by HubClient::ResolveUrl names, for error messages:
// {endpoint}/[datasets/|spaces/]{repo}/resolve/... -> {type, repo}. Falls back to the URL's path.
std::pair<std::string, std::string> RepoOf(const std::string& endpoint, const std::string& url);

// The directory holding `path` ("." for a bare name).
std::string ParentDir(const std::string& path);

// Size of a regular file, or nullopt if there is none.
std::optional<uint64_t> FileSize(const std::string& path);

// A file about to be written and the bytes the disk must still provide for it.
struct SpaceNeed {
  std::string path;
  uint64_t bytes = 0;
};

// Checks once per filesystem that the free space covers what the files still need;
// InsufficientStorage naming the directory and both numbers otherwise.
VoidResult CheckFreeSpace(const std::vector<SpaceNeed>& needs);

}  // namespace modelcache::fetch::internal
