#include "fetch/hub_client.h"

#include <set>
#include <utility>

#include <nlohmann/json.hpp>
#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>

#include "fetch/internal/hub_http.h"

namespace modelcache::fetch {
namespace {

constexpr int kMaxRedirects = 10;
// A tree listing of a real repo is a few pages; this only stops a server that links in a loop.
constexpr int kMaxPages = 100000;

bool IsLowerHex(const std::string& s, size_t size) {
  if (s.size() != size) {
    return false;
  }
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
  }
  return true;
}

bool IsHex40(const std::string& s) { return IsLowerHex(s, 40); }

// The nesting depth of a JSON text, counted over brackets outside strings; stops counting past
// `limit`. nlohmann's parser is not recursive, but nothing the Hub answers is deeper than a few
// levels, so a deeper answer is refused before it is parsed.
int JsonDepth(std::string_view text, int limit) {
  int depth = 0;
  int deepest = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) {
        return deepest;
      }
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

// An API answer's body as JSON; NetworkError naming `url` when it is not JSON or too deep.
Result<nlohmann::json> ParseAnswer(const std::string& body, const std::string& url) {
  if (JsonDepth(body, kMaxJsonDepth) > kMaxJsonDepth) {
    return Error(Reason::NetworkError, fmt::format("the answer of {} nests JSON deeper than {}",
                                                   internal::WithoutQuery(url), kMaxJsonDepth));
  }
  auto json = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    return Error(Reason::NetworkError,
                 "the answer of " + internal::WithoutQuery(url) + " is not JSON");
  }
  return json;
}

// One file entry of a tree listing, checked field by field (ids and sizes name and size files in
// the store). NetworkError naming the entry when the Hub's answer is malformed.
Result<RepoFile> ParseTreeEntry(const nlohmann::json& entry, const std::string& url) {
  auto bad = [&](const std::string& why) {
    std::string path = entry.contains("path") && entry["path"].is_string()
                           ? PrintablePath(entry["path"].get_ref<const std::string&>())
                           : "?";
    return Error(Reason::NetworkError, fmt::format("malformed tree listing {}: entry '{}': {}",
                                                   internal::WithoutQuery(url), path, why));
  };
  constexpr uint64_t kMaxSize = uint64_t{1} << 63;
  auto path = entry.find("path");
  auto size = entry.find("size");
  auto oid = entry.find("oid");
  if (path == entry.end() || !path->is_string()) {
    return bad("\"path\" is not a string");
  }
  if (size == entry.end() || !size->is_number_unsigned() || size->get<uint64_t>() >= kMaxSize) {
    return bad("\"size\" is not an integer from 0 to 2^63-1");
  }
  if (oid == entry.end() || !oid->is_string() ||
      !IsLowerHex(oid->get_ref<const std::string&>(), 40)) {
    return bad("\"oid\" is not 40 hex digits");
  }
  RepoFile file;
  file.path = path->get<std::string>();
  file.size = size->get<uint64_t>();
  file.blob_id = oid->get<std::string>();
  if (auto lfs = entry.find("lfs"); lfs != entry.end() && !lfs->is_null()) {
    auto sha = lfs->is_object() ? lfs->find("oid") : lfs->end();
    if (sha == lfs->end() || !sha->is_string() ||
        !IsLowerHex(sha->get_ref<const std::string&>(), 64)) {
      return bad("\"lfs.oid\" is not 64 hex digits");
    }
    auto lfs_size = lfs->find("size");
    if (lfs_size != lfs->end() && (!lfs_size->is_number_unsigned() || *lfs_size != *size)) {
      return bad(R"("lfs.size" differs from "size")");
    }
    file.lfs_sha256 = sha->get<std::string>();
  }
  return file;
}

// "models", "datasets", "spaces" for the API; nullopt for an unknown type.
std::optional<std::string> ApiCollection(const std::string& type) {
  if (type == "model" || type == "dataset" || type == "space") {
    return type + "s";
  }
  return std::nullopt;
}

// The prefix /resolve URLs and repo pages carry: "" for models.
std::string UrlPrefix(const std::string& type) {
  if (type == "dataset") {
    return "datasets/";
  }
  if (type == "space") {
    return "spaces/";
  }
  return "";
}

std::string RepoWords(const std::string& type, const std::string& repo) {
  if (type == "dataset") {
    return "dataset repository " + repo;
  }
  if (type == "space") {
    return "space repository " + repo;
  }
  return "repository " + repo;
}

std::string TrimEndpoint(std::string endpoint) {
  while (!endpoint.empty() && endpoint.back() == '/') {
    endpoint.pop_back();
  }
  return endpoint;
}

