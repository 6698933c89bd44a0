#include "common/http_client.h"

#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>

namespace modelcache {
namespace {

class HttpClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_.Get("/hello", [](const httplib::Request& req, httplib::Response& res) {
      res.set_header("X-Repo-Commit", "abc");
      res.set_content("hello " + req.get_header_value("Authorization"), "text/plain");
    });
    server_.Get("/redirect", [](const httplib::Request&, httplib::Response& res) {
      res.status = 302;
      res.set_header("Location", "/hello");
    });
    server_.Get("/big", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(std::string(1 << 20, 'x'), "application/octet-stream");
    });
    // The client keeps connections alive; a short server-side timeout keeps stop() fast.
    server_.set_keep_alive_timeout(1);
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  void TearDown() override {
    server_.stop();
    thread_.join();
  }
  std::string Url(const std::string& path) {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }

  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
};

TEST_F(HttpClientTest, SendsHeadersAndReadsResponseHeaders) {
  HttpRequest req;
  req.url = Url("/hello");
  req.headers.emplace_back("Authorization", "Bearer t");
  auto r = HttpClient::Send(req);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "hello Bearer t");
  ASSERT_NE(r->Header("x-repo-commit"), nullptr);
  EXPECT_EQ(*r->Header("X-Repo-Commit"), "abc");
}

TEST_F(HttpClientTest, RedirectsOnlyWhenAsked) {
  HttpRequest req;
  req.url = Url("/redirect");
  auto r = HttpClient::Send(req);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 302);
  EXPECT_EQ(*r->Header("location"), "/hello");
  req.follow_redirects = true;
  r = HttpClient::Send(req);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->Header("location"), nullptr);  // headers are the final response's
}

TEST_F(HttpClientTest, StreamsAndAborts) {
  HttpRequest req;
  req.url = Url("/big");
  size_t got = 0;
  HttpStreamHandler handler;
  handler.on_headers = [](const HttpResponse& res) { return res.status == 200; };
  handler.on_data = [&](std::string_view d) {
    got += d.size();
    return true;
  };
  auto r = HttpClient::Stream(req, handler);
  ASSERT_TRUE(r);
  EXPECT_EQ(got, 1u << 20);
  EXPECT_TRUE(r->body.empty());

  handler.on_data = [](std::string_view) { return false; };
  r = HttpClient::Stream(req, handler);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::Cancelled);
}

TEST_F(HttpClientTest, ConnectionRefusedIsNetworkError) {
  HttpRequest req;
  server_.stop();
  req.url = Url("/hello");
  auto r = HttpClient::Send(req);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::NetworkError);
}

TEST_F(HttpClientTest, BodyCapAbortsWithTheCapInTheMessage) {
  HttpRequest req;
  req.url = Url("/big");
  req.max_body_bytes = 64 << 10;
  auto r = HttpClient::Send(req);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::NetworkError);
  EXPECT_NE(r.error().message.find("exceeds 65536 bytes"), std::string::npos) << r.error().message;
  req.max_body_bytes = 1 << 20;  // exactly the body: allowed
  auto whole = HttpClient::Send(req);
  ASSERT_TRUE(whole) << whole.error().ToString();
  EXPECT_EQ(whole->body.size(), size_t{1} << 20);
}

TEST_F(HttpClientTest, FetchesOnlyHttpUrls) {
  for (const char* url : {"file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1/x"}) {
    HttpRequest req;
    req.url = url;
    auto r = HttpClient::Send(req);
    ASSERT_FALSE(r) << url;
    EXPECT_EQ(r.error().reason, Reason::NetworkError) << url;
    EXPECT_NE(r.error().message.find("only http:// and https://"), std::string::npos)
        << r.error().message;
  }
  EXPECT_TRUE(IsHttpUrl("HTTPS://huggingface.co"));
  EXPECT_FALSE(IsHttpUrl("file:///etc/passwd"));
}

TEST(UrlTest, EncodeDecode) {
  EXPECT_EQ(UrlEncode("refs/pr/1"), "refs%2Fpr%2F1");
  EXPECT_EQ(UrlEncode("a b+c/d.json", "/"), "a%20b%2Bc/d.json");
  EXPECT_EQ(UrlDecode("refs%2Fpr%2F1"), "refs/pr/1");
  EXPECT_EQ(UrlDecode("bad%2"), "bad%2");
}

TEST(UrlTest, LinkNext) {
  EXPECT_EQ(LinkNext(R"(<http://h/api?cursor=2>; rel="next")"), "http://h/api?cursor=2");
  EXPECT_EQ(LinkNext(R"(<http://h/p>; rel="prev", <http://h/n>; rel="next")"), "http://h/n");
  EXPECT_EQ(LinkNext(""), "");
}

TEST(RetryAfterTest, Seconds) {
  std::string s = "7";
  EXPECT_EQ(ParseRetryAfter(&s), std::chrono::milliseconds(7000));
  std::string date = "Wed, 21 Oct 2015 07:28:00 GMT";
  EXPECT_FALSE(ParseRetryAfter(&date).has_value());
  EXPECT_FALSE(ParseRetryAfter(nullptr).has_value());
}

}  // namespace
}  // namespace modelcache
