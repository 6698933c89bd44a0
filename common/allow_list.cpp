#include "common/allow_list.h"

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "common/strings.h"

namespace modelcache {
namespace {

// "." and ".." as a segment, literally or percent-encoded ("%2e", "%2E", ".%2e", …).
bool IsDotSegment(const std::string& segment) {
  std::string lower = AsciiLower(segment);
  std::string s;  // with "%2e" decoded (built by appending: GCC 12's -Wrestrict misfires on replace)
  for (size_t i = 0; i < lower.size(); ++i) {
    if (lower.compare(i, 3, "%2e") == 0) {
      s += '.';
      i += 2;
    } else {
      s += lower[i];
    }
  }
  return s == "." || s == "..";
}

Result<std::vector<std::string>> Segments(const std::string& path, const std::string& url) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) {
      end = path.size();
    }
    std::string segment = path.substr(start, end - start);
    if (IsDotSegment(segment)) {
      return Error(Reason::InvalidSpec, "\"" + url + R"(" has a "." or ".." path segment)");
    }
    if (!segment.empty()) {  // "a//b" and a trailing "/" name the same place
      out.push_back(std::move(segment));
    }
    start = end + 1;
  }
  return out;
}

}  // namespace

Result<AllowList::Location> AllowList::ParseLocation(const std::string& url) {
  for (char c : url) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f || c == '\\' || c == ' ') {
      return Error(Reason::InvalidSpec,
                   "\"" + url + "\" has a space, backslash or control character");
    }
  }
  if (url.find_first_of("?#") != std::string::npos) {
    return Error(Reason::InvalidSpec, "\"" + url + "\" has a query or fragment");
  }
  Location loc;
  size_t sep = url.find("://");
  std::string path;
  if (sep == std::string::npos || AsciiLower(url.substr(0, sep)) == "file") {
    // A local path, or file:///path (file://host/path is refused: only this machine's files).
    path = sep == std::string::npos ? url : url.substr(sep + 3);
    if (sep != std::string::npos && (path.empty() || path.front() != '/')) {
      return Error(Reason::InvalidSpec, "\"" + url + "\" is not a file:///absolute/path URI");
    }
    if (path.empty()) {
      return Error(Reason::InvalidSpec, "an empty path");
    }
    auto segments = Segments(path, url);  // refuses ".." before absolute() could hide it
    if (!segments) {
      return segments.error();
    }
    std::error_code ec;
    std::filesystem::path absolute = std::filesystem::absolute(path, ec);
    if (ec) {
      return Error(Reason::InvalidSpec, "\"" + url + "\": " + ec.message());
    }
    auto again = Segments(absolute.lexically_normal().string(), url);
    if (!again) {
      return again.error();
    }
    loc.scheme = "file";
    loc.segments = std::move(*again);
    return loc;
  }
  loc.scheme = AsciiLower(url.substr(0, sep));
  bool scheme_ok = !loc.scheme.empty() &&
                   std::all_of(loc.scheme.begin(), loc.scheme.end(), [](char c) {
                     return std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '-' ||
                            c == '.';
                   });
  if (!scheme_ok) {
    return Error(Reason::InvalidSpec, "\"" + url + "\" has no valid scheme");
  }
  size_t path_start = url.find('/', sep + 3);
  std::string authority = AsciiLower(url.substr(sep + 3, path_start == std::string::npos
                                                        ? std::string::npos
                                                        : path_start - sep - 3));
  if (authority.find('@') != std::string::npos) {
    return Error(Reason::InvalidSpec, "\"" + url + "\" has user information (\"…@\")");
  }
  if (authority.empty()) {
    return Error(Reason::InvalidSpec, "\"" + url + "\" has no host");
  }
  // The port, explicit or the scheme's default, so that "https://h" and "https://h:443" agree.
  size_t colon = authority.rfind(':');
  bool has_port = colon != std::string::npos && authority.find(']', colon) == std::string::npos;
  if (has_port && colon + 1 == authority.size()) {
    authority.pop_back();  // "host:" is "host"
    has_port = false;
  }
  if (!has_port) {
    if (loc.scheme == "https") {
      authority += ":443";
    } else if (loc.scheme == "http") {
      authority += ":80";
    }
  }
  loc.authority = std::move(authority);
  auto segments = Segments(path_start == std::string::npos ? "" : url.substr(path_start), url);
  if (!segments) {
    return segments.error();
  }
  loc.segments = std::move(*segments);
  return loc;
}

Result<AllowList> AllowList::Parse(const std::vector<std::string>& prefixes,
                                   const std::string& flag) {
  AllowList list;
  for (const std::string& prefix : prefixes) {
    if (prefix.empty()) {
      continue;
    }
    auto loc = ParseLocation(prefix);
    if (!loc) {
      return Error(Reason::InvalidSpec, flag + ": " + loc.error().message);
    }
    list.given_.push_back(prefix);
    list.parsed_.push_back(std::move(*loc));
  }
  return list;
}

bool AllowList::Allows(const std::string& url) const {
  auto loc = ParseLocation(url);
  if (!loc) {
    return false;
  }
  for (const Location& prefix : parsed_) {
    if (prefix.scheme == loc->scheme && prefix.authority == loc->authority &&
        prefix.segments.size() <= loc->segments.size() &&
        std::equal(prefix.segments.begin(), prefix.segments.end(), loc->segments.begin())) {
      return true;
    }
  }
  return false;
}

}  // namespace modelcache
