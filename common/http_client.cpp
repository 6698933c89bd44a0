#include "common/http_client.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <optional>

#include <curl/curl.h>

#include "common/strings.h"

namespace modelcache {
namespace {

// A header field's name or value without the optional white space around it (spaces and tabs)
// and, at the end of the line, its CRLF.
std::string_view TrimHeaderPart(std::string_view s) { return TrimRight(TrimLeft(s, " \t")); }

struct GlobalInit {
  GlobalInit() { curl_global_init(CURL_GLOBAL_DEFAULT); }
};

// One easy handle per thread: curl keeps the connection cache on the handle, so consecutive
// requests from one worker reuse their keep-alive connections.
class ThreadHandle {
 public:
  ThreadHandle() {
    static GlobalInit init;
    handle_ = curl_easy_init();
  }
  ~ThreadHandle() { curl_easy_cleanup(handle_); }
  ThreadHandle(const ThreadHandle&) = delete;
  ThreadHandle& operator=(const ThreadHandle&) = delete;
  CURL* get() { return handle_; }

 private:
  CURL* handle_;
};

struct Transfer {
  HttpResponse* response = nullptr;
  HttpStreamHandler* handler = nullptr;
  std::stop_token stop;
  CURL* curl = nullptr;
  bool headers_delivered = false;
  bool aborted_by_handler = false;
  bool in_headers = true;
  size_t header_bytes = 0;
  bool headers_too_large = false;
  uint64_t max_body = 0;
  bool body_too_large = false;
  // Request body from an HttpBodySource.
  const HttpBodySource* source = nullptr;
  uint64_t source_offset = 0;
  std::optional<Error> source_error;
};

size_t OnRead(char* buffer, size_t size, size_t nitems, void* user) {
  auto* t = static_cast<Transfer*>(user);
  if (t->stop.stop_requested()) {
    return CURL_READFUNC_ABORT;
  }
  uint64_t left = t->source->size - t->source_offset;
  size_t want = static_cast<size_t>(std::min<uint64_t>(left, size * nitems));
  if (want == 0) {
    return 0;
  }
  auto n = t->source->read(t->source_offset, buffer, want);
  if (!n) {
    t->source_error = n.error();
    return CURL_READFUNC_ABORT;
  }
  if (*n == 0 || *n > want) {
    t->source_error = Error(Reason::Internal, "request body source returned " +
                                                  std::to_string(*n) + " bytes at offset " +
                                                  std::to_string(t->source_offset) + " of " +
                                                  std::to_string(t->source->size));
    return CURL_READFUNC_ABORT;
  }
  t->source_offset += *n;
  return *n;
}

int OnSeek(void* user, curl_off_t offset, int origin) {
  auto* t = static_cast<Transfer*>(user);
  if (origin != SEEK_SET || offset < 0 || static_cast<uint64_t>(offset) > t->source->size) {
    return CURL_SEEKFUNC_CANTSEEK;
  }
  t->source_offset = static_cast<uint64_t>(offset);
  return CURL_SEEKFUNC_OK;
}

size_t OnHeader(char* data, size_t size, size_t nitems, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t n = size * nitems;
  std::string_view line(data, n);
  if (line.rfind("HTTP/", 0) == 0) {
    // A new response (after a redirect or a 100 Continue): forget the previous headers.
    t->response->headers.clear();
    t->in_headers = true;
    t->header_bytes = n;
    return n;
  }
  t->header_bytes += n;
  if (t->header_bytes > kMaxResponseHeaderBytes) {
    t->headers_too_large = true;
    return 0;  // aborts the transfer
  }
  auto colon = line.find(':');
  if (colon != std::string_view::npos) {
    t->response->headers.emplace_back(AsciiLower(TrimHeaderPart(line.substr(0, colon))),
                                      std::string(TrimHeaderPart(line.substr(colon + 1))));
  }
  return n;
}

size_t OnBody(char* data, size_t size, size_t nmemb, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t n = size * nmemb;
  if (t->handler == nullptr) {
    if (t->max_body > 0 && t->response->body.size() + n > t->max_body) {
      t->body_too_large = true;
      return 0;  // aborts the transfer
    }
    t->response->body.append(data, n);
    return n;
  }
  if (!t->headers_delivered) {
    t->headers_delivered = true;
    if (t->handler->on_headers) {
      curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &t->response->status);
      if (!t->handler->on_headers(*t->response)) {
        t->aborted_by_handler = true;
        return 0;
      }
    }
  }
  if (t->handler->on_data && !t->handler->on_data(std::string_view(data, n))) {
    t->aborted_by_handler = true;
    return 0;
  }
  return n;
}

int OnProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  return t->stop.stop_requested() ? 1 : 0;
}

