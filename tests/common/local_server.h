#pragma once

// An httplib::Server on 127.0.0.1 for a test that plays a server (a Hub, a CDN): routes are added
// as on any httplib::Server, Start binds a free port and serves on a thread of its own, Stop (or
// the destructor) stops and joins it. Keep-alive connections are closed after a second of idling,
// so Stop returns promptly. Stop it in TearDown when its handlers use the fixture's members.

#include <chrono>
#include <string>
#include <thread>

#include <httplib.h>

namespace modelcache::test_util {

class LocalServer : public httplib::Server {
 public:
  LocalServer() { set_keep_alive_timeout(1); }
  ~LocalServer() override { Stop(); }
  LocalServer(const LocalServer&) = delete;
  LocalServer& operator=(const LocalServer&) = delete;

  // Returns once the server accepts connections; port() is then its port (-1 if binding failed).
  void Start() {
    port_ = bind_to_any_port("127.0.0.1");
    if (port_ < 0) {
      return;
    }
    thread_ = std::thread([this] { listen_after_bind(); });
    while (!is_running()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  void Stop() {
    if (thread_.joinable()) {
      stop();
      thread_.join();
    }
  }
  int port() const { return port_; }
  std::string Url(const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }

 private:
  int port_ = -1;
  std::thread thread_;
};

}  // namespace modelcache::test_util
