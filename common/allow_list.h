#pragma once

// Operator allow-lists of URL prefixes (`modelcache run --allowed-endpoints`, `--allowed-stores`):
// which Hub endpoints and stores a resource may name.
//
// A prefix allows a URL when the scheme, host and port are the same (scheme and host compared
// without regard to case, the default port of http/https filled in) and the prefix's path is the
// URL's path or a leading run of its "/"-separated segments: "https://hub.example/mirror" allows
// "https://hub.example/mirror" and "https://hub.example/mirror/org", not
// "https://hub.example/mirrors", "https://hub.example.evil.com" or "https://hub.example:8443".
// A URL with user information ("user@"), a query, a fragment, a backslash, a control character
// or a "." / ".." path segment (literal or percent-encoded) is never allowed: each is a way to
// make the address look like another. Local stores are paths (or file:// URIs): they are made
// absolute and compared on path-segment boundaries the same way ("/srv/models" allows
// "/srv/models/team-a", not "/srv/models-b"; ".." segments are refused).

#include <string>
#include <vector>

#include "common/result.h"

namespace modelcache {

class AllowList {
 public:
  // `prefixes`: URLs, absolute paths or file:// URIs. InvalidSpec naming `flag` and the entry when
  // one cannot be parsed or is one of the forms above that is never allowed.
  static Result<AllowList> Parse(const std::vector<std::string>& prefixes, const std::string& flag);

  // Whether `url` (a URL, path or file:// URI) lies under one of the prefixes.
  bool Allows(const std::string& url) const;

  // The prefixes as given, for messages.
  const std::vector<std::string>& prefixes() const { return given_; }

  // The parsed form of a URL or path: scheme ("file" for paths), lower-case authority with the
  // port always present (empty for files), and the path's segments.
  struct Location {
    std::string scheme;
    std::string authority;
    std::vector<std::string> segments;
  };
  // nullopt-like: an Error when `url` has a form that is never allowed.
  static Result<Location> ParseLocation(const std::string& url);

 private:
  std::vector<std::string> given_;
  std::vector<Location> parsed_;
};

}  // namespace modelcache