std::string ServerSays(const HttpResponse& response) {
  const std::string* msg = response.Header("x-error-message");
  if (msg == nullptr || msg->empty()) {
    return "";
  }
  return " (the Hub says: " + *msg + ")";
}

}  // namespace

HubClient::HubClient(HubOptions options) : options_(std::move(options)) {
  options_.endpoint = TrimEndpoint(options_.endpoint);
}

Error HubClient::MapError(const HttpResponse& response, const std::string& what,
                          const std::string& endpoint, const std::string& repo,
                          const std::string& type) {
  const std::string* code_header = response.Header("x-error-code");
  const std::string* msg_header = response.Header("x-error-message");
  std::string code = code_header ? *code_header : "";
  std::string msg = msg_header ? *msg_header : "";
  long status = response.status;
  std::string server = ServerSays(response);
  std::string repo_words = RepoWords(type, repo);
  std::string status_words = fmt::format("HTTP {}", status);

  // The order follows hf_raise_for_status: specific error codes first, then statuses.
  if (code == "RevisionNotFound") {
    return {Reason::RevisionNotFound,
            fmt::format("{} not found in {} at {}{}", what, repo_words, endpoint, server)};
  }
  if (code == "EntryNotFound") {
    return {Reason::RevisionNotFound,
            fmt::format("{} not found in {} at {}{}", what, repo_words, endpoint, server)};
  }
  if (code == "GatedRepo") {
    std::string page = fmt::format("{}/{}{}", endpoint, UrlPrefix(type), repo);
    if (status == 401) {
      return {Reason::Unauthorized,
              fmt::format("{} is gated: request access at {} and set a token ({}: {})", repo_words,
                          page, status_words, what)};
    }
    return {Reason::Unauthorized,
            fmt::format("{} is gated and the token is not on its authorized list: request "
                        "access at {} with the token's account ({}: {})",
                        repo_words, page, status_words, what)};
  }
  if (msg == "Access to this resource is disabled.") {
    return {Reason::RepoNotFound,
            fmt::format("{} is disabled at {} ({}: {})", repo_words, endpoint, status_words, what)};
  }
  if (status == 401 && msg == "Invalid credentials in Authorization header") {
    return {Reason::Unauthorized, fmt::format("{} rejected the token: invalid credentials ({}: {})",
                                              endpoint, status_words, what)};
  }
  // The Hub answers 401 for a missing repo and for a private one alike when no token is sent,
  // and 404 when the token cannot read it, so "not found" has to mention access.
  if (code == "RepoNotFound" || status == 401 || (status == 404 && code.empty())) {
    return {Reason::RepoNotFound,
            fmt::format("{} not found at {} (if it is private or gated, set a token that "
                        "can read it) ({}: {})",
                        repo_words, endpoint, status_words, what)};
  }
  if (status == 400) {
    return {Reason::InvalidSpec,
            fmt::format("bad request for {}{} ({})", what, server, status_words)};
  }
  if (status == 403) {
    return {Reason::Unauthorized,
            fmt::format("access to {} is forbidden{}: make sure the token has the right "
                        "permissions ({})",
                        what, server, status_words)};
  }
  if (status == 429) {
    auto after = internal::ServerRetryAfter(response);
    std::string wait =
        after ? fmt::format("; retry after {} s",
                            std::chrono::duration_cast<std::chrono::seconds>(*after).count())
              : "";
    return {Reason::RateLimited,
            fmt::format("rate limited by {} for {}{}{}", endpoint, what, server, wait), after};
  }
  if (status == 416) {
    const std::string* range = response.Header("content-range");
    return {Reason::NetworkError, fmt::format("range not satisfiable for {} (Content-Range: {})",
                                              what, range ? *range : "none")};
  }
  return {Reason::NetworkError,
          fmt::format("unexpected answer {} for {}{}", status_words, what, server),
          internal::ServerRetryAfter(response)};
}

Result<HttpResponse> HubClient::GetJson(const std::string& url, const std::string& what,
                                        const std::string& type, const std::string& repo,
                                        std::stop_token stop) {
  return Get(url, what, type, repo, {{"Accept", "application/json"}}, kMaxApiAnswerBytes,
             /*leave_origin=*/false, std::move(stop));
}

// Room for the body of a redirect (a short HTML page) on the way to a ranged answer.
constexpr uint64_t kRedirectBodyBytes = 64 << 10;

