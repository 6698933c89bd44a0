#pragma once

// A client of the HuggingFace Hub's HTTP API, speaking the protocol exactly as huggingface_hub
// does (docs/hub-protocol.md: each rule, the huggingface_hub code it follows, and where modelcache
// differs): it resolves a revision to a commit, lists the files at that commit and builds the
// /resolve URLs the downloader fetches.
//
// Errors are values whose reason is a DESIGN.md word: RepoNotFound, RevisionNotFound,
// Unauthorized (gated repo, forbidden, rejected token), RateLimited (retry_after set when the Hub
// said how long to wait), NetworkError (transport failures and 5xx, after retries), Cancelled.
// The token never appears in an error message or a log line.
//
// Thread-safe: a HubClient holds only its options; concurrent calls are fine.

#include <chrono>
#include <cstdint>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "common/http_client.h"
#include "common/result.h"

namespace modelcache::fetch {

struct HubOptions {
  std::string endpoint = "https://huggingface.co";  // no trailing slash
  // "" = anonymous. Sent as "Authorization: Bearer" to the endpoint's origin only, never to a CDN
  // host a /resolve answer redirects to. NEVER put it in an Error message or log.
  std::string token;
  int max_attempts = 5;  // per request, for transient errors
  // Waits between attempts: base, 2*base, 4*base, ... capped at backoff_cap, each with jitter
  // (uniform in [d/2, d]). A Retry-After longer than backoff_cap is not waited for: the request
  // fails with RateLimited and retry_after set, so the caller can requeue instead of blocking.
  std::chrono::milliseconds backoff_base{1000};
  std::chrono::milliseconds backoff_cap{30000};
  // An API answer or a file transfer that moves fewer than kStallBytesPerSecond for this long is
  // aborted as stalled (a server dripping bytes included) and retried.
  std::chrono::milliseconds stall_timeout{30000};
};

// The floor under which a transfer counts as stalled (see HubOptions::stall_timeout).
inline constexpr uint64_t kStallBytesPerSecond = 1024;
// Caps on what the Hub may make the client hold: one API answer (a tree page of the real Hub is
// well under 1 MiB), a tree listing's entries over all pages, and JSON nesting (the Hub's answers
// are 3 levels deep).
inline constexpr uint64_t kMaxApiAnswerBytes = 32ULL << 20;
inline constexpr size_t kMaxTreeEntries = 1'000'000;
inline constexpr int kMaxJsonDepth = 64;

struct RepoFile {
  std::string path;
  uint64_t size = 0;
  std::string blob_id;                    // git blob sha1 of the file (tree "oid" for non-LFS)
  std::optional<std::string> lfs_sha256;  // set for LFS files (tree "lfs.oid")
  // The hub cache blob name: sha256 for LFS files, git blob sha1 for regular ones.
  const std::string& etag() const { return lfs_sha256 ? *lfs_sha256 : blob_id; }
};

class HubClient {
 public:
  // options.endpoint may carry a trailing slash; it is removed.
  explicit HubClient(HubOptions options);

  // Resolves a branch, tag, HEAD, short or full commit to the 40-hex commit with
  // GET {endpoint}/api/{type}s/{repo}/revision/{quote(revision, safe="")}. An empty revision
  // means "main". `type` is "model", "dataset" or "space" (anything else: InvalidSpec).
  // Errors: RepoNotFound (missing, or private without a token that can read it; the Hub does not
  // tell these apart), RevisionNotFound, Unauthorized, RateLimited, NetworkError, Cancelled.
  Result<std::string> ResolveRevision(const std::string& type, const std::string& repo,
                                      const std::string& revision, std::stop_token stop = {});

  // Every file at `commit`, in the Hub's order: GET /api/{type}s/{repo}/tree/{commit}
  // ?recursive=true&expand=false, following Link rel="next" pages. Directories are skipped.
  // Errors as for ResolveRevision; a malformed answer is NetworkError: not JSON, nested deeper
  // than kMaxJsonDepth, larger than kMaxApiAnswerBytes or kMaxTreeEntries, a field of the wrong
  // type, a size above 2^63-1, an "oid" that is not 40 hex digits or an "lfs.oid" that is not 64
  // (ids name files in the store, so nothing else may pass). Paths are returned as listed: check
  // the ones you keep with ValidateRepoPath.
  Result<std::vector<RepoFile>> ListFiles(const std::string& type, const std::string& repo,
                                          const std::string& commit, std::stop_token stop = {});

