#include "daemon/health_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <iterator>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "common/http_client.h"

namespace modelcache::controller {
namespace {

TEST(ParseListenAddressTest, AcceptsHostPort) {
  auto a = ParseListenAddress("127.0.0.1:8081");
  ASSERT_TRUE(a) << a.error().message;
  EXPECT_EQ(*a, (ListenAddress{"127.0.0.1", 8081}));
  auto b = ParseListenAddress("[::1]:0");
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_EQ(*b, (ListenAddress{"::1", 0}));
  auto c = ParseListenAddress("localhost:65535");
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ(*c, (ListenAddress{"localhost", 65535}));
}

TEST(ParseListenAddressTest, RefusesEverythingElse) {
  for (const char* bad : {"", "8081", ":8081", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536",
                          "127.0.0.1:-1", "127.0.0.1:80a", "http://127.0.0.1:80", "::1:80",
                          "[::1]80", "[::1]", "host name:80", "127.0.0.1:+80", "1.2.3.4:000080"}) {
    auto r = ParseListenAddress(bad);
    EXPECT_FALSE(r) << "accepted \"" << bad << "\"";
    if (!r) {
      EXPECT_EQ(r.error().reason, Reason::InvalidSpec);
      EXPECT_NE(r.error().message.find("--listen"), std::string::npos);
    }
  }
}

HttpResponse Get(int port, const std::string& path) {
  HttpRequest req;
  req.url = fmt::format("http://127.0.0.1:{}{}", port, path);
  req.connect_timeout = std::chrono::milliseconds(2000);
  req.total_timeout = std::chrono::milliseconds(5000);
  auto r = HttpClient::Send(req);
  EXPECT_TRUE(r) << path << ": " << (r ? "" : r.error().message);
  return r ? *r : HttpResponse{};
}

TEST(HealthServerTest, ServesProbesAndMetrics) {
  std::atomic<bool> healthy{true};
  std::atomic<bool> ready{false};
  std::atomic<int> scrapes{0};
  HealthServerOptions o;
  o.listen = {"127.0.0.1", 0};
  o.healthy = [&] { return healthy.load(); };
  o.ready = [&] { return ready.load(); };
  o.metrics = [&] { return fmt::format("demo_scrapes_total {}\n", ++scrapes); };
  HealthServer server(o);
  EXPECT_EQ(server.port(), 0);
  ASSERT_TRUE(server.Start());
  ASSERT_GT(server.port(), 0);
  int port = server.port();

  auto h = Get(port, "/healthz");
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.body, "ok\n");
  auto r = Get(port, "/readyz");
  EXPECT_EQ(r.status, 503);

  ready = true;
  healthy = false;
  EXPECT_EQ(Get(port, "/readyz").status, 200);
  EXPECT_EQ(Get(port, "/healthz").status, 503);

  auto m = Get(port, "/metrics");
  EXPECT_EQ(m.status, 200);
  EXPECT_EQ(m.body, "demo_scrapes_total 1\n");
  ASSERT_NE(m.Header("content-type"), nullptr);
  EXPECT_EQ(m.Header("content-type")->rfind("text/plain; version=0.0.4", 0), 0u)
      << *m.Header("content-type");
  EXPECT_EQ(Get(port, "/metrics").body, "demo_scrapes_total 2\n");

  EXPECT_EQ(Get(port, "/nope").status, 404);

  server.Stop();
  server.Stop();  // idempotent
  HttpRequest req;
  req.url = fmt::format("http://127.0.0.1:{}/healthz", port);
  req.connect_timeout = std::chrono::milliseconds(1000);
  auto after = HttpClient::Send(req);
  ASSERT_FALSE(after);
  EXPECT_EQ(after.error().reason, Reason::NetworkError);
}

TEST(HealthServerTest, UnsetCallbacksAreNotHealthy) {
  HealthServerOptions o;
  o.listen = {"127.0.0.1", 0};
  HealthServer server(o);
  ASSERT_TRUE(server.Start());
  EXPECT_EQ(Get(server.port(), "/healthz").status, 503);
  EXPECT_EQ(Get(server.port(), "/readyz").status, 503);
  auto m = Get(server.port(), "/metrics");
  EXPECT_EQ(m.status, 200);
  EXPECT_EQ(m.body, "");
}

TEST(HealthServerTest, PortInUseFailsAndStartTwiceFails) {
  HealthServerOptions o;
  o.listen = {"127.0.0.1", 0};
  HealthServer first(o);
  ASSERT_TRUE(first.Start());
  EXPECT_EQ(first.Start().error().reason, Reason::Internal);

  HealthServerOptions taken;
  taken.listen = {"127.0.0.1", first.port()};
  HealthServer second(taken);
  auto r = second.Start();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::NetworkError);
  EXPECT_NE(r.error().message.find(std::to_string(first.port())), std::string::npos);
  second.Stop();  // nothing to stop: must not hang
}

TEST(HealthServerTest, StopRightAfterStartDoesNotHang) {
  for (int i = 0; i < 20; ++i) {
    HealthServerOptions o;
    o.listen = {"127.0.0.1", 0};
    HealthServer server(o);
    ASSERT_TRUE(server.Start());
  }
}

// --- Clients that try to starve the server: raw sockets on 127.0.0.x. ---

// A TCP connection to 127.0.0.1:port from the local address `source` (any 127.0.0.0/8 address is
// local on Linux, so tests can play several peers); -1 on failure.
int ConnectFrom(int port, const char* source) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return -1;
  }
  sockaddr_in from{};
  from.sin_family = AF_INET;
  ::inet_pton(AF_INET, source, &from.sin_addr);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof(from)) != 0 ||
      ::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool SendText(int fd, std::string_view text) {
  return ::send(fd, text.data(), text.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(text.size());
}

// Whether the server has closed `fd`, waiting at most `wait` for it. Response bytes count as not
// closed (and are consumed).
bool ClosedByServer(int fd, std::chrono::milliseconds wait) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(wait.count())) <= 0) {
    return false;
  }
  char buf[256];
  ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

