// S3Client against a scripted HTTP server on 127.0.0.1: what goes on the wire (path encoding,
// signed headers, checksums, query parameters, XML bodies), how answers are parsed, how errors map
// and which are retried. The signature itself is checked against published vectors in
// sigv4_test.cpp; here only that the wire request is the one that was signed. A real S3 (radosgw)
// is the independent check: tests/fixtures/radosgw/start-radosgw.sh.

#include "store/s3_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "common/sha256.h"
#include "store/sigv4.h"
#include "tests/unit/store/test_util.h"

namespace modelcache::store {
namespace {


struct Received {
  std::string method;
  std::string target;                          // path and query as sent
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
};

struct Reply {
  int status = 200;
  std::string body;
  HttpHeaders headers;
};

// One request per connection (Connection: close), handled on one thread.
class ScriptedServer {
 public:
  explicit ScriptedServer(std::function<Reply(const Received&)> handler)
      : handler_(std::move(handler)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(::listen(fd_, 16), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { Loop(); });
  }
  ~ScriptedServer() {
    ::shutdown(fd_, SHUT_RDWR);
    thread_.join();
    ::close(fd_);
  }
  ScriptedServer(const ScriptedServer&) = delete;
  ScriptedServer& operator=(const ScriptedServer&) = delete;

  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::string host() const { return "127.0.0.1:" + std::to_string(port_); }
  std::vector<Received> requests() const {
    std::lock_guard lock(mu_);
    return requests_;
  }

 private:
  void Loop() {
    for (;;) {
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      Serve(c);
      ::close(c);
    }
  }

