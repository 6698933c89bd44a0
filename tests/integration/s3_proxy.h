#pragma once

// The fault-injecting S3 proxy of the S3 integration tests.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/http_client.h"

namespace modelcache::itest {

// tests/fixtures/s3proxy/s3proxy.py (docs/s3.md, "Fault proxy") as a child process forwarding
// to `upstream`: counts requests per S3 operation, injects errors, holds requests.
class S3Proxy {
 public:
  explicit S3Proxy(const std::string& upstream) {
    int fds[2];
    EXPECT_EQ(::pipe(fds), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fds[1], 1);
      ::close(fds[0]);
      ::close(fds[1]);
      ::execl("/usr/bin/python3", "/usr/bin/python3", MC_S3PROXY, upstream.c_str(), nullptr);
      ::_exit(127);
    }
    ::close(fds[1]);
    std::string line;
    char c;
    while (::read(fds[0], &c, 1) == 1 && c != '\n') line.push_back(c);
    ::close(fds[0]);
    EXPECT_EQ(line.rfind("PORT ", 0), 0u) << line;
    url_ = "http://127.0.0.1:" + (line.size() > 5 ? line.substr(5) : std::string("0"));
  }
  ~S3Proxy() {
    Control("reset");  // answers the held requests, so the proxy's threads end
    ::kill(pid_, SIGTERM);
    ::waitpid(pid_, nullptr, 0);
  }
  S3Proxy(const S3Proxy&) = delete;
  S3Proxy& operator=(const S3Proxy&) = delete;

  const std::string& url() const { return url_; }

  bool Control(const std::string& what) {
    HttpRequest req;
    req.method = "POST";
    req.url = url_ + "/__proxy/" + what;
    auto r = HttpClient::Send(req);
    return r && r->status == 200;
  }

  std::map<std::string, int> Stats() {
    HttpRequest req;
    req.url = url_ + "/__proxy/stats";
    auto r = HttpClient::Send(req);
    std::map<std::string, int> out;
    if (!r || r->status != 200) return out;
    nlohmann::json j = nlohmann::json::parse(r->body, nullptr, false);
    if (!j.is_object()) return out;
    for (auto it = j.begin(); it != j.end(); ++it) out[it.key()] = it.value().get<int>();
    return out;
  }

  std::string StatsText() {
    std::string out;
    for (const auto& [k, v] : Stats()) out += k + "=" + std::to_string(v) + " ";
    return out;
  }

 private:
  pid_t pid_ = -1;
  std::string url_;
};

}  // namespace modelcache::itest
