#pragma once

// nginx as the CDN of the integration tests: serves a directory on 127.0.0.1 with sendfile, the
// way large files are served in production, and keeps an access log that tells how many body
// bytes each request got and when it ended, so tests can count re-served bytes and measure
// cancellation on the server side. Runs `nginx -p <dir> -c <conf>` unprivileged-style as a child
// process (no daemon, its own pid file and temp paths).

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace modelcache::itest {

class NginxServer {
 public:
  // Serves `root` at "/". `location_extra` is added inside `location /` (e.g. "limit_rate 1m;").
  NginxServer(std::string root, std::string work_dir, std::string location_extra = "");
  ~NginxServer();  // stops nginx
  NginxServer(const NginxServer&) = delete;
  NginxServer& operator=(const NginxServer&) = delete;

  // True if an nginx binary exists (tests skip otherwise; scripts/install-deps.sh installs it).
  static bool Available();
  // Starts nginx on a free port and waits until it accepts connections; false (with the error
  // log on stderr) if it does not.
  bool Start();
  void Stop();
  std::string url() const;  // "http://127.0.0.1:<port>"

  struct Entry {
    std::string uri;  // path and query as requested
    int status = 0;
    uint64_t body_bytes = 0;  // $body_bytes_sent
    double end_time = 0;      // $msec: seconds since the epoch when the request ended
    std::string range;        // the Range header, "-" if none
  };
  // The access log so far (nginx writes a line when a request ends, also an aborted one).
  std::vector<Entry> Log() const;
  // Body bytes sent for requests whose path starts with `path_prefix` (query ignored).
  uint64_t BodyBytes(const std::string& path_prefix) const;

 private:
  std::string root_;
  std::string dir_;
  std::string location_extra_;
  int port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace modelcache::itest