  void Serve(int c) {
    std::string data;
    char buf[65536];
    size_t header_end;
    while ((header_end = data.find("\r\n\r\n")) == std::string::npos) {
      ssize_t n = ::read(c, buf, sizeof(buf));
      if (n <= 0) return;
      data.append(buf, static_cast<size_t>(n));
    }
    Received r;
    std::string head = data.substr(0, header_end);
    size_t line_end = head.find("\r\n");
    std::string request_line = head.substr(0, line_end);
    size_t sp1 = request_line.find(' ');
    size_t sp2 = request_line.rfind(' ');
    r.method = request_line.substr(0, sp1);
    r.target = request_line.substr(sp1 + 1, sp2 - sp1 - 1);
    size_t pos = line_end == std::string::npos ? head.size() : line_end + 2;
    while (pos < head.size()) {
      size_t e = head.find("\r\n", pos);
      if (e == std::string::npos) e = head.size();
      std::string line = head.substr(pos, e - pos);
      size_t colon = line.find(':');
      std::string name = line.substr(0, colon);
      for (char& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      std::string value = line.substr(colon + 1);
      value.erase(0, value.find_first_not_of(' '));
      r.headers[name] = value;
      pos = e + 2;
    }
    size_t length = r.headers.count("content-length") ? std::stoul(r.headers["content-length"]) : 0;
    r.body = data.substr(header_end + 4);
    while (r.body.size() < length) {
      ssize_t n = ::read(c, buf, sizeof(buf));
      if (n <= 0) break;
      r.body.append(buf, static_cast<size_t>(n));
    }
    Reply reply = handler_(r);
    {
      std::lock_guard lock(mu_);
      requests_.push_back(r);
    }
    std::string out = "HTTP/1.1 " + std::to_string(reply.status) + " X\r\nConnection: close\r\n";
    bool has_length = false;
    for (const auto& [name, value] : reply.headers) {
      out += name + ": " + value + "\r\n";
      if (name == "Content-Length") has_length = true;
    }
    if (!has_length) out += "Content-Length: " + std::to_string(reply.body.size()) + "\r\n";
    out += "\r\n";
    if (r.method != "HEAD") out += reply.body;
    size_t sent = 0;
    while (sent < out.size()) {
      ssize_t n = ::write(c, out.data() + sent, out.size() - sent);
      if (n <= 0) return;
      sent += static_cast<size_t>(n);
    }
  }

  std::function<Reply(const Received&)> handler_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
  mutable std::mutex mu_;
  std::vector<Received> requests_;
};

// 2013-05-24T00:00:00Z.
const auto kNow = std::chrono::system_clock::time_point(std::chrono::seconds(1369353600));

struct Harness {
  explicit Harness(std::function<Reply(const Received&)> handler) : server(std::move(handler)) {}
  S3Client Client(int max_attempts = 3) {
    AwsConfig config;
    config.credentials = {"AKIAIOSFODNN7EXAMPLE", testing::kExampleSecretKey, ""};
    config.region = "us-east-1";
    config.endpoint_url = server.endpoint();
    config.custom_endpoint = true;
    S3ClientOptions options;
    options.now = [] { return kNow; };
    options.sleep = [this](std::chrono::milliseconds d, std::stop_token) { sleeps.push_back(d); };
    options.max_attempts = max_attempts;
    options.jitter = 0;  // the exact backoff sequence
    return S3Client(config, options);
  }
  ScriptedServer server;
  std::vector<std::chrono::milliseconds> sleeps;
};

std::string ErrorXml(const std::string& code, const std::string& message) {
  return "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>" + code + "</Code><Message>" +
         message + "</Message><RequestId>r</RequestId></Error>";
}

// Splits "/p?a=1&b" into the decoded path and query pairs, to re-sign what arrived.
SigningRequest FromWire(const Received& r, const std::string& host,
                        const std::string& signed_headers) {
  SigningRequest s;
  s.method = r.method;
  size_t q = r.target.find('?');
  s.path = UrlDecode(r.target.substr(0, q));
  if (q != std::string::npos) {
    std::string query = r.target.substr(q + 1);
    size_t pos = 0;
    while (pos <= query.size()) {
      size_t amp = query.find('&', pos);
      if (amp == std::string::npos) amp = query.size();
      std::string pair = query.substr(pos, amp - pos);
      size_t eq = pair.find('=');
      s.query.emplace_back(UrlDecode(pair.substr(0, eq)),
                           eq == std::string::npos ? "" : UrlDecode(pair.substr(eq + 1)));
      pos = amp + 1;
    }
  }
  size_t start = 0;
  while (start <= signed_headers.size()) {
    size_t semi = signed_headers.find(';', start);
    if (semi == std::string::npos) semi = signed_headers.size();
    std::string name = signed_headers.substr(start, semi - start);
    if (name == "host") {
      s.headers.emplace_back("host", host);
    } else if (name != "x-amz-date") {
      s.headers.emplace_back(name, r.headers.at(name));
    }
    start = semi + 1;
  }
  s.payload_hash = r.headers.at("x-amz-content-sha256");
  return s;
}

// S3 API reference, "Authenticating Requests: Using Query Parameters": the example presigned URL
// of GET examplebucket/test.txt at 2013-05-24T00:00:00Z, valid for 86400 s, virtual-hosted on
// AWS's own endpoint.
TEST(S3ClientTest, PresignGetObjectIsTheAwsDocumentationExample) {
  AwsConfig config;
  config.credentials = {"AKIAIOSFODNN7EXAMPLE", testing::kExampleSecretKey, ""};
  config.region = "us-east-1";
  config.endpoint_url = "https://s3.amazonaws.com";
  S3ClientOptions options;
  options.now = [] { return kNow; };
  S3Client client(config, options);
  auto url = client.PresignGetObject("examplebucket", "test.txt", std::chrono::seconds(86400));
  ASSERT_TRUE(url) << url.error().ToString();
  EXPECT_EQ(*url,
            "https://examplebucket.s3.amazonaws.com/test.txt"
            "?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
            "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
            "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
}

TEST(S3ClientTest, PresignedUrlIsFetchedWithoutHeadersPathStyleWithTheSessionToken) {
  Received seen;
  Harness h([&](const Received& r) {
    seen = r;
    return Reply{206, "bc", {{"Content-Range", "bytes 1-2/4"}}};
  });
  AwsConfig config;
  config.credentials = {"AKIAIOSFODNN7EXAMPLE", testing::kExampleSecretKey, "session/token+="};
  config.region = "eu-west-3";
  config.endpoint_url = h.server.endpoint();
  config.custom_endpoint = true;
  S3ClientOptions options;
  options.now = [] { return kNow; };
  S3Client client(config, options);
  auto url = client.PresignGetObject("bucket", "dir/a b.bin", std::chrono::seconds(3600));
  ASSERT_TRUE(url) << url.error().ToString();
  HttpRequest get;
  get.url = *url;
  get.headers = {{"Range", "bytes=1-2"}};
  auto answer = HttpClient::Send(get);
  ASSERT_TRUE(answer) << answer.error().ToString();
  EXPECT_EQ(answer->body, "bc");
  // Path-style, the key encoded once; the credential, scope, lifetime and session token in the
  // query; nothing in headers.
  EXPECT_EQ(seen.method, "GET");
  EXPECT_EQ(seen.target.rfind("/bucket/dir/a%20b.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256&", 0), 0U)
      << seen.target;
  EXPECT_NE(seen.target.find("X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Feu-west-3%2Fs3%2F"
                             "aws4_request"),
            std::string::npos)
      << seen.target;
  EXPECT_NE(seen.target.find("&X-Amz-Expires=3600&"), std::string::npos);
  EXPECT_NE(seen.target.find("&X-Amz-Security-Token=session%2Ftoken%2B%3D&"), std::string::npos)
      << seen.target;
  EXPECT_EQ(seen.headers.count("authorization"), 0U);
  EXPECT_EQ(seen.target.find(testing::kExampleSecretKey), std::string::npos);
  // The signature is the one PresignQuery computes for what arrived.
  SigningRequest signing;
  signing.method = "GET";
  signing.path = "/bucket/dir/a b.bin";
  signing.headers = {{"host", seen.headers.at("host")}};
  std::string query = PresignQuery(signing, config.credentials, {"eu-west-3", "s3", kNow},
                                   std::chrono::seconds(3600));
  EXPECT_EQ(seen.target.substr(seen.target.find('?') + 1), query);
}

TEST(S3ClientTest, PutObjectSendsWhatItSignedWithChecksums) {
  Harness h([](const Received&) { return Reply{200, "", {{"ETag", "\"abc\""}}}; });
  S3Client client = h.Client();
  std::string body = "hello world";
  ASSERT_TRUE(client.PutObject("bucket", "dir/a b+c.txt", body));
  ASSERT_TRUE(client.PutObject("bucket", "k", body, PutChecksum::Sha256));
  auto requests = h.server.requests();
  ASSERT_EQ(requests.size(), 2u);
  const Received& r = requests[0];
  EXPECT_EQ(r.method, "PUT");
  EXPECT_EQ(r.target, "/bucket/dir/a%20b%2Bc.txt");
  EXPECT_EQ(r.body, body);
  EXPECT_EQ(r.headers.at("x-amz-content-sha256"), Sha256Hex(body));
  EXPECT_EQ(r.headers.at("content-md5"), "XrY7u+Ae7tCTyyK7j1rNww==");  // RFC 1864 style MD5
  EXPECT_EQ(r.headers.at("x-amz-date"), "20130524T000000Z");
  const std::string& auth = r.headers.at("authorization");
  const std::string prefix =
      "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
      "SignedHeaders=content-md5;content-type;host;x-amz-content-sha256;x-amz-date, Signature=";
  ASSERT_EQ(auth.substr(0, prefix.size()), prefix);
  SignedRequest again = SignRequest(
      FromWire(r, h.server.host(), "content-md5;content-type;host;x-amz-content-sha256;x-amz-date"),
      {"AKIAIOSFODNN7EXAMPLE", testing::kExampleSecretKey, ""}, {"us-east-1", "s3", kNow});
  EXPECT_EQ(auth.substr(prefix.size()), again.signature);

  EXPECT_EQ(requests[1].headers.at("x-amz-checksum-sha256"),
            "uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek=");
  EXPECT_EQ(requests[1].headers.count("content-md5"), 0u);
}

TEST(S3ClientTest, ErrorsCarryTheS3CodeAndNeverTheSecret) {
  Harness h([](const Received&) {
    return Reply{403,
                 ErrorXml("SignatureDoesNotMatch",
                          "The request signature we calculated "
                          "does not match &amp; so on"),
                 {}};
  });
  S3Client client = h.Client();
  auto r = client.GetObject("bucket", "key");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::StorageError);
  EXPECT_EQ(
      r.error().message,
      "S3 GetObject s3://bucket/key: HTTP 403 SignatureDoesNotMatch: The request signature we "
      "calculated does not match & so on");
  EXPECT_EQ(r.error().ToString().find(testing::kExampleSecretKey), std::string::npos);
  EXPECT_EQ(h.server.requests().size(), 1u);  // not retried
  EXPECT_TRUE(h.sleeps.empty());
}

TEST(S3ClientTest, NetworkErrorsNeverCarryTheSecret) {
  uint16_t port;
  {
    ScriptedServer closed([](const Received&) { return Reply{}; });
    port = static_cast<uint16_t>(std::stoi(closed.endpoint().substr(17)));
  }
  AwsConfig config;
  config.credentials = {"AKIAIOSFODNN7EXAMPLE", testing::kExampleSecretKey, "session-secret"};
  config.region = "us-east-1";
  config.endpoint_url = "http://127.0.0.1:" + std::to_string(port);
  config.custom_endpoint = true;
  S3ClientOptions options;
  int sleeps = 0;
  options.sleep = [&](std::chrono::milliseconds, std::stop_token) { ++sleeps; };
  options.max_attempts = 2;
  S3Client client(config, options);
  auto r = client.HeadObject("bucket", "key");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::NetworkError);
  EXPECT_EQ(sleeps, 1);
  EXPECT_NE(r.error().message.find("s3://bucket/key"), std::string::npos);
  EXPECT_EQ(r.error().message.find(testing::kExampleSecretKey), std::string::npos);
  EXPECT_EQ(r.error().message.find("session-secret"), std::string::npos);
}

TEST(S3ClientTest, EndpointWithoutSchemeIsInvalidSpec) {
  AwsConfig config;
  config.credentials = {"AKIAIOSFODNN7EXAMPLE", testing::kExampleSecretKey, ""};
  config.region = "us-east-1";
  config.endpoint_url = "127.0.0.1:1";
  auto r = S3Client(config).GetObject("bucket", "key");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::InvalidSpec);
}

TEST(S3ClientTest, SlowDownIsRetriedWithExponentialBackoff) {
  int calls = 0;
  Harness h([&](const Received&) {
    if (++calls <= 2)
      return Reply{503, ErrorXml("SlowDown", "Please reduce your request rate."), {}};
    return Reply{200, "data", {}};
  });
  S3Client client = h.Client(5);
  auto r = client.GetObject("bucket", "key");
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, "data");
  EXPECT_EQ(h.server.requests().size(), 3u);
  ASSERT_EQ(h.sleeps.size(), 2u);
  EXPECT_EQ(h.sleeps[0], std::chrono::milliseconds(200));
  EXPECT_EQ(h.sleeps[1], std::chrono::milliseconds(400));
}

