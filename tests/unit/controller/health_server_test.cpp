#include "controller/health_server.h"

#include <atomic>
#include <string>

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

}  // namespace
}  // namespace modelcache::controller