Result<std::string> HubClient::GetRange(const std::string& url, uint64_t first, uint64_t count,
                                        std::stop_token stop) {
  auto [type, repo] = internal::RepoOf(options_.endpoint, url);
  std::string what = internal::WithoutQuery(url);
  if (count == 0) {
    return std::string();
  }
  auto answer =
      Get(url, what, type, repo, {{"Range", fmt::format("bytes={}-{}", first, first + count - 1)}},
          count + kRedirectBodyBytes,
          /*leave_origin=*/true, std::move(stop));
  if (!answer) {
    return answer.error();
  }
  if (answer->status != 206 || answer->body.size() != count) {
    return Error(Reason::NetworkError,
                 fmt::format("{} answered HTTP {} with {} bytes to a request for bytes {}-{}", what,
                             answer->status, answer->body.size(), first, first + count - 1));
  }
  return std::move(answer->body);
}

Result<HttpResponse> HubClient::Get(const std::string& start_url, const std::string& what,
                                    const std::string& type, const std::string& repo,
                                    const HttpHeaders& extra, uint64_t max_body, bool leave_origin,
                                    std::stop_token stop) {
  int failures = 0;
  Error last;
  while (true) {
    std::string url = start_url;
    Result<HttpResponse> answer = Error(Reason::Internal, "no request sent");
    // Redirects are followed by hand: a renamed repo answers 307 with a relative Location (the
    // token is kept); a file may be redirected to a CDN (HubHeaders sends it no token).
    for (int hop = 0;; ++hop) {
      HttpRequest req;
      req.url = url;
      req.headers = internal::HubHeaders(options_, url);
      req.headers.insert(req.headers.end(), extra.begin(), extra.end());
      req.stall_timeout = options_.stall_timeout;
      req.stall_bytes_per_second = kStallBytesPerSecond;
      req.max_body_bytes = max_body;
      answer = HttpClient::Send(req, stop);
      if (!answer || answer->status < 300 || answer->status >= 400) {
        break;
      }
      const std::string* location = answer->Header("location");
      if (location == nullptr) {
        break;
      }
      std::string next = internal::ResolveLocation(url, *location);
      if (!IsHttpUrl(next) ||
          (!leave_origin && internal::Origin(next) != internal::Origin(options_.endpoint))) {
        answer = Error(Reason::NetworkError,
                       fmt::format("{} redirects to {}, outside {}: API answers are only "
                                   "followed on the Hub's own origin",
                                   internal::WithoutQuery(url),
                                   PrintablePath(internal::WithoutQuery(next)), options_.endpoint));
        break;
      }
      if (hop >= kMaxRedirects) {
        answer = Error(Reason::NetworkError, fmt::format("more than {} redirects from {}",
                                                         kMaxRedirects,
                                                         internal::WithoutQuery(start_url)));
        break;
      }
      url = std::move(next);
    }
    if (answer) {
      if (answer->status >= 200 && answer->status < 300) {
        return answer;
      }
      Error mapped = MapError(*answer, what, options_.endpoint, repo, type);
      if (!internal::IsRetryableStatus(answer->status)) {
        return mapped;
      }
      last = std::move(mapped);
    } else {
      if (answer.error().reason != Reason::NetworkError) {
        return answer.error();  // Cancelled
      }
      last = Error(Reason::NetworkError, internal::ScrubUrl(answer.error().message, url));
      last.stalled = answer.error().stalled;
    }
    ++failures;
    if (failures >= options_.max_attempts) {
      last.message += fmt::format(" (after {} attempts)", failures);
      return last;
    }
    std::chrono::milliseconds wait = internal::BackoffDelay(options_, failures);
    if (last.retry_after) {
      if (*last.retry_after > options_.backoff_cap) {
        return last;  // the caller requeues after retry_after rather than blocking a worker
      }
      wait = *last.retry_after;
    }
    spdlog::debug("GET {} failed ({}); retrying in {} ms", internal::WithoutQuery(url),
                  last.ToString(), wait.count());
    if (!internal::SleepFor(wait, stop)) {
      return Error(Reason::Cancelled, "request for " + what + " cancelled");
    }
  }
}

Result<std::string> HubClient::ResolveRevision(const std::string& type, const std::string& repo,
                                               const std::string& revision, std::stop_token stop) {
  auto collection = ApiCollection(type);
  if (!collection) {
    return Error(Reason::InvalidSpec,
                 "repository type '" + type + "' is not one of model, dataset, space");
  }
  std::string rev = revision.empty() ? "main" : revision;
  std::string url =
      fmt::format("{}/api/{}/{}/revision/{}", options_.endpoint, *collection, repo, UrlEncode(rev));
  std::string what = "revision '" + rev + "'";
  auto answer = GetJson(url, what, type, repo, stop);
  if (!answer) {
    return answer.error();
  }
  auto json = ParseAnswer(answer->body, url);
  if (!json) {
    return json.error();
  }
  if (json->is_object() && json->contains("sha") && (*json)["sha"].is_string()) {
    const auto& sha = (*json)["sha"].get_ref<const std::string&>();
    if (IsHex40(sha)) {
      return sha;
    }
  }
  return Error(Reason::NetworkError, "the answer of " + url + " has no 40-hex \"sha\" commit");
}