TEST(S3ClientTest, PersistentSlowDownFailsAfterMaxAttemptsHonouringRetryAfter) {
  Harness h([](const Received&) {
    return Reply{
        503, ErrorXml("SlowDown", "Please reduce your request rate."), {{"Retry-After", "2"}}};
  });
  S3Client client = h.Client(3);
  auto r = client.DeleteObject("bucket", "key");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::StorageError);
  EXPECT_NE(r.error().message.find("HTTP 503 SlowDown"), std::string::npos);
  ASSERT_TRUE(r.error().retry_after.has_value());
  EXPECT_EQ(h.server.requests().size(), 3u);
  EXPECT_EQ(h.sleeps, (std::vector<std::chrono::milliseconds>{std::chrono::seconds(2),
                                                              std::chrono::seconds(2)}));
}

TEST(S3ClientTest, GetObjectRangeAndHeadObject) {
  Harness h([](const Received& r) {
    if (r.method == "HEAD" && r.target == "/bucket/missing") return Reply{404, "", {}};
    if (r.method == "HEAD") {
      return Reply{200,
                   "",
                   {{"Content-Length", "1234"},
                    {"ETag", "\"0123\""},
                    {"x-amz-checksum-sha256", "abc="},
                    {"Last-Modified", "Fri, 24 May 2013 00:00:00 GMT"}}};
    }
    return Reply{206, "0123456789", {}};
  });
  S3Client client = h.Client();
  auto got = client.GetObject("bucket", "test.txt", ByteRange{0, 9});
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, "0123456789");
  ASSERT_TRUE(client.GetObject("bucket", "test.txt", ByteRange{100, std::nullopt}));
  auto missing = client.HeadObject("bucket", "missing");
  ASSERT_TRUE(missing);
  EXPECT_FALSE(missing->has_value());
  auto info = client.HeadObject("bucket", "present");
  ASSERT_TRUE(info);
  ASSERT_TRUE(info->has_value());
  EXPECT_EQ((*info)->size, 1234u);
  EXPECT_EQ((*info)->etag, "0123");
  EXPECT_EQ((*info)->checksum_sha256, "abc=");
  auto requests = h.server.requests();
  ASSERT_EQ(requests.size(), 4u);
  EXPECT_EQ(requests[0].headers.at("range"), "bytes=0-9");
  EXPECT_NE(requests[0].headers.at("authorization").find("SignedHeaders=host;range;"),
            std::string::npos);
  EXPECT_EQ(requests[1].headers.at("range"), "bytes=100-");
  EXPECT_EQ(requests[3].headers.at("x-amz-checksum-mode"), "ENABLED");
}

