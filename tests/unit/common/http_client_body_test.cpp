// HttpRequest::body_source: request bodies pulled while they are sent (S3 parts read from a file
// or a buffer), against a cpp-httplib server that reports what it received.

#include <atomic>
#include <cstring>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>

#include "common/http_client.h"
#include "common/sha256.h"

namespace modelcache {
namespace {

class HttpBodySourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto echo = [this](const httplib::Request& req, httplib::Response& res) {
      std::lock_guard lock(mu_);
      received_ = req.body;
      content_length_ = req.get_header_value("Content-Length");
      method_ = req.method;
      res.set_content(Sha256Hex(req.body), "text/plain");
    };
    server_.Put("/echo", echo);
    server_.Post("/echo", echo);
    // A 307 keeps the method and body: curl must rewind the body source to send it again.
    server_.Put("/moved", [](const httplib::Request&, httplib::Response& res) {
      res.status = 307;
      res.set_header("Location", "/echo");
    });
    server_.set_keep_alive_timeout(1);
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  void TearDown() override {
    server_.stop();
    thread_.join();
  }
  std::string Url(const std::string& path) {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }

  static std::string Data(size_t n) {
    std::string s(n, '\0');
    for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 2654435761u) >> 13);
    return s;
  }

  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::string received_;
  std::string content_length_;
  std::string method_;
};

TEST_F(HttpBodySourceTest, SendsExactlyTheSourcesBytesWithAContentLength) {
  const std::string data = Data(3 * 1024 * 1024 + 17);
  std::atomic<int> calls{0};
  HttpBodySource source{data.size(), [&](uint64_t offset, char* out, size_t n) -> Result<size_t> {
                          ++calls;
                          // Hand out less than asked now and then: callers may.
                          size_t take = std::min<size_t>(n, 100'000);
                          std::memcpy(out, data.data() + offset, take);
                          return take;
                        }};
  for (const char* method : {"PUT", "POST"}) {
    HttpRequest req;
    req.method = method;
    req.url = Url("/echo");
    req.body = "ignored when a source is set";
    req.body_source = &source;
    auto r = HttpClient::Send(req);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, Sha256Hex(data));
    std::lock_guard lock(mu_);
    EXPECT_EQ(method_, method);
    EXPECT_EQ(content_length_, std::to_string(data.size()));
    EXPECT_TRUE(received_ == data);
  }
  EXPECT_GE(calls.load(), 2 * 32);
}

TEST_F(HttpBodySourceTest, ARedirectRereadsTheBodyFromTheStart) {
  const std::string data = Data(200'000);
  std::vector<uint64_t> offsets;
  HttpBodySource source{data.size(), [&](uint64_t offset, char* out, size_t n) -> Result<size_t> {
                          offsets.push_back(offset);
                          std::memcpy(out, data.data() + offset, n);
                          return n;
                        }};
  HttpRequest req;
  req.method = "PUT";
  req.url = Url("/moved");
  req.follow_redirects = true;
  req.body_source = &source;
  auto r = HttpClient::Send(req);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, Sha256Hex(data));
  std::lock_guard lock(mu_);
  EXPECT_TRUE(received_ == data);
  // Read from 0 twice: once for /moved, once again for /echo.
  EXPECT_EQ(std::count(offsets.begin(), offsets.end(), 0u), 2);
}

TEST_F(HttpBodySourceTest, ASourceErrorAbortsTheRequestAndIsReturnedAsItIs) {
  HttpBodySource source{10'000'000, [](uint64_t offset, char* out, size_t n) -> Result<size_t> {
                          if (offset >= 1'000'000) {
                            return Error(Reason::StorageError, "cannot read /x: Input/output error");
                          }
                          std::memset(out, 'a', n);
                          return n;
                        }};
  HttpRequest req;
  req.method = "PUT";
  req.url = Url("/echo");
  req.body_source = &source;
  auto r = HttpClient::Send(req);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::StorageError);
  EXPECT_EQ(r.error().message, "cannot read /x: Input/output error");
}

TEST_F(HttpBodySourceTest, StopCancelsAnUploadInFlight) {
  std::stop_source stop;
  HttpBodySource source{50'000'000, [&](uint64_t offset, char* out, size_t n) -> Result<size_t> {
                          if (offset >= 2'000'000) stop.request_stop();
                          std::memset(out, 'b', n);
                          return n;
                        }};
  HttpRequest req;
  req.method = "PUT";
  req.url = Url("/echo");
  req.body_source = &source;
  auto r = HttpClient::Send(req, stop.get_token());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::Cancelled);
}

}  // namespace
}  // namespace modelcache
