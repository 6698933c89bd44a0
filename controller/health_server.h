#pragma once

// The daemon's HTTP endpoint (`--listen`, default 127.0.0.1:8081), on cpp-httplib:
//   GET /healthz  200 "ok" while the worker loop is healthy, else 503
//   GET /readyz   200 "ok" once the sources have synced, else 503
//   GET /metrics  Prometheus text format 0.0.4
// Anything else is 404. The server runs on a thread of its own between Start() and Stop().

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "common/result.h"

namespace modelcache::controller {

struct ListenAddress {
  std::string host;  // "127.0.0.1", "0.0.0.0", "::1" (without brackets), "localhost"
  int port = 0;      // 0: any free port (tests)
  bool operator==(const ListenAddress&) const = default;
};

// Parses "HOST:PORT" or "[IPV6]:PORT". The port is decimal, 0..65535; the host is not empty.
// Anything else (a URL, a path, a missing port) is InvalidSpec naming the text.
Result<ListenAddress> ParseListenAddress(std::string_view text);

struct HealthServerOptions {
  ListenAddress listen{"127.0.0.1", 8081};
  // Each callback is called on a server thread per request, so it must be thread-safe. An unset
  // healthy/ready callback counts as false; an unset metrics callback serves an empty body.
  std::function<bool()> healthy;
  std::function<bool()> ready;
  std::function<std::string()> metrics;
};

class HealthServer {
 public:
  explicit HealthServer(HealthServerOptions options);
  // Stops the server if it runs.
  ~HealthServer();
  HealthServer(const HealthServer&) = delete;
  HealthServer& operator=(const HealthServer&) = delete;

  // Binds the address and starts serving on a thread of its own; returns once requests are
  // accepted. Fails (NetworkError) when the address cannot be bound, or (Internal) when called
  // twice.
  VoidResult Start();
  // Stops accepting, finishes requests in flight and joins the thread. Idempotent.
  void Stop();
  // The bound port (useful with port 0); 0 before Start().
  int port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace modelcache::controller