TEST(S3ClientTest, HeadObjectErrorCarriesTheS3CodeLearntFromAOneByteGet) {
  Harness h([](const Received& r) {
    if (r.method == "HEAD") return Reply{403, "", {}};
    return Reply{403, ErrorXml("SignatureDoesNotMatch", "The request signature we calculated"), {}};
  });
  S3Client client = h.Client(1);
  auto r = client.HeadObject("bucket", "key");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::StorageError);
  EXPECT_NE(r.error().message.find("HTTP 403 SignatureDoesNotMatch"), std::string::npos)
      << r.error().message;
  EXPECT_EQ(r.error().message.find(testing::kExampleSecretKey), std::string::npos);
  auto requests = h.server.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[1].method, "GET");
  EXPECT_EQ(requests[1].headers.at("range"), "bytes=0-0");
}

TEST(S3ClientTest, MetadataIsSentSignedAndReadBackAndCopyObjectNamesItsSource) {
  Harness h([](const Received& r) {
    if (r.method == "HEAD") {
      return Reply{200, "", {{"Content-Length", "3"}, {"x-amz-meta-sha256", "abc"}}};
    }
    if (r.method == "POST") {
      return Reply{200, "<InitiateMultipartUploadResult><UploadId>u1</UploadId>"
                        "</InitiateMultipartUploadResult>", {}};
    }
    return Reply{200, "<CopyObjectResult><ETag>\"e\"</ETag></CopyObjectResult>", {}};
  });
  S3Client client = h.Client();
  ASSERT_TRUE(client.PutObject("bucket", "k", "abc", PutChecksum::ContentMd5, {},
                               {{"sha256", "abc"}}));
  ASSERT_TRUE(client.CreateMultipartUpload("bucket", "big", {}, {{"sha256", "def"}}));
  auto info = client.HeadObject("bucket", "k");
  ASSERT_TRUE(info && info->has_value());
  EXPECT_EQ((*info)->Meta("sha256"), "abc");
  ASSERT_TRUE(client.CopyObject("bucket", "a/b c", "d"));
  auto requests = h.server.requests();
  ASSERT_EQ(requests.size(), 4u);
  EXPECT_EQ(requests[0].headers.at("x-amz-meta-sha256"), "abc");
  EXPECT_NE(requests[0].headers.at("authorization").find("x-amz-meta-sha256"), std::string::npos);
  EXPECT_EQ(requests[1].headers.at("x-amz-meta-sha256"), "def");
  EXPECT_EQ(requests[3].method, "PUT");
  EXPECT_EQ(requests[3].target, "/bucket/d");
  EXPECT_EQ(requests[3].headers.at("x-amz-copy-source"), "/bucket/a/b%20c");
  EXPECT_EQ(requests[3].headers.at("x-amz-metadata-directive"), "COPY");
}

