#include "daemon/health_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <httplib.h>
#include <spdlog/spdlog.h>

#include "common/guard.h"

namespace modelcache::controller {

Result<ListenAddress> ParseListenAddress(std::string_view text) {
  auto invalid = [&](std::string_view why) {
    return Error(
        Reason::InvalidSpec,
        fmt::format("--listen \"{}\": {}; expected HOST:PORT, e.g. 127.0.0.1:8081", text, why));
  };
  ListenAddress out;
  std::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return invalid("an IPv6 host must be written [ADDR]:PORT");
    }
    out.host = std::string(text.substr(1, close - 1));
    port_text = text.substr(close + 2);
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return invalid("no port");
    }
    out.host = std::string(text.substr(0, colon));
    if (out.host.find(':') != std::string::npos) {
      return invalid("an IPv6 host must be written [ADDR]:PORT");
    }
    port_text = text.substr(colon + 1);
  }
  if (out.host.empty()) {
    return invalid("no host");
  }
  for (char c : out.host) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == ':' || c == '_';
    if (!ok) {
      return invalid("the host may hold only letters, digits, '.', '-', '_' and ':'");
    }
  }
  if (port_text.empty() || port_text.size() > 5) {
    return invalid("the port must be a number from 0 to 65535");
  }
  int port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || end != port_text.data() + port_text.size() || port < 0 || port > 65535) {
    return invalid("the port must be a number from 0 to 65535");
  }
  out.port = port;
  return out;
}

namespace {

using SteadyClock = std::chrono::steady_clock;

// Waits until `fd` can be read (or written) or `deadline` passes; false on timeout or error.
bool WaitFor(int fd, short events, SteadyClock::time_point deadline) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now());
    if (left.count() <= 0) {
      return false;
    }
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 60'000)));
    if (n > 0) {
      return true;
    }
    if (n < 0 && errno != EINTR) {
      return false;
    }
  }
}

// The address and port of either end of a connected socket.
void Endpoint(int fd, bool peer, std::string& ip, int& port) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  ip.clear();
  port = 0;
  int rc = peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len)
                : ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  if (rc != 0) {
    return;
  }
  char text[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&addr);
    ::inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
    port = ntohs(in->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&addr);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
    port = ntohs(in6->sin6_port);
  }
  ip = text;
}

// httplib's stream over one request: every read waits at most until the request's deadline, so a
// client dripping bytes gets no more time than one that sends nothing.
class DeadlineStream final : public httplib::Stream {
 public:
  DeadlineStream(int fd, SteadyClock::time_point read_deadline, std::chrono::milliseconds write_timeout)
      : fd_(fd), read_deadline_(read_deadline), write_timeout_(write_timeout) {}

  bool is_readable() const override { return WaitFor(fd_, POLLIN, read_deadline_); }
  bool is_writable() const override {
    return WaitFor(fd_, POLLOUT, SteadyClock::now() + write_timeout_);
  }
  ssize_t read(char* ptr, size_t size) override {
    if (!is_readable()) {
      return -1;
    }
    ssize_t n;
    do {
      n = ::recv(fd_, ptr, size, 0);
    } while (n < 0 && errno == EINTR);
    return n;
  }
  ssize_t write(const char* ptr, size_t size) override {
    if (!is_writable()) {
      return -1;
    }
    ssize_t n;
    do {
      n = ::send(fd_, ptr, size, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n;
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    Endpoint(fd_, true, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    Endpoint(fd_, false, ip, port);
  }
  socket_t socket() const override { return fd_; }

 private:
  int fd_;
  SteadyClock::time_point read_deadline_;
  std::chrono::milliseconds write_timeout_;
};

// Runs each accepted connection's task at once on the accepting thread; the task (the server's
// process_and_close_socket below) only decides admission and hands the socket to the pool.
class InlineQueue final : public httplib::TaskQueue {
 public:
  void enqueue(std::function<void()> fn) override { fn(); }
  void shutdown() override {}
};

constexpr int kKeepAliveMaxCount = 5;

}  // namespace

// httplib's accept loop and request parsing, with admission and connection handling of its own:
// httplib 0.11 offers only a per-read timeout and an unbounded queue of accepted connections.
class HealthServer::GuardedServer final : public httplib::Server {
 public:
  explicit GuardedServer(const HealthServerOptions& options) : options_(options) {
    new_task_queue = [] { return new InlineQueue(); };
  }

  // httplib 0.11 listens with a backlog of 5: a burst of connections (which are then closed at
  // once) would make the kubelet's connection attempt wait for a SYN retry, a second or more.
  // Listening again on a listening socket only changes its backlog.
  void RaiseBacklog() { ::listen(svr_sock_, 128); }

  void StartPool() {
    {
      std::lock_guard lock(mu_);
      stopping_ = false;
    }
    pool_ = std::make_unique<httplib::ThreadPool>(static_cast<size_t>(options_.max_connections));
  }

  // After the accept loop has ended: wakes every open connection and joins the workers.
  void StopConnections() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
      for (int fd : open_) {
        ::shutdown(fd, SHUT_RDWR);
      }
    }
    if (pool_) {
      pool_->shutdown();
      pool_.reset();
    }
  }