Result<HttpResponse> Perform(const HttpRequest& req, HttpStreamHandler* handler,
                             std::stop_token stop) {
  thread_local ThreadHandle thread_handle;
  CURL* curl = thread_handle.get();
  curl_easy_reset(curl);

  HttpResponse response;
  Transfer t;
  t.response = &response;
  t.handler = handler;
  t.stop = stop;
  t.curl = curl;
  t.max_body = req.max_body_bytes;

  curl_easy_setopt(curl, CURLOPT_URL, req.url.c_str());
  // file://, ftp:// and the rest of curl's schemes are never fetched, not even after a redirect.
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  // Bodies are taken as sent: nothing is decompressed, so no answer can grow in memory.
  curl_easy_setopt(curl, CURLOPT_HTTP_CONTENT_DECODING, 0L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_USERAGENT, "modelcache/0.1");
  if (req.method == "HEAD") {
    curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
  } else if (req.method != "GET") {
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, req.method.c_str());
  }
  t.source = req.body_source;
  if (req.body_source != nullptr) {
    // UPLOAD sends the body from OnRead with a Content-Length; CUSTOMREQUEST above keeps the
    // method (POST, PATCH) when it is not PUT.
    curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE,
                     static_cast<curl_off_t>(req.body_source->size));
    curl_easy_setopt(curl, CURLOPT_READFUNCTION, OnRead);
    curl_easy_setopt(curl, CURLOPT_READDATA, &t);
    curl_easy_setopt(curl, CURLOPT_SEEKFUNCTION, OnSeek);
    curl_easy_setopt(curl, CURLOPT_SEEKDATA, &t);
    // Larger reads than the 64 KiB default: fewer callbacks (and preads) per part.
    curl_easy_setopt(curl, CURLOPT_UPLOAD_BUFFERSIZE, 512L * 1024L);
  } else if (!req.body.empty() || req.method == "POST" || req.method == "PUT" ||
             req.method == "PATCH") {
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, req.body.data());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
  }
  curl_slist* headers = nullptr;
  for (const auto& [name, value] : req.headers) {
    std::string line = name;
    line.append(": ").append(value);
    headers = curl_slist_append(headers, line.c_str());
  }
  // Never let curl add "Expect: 100-continue"; servers we talk to answer directly.
  headers = curl_slist_append(headers, "Expect:");
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, req.follow_redirects ? 1L : 0L);
  curl_easy_setopt(curl, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(req.connect_timeout.count()));
  if (req.stall_timeout.count() > 0) {
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT,
                     static_cast<long>(std::max<uint64_t>(1, req.stall_bytes_per_second)));
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME,
                     std::max<long>(1, static_cast<long>(req.stall_timeout.count() / 1000)));
  }
  if (req.total_timeout.count() > 0) {
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(req.total_timeout.count()));
  }
  if (!req.tls.ca_file.empty()) {
    curl_easy_setopt(curl, CURLOPT_CAINFO, req.tls.ca_file.c_str());
  }
  curl_blob ca_blob{};
  if (!req.tls.ca_pem.empty()) {
    ca_blob.data = const_cast<char*>(req.tls.ca_pem.data());
    ca_blob.len = req.tls.ca_pem.size();
    ca_blob.flags = CURL_BLOB_COPY;
    curl_easy_setopt(curl, CURLOPT_CAINFO_BLOB, &ca_blob);
  }
  if (!req.tls.ca_file.empty() || !req.tls.ca_pem.empty()) {
    // The given CA replaces the system's, as client-go's RootCAs do: libcurl would otherwise
    // still look certificates up in its built-in CApath (Debian: /etc/ssl/certs), so a
    // kubeconfig pinning its cluster's CA would accept any publicly trusted certificate.
    curl_easy_setopt(curl, CURLOPT_CAPATH, nullptr);
  }
  if (!req.tls.client_cert_file.empty()) {
    curl_easy_setopt(curl, CURLOPT_SSLCERT, req.tls.client_cert_file.c_str());
  }
  if (!req.tls.client_key_file.empty()) {
    curl_easy_setopt(curl, CURLOPT_SSLKEY, req.tls.client_key_file.c_str());
  }
  if (req.tls.insecure_skip_verify) {
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &t);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, OnBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, OnProgress);
  curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &t);
  char errbuf[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);

  CURLcode rc = curl_easy_perform(curl);
  curl_slist_free_all(headers);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &response.status);
  char* effective = nullptr;
  curl_easy_getinfo(curl, CURLINFO_EFFECTIVE_URL, &effective);
  if (effective != nullptr) {
    response.effective_url = effective;
  }
  // A body-less answer (HEAD, 204, 302) never reaches OnBody: deliver the headers now.
  if (rc == CURLE_OK && handler != nullptr && !t.headers_delivered && handler->on_headers) {
    t.headers_delivered = true;
    if (!handler->on_headers(response)) {
      return Error(Reason::Cancelled, "transfer of " + req.url + " aborted");
    }
  }
  if (rc == CURLE_OK) {
    return response;
  }
  if (t.source_error) {
    return *t.source_error;
  }
  if (t.headers_too_large) {
    return Error(Reason::NetworkError, req.method + " " + req.url + ": the answer's headers exceed " +
                                           std::to_string(kMaxResponseHeaderBytes) + " bytes");
  }
  if (t.body_too_large) {
    return Error(Reason::NetworkError, req.method + " " + req.url + ": the answer exceeds " +
                                           std::to_string(t.max_body) + " bytes");
  }
  if (rc == CURLE_UNSUPPORTED_PROTOCOL) {
    return Error(Reason::NetworkError,
                 req.method + " " + req.url + ": only http:// and https:// URLs are fetched");
  }
  if (rc == CURLE_ABORTED_BY_CALLBACK || stop.stop_requested()) {
    return Error(Reason::Cancelled, "transfer of " + req.url + " cancelled");
  }
  if (rc == CURLE_WRITE_ERROR && t.aborted_by_handler) {
    return Error(Reason::Cancelled, "transfer of " + req.url + " aborted");
  }
  std::string detail = errbuf[0] != 0 ? errbuf : curl_easy_strerror(rc);
  Error failed(Reason::NetworkError, req.method + " " + req.url + ": " + detail);
  // Without a total timeout, only the low-speed limit times a transfer out.
  failed.stalled = rc == CURLE_OPERATION_TIMEDOUT && req.stall_timeout.count() > 0 &&
                   req.total_timeout.count() == 0;
  return failed;
}

}  // namespace