TEST(S3ClientTest, CopyObjectErrorInA200AnswerIsAFailure) {
  Harness h([](const Received&) {
    return Reply{200, ErrorXml("InternalError", "copy failed"), {}};
  });
  S3Client client = h.Client(1);
  auto r = client.CopyObject("bucket", "a", "b");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("InternalError"), std::string::npos) << r.error().message;
}

TEST(S3ClientTest, ListObjectsV2FollowsContinuation) {
  Harness h([](const Received& r) {
    if (r.target.find("continuation-token=") == std::string::npos) {
      return Reply{200,
                   "<ListBucketResult><Name>bucket</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount>"
                   "<IsTruncated>true</IsTruncated><NextContinuationToken>tok/+=</"
                   "NextContinuationToken><Contents><Key>p/a&amp;b</Key><Size>3</Size><ETag>&quot;"
                   "e1&quot;</ETag></Contents><Contents><Key>p/c</Key><Size>10</Size><ETag>\"e2\""
                   "</ETag></Contents><CommonPrefixes><Prefix>p/d/</Prefix></CommonPrefixes>"
                   "</ListBucketResult>",
                   {}};
    }
    return Reply{200,
                 "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>p/z</Key>"
                 "<Size>0</Size><ETag>\"e3\"</ETag></Contents></ListBucketResult>",
                 {}};
  });
  S3Client client = h.Client();
  auto page = client.ListObjectsV2("bucket", "p/", "", "/");
  ASSERT_TRUE(page) << page.error().ToString();
  ASSERT_EQ(page->objects.size(), 2u);
  EXPECT_EQ(page->objects[0].key, "p/a&b");
  EXPECT_EQ(page->objects[0].size, 3u);
  EXPECT_EQ(page->objects[0].etag, "e1");
  EXPECT_EQ(page->objects[1].size, 10u);
  EXPECT_EQ(page->common_prefixes, std::vector<std::string>{"p/d/"});
  EXPECT_EQ(page->next_continuation_token, "tok/+=");
  auto last = client.ListObjectsV2("bucket", "p/", page->next_continuation_token);
  ASSERT_TRUE(last);
  ASSERT_EQ(last->objects.size(), 1u);
  EXPECT_EQ(last->next_continuation_token, "");
  auto requests = h.server.requests();
  EXPECT_EQ(requests[0].target,
            "/bucket?delimiter=%2F&encoding-type=url&list-type=2&max-keys=1000&prefix=p%2F");
  EXPECT_EQ(requests[1].target,
            "/bucket?continuation-token=tok%2F%2B%3D&encoding-type=url&list-type=2&max-keys=1000&"
            "prefix=p%2F");
}