size_t OpenFds() {
  return static_cast<size_t>(std::distance(std::filesystem::directory_iterator("/proc/self/fd"),
                                           std::filesystem::directory_iterator()));
}

struct Clients {
  std::vector<int> fds;
  ~Clients() {
    for (int fd : fds) {
      ::close(fd);
    }
  }
};

TEST(HealthServerTest, SlowClientsDoNotStarveProbes) {
  HealthServerOptions o;
  o.listen = {"127.0.0.1", 0};
  o.healthy = [] { return true; };
  o.ready = [] { return true; };
  o.request_timeout = std::chrono::seconds(60);  // the slow clients stay for the whole test
  o.max_connections = 16;
  o.max_connections_per_peer = 4;
  HealthServer server(o);
  ASSERT_TRUE(server.Start());

  // Two peers open more slow connections than their cap, each sending a request line and then
  // one header byte at a time.
  Clients slow;
  for (const char* peer : {"127.0.0.2", "127.0.0.3"}) {
    for (int i = 0; i < 6; ++i) {
      int fd = ConnectFrom(server.port(), peer);
      ASSERT_GE(fd, 0) << peer;
      slow.fds.push_back(fd);
      SendText(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    }
  }
  std::atomic<bool> done{false};
  std::thread drip([&] {
    while (!done) {
      for (int fd : slow.fds) {
        SendText(fd, "a");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });

  // The probes (from 127.0.0.1, as the kubelet from its node) are answered while they drip; the
  // client's 5 s timeout would fail them if they waited behind the slow connections.
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(Get(server.port(), "/healthz").status, 200);
    EXPECT_EQ(Get(server.port(), "/readyz").status, 200);
  }
  // The connections beyond each peer's cap of 4 were closed at once.
  int closed = 0;
  for (int fd : slow.fds) {
    closed += ClosedByServer(fd, std::chrono::milliseconds(50)) ? 1 : 0;
  }
  EXPECT_EQ(closed, 4);
  done = true;
  drip.join();
}

TEST(HealthServerTest, IdleConnectionsAreCappedAndExcessClosedAtOnce) {
  HealthServerOptions o;
  o.listen = {"127.0.0.1", 0};
  o.healthy = [] { return true; };
  o.request_timeout = std::chrono::seconds(60);
  o.max_connections = 8;
  o.max_connections_per_peer = 8;
  HealthServer server(o);
  ASSERT_TRUE(server.Start());

  size_t before = OpenFds();
  constexpr size_t kClients = 40;
  Clients idle;
  for (size_t i = 0; i < kClients; ++i) {
    int fd = ConnectFrom(server.port(), "127.0.0.1");
    ASSERT_GE(fd, 0);
    idle.fds.push_back(fd);
  }
  // The server closes the excess as it accepts them (in order, so the first 8 are the ones it
  // keeps); wait for that, boundedly, not for a time.
  std::vector<bool> closed(kClients, false);
  int closed_count = 0;
  for (int round = 0; round < 200 && closed_count < static_cast<int>(kClients) - 8; ++round) {
    for (size_t i = 0; i < kClients; ++i) {
      if (!closed[i] && ClosedByServer(idle.fds[i], std::chrono::milliseconds(0))) {
        closed[i] = true;
        ++closed_count;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(closed_count, static_cast<int>(kClients) - 8);
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_FALSE(closed[i]) << "connection " << i << " was accepted within the cap";
  }
  // The clients' own descriptors plus the 8 the server holds.
  EXPECT_LE(OpenFds(), before + kClients + 8);

  // Once the idle clients go, their slots are free again.
  for (int fd : idle.fds) {
    ::close(fd);
  }
  idle.fds.clear();
  int status = 0;
  for (int i = 0; i < 100 && status != 200; ++i) {
    HttpRequest req;
    req.url = fmt::format("http://127.0.0.1:{}/healthz", server.port());
    req.total_timeout = std::chrono::milliseconds(5000);
    auto r = HttpClient::Send(req);
    status = r ? r->status : 0;
    if (status != 200) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  EXPECT_EQ(status, 200);
}

TEST(HealthServerTest, ClientDrippingItsRequestIsDisconnectedAtTheRequestTimeout) {
  HealthServerOptions o;
  o.listen = {"127.0.0.1", 0};
  o.healthy = [] { return true; };
  o.request_timeout = std::chrono::milliseconds(300);
  HealthServer server(o);
  ASSERT_TRUE(server.Start());

  int fd = ConnectFrom(server.port(), "127.0.0.1");
  ASSERT_GE(fd, 0);
  Clients held{{fd}};
  // Each byte comes well within any per-read timeout; the whole request never does. 400 bytes
  // at 20 ms would take 8 s: the server must hang up long before.
  std::string request = "GET /healthz HTTP/1.1\r\nHost: x\r\n";
  while (request.size() < 400) {
    request += "X-Pad: aaaaaaaaaa\r\n";
  }
  bool closed = false;
  for (char c : request) {
    if (!SendText(fd, std::string_view(&c, 1)) ||
        ClosedByServer(fd, std::chrono::milliseconds(20))) {
      closed = true;
      break;
    }
  }
  EXPECT_TRUE(closed) << "the server read a whole request dripped over seconds";
  // Its slot is free: an ordinary probe is answered.
  EXPECT_EQ(Get(server.port(), "/healthz").status, 200);
}

}  // namespace
}  // namespace modelcache::controller