Result<std::vector<RepoFile>> HubClient::ListFiles(const std::string& type, const std::string& repo,
                                                   const std::string& commit,
                                                   std::stop_token stop) {
  auto collection = ApiCollection(type);
  if (!collection) {
    return Error(Reason::InvalidSpec,
                 "repository type '" + type + "' is not one of model, dataset, space");
  }
  std::string url = fmt::format("{}/api/{}/{}/tree/{}?recursive=true&expand=false",
                                options_.endpoint, *collection, repo, UrlEncode(commit));
  std::string what = "revision '" + commit + "'";
  std::vector<RepoFile> files;
  std::set<std::string> seen_pages;
  for (int page = 0; !url.empty(); ++page) {
    if (page >= kMaxPages || !seen_pages.insert(url).second) {
      return Error(Reason::NetworkError, "the tree listing of " + repo + " paginates in a loop");
    }
    auto answer = GetJson(url, what, type, repo, stop);
    if (!answer) {
      return answer.error();
    }
    auto json = ParseAnswer(answer->body, url);
    if (!json) {
      return json.error();
    }
    answer->body.clear();
    answer->body.shrink_to_fit();
    if (!json->is_array()) {
      return Error(Reason::NetworkError,
                   "the tree listing " + internal::WithoutQuery(url) + " is not a JSON array");
    }
    for (const auto& entry : *json) {
      if (!entry.is_object()) {
        return Error(Reason::NetworkError, "malformed tree listing " +
                                               internal::WithoutQuery(url) +
                                               ": an entry is not an object");
      }
      auto kind = entry.find("type");
      if (kind == entry.end() || !kind->is_string() || *kind != "file") {
        continue;  // "directory" entries: recursive listings name their files too
      }
      auto file = ParseTreeEntry(entry, url);
      if (!file) {
        return file.error();
      }
      if (files.size() >= kMaxTreeEntries) {
        return Error(Reason::NetworkError,
                     fmt::format("the tree listing of {} has more than {} files", repo,
                                 kMaxTreeEntries));
      }
      files.push_back(std::move(*file));
    }
    const std::string* link = answer->Header("link");
    std::string next = link ? LinkNext(*link) : "";
    url = next.empty() ? "" : internal::ResolveLocation(url, next);
  }
  return files;
}

std::string HubClient::ResolveUrl(const std::string& type, const std::string& repo,
                                  const std::string& commit, const std::string& path) const {
  return fmt::format("{}/{}{}/resolve/{}/{}", options_.endpoint, UrlPrefix(type), repo,
                     UrlEncode(commit), UrlEncode(path, "/"));
}

std::string PrintablePath(std::string_view s) {
  constexpr size_t kKeep = 160;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < s.size() && i < kKeep; ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f || c == '\\') {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > kKeep) {
    out += fmt::format("... ({} bytes)", s.size());
  }
  return out;
}

VoidResult ValidateRepoPath(const std::string& path) {
  constexpr size_t kMaxPath = 4096;     // PATH_MAX
  constexpr size_t kMaxComponent = 255;  // NAME_MAX
  auto refuse = [&](const std::string& why) {
    return Error(Reason::InvalidSpec,
                 fmt::format("the repository lists a file path that cannot be stored safely: '{}' "
                             "({}); exclude it with spec.source.exclude",
                             PrintablePath(path), why));
  };
  if (path.empty()) {
    return refuse("empty");
  }
  if (path.size() > kMaxPath) {
    return refuse(fmt::format("longer than {} bytes", kMaxPath));
  }
  if (path.front() == '/') {
    return refuse("absolute");
  }
  for (char ch : path) {
    auto c = static_cast<unsigned char>(ch);
    if (c == '\\') {
      return refuse("a backslash");
    }
    if (c < 0x20 || c == 0x7f) {
      return refuse(c == 0 ? "a NUL byte" : "a control character");
    }
  }
  size_t start = 0;
  while (true) {
    size_t slash = path.find('/', start);
    std::string_view seg = std::string_view(path).substr(
        start, slash == std::string::npos ? std::string::npos : slash - start);
    if (seg.empty() || seg == "." || seg == "..") {
      return refuse("an empty, '.' or '..' component");
    }
    if (seg.size() > kMaxComponent) {
      return refuse(fmt::format("a component longer than {} bytes", kMaxComponent));
    }
    if (seg == ".git") {
      return refuse("a .git component");
    }
    if (slash == std::string::npos) {
      return {};
    }
    start = slash + 1;
  }
}