  // {endpoint}/{repo}/resolve/{quote(commit, safe="")}/{quote(path)}; datasets:
  // {endpoint}/datasets/{repo}/resolve/..., spaces: {endpoint}/spaces/{repo}/resolve/...
  std::string ResolveUrl(const std::string& type, const std::string& repo,
                         const std::string& commit, const std::string& path) const;

  // Maps a Hub answer that is not a success (status + X-Error-Code / X-Error-Message, as
  // huggingface_hub's hf_raise_for_status does) to an Error whose message names `what` (e.g. the
  // repo, or a URL without its query). `type` only changes the wording and the access URL of a
  // gated repo ("<endpoint>/datasets/<repo>" for datasets).
  //   X-Error-Code RevisionNotFound / EntryNotFound          -> RevisionNotFound
  //   X-Error-Code GatedRepo (401: no token, 403: not granted) -> Unauthorized
  //   X-Error-Message "Access to this resource is disabled." -> RepoNotFound
  //   X-Error-Code RepoNotFound, or 401 without a code        -> RepoNotFound
  //   401 "Invalid credentials in Authorization header", 403  -> Unauthorized
  //   400 -> InvalidSpec; 404 -> RepoNotFound; 429 -> RateLimited (Retry-After or
  //   RateLimit "r=0;t=N" sets retry_after); 408, 416, 5xx and anything else -> NetworkError.
  static Error MapError(const HttpResponse& response, const std::string& what,
                        const std::string& endpoint, const std::string& repo,
                        const std::string& type = "model");

  // Bytes [first, first + count) of the file at a /resolve URL (ResolveUrl), the way the engines'
  // loaders read a safetensors header: a GET with Range, redirects followed as http_get does (to
  // another host without the token), transient failures retried. NetworkError unless the answer
  // is 206 with exactly `count` bytes (a server that ignores Range is not read much further than
  // `count` bytes); otherwise the errors of MapError.
  Result<std::string> GetRange(const std::string& url, uint64_t first, uint64_t count,
                               std::stop_token stop = {});

  const HubOptions& options() const { return options_; }

 private:
  // GET with the token, redirects followed by hand on the endpoint's own origin only (a renamed
  // repo answers 307 with a relative Location; an API answer has no reason to leave the Hub, and
  // the token must not), at most 10 hops, and transient failures retried with backoff. Non-2xx
  // answers become MapError; a redirect elsewhere, a loop or too many hops are NetworkError.
  Result<HttpResponse> GetJson(const std::string& url, const std::string& what,
                               const std::string& type, const std::string& repo,
                               std::stop_token stop);
  // GetJson's request with other headers, a body cap, and (leave_origin) redirects to any host.
  Result<HttpResponse> Get(const std::string& url, const std::string& what, const std::string& type,
                           const std::string& repo, const HttpHeaders& extra, uint64_t max_body,
                           bool leave_origin, std::stop_token stop);

  HubOptions options_;
};

// Checks a file path of a tree listing before it names anything on disk: InvalidSpec (the user can
// exclude the file with spec.source.exclude) for an empty or absolute path, one over 4096 bytes,
// a component over 255 bytes, an empty, "." or ".." component, a ".git" component (the Hub never
// lists .git), a backslash, NUL or another control character. The message shows the path with
// such bytes escaped (\xNN) and shortened.
VoidResult ValidateRepoPath(const std::string& path);

// `s` fit for a message: control bytes, backslashes and bytes >= 0x7f escaped as \xNN, at most
// about 160 bytes of it kept.
std::string PrintablePath(std::string_view s);

// huggingface_hub filter_repo_objects semantics: a path is kept when `include` is empty or one of
// its patterns matches, and none of `exclude` matches. Patterns are fnmatchcase globs: `*` matches
// any run of characters including "/", `?` one character, `[seq]` / `[!seq]` a class; a pattern
// ending in "/" matches everything under that directory; "\" is read as "/" in both. Unlike
// Python, an empty `include` list means "everything" (the spec's default).
bool MatchesPatterns(const std::string& path, const std::vector<std::string>& include,
                     const std::vector<std::string>& exclude);

}  // namespace modelcache::fetch
