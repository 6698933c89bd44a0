#pragma once

// String helpers shared by every module: trimming, ASCII lower-casing and percent-encoding. For prefixes and
// suffixes use C++20's starts_with / ends_with of std::string and std::string_view; for
// splitting, the caller's own loop (each format splits by its own rules).
//
// All functions are pure and thread-safe. The results of Trim* view into their argument, so they
// must not outlive it.

#include <string>
#include <string_view>

namespace modelcache {

// Space, tab, carriage return and newline: what a line of a text file or an HTTP header may carry
// around its content.
inline constexpr std::string_view kAsciiSpace = " \t\r\n";

// `s` without its leading characters that are in `chars`.
std::string_view TrimLeft(std::string_view s, std::string_view chars = kAsciiSpace);
// `s` without its trailing characters that are in `chars`.
std::string_view TrimRight(std::string_view s, std::string_view chars = kAsciiSpace);
// Both; "" when every character is in `chars`.
std::string_view Trim(std::string_view s, std::string_view chars = kAsciiSpace);

// `s` with 'A'-'Z' turned into 'a'-'z' and every other byte (UTF-8 included) unchanged, whatever
// the locale: for case-insensitive protocol names (HTTP header names, URL schemes and hosts,
// AWS config keys).
std::string AsciiLower(std::string_view s);

// RFC 3986 percent-encoding: the unreserved characters (A-Z a-z 0-9 - . _ ~) as they are, every
// other byte as %XX with upper-case hex; '/' kept only when `keep_slash`. What AWS SigV4 calls
// UriEncode, and how a file:// URI names a path.
std::string PercentEncode(std::string_view s, bool keep_slash);

}  // namespace modelcache
