#include "fetch/internal/hub_http.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <regex>

#include <fmt/format.h>

#include "common/files.h"
#include "common/strings.h"

namespace modelcache::fetch::internal {
namespace {

// Position just after "scheme://", or npos.
size_t AuthorityStart(std::string_view url) {
  size_t p = url.find("://");
  if (p == std::string_view::npos || p == 0) {
    return std::string_view::npos;
  }
  for (size_t i = 0; i < p; ++i) {
    char c = url[i];
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '+' && c != '-' && c != '.') {
      return std::string_view::npos;
    }
  }
  return p + 3;
}

}  // namespace

std::string Origin(std::string_view url) {
  size_t start = AuthorityStart(url);
  if (start == std::string_view::npos) {
    return "";
  }
  size_t end = url.find_first_of("/?#", start);
  std::string_view authority = url.substr(0, end);
  // Drop "user:pass@" so that it can never make two hosts look alike.
  size_t at = authority.rfind('@');
  if (at != std::string_view::npos && at >= start) {
    return AsciiLower(url.substr(0, start)) + AsciiLower(authority.substr(at + 1));
  }
  return AsciiLower(authority);
}

std::string ResolveLocation(const std::string& base, const std::string& location) {
  if (AuthorityStart(location) != std::string::npos) {
    return location;
  }
  std::string origin = Origin(base);
  if (location.rfind("//", 0) == 0) {
    return base.substr(0, base.find("://") + 1) + location;
  }
  if (!location.empty() && location.front() == '/') {
    return origin + location;
  }
  // Relative to the base's directory.
  std::string path = WithoutQuery(base).substr(origin.size());
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "/" : path.substr(0, slash + 1);
  return origin + dir + location;
}

std::string WithoutQuery(std::string_view url) {
  return std::string(url.substr(0, url.find_first_of("?#")));
}

bool IsRetryableStatus(long status) { return status == 408 || status == 429 || status >= 500; }

std::optional<std::chrono::milliseconds> ServerRetryAfter(const HttpResponse& response) {
  // huggingface_hub prefers the RateLimit header when it says the quota is exhausted (r=0).
  if (const std::string* rl = response.Header("ratelimit"); rl != nullptr) {
    static const std::regex rate_limit(R"(r\s*=\s*(\d+)\s*;\s*t\s*=\s*(\d+))");
    std::smatch m;
    if (std::regex_search(*rl, m, rate_limit) && m[1].str() == "0") {
      return std::chrono::seconds(std::stoll(m[2].str()));
    }
  }
  return ParseRetryAfter(response.Header("retry-after"));
}

std::chrono::milliseconds BackoffDelay(const HubOptions& options, int failures) {
  using std::chrono::milliseconds;
  milliseconds d = std::max(options.backoff_base, milliseconds(1));
  for (int i = 1; i < failures && d < options.backoff_cap; ++i) {
    d *= 2;
  }
  d = std::min(d, std::max(options.backoff_cap, milliseconds(1)));
  // Jitter spreads retries of many files and daemons hitting the same failing host.
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::uniform_int_distribution<int64_t> dist(d.count() / 2, d.count());
  return milliseconds(dist(rng));
}

bool SleepFor(std::chrono::milliseconds d, std::stop_token stop) {
  std::mutex mu;
  std::condition_variable_any cv;
  std::unique_lock lock(mu);
  cv.wait_for(lock, stop, d, [] { return false; });
  return !stop.stop_requested();
}

HttpHeaders HubHeaders(const HubOptions& options, const std::string& url) {
  HttpHeaders headers{{"Accept-Encoding", "identity"}};
  if (!options.token.empty() && Origin(url) == Origin(options.endpoint)) {
    headers.emplace_back("Authorization", "Bearer " + options.token);
  }
  return headers;
}

std::string ScrubUrl(std::string message, const std::string& url) {
  std::string clean = WithoutQuery(url);
  if (clean == url) {
    return message;
  }
  for (size_t p = message.find(url); p != std::string::npos; p = message.find(url, p)) {
    message.replace(p, url.size(), clean);
    p += clean.size();
  }
  return message;
}

namespace {

// The nearest existing ancestor of `path` (the directory a file will be created in may not exist
// yet) and its device, so that free space is checked once per filesystem.
std::pair<std::string, dev_t> ExistingAncestor(const std::string& path) {
  std::filesystem::path p = std::filesystem::path(path).parent_path();
  while (true) {
    struct stat st {};
    std::string s = p.empty() ? "." : p.string();
    if (::stat(s.c_str(), &st) == 0) {
      return {s, st.st_dev};
    }
    if (p.empty() || p == p.root_path()) {
      return {s, 0};
    }
    p = p.parent_path();
  }
}

}  // namespace

std::string ParentDir(const std::string& path) {
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? "." : parent.string();
}

// Size of a regular file, or nullopt if there is none.
std::optional<uint64_t> FileSize(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return std::nullopt;
  }
  return static_cast<uint64_t>(st.st_size);
}

std::pair<std::string, std::string> RepoOf(const std::string& endpoint, const std::string& url) {
  std::string rest = WithoutQuery(url);
  if (rest.rfind(endpoint + "/", 0) == 0) {
    rest = rest.substr(endpoint.size() + 1);
  } else {
    rest = rest.substr(Origin(rest).size());
  }
  std::string type = "model";
  for (const char* prefix : {"datasets/", "spaces/"}) {
    std::string p = prefix;
    if (rest.rfind(p, 0) == 0) {
      type = p.substr(0, p.size() - 2);
      rest = rest.substr(p.size());
    }
  }
  size_t resolve = rest.find("/resolve/");
  return {type, UrlDecode(rest.substr(0, resolve))};
}

VoidResult CheckFreeSpace(const std::vector<SpaceNeed>& needs) {
  struct Need {
    std::string dir;
    uint64_t bytes = 0;
    int files = 0;
  };
  std::map<dev_t, Need> by_device;
  for (const SpaceNeed& n : needs) {
    if (n.bytes == 0) {
      continue;
    }
    auto [dir, dev] = ExistingAncestor(n.path);
    Need& need = by_device[dev];
    if (need.dir.empty()) {
      need.dir = dir;
    }
    need.bytes += n.bytes;
    need.files += 1;
  }
  for (const auto& [dev, need] : by_device) {
    auto free_bytes = FreeBytes(need.dir);
    if (!free_bytes) {
      return free_bytes.error();
    }
    if (*free_bytes < need.bytes) {
      return Error(Reason::InsufficientStorage,
                   fmt::format("{} bytes are needed in {} for {} file(s) but only {} bytes are "
                               "free",
                               need.bytes, need.dir, need.files, *free_bytes));
    }
  }
  return {};
}

}  // namespace modelcache::fetch::internal