// Asked with encoding-type=url, S3 encodes keys and prefixes: AWS writes a space as '+',
// radosgw as %20; a '+' of the key is %2B in both.
TEST(S3ClientTest, ListObjectsV2DecodesUrlEncodedKeys) {
  Harness h([](const Received&) {
    return Reply{200,
                 "<ListBucketResult><EncodingType>url</EncodingType><Prefix>p%2F</Prefix>"
                 "<IsTruncated>false</IsTruncated>"
                 "<Contents><Key>p/notes+with%20space%2Bplus%25%3D%26.txt</Key><Size>1</Size>"
                 "</Contents><Contents><Key>p/%E6%97%A5%E6%9C%AC.json</Key><Size>2</Size>"
                 "</Contents><CommonPrefixes><Prefix>p/a+b%2B/</Prefix></CommonPrefixes>"
                 "</ListBucketResult>",
                 {}};
  });
  S3Client client = h.Client();
  auto page = client.ListObjectsV2("bucket", "p/", "", "/");
  ASSERT_TRUE(page) << page.error().ToString();
  ASSERT_EQ(page->objects.size(), 2u);
  EXPECT_EQ(page->objects[0].key, "p/notes with space+plus%=&.txt");
  EXPECT_EQ(page->objects[1].key, "p/\xE6\x97\xA5\xE6\x9C\xAC.json");
  EXPECT_EQ(page->common_prefixes, std::vector<std::string>{"p/a b+/"});
}

