#include "controller/health_server.h"

#include <sys/socket.h>

#include <atomic>
#include <charconv>
#include <chrono>
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

struct HealthServer::Impl {
  HealthServerOptions options;
  httplib::Server server;
  std::thread thread;
  std::atomic<bool> finished{false};
  int port = 0;
  bool started = false;
};

HealthServer::HealthServer(HealthServerOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
}

HealthServer::~HealthServer() { Stop(); }

VoidResult HealthServer::Start() {
  Impl& s = *impl_;
  if (s.started) {
    return Error(Reason::Internal, "health server started twice");
  }
  // A scraper's idle keep-alive connection would otherwise hold Stop() for the default 5 s; two
  // threads are plenty for probes and one scraper.
  s.server.set_keep_alive_timeout(1);
  s.server.set_read_timeout(5, 0);
  s.server.set_write_timeout(5, 0);
  s.server.new_task_queue = [] { return new httplib::ThreadPool(2); };
  // httplib's default sets SO_REUSEPORT, which lets a second daemon bind the same port and
  // silently take half the probes. SO_REUSEADDR alone still allows a quick restart.
  s.server.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });

  auto probe = [](const std::function<bool()>& check, httplib::Response& res) {
    bool ok = check && check();
    res.status = ok ? 200 : 503;
    res.set_content(ok ? "ok\n" : "not ok\n", "text/plain; charset=utf-8");
  };
  s.server.Get("/healthz", [&s, probe](const httplib::Request&, httplib::Response& res) {
    probe(s.options.healthy, res);
  });
  s.server.Get("/readyz", [&s, probe](const httplib::Request&, httplib::Response& res) {
    probe(s.options.ready, res);
  });
  s.server.Get("/metrics", [&s](const httplib::Request&, httplib::Response& res) {
    std::string body = s.options.metrics ? s.options.metrics() : std::string();
    res.set_content(std::move(body), "text/plain; version=0.0.4; charset=utf-8");
  });

  const ListenAddress& a = s.options.listen;
  if (a.port == 0) {
    s.port = s.server.bind_to_any_port(a.host);
    if (s.port <= 0) {
      s.port = 0;
      return Error(Reason::NetworkError, fmt::format("--listen: cannot bind {}:0", a.host));
    }
  } else {
    if (!s.server.bind_to_port(a.host, a.port)) {
      return Error(Reason::NetworkError,
                   fmt::format("--listen: cannot bind {}:{} (in use, or not an address of this "
                               "host)",
                               a.host, a.port));
    }
    s.port = a.port;
  }
  s.started = true;
  s.thread = std::thread([&s] {
    // httplib answers 500 for a handler's exception; this catches what escapes its loop.
    LogExceptions("HTTP server", [&s] { s.server.listen_after_bind(); });
    s.finished = true;
  });
  // httplib's stop() does nothing until the accept loop runs, so a Stop() right after Start()
  // would hang the join. Wait (briefly: the thread only has to enter the loop) for it to run.
  while (!s.server.is_running() && !s.finished) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (s.finished) {
    s.thread.join();
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
  s.server.stop();
  s.thread.join();
  s.started = false;
}

int HealthServer::port() const { return impl_->port; }

}  // namespace modelcache::controller
