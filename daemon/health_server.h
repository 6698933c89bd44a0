#pragma once

// The daemon's HTTP endpoint (`--listen`, default 127.0.0.1:8081), on cpp-httplib:
//   GET /healthz  200 "ok" while the worker loop is healthy, else 503
//   GET /readyz   200 "ok" once the sources have synced, else 503
//   GET /metrics  Prometheus text format 0.0.4
// Anything else is 404. The server accepts on a thread of its own between Start() and Stop() and
// serves each admitted connection on a worker thread of a pool sized to the connection cap.
//
// It cannot be starved by its clients: a connection must deliver a whole request within
// request_timeout (headers included: dripping one byte at a time does not extend it), an idle
// keep-alive connection is closed after idle_timeout, and at most max_connections connections
// (max_connections_per_peer from one peer address) are open at once; a connection beyond either
// cap is closed as soon as it is accepted, never queued. Each admitted connection has a worker of
// its own, so a probe is answered whatever the other connections do as long as the caps are not
// both reached: one peer (one pod) can hold at most max_connections_per_peer connections, each
// for at most request_timeout, so starving the kubelet's probes takes max_connections /
// max_connections_per_peer peers at once. The NetworkPolicy of docs/kubernetes.md keeps the rest
// of the cluster off the port.

#include <chrono>
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
  // A whole request (request line and headers) must arrive within this time of the server starting
  // to wait for it; a response must be taken by the client within it too.
  std::chrono::milliseconds request_timeout{5000};
  // A keep-alive connection with no new request for this long is closed.
  std::chrono::milliseconds idle_timeout{1000};
  // Open connections at most, in all and from one peer IP address; each at least 1.
  int max_connections = 64;
  int max_connections_per_peer = 4;
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
  // Stops accepting, closes the open connections (a response being written may be cut short:
  // handlers never block) and joins the threads. Idempotent.
  void Stop();
  // The bound port (useful with port 0); 0 before Start().
  int port() const;

 private:
  class GuardedServer;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace modelcache::controller