TEST(S3ClientTest, MultipartUploadListDecodesUrlEncodedKeys) {
  Harness h([](const Received&) {
    return Reply{200,
                 "<ListMultipartUploadsResult><EncodingType>url</EncodingType>"
                 "<IsTruncated>false</IsTruncated><Upload><Key>k/a+b%2Bc</Key>"
                 "<UploadId>u1</UploadId></Upload></ListMultipartUploadsResult>",
                 {}};
  });
  S3Client client = h.Client();
  auto uploads = client.ListMultipartUploads("bucket", "k/");
  ASSERT_TRUE(uploads) << uploads.error().ToString();
  ASSERT_EQ(uploads->size(), 1u);
  EXPECT_EQ((*uploads)[0].key, "k/a b+c");
  EXPECT_NE(h.server.requests()[0].target.find("encoding-type=url"), std::string::npos);
}

TEST(S3ClientTest, MultipartUploadCalls) {
  int list_calls = 0;
  int completes = 0;
  Harness h([&](const Received& r) {
    if (r.method == "POST" && r.target.find("uploads=") != std::string::npos) {
      return Reply{200,
                   "<InitiateMultipartUploadResult><Bucket>bucket</Bucket><Key>big</Key><UploadId>"
                   "up-1</UploadId></InitiateMultipartUploadResult>",
                   {}};
    }
    if (r.method == "PUT") return Reply{200, "", {{"ETag", "\"etag-" + r.body + "\""}}};
    if (r.method == "GET") {
      if (++list_calls == 1) {
        return Reply{200,
                     "<ListPartsResult><UploadId>up-1</UploadId><IsTruncated>true</IsTruncated>"
                     "<NextPartNumberMarker>2</NextPartNumberMarker><Part><PartNumber>2</"
                     "PartNumber><ETag>\"b\"</ETag><Size>5</Size></Part><Part><PartNumber>1</"
                     "PartNumber><ETag>\"a\"</ETag><Size>7</Size></Part></ListPartsResult>",
                     {}};
      }
      return Reply{200,
                   "<ListPartsResult><IsTruncated>false</IsTruncated><Part><PartNumber>3</"
                   "PartNumber><ETag>\"c\"</ETag><Size>1</Size></Part></ListPartsResult>",
                   {}};
    }
    if (r.method == "POST") {
      // The first Complete answers 200 with an error body, which must not count as success.
      if (++completes == 1) return Reply{200, ErrorXml("InternalError", "try again"), {}};
      return Reply{
          200, "<CompleteMultipartUploadResult><ETag></ETag></CompleteMultipartUploadResult>", {}};
    }
    return Reply{204, "", {}};
  });
  S3Client client = h.Client();
  auto id = client.CreateMultipartUpload("bucket", "big");
  ASSERT_TRUE(id) << id.error().ToString();
  EXPECT_EQ(*id, "up-1");
  auto part = client.UploadPart("bucket", "big", *id, 1, "xyz");
  ASSERT_TRUE(part) << part.error().ToString();
  EXPECT_EQ(part->number, 1);
  EXPECT_EQ(part->etag, "etag-xyz");
  EXPECT_EQ(part->size, 3u);
  auto parts = client.ListParts("bucket", "big", *id);
  ASSERT_TRUE(parts) << parts.error().ToString();
  ASSERT_EQ(parts->size(), 3u);
  EXPECT_EQ((*parts)[0].number, 1);
  EXPECT_EQ((*parts)[0].etag, "a");
  EXPECT_EQ((*parts)[0].size, 7u);
  EXPECT_EQ((*parts)[2].number, 3);
  ASSERT_TRUE(client.CompleteMultipartUpload("bucket", "big", *id, {{1, "a", 7}, {2, "b\"<", 5}}));
  ASSERT_TRUE(client.AbortMultipartUpload("bucket", "big", *id));

  auto requests = h.server.requests();
  ASSERT_EQ(requests.size(), 7u);
  EXPECT_EQ(requests[0].target, "/bucket/big?uploads=");
  EXPECT_EQ(requests[1].target, "/bucket/big?partNumber=1&uploadId=up-1");
  EXPECT_EQ(requests[1].headers.at("content-md5"), "0W+zbwkR+HiZjBNhka9wXg==");
  EXPECT_EQ(requests[2].target, "/bucket/big?uploadId=up-1");
  EXPECT_EQ(requests[3].target, "/bucket/big?part-number-marker=2&uploadId=up-1");
  EXPECT_EQ(requests[4].body, requests[5].body);  // the 200-with-<Error> answer was retried
  EXPECT_EQ(requests[5].body,
            "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Part>"
            "<PartNumber>1</PartNumber><ETag>&quot;a&quot;</ETag></Part><Part><PartNumber>2</"
            "PartNumber><ETag>&quot;b&quot;&lt;&quot;</ETag></Part></CompleteMultipartUpload>");
  EXPECT_EQ(requests[5].headers.at("content-type"), "application/xml");
  EXPECT_EQ(requests[6].method, "DELETE");
  EXPECT_EQ(requests[6].target, "/bucket/big?uploadId=up-1");
}

TEST(S3XmlTest, ExtractsAndDecodesText) {
  std::string xml = "<A><Code>x&lt;y&#65;&#x42;&#x1234;</Code><Empty/><Code>second</Code></A>";
  EXPECT_EQ(XmlText(xml, "Code"), "x<yAB\xE1\x88\xB4");
  EXPECT_EQ(XmlText(xml, "Empty"), "");
  EXPECT_EQ(XmlText(xml, "Missing"), std::nullopt);
  EXPECT_EQ(XmlText("<Code>unterminated", "Code"), std::nullopt);
  EXPECT_EQ(XmlText("<Code>a &bogus; b</Code>", "Code"), "a &bogus; b");
  auto elements = XmlElements(xml, "Code");
  ASSERT_EQ(elements.size(), 2u);
  EXPECT_EQ(elements[1], "second");
  EXPECT_EQ(XmlEscape("<a&'\">"), "&lt;a&amp;&apos;&quot;&gt;");
  EXPECT_EQ(Base64(""), "");
  EXPECT_EQ(Base64("f"), "Zg==");
  EXPECT_EQ(Base64("foobar"), "Zm9vYmFy");
}

}  // namespace
}  // namespace modelcache::store