const std::string* HttpResponse::Header(std::string_view name) const {
  std::string lower = AsciiLower(name);
  for (const auto& [k, v] : headers) {
    if (k == lower) {
      return &v;
    }
  }
  return nullptr;
}

Result<HttpResponse> HttpClient::Send(const HttpRequest& request, std::stop_token stop) {
  return Perform(request, nullptr, stop);
}

Result<HttpResponse> HttpClient::Stream(const HttpRequest& request, HttpStreamHandler& handler,
                                        std::stop_token stop) {
  return Perform(request, &handler, stop);
}

bool IsHttpUrl(std::string_view url) {
  std::string head = AsciiLower(url.substr(0, 8));
  return head.rfind("http://", 0) == 0 || head.rfind("https://", 0) == 0;
}

std::string UrlEncode(std::string_view s, std::string_view keep) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' ||
        keep.find(static_cast<char>(c)) != std::string_view::npos) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    }
  }
  return out;
}

std::string UrlDecode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() &&
        std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::string LinkNext(const std::string& link_header) {
  // <url>; rel="next", <url2>; rel="prev"
  size_t pos = 0;
  while (pos < link_header.size()) {
    size_t lt = link_header.find('<', pos);
    if (lt == std::string::npos) {
      break;
    }
    size_t gt = link_header.find('>', lt);
    if (gt == std::string::npos) {
      break;
    }
    size_t end = link_header.find(',', gt);
    std::string params = link_header.substr(gt + 1, end == std::string::npos ? std::string::npos
                                                                             : end - gt - 1);
    if (params.find("rel=\"next\"") != std::string::npos ||
        params.find("rel=next") != std::string::npos) {
      return link_header.substr(lt + 1, gt - lt - 1);
    }
    if (end == std::string::npos) {
      break;
    }
    pos = end + 1;
  }
  return "";
}

std::optional<std::chrono::milliseconds> ParseRetryAfter(const std::string* value) {
  if (value == nullptr || value->empty()) {
    return std::nullopt;
  }
  char* end = nullptr;
  long seconds = std::strtol(value->c_str(), &end, 10);
  if (end == value->c_str() || seconds < 0) {
    return std::nullopt;
  }
  return std::chrono::milliseconds(seconds * 1000);
}

}  // namespace modelcache