 private:
  bool process_and_close_socket(socket_t sock) override {
    std::string peer;
    int peer_port = 0;
    Endpoint(sock, true, peer, peer_port);
    {
      std::lock_guard lock(mu_);
      int& from_peer = per_peer_[peer];
      bool admit = !stopping_ && static_cast<int>(open_.size()) < options_.max_connections &&
                   from_peer < options_.max_connections_per_peer;
      if (!admit) {
        if (from_peer == 0) {
          per_peer_.erase(peer);
        }
        ::close(sock);
        spdlog::debug("health server: refused a connection from {} ({} open)", peer,
                      open_.size());
        return false;
      }
      ++from_peer;
      open_.insert(sock);
    }
    pool_->enqueue([this, sock, peer] {
      LogExceptions("HTTP connection", [&] { Serve(sock); });
      std::lock_guard lock(mu_);
      open_.erase(sock);
      if (--per_peer_[peer] == 0) {
        per_peer_.erase(peer);
      }
      // Closed under the lock so that StopConnections never shuts down a reused descriptor.
      ::close(sock);
    });
    return true;
  }

  void Serve(int fd) {
    SteadyClock::time_point wait_from = SteadyClock::now();
    for (int served = 0; served < kKeepAliveMaxCount; ++served) {
      if (served > 0) {
        if (!WaitFor(fd, POLLIN, SteadyClock::now() + options_.idle_timeout)) {
          return;
        }
        wait_from = SteadyClock::now();
      }
      DeadlineStream stream(fd, wait_from + options_.request_timeout, options_.request_timeout);
      bool closed = false;
      bool last = served + 1 == kKeepAliveMaxCount;
      if (!process_request(stream, last, closed, nullptr) || closed) {
        return;
      }
      std::lock_guard lock(mu_);
      if (stopping_) {
        return;
      }
    }
  }

  const HealthServerOptions& options_;
  std::unique_ptr<httplib::ThreadPool> pool_;
  std::mutex mu_;
  bool stopping_ = false;                  // guarded by mu_
  std::set<int> open_;                     // guarded by mu_
  std::map<std::string, int> per_peer_;    // guarded by mu_
};

struct HealthServer::Impl {
  HealthServerOptions options;
  std::unique_ptr<GuardedServer> server;
  std::thread thread;
  std::atomic<bool> finished{false};
  int port = 0;
  bool started = false;
};

HealthServer::HealthServer(HealthServerOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  impl_->options.max_connections = std::max(1, impl_->options.max_connections);
  impl_->options.max_connections_per_peer = std::max(1, impl_->options.max_connections_per_peer);
  impl_->server = std::make_unique<GuardedServer>(impl_->options);
}

HealthServer::~HealthServer() { Stop(); }

VoidResult HealthServer::Start() {
  Impl& s = *impl_;
  if (s.started) {
    return Error(Reason::Internal, "health server started twice");
  }
  httplib::Server& server = *s.server;
  // Only for the Keep-Alive header of responses: GuardedServer keeps connections by itself.
  auto idle_seconds = std::chrono::ceil<std::chrono::seconds>(s.options.idle_timeout).count();
  server.set_keep_alive_timeout(std::max<time_t>(1, static_cast<time_t>(idle_seconds)));
  server.set_keep_alive_max_count(kKeepAliveMaxCount);
  // httplib's default sets SO_REUSEPORT, which lets a second daemon bind the same port and
  // silently take half the probes. SO_REUSEADDR alone still allows a quick restart.
  server.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });

  auto probe = [](const std::function<bool()>& check, httplib::Response& res) {
    bool ok = check && check();
    res.status = ok ? 200 : 503;
    res.set_content(ok ? "ok\n" : "not ok\n", "text/plain; charset=utf-8");
  };
  server.Get("/healthz", [&s, probe](const httplib::Request&, httplib::Response& res) {
    probe(s.options.healthy, res);
  });
  server.Get("/readyz", [&s, probe](const httplib::Request&, httplib::Response& res) {
    probe(s.options.ready, res);
  });
  server.Get("/metrics", [&s](const httplib::Request&, httplib::Response& res) {
    std::string body = s.options.metrics ? s.options.metrics() : std::string();
    res.set_content(body, "text/plain; version=0.0.4; charset=utf-8");
  });

  const ListenAddress& a = s.options.listen;
  if (a.port == 0) {
    s.port = server.bind_to_any_port(a.host);
    if (s.port <= 0) {
      s.port = 0;
      return Error(Reason::NetworkError, fmt::format("--listen: cannot bind {}:0", a.host));
    }
  } else {
    if (!server.bind_to_port(a.host, a.port)) {
      return Error(Reason::NetworkError,
                   fmt::format("--listen: cannot bind {}:{} (in use, or not an address of this "
                               "host)",
                               a.host, a.port));
    }
    s.port = a.port;
  }
  s.started = true;
  s.server->RaiseBacklog();
  s.server->StartPool();
  s.thread = std::thread([&s] {
    // httplib answers 500 for a handler's exception; this catches what escapes its loop.
    LogExceptions("HTTP server", [&s] { s.server->listen_after_bind(); });
    s.finished = true;
  });
  // httplib's stop() does nothing until the accept loop runs, so a Stop() right after Start()
  // would hang the join. Wait (briefly: the thread only has to enter the loop) for it to run.
  while (!server.is_running() && !s.finished) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (s.finished) {
    s.thread.join();
    s.server->StopConnections();
    s.started = false;
    return Error(Reason::NetworkError,
                 fmt::format("--listen: cannot serve on {}:{}", a.host, s.port));
  }
  spdlog::info("serving /healthz, /readyz and /metrics on {}:{}", a.host, s.port);
  return {};
}

void HealthServer::Stop() {
  Impl& s = *impl_;
  if (!s.started) {
    return;
  }
  s.server->stop();
  s.thread.join();
  s.server->StopConnections();
  s.started = false;
}

int HealthServer::port() const { return impl_->port; }

}  // namespace modelcache::controller
