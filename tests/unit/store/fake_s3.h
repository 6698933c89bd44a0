#pragma once

// An in-memory S3 imitation on 127.0.0.1 for the S3 store's unit tests: path-style object calls
// (PUT with user metadata and x-amz-copy-source, GET with Range, HEAD, DELETE), ListObjectsV2 with
// a prefix (and encoding-type=url, encoded as AWS does), and the multipart calls. It does not
// check signatures (radosgw does, in the integration tests); it records every request so that
// tests can see what was sent, and lets a test change stored bytes behind the client's back.

#include <cctype>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>

namespace modelcache::store::testing {

class FakeS3 {
 public:
  struct Object {
    std::string body;
    std::map<std::string, std::string> metadata;  // x-amz-meta-* without the prefix
  };
  struct Request {
    std::string method, key;
    std::string op;  // PutObject, CopyObject, GetObject, HeadObject, ListObjectsV2, UploadPart, …
    std::string authorization;  // the Authorization header (SigV4 credential scope, signature)
  };

  FakeS3() {
    // One request per connection: stop() then never waits for an idle keep-alive connection.
    server_.set_keep_alive_max_count(1);
    server_.set_keep_alive_timeout(1);
    auto handle = [this](const httplib::Request& req, httplib::Response& res) { Handle(req, res); };
    server_.Get(".*", handle);
    server_.Put(".*", handle);
    server_.Post(".*", handle);
    server_.Delete(".*", handle);
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) {
      std::this_thread::yield();
    }
  }
  ~FakeS3() {
    server_.stop();
    thread_.join();
  }
  FakeS3(const FakeS3&) = delete;
  FakeS3& operator=(const FakeS3&) = delete;

  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }

  void CreateBucket(const std::string& bucket) {
    std::lock_guard lock(mu_);
    buckets_[bucket];
  }
  std::map<std::string, Object> Objects(const std::string& bucket) {
    std::lock_guard lock(mu_);
    return buckets_[bucket];
  }
  void SetObject(const std::string& bucket, const std::string& key, Object object) {
    std::lock_guard lock(mu_);
    buckets_[bucket][key] = std::move(object);
  }
  void DeleteObject(const std::string& bucket, const std::string& key) {
    std::lock_guard lock(mu_);
    buckets_[bucket].erase(key);
  }
  std::vector<Request> Requests() {
    std::lock_guard lock(mu_);
    return requests_;
  }
  void ClearRequests() {
    std::lock_guard lock(mu_);
    requests_.clear();
  }
  // Requests of one kind, optionally for keys ending in `suffix`.
  size_t Count(const std::string& op, const std::string& suffix = "") {
    std::lock_guard lock(mu_);
    size_t n = 0;
    for (const auto& r : requests_) {
      if (r.op == op && r.key.size() >= suffix.size() &&
          r.key.compare(r.key.size() - suffix.size(), suffix.size(), suffix) == 0) {
        ++n;
      }
    }
    return n;
  }

 private:
  // The data of an aws-chunked body ("<hex size>;chunk-signature=<sig>\r\n<data>\r\n"…, ending
  // with a 0-size chunk). Signatures are not checked here (radosgw checks them in the S3 tests).
  static std::string DecodeAwsChunked(const std::string& body) {
    std::string data;
    size_t pos = 0;
    while (pos < body.size()) {
      size_t eol = body.find("\r\n", pos);
      if (eol == std::string::npos) {
        break;
      }
      size_t n = std::stoul(body.substr(pos, body.find(';', pos) - pos), nullptr, 16);
      if (n == 0) {
        break;
      }
      data += body.substr(eol + 2, n);
      pos = eol + 2 + n + 2;
    }
    return data;
  }

  static std::string Error(httplib::Response& res, int status, const std::string& code) {
    res.status = status;
    std::string body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>" + code +
                       "</Code><Message>" + code + "</Message></Error>";
    res.set_content(body, "application/xml");
    return code;
  }

  static std::map<std::string, std::string> MetadataOf(const httplib::Request& req) {
    std::map<std::string, std::string> meta;
    for (const auto& [name, value] : req.headers) {
      std::string lower = name;
      for (char& c : lower) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      }
      if (lower.rfind("x-amz-meta-", 0) == 0) {
        meta[lower.substr(11)] = value;
      }
    }
    return meta;
  }

  static std::string Escape(const std::string& s) {
    std::string out;
    for (char c : s) {
      if (c == '&') {
        out += "&amp;";
      } else if (c == '<') {
        out += "&lt;";
      } else {
        out.push_back(c);
      }
    }
    return out;
  }

  // A key in a list answer asked with encoding-type=url, the way AWS writes it: unreserved
  // characters and '/' as they are, a space as '+', every other byte as %XX.
  static std::string UrlEncodeKey(const std::string& key) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    std::string out;
    for (char c : key) {
      auto u = static_cast<unsigned char>(c);
      if (std::isalnum(u) || c == '-' || c == '.' || c == '_' || c == '~' || c == '/') {
        out.push_back(c);
      } else if (c == ' ') {
        out.push_back('+');
      } else {
        out += {'%', kHex[u >> 4], kHex[u & 0xf]};
      }
    }
    return out;
  }

  void Handle(const httplib::Request& req, httplib::Response& res) {
    std::lock_guard lock(mu_);
    std::string path = req.path.substr(1);
    size_t slash = path.find('/');
    std::string bucket = path.substr(0, slash);
    std::string key = slash == std::string::npos ? "" : path.substr(slash + 1);
    Request record{req.method, key, "", req.get_header_value("Authorization")};
    auto b = buckets_.find(bucket);
    if (b == buckets_.end()) {
      record.op = Error(res, 404, "NoSuchBucket");
      requests_.push_back(record);
      return;
    }
    auto& objects = b->second;
    if (req.method == "GET" && key.empty()) {
      record.op = "ListObjectsV2";
      std::string prefix = req.has_param("prefix") ? req.get_param_value("prefix") : "";
      bool url = req.has_param("encoding-type") && req.get_param_value("encoding-type") == "url";
      std::string xml = "<ListBucketResult><IsTruncated>false</IsTruncated>";
      if (url) {
        xml += "<EncodingType>url</EncodingType>";
      }
      for (const auto& [k, o] : objects) {
        if (k.rfind(prefix, 0) == 0) {
          xml += "<Contents><Key>" + (url ? UrlEncodeKey(k) : Escape(k)) + "</Key><Size>" +
                 std::to_string(o.body.size()) + "</Size></Contents>";
        }
      }
      res.set_content(xml + "</ListBucketResult>", "application/xml");
    } else if (req.method == "HEAD" || req.method == "GET") {
      record.op = req.method == "HEAD" ? "HeadObject" : "GetObject";
      auto o = objects.find(key);
      if (o == objects.end()) {
        Error(res, 404, "NoSuchKey");
      } else {
        for (const auto& [name, value] : o->second.metadata) {
          res.set_header("x-amz-meta-" + name, value);
        }
        // httplib answers a Range request itself (206 and the slice).
        res.set_content(o->second.body, "application/octet-stream");
      }
    } else if (req.method == "PUT" && req.has_param("partNumber")) {
      record.op = "UploadPart";
      auto& parts = uploads_[req.get_param_value("uploadId")].parts;
      parts[std::stoi(req.get_param_value("partNumber"))] = req.body;
      res.set_header("ETag", "\"part" + req.get_param_value("partNumber") + "\"");
    } else if (req.method == "PUT" && req.has_header("x-amz-copy-source")) {
      record.op = "CopyObject";
      std::string source =
          httplib::detail::decode_url(req.get_header_value("x-amz-copy-source"), false);
      std::string source_key = source.substr(bucket.size() + 2);  // "/bucket/key"
      auto o = objects.find(source_key);
      if (o == objects.end()) {
        Error(res, 404, "NoSuchKey");
      } else {
        objects[key] = o->second;
        res.set_content("<CopyObjectResult><ETag>\"c\"</ETag></CopyObjectResult>",
                        "application/xml");
      }
    } else if (req.method == "PUT") {
      record.op = "PutObject";
      bool chunked =
          req.get_header_value("x-amz-content-sha256") == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
      objects[key] = Object{chunked ? DecodeAwsChunked(req.body) : req.body, MetadataOf(req)};
    } else if (req.method == "POST" && req.has_param("uploads")) {
      record.op = "CreateMultipartUpload";
      std::string id = "upload" + std::to_string(++next_upload_);
      uploads_[id] = Upload{key, MetadataOf(req), {}};
      res.set_content("<InitiateMultipartUploadResult><UploadId>" + id +
                          "</UploadId></InitiateMultipartUploadResult>",
                      "application/xml");
    } else if (req.method == "POST" && req.has_param("uploadId")) {
      record.op = "CompleteMultipartUpload";
      auto u = uploads_.find(req.get_param_value("uploadId"));
      if (u == uploads_.end()) {
        Error(res, 404, "NoSuchUpload");
      } else {
        Object o{"", u->second.metadata};
        for (const auto& [n, part] : u->second.parts) {
          o.body += part;
        }
        objects[u->second.key] = std::move(o);
        uploads_.erase(u);
        // Like radosgw 16: an empty ETag in the answer.
        res.set_content(
            "<CompleteMultipartUploadResult><ETag></ETag>"
            "</CompleteMultipartUploadResult>",
            "application/xml");
      }
    } else if (req.method == "DELETE" && req.has_param("uploadId")) {
      record.op = "AbortMultipartUpload";
      uploads_.erase(req.get_param_value("uploadId"));
      res.status = 204;
    } else if (req.method == "DELETE") {
      record.op = "DeleteObject";
      objects.erase(key);
      res.status = 204;
    }
    requests_.push_back(record);
  }

  struct Upload {
    std::string key;
    std::map<std::string, std::string> metadata;
    std::map<int, std::string> parts;
  };

  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::map<std::string, std::map<std::string, Object>> buckets_;
  std::map<std::string, Upload> uploads_;
  std::vector<Request> requests_;
  int next_upload_ = 0;
};

}  // namespace modelcache::store::testing