namespace {

// One element of a pattern as fnmatch.translate reads it: `*`, `?`, a bracket class or a literal.
struct Token {
  enum Kind { Star, Any, Class, Literal } kind = Literal;
  char literal = 0;
  bool negated = false;
  std::vector<std::pair<unsigned char, unsigned char>> ranges;  // inclusive

  bool Matches(char c) const {
    if (kind == Any) {
      return true;
    }
    if (kind == Literal) {
      return c == literal;
    }
    auto u = static_cast<unsigned char>(c);
    bool in = false;
    for (const auto& [lo, hi] : ranges) {
      in = in || (u >= lo && u <= hi);
    }
    return in != negated;
  }
};

std::vector<Token> Compile(const std::string& pat) {
  std::vector<Token> tokens;
  size_t i = 0;
  size_t n = pat.size();
  while (i < n) {
    char c = pat[i++];
    if (c == '*') {
      if (tokens.empty() || tokens.back().kind != Token::Star) {
        tokens.push_back(Token{Token::Star, 0, false, {}});
      }
    } else if (c == '?') {
      tokens.push_back(Token{Token::Any, 0, false, {}});
    } else if (c == '[') {
      // The closing bracket is found the way fnmatch does: a leading '!' and then a leading ']'
      // belong to the set; without a closing bracket the '[' is a literal.
      size_t j = i;
      if (j < n && pat[j] == '!') {
        ++j;
      }
      if (j < n && pat[j] == ']') {
        ++j;
      }
      while (j < n && pat[j] != ']') {
        ++j;
      }
      if (j >= n) {
        tokens.push_back(Token{Token::Literal, '[', false, {}});
        continue;
      }
      Token t{Token::Class, 0, false, {}};
      size_t k = i;
      if (pat[k] == '!') {
        t.negated = true;
        ++k;
      }
      while (k < j) {
        auto lo = static_cast<unsigned char>(pat[k]);
        if (k + 2 < j && pat[k + 1] == '-') {
          auto hi = static_cast<unsigned char>(pat[k + 2]);
          if (lo <= hi) {  // fnmatch drops reversed ranges
            t.ranges.emplace_back(lo, hi);
          }
          k += 3;
        } else {
          t.ranges.emplace_back(lo, lo);
          ++k;
        }
      }
      tokens.push_back(std::move(t));
      i = j + 1;
    } else {
      tokens.push_back(Token{Token::Literal, c, false, {}});
    }
  }
  return tokens;
}

// Greedy wildcard matching that backtracks to the last star only: linear for one star,
// O(n*m) at worst.
bool GlobMatch(const std::vector<Token>& tokens, const std::string& s) {
  size_t p = 0;
  size_t i = 0;
  size_t star_p = std::string::npos;
  size_t star_i = 0;
  while (i < s.size()) {
    if (p < tokens.size() && tokens[p].kind == Token::Star) {
      star_p = p++;
      star_i = i;
    } else if (p < tokens.size() && tokens[p].Matches(s[i])) {
      ++p;
      ++i;
    } else if (star_p != std::string::npos) {
      p = star_p + 1;
      i = ++star_i;
    } else {
      return false;
    }
  }
  while (p < tokens.size() && tokens[p].kind == Token::Star) {
    ++p;
  }
  return p == tokens.size();
}

std::string Normalize(std::string s) {
  for (char& c : s) {
    if (c == '\\') {
      c = '/';
    }
  }
  return s;
}

bool AnyMatches(const std::string& path, const std::vector<std::string>& patterns) {
  for (const auto& raw : patterns) {
    std::string pat = Normalize(raw);
    if (!pat.empty() && pat.back() == '/') {
      pat += '*';
    }
    if (GlobMatch(Compile(pat), path)) {
      return true;
    }
  }
  return false;
}

}  // namespace

bool MatchesPatterns(const std::string& path, const std::vector<std::string>& include,
                     const std::vector<std::string>& exclude) {
  std::string p = Normalize(path);
  if (!include.empty() && !AnyMatches(p, include)) {
    return false;
  }
  return !AnyMatches(p, exclude);
}

}  // namespace modelcache::fetch
