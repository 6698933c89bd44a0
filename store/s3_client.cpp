#include "store/s3_client.h"

#include <algorithm>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <tuple>

#include <openssl/evp.h>
#include <spdlog/fmt/fmt.h>

#include "common/sha256.h"

namespace modelcache::store {

struct S3Client::Call {
  std::string op;  // "PutObject", for messages
  std::string method;
  std::string bucket;
  std::string key;
  std::vector<std::pair<std::string, std::string>> query;
  HttpHeaders headers;
  std::string body;
};

namespace {

std::string Unquote(std::string s) {
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"') {
    return s.substr(1, s.size() - 2);
  }
  return s;
}

// A key (or prefix, marker) of a list answer. Asked with encoding-type=url, S3 encodes them (an
// XML 1.0 document cannot carry every byte a key may hold) and says so with <EncodingType>url;
// AWS writes a space as '+' (and a '+' as %2B), as botocore's unquote_plus expects, radosgw %20.
std::string ListedName(std::string_view body, std::string_view element, std::string_view tag) {
  std::string text = XmlText(element, tag).value_or("");
  if (XmlText(body, "EncodingType").value_or("") != "url") {
    return text;
  }
  std::replace(text.begin(), text.end(), '+', ' ');
  return UrlDecode(text);
}

uint64_t ParseU64(std::string_view s) {
  uint64_t v = 0;
  std::from_chars(s.data(), s.data() + s.size(), v);
  return v;
}

void DefaultSleep(std::chrono::milliseconds d, std::stop_token stop) {
  std::mutex mu;
  std::condition_variable_any cv;
  std::unique_lock lock(mu);
  cv.wait_for(lock, stop, d, [] { return false; });
}

void AddMetadata(HttpHeaders& headers, const ObjectMetadata& metadata) {
  for (const auto& [name, value] : metadata) {
    headers.emplace_back("x-amz-meta-" + name, value);
  }
}

std::chrono::milliseconds Jittered(std::chrono::milliseconds d, double jitter) {
  if (jitter <= 0) {
    return d;
  }
  thread_local std::mt19937_64 rng{std::random_device{}()};
  double low = std::max(0.0, 1.0 - std::min(jitter, 1.0));
  std::uniform_real_distribution<double> dist(low, 1.0);
  return std::chrono::milliseconds(static_cast<int64_t>(static_cast<double>(d.count()) * dist(rng)));
}

// The body of an aws-chunked request: the payload of `body` cut into chunk_size chunks, each
// framed and signed by `signer` as curl pulls it. Only sequential reads (and a rewind to 0,
// which restarts the signature chain from the seed) are possible.
class ChunkedEncoder {
 public:
  ChunkedEncoder(const S3Body& body, ChunkSigner signer)
      : body_(body), seed_(signer), signer_(std::move(signer)) {}

  uint64_t EncodedSize() const {
    return ChunkSigner::EncodedLength(body_.source.size, body_.chunk_size);
  }

  Result<size_t> Read(uint64_t offset, char* out, size_t n) {
    if (offset == 0 && encoded_offset_ != 0) {
      signer_ = seed_;
      encoded_offset_ = payload_offset_ = 0;
      chunk_.clear();
      chunk_pos_ = 0;
      finished_ = false;
    }
    if (offset != encoded_offset_) {
      return Error(Reason::Internal, "aws-chunked body read out of order");
    }
    size_t done = 0;
    while (done < n) {
      if (chunk_pos_ == chunk_.size()) {
        if (finished_) {
          break;
        }
        auto next = NextChunk();
        if (!next) {
          return next.error();
        }
      }
      size_t take = std::min(n - done, chunk_.size() - chunk_pos_);
      std::memcpy(out + done, chunk_.data() + chunk_pos_, take);
      chunk_pos_ += take;
      done += take;
    }
    encoded_offset_ += done;
    return done;
  }

 private:
  VoidResult NextChunk() {
    uint64_t left = body_.source.size - payload_offset_;
    auto want = static_cast<size_t>(std::min<uint64_t>(left, body_.chunk_size));
    data_.resize(want);
    size_t got = 0;
    while (got < want) {
      auto r = body_.source.read(payload_offset_ + got, data_.data() + got, want - got);
      if (!r) {
        return r.error();
      }
      if (*r == 0) {
        return Error(Reason::Internal, "aws-chunked payload ended early");
      }
      got += *r;
    }
    payload_offset_ += want;
    chunk_ = signer_.EncodeChunk(data_);
    chunk_pos_ = 0;
    if (want == 0) {
      finished_ = true;  // the final, empty chunk
    }
    return {};
  }

  const S3Body& body_;
  const ChunkSigner seed_;
  ChunkSigner signer_;
  uint64_t encoded_offset_ = 0;
  uint64_t payload_offset_ = 0;
  std::string data_;
  std::string chunk_;
  size_t chunk_pos_ = 0;
  bool finished_ = false;
};

}  // namespace

bool IsRetriableS3Error(long status, std::string_view code) {
  return status == 500 || status == 502 || status == 503 || status == 504 || code == "SlowDown" ||
         code == "InternalError" || code == "ServiceUnavailable" || code == "RequestTimeout";
}

std::string Base64(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3), '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()),
                          static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::string XmlEscape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

namespace {

void AppendUtf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x110000) {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string XmlUnescape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      out.push_back(s[i]);
      continue;
    }
    size_t semi = s.find(';', i);
    if (semi == std::string_view::npos) {
      out.push_back('&');
      continue;
    }
    std::string_view entity = s.substr(i + 1, semi - i - 1);
    if (entity == "amp") {
      out.push_back('&');
    } else if (entity == "lt") {
      out.push_back('<');
    } else if (entity == "gt") {
      out.push_back('>');
    } else if (entity == "quot") {
      out.push_back('"');
    } else if (entity == "apos") {
      out.push_back('\'');
    } else if (entity.size() > 1 && entity[0] == '#') {
      bool hex = entity[1] == 'x' || entity[1] == 'X';
      std::string_view digits = entity.substr(hex ? 2 : 1);
      uint32_t cp = 0;
      auto [ptr, ec] =
          std::from_chars(digits.data(), digits.data() + digits.size(), cp, hex ? 16 : 10);
      if (ec != std::errc() || ptr != digits.data() + digits.size()) {
        out.push_back('&');
        continue;
      }
      AppendUtf8(out, cp);
    } else {
      out.push_back('&');
      continue;
    }
    i = semi;
  }
  return out;
}

}  // namespace

std::optional<std::string> XmlText(std::string_view xml, std::string_view tag, size_t from) {
  std::string open = fmt::format("<{}>", tag);
  std::string close = fmt::format("</{}>", tag);
  size_t b = xml.find(open, from);
  if (b == std::string_view::npos) {
    // An empty element written as <Tag/>.
    if (xml.find(fmt::format("<{}/>", tag), from) != std::string_view::npos) {
      return std::string();
    }
    return std::nullopt;
  }
  b += open.size();
  size_t e = xml.find(close, b);
  if (e == std::string_view::npos) {
    return std::nullopt;
  }
  return XmlUnescape(xml.substr(b, e - b));
}

std::vector<std::string_view> XmlElements(std::string_view xml, std::string_view tag) {
  std::vector<std::string_view> out;
  std::string open = fmt::format("<{}>", tag);
  std::string close = fmt::format("</{}>", tag);
  size_t pos = 0;
  while ((pos = xml.find(open, pos)) != std::string_view::npos) {
    size_t b = pos + open.size();
    size_t e = xml.find(close, b);
    if (e == std::string_view::npos) {
      break;
    }
    out.push_back(xml.substr(b, e - b));
    pos = e + close.size();
  }
  return out;
}

S3Client::S3Client(AwsConfig config, S3ClientOptions options)
    : config_(std::move(config)), options_(std::move(options)) {
  if (!options_.now) {
    options_.now = [] { return std::chrono::system_clock::now(); };
  }
  if (!options_.sleep) {
    options_.sleep = DefaultSleep;
  }
  options_.max_attempts = std::max(1, options_.max_attempts);
}

Result<S3Client::Target> S3Client::TargetOf(const std::string& bucket,
                                             const std::string& key) const {
  // Split the endpoint into scheme and authority; a path after the authority is a prefix.
  const std::string& endpoint = config_.endpoint_url;
  size_t scheme_end = endpoint.find("://");
  if (scheme_end == std::string::npos) {
    return Error(Reason::InvalidSpec,
                 fmt::format("S3 endpoint {} has no scheme (http:// or https://)", endpoint));
  }
  Target t;
  t.scheme = endpoint.substr(0, scheme_end);
  std::string rest = endpoint.substr(scheme_end + 3);
  size_t slash = rest.find('/');
  std::string authority = rest.substr(0, slash);
  std::string base_path = slash == std::string::npos ? "" : rest.substr(slash);
  if (config_.UsePathStyle(bucket)) {
    t.host = authority;
    t.path = base_path + "/" + bucket;
    if (!key.empty()) {
      t.path += "/" + key;
    }
  } else {
    t.host = bucket + "." + authority;
    t.path = base_path + "/" + key;
  }
  return t;
}

Result<std::string> S3Client::PresignGetObject(const std::string& bucket, const std::string& key,
                                               std::chrono::seconds expires) const {
  auto target = TargetOf(bucket, key);
  if (!target) {
    return target.error();
  }
  SigningRequest signing;
  signing.method = "GET";
  signing.path = target->path;
  signing.headers = {{"host", target->host}};
  SigningScope scope{config_.region, "s3", options_.now()};
  return fmt::format("{}://{}{}?{}", target->scheme, target->host, EncodePath(target->path),
                     PresignQuery(signing, config_.credentials, scope, expires));
}

Result<HttpResponse> S3Client::SendOnce(const Call& call, std::stop_token stop,
                                        const S3Body* streamed) const {
  auto target = TargetOf(call.bucket, call.key);
  if (!target) {
    return target.error();
  }
  const std::string& scheme = target->scheme;
  const std::string& host = target->host;
  const std::string& path = target->path;

  SigningRequest signing;
  signing.method = call.method;
  signing.path = path;
  signing.query = call.query;
  signing.headers = call.headers;
  signing.headers.emplace_back("host", host);
  const bool chunked = streamed != nullptr && streamed->chunk_size > 0;
  if (chunked) {
    signing.payload_hash = std::string(kStreamingPayload);
    signing.headers.emplace_back("content-encoding", "aws-chunked");
    signing.headers.emplace_back("x-amz-decoded-content-length",
                                 std::to_string(streamed->source.size));
  } else if (streamed != nullptr) {
    signing.payload_hash = streamed->payload_hash;
  } else {
    signing.payload_hash = Sha256Hex(call.body);
  }
  signing.headers.emplace_back("x-amz-content-sha256", signing.payload_hash);
  SigningScope scope{config_.region, "s3", options_.now()};
  SignedRequest signed_request = SignRequest(signing, config_.credentials, scope);

  HttpRequest request;
  request.method = call.method;
  request.url = fmt::format("{}://{}{}", scheme, host, EncodePath(path));
  std::string query = EncodeQuery(call.query);
  if (!query.empty()) {
    request.url += "?" + query;
  }
  request.headers = std::move(signing.headers);
  request.headers.insert(request.headers.end(), signed_request.headers.begin(),
                         signed_request.headers.end());
  request.tls = options_.tls;
  if (chunked) {
    ChunkedEncoder encoder(*streamed,
                           ChunkSigner(config_.credentials, scope, signed_request.signature));
    HttpBodySource source{encoder.EncodedSize(),
                          [&encoder](uint64_t offset, char* out, size_t n) {
                            return encoder.Read(offset, out, n);
                          }};
    request.body_source = &source;
    return HttpClient::Send(request, stop);
  }
  if (streamed != nullptr) {
    request.body_source = &streamed->source;
  } else {
    request.body = call.body;
  }
  return HttpClient::Send(request, stop);
}

Result<HttpResponse> S3Client::Execute(const Call& call, std::stop_token stop,
                                       const S3Body* streamed) const {
  std::string target = call.key.empty() ? fmt::format("s3://{}", call.bucket)
                                        : fmt::format("s3://{}/{}", call.bucket, call.key);
  std::chrono::milliseconds backoff = options_.base_backoff;
  for (int attempt = 1;; ++attempt) {
    auto response = SendOnce(call, stop, streamed);
    std::optional<Error> failure;
    bool retriable = false;
    if (!response) {
      if (response.error().reason != Reason::NetworkError) {
        return response.error();
      }
      failure = Error(Reason::NetworkError,
                      fmt::format("S3 {} {}: {}", call.op, target, response.error().message));
      retriable = true;
    } else {
      const HttpResponse& r = *response;
      // CompleteMultipartUpload may answer 200 and still fail, with an <Error> body.
      bool error_body = r.status == 200 &&
                        (call.op == "CompleteMultipartUpload" || call.op == "CopyObject" ||
                         call.op == "UploadPartCopy") &&
                        r.body.find("<Error>") != std::string::npos;
      if ((r.status >= 200 && r.status < 300 && !error_body) ||
          (r.status == 404 && call.method == "HEAD")) {
        return response;
      }
      std::string code = XmlText(r.body, "Code").value_or("");
      std::string message = XmlText(r.body, "Message").value_or("");
      if (code.empty()) {
        code = r.status == 404 ? "NotFound" : r.status == 403 ? "Forbidden" : "";
      }
      std::string detail = code;
      if (!message.empty()) {
        detail += (detail.empty() ? "" : ": ") + message;
      }
      failure = Error(Reason::StorageError,
                      fmt::format("S3 {} {}: HTTP {}{}{}", call.op, target, r.status,
                                  detail.empty() ? "" : " ", detail),
                      ParseRetryAfter(r.Header("retry-after")));
      retriable = IsRetriableS3Error(r.status, code);
    }
    if (!retriable || attempt >= options_.max_attempts) {
      return *failure;
    }
    if (stop.stop_requested()) {
      return Error(Reason::Cancelled, "S3 request cancelled");
    }
    std::chrono::milliseconds wait =
        failure->retry_after ? *failure->retry_after : Jittered(backoff, options_.jitter);
    options_.sleep(std::min(wait, options_.max_backoff), stop);
    if (stop.stop_requested()) {
      return Error(Reason::Cancelled, "S3 request cancelled");
    }
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

VoidResult S3Client::PutObject(const std::string& bucket, const std::string& key,
                               std::string_view body, PutChecksum checksum, std::stop_token stop,
                               const ObjectMetadata& metadata) {
  Call call{"PutObject", "PUT", bucket, key, {}, {}, std::string(body)};
  call.headers.emplace_back("content-type", "application/octet-stream");
  AddMetadata(call.headers, metadata);
  if (checksum == PutChecksum::Sha256) {
    call.headers.emplace_back("x-amz-checksum-sha256", Base64(Sha256Raw(body)));
  } else {
    call.headers.emplace_back("content-md5", Base64(Md5Raw(body)));
  }
  auto r = Execute(call, stop);
  if (!r) {
    return r.error();
  }
  return {};
}

Result<std::string> S3Client::GetObject(const std::string& bucket, const std::string& key,
                                        std::optional<ByteRange> range, std::stop_token stop) {
  Call call{"GetObject", "GET", bucket, key, {}, {}, {}};
  if (range) {
    call.headers.emplace_back("range", range->last
                                           ? fmt::format("bytes={}-{}", range->first, *range->last)
                                           : fmt::format("bytes={}-", range->first));
  }
  auto r = Execute(call, stop);
  if (!r) {
    return r.error();
  }
  return std::move(r->body);
}

Result<std::optional<ObjectInfo>> S3Client::HeadObject(const std::string& bucket,
                                                       const std::string& key,
                                                       std::stop_token stop) {
  Call call{"HeadObject", "HEAD", bucket, key, {}, {{"x-amz-checksum-mode", "ENABLED"}}, {}};
  auto r = Execute(call, stop);
  if (!r) {
    // A HEAD answer has no body, so its error has no S3 code ("HTTP 403 Forbidden"); the same
    // request as a one-byte GET answers with the code (SignatureDoesNotMatch, NoSuchBucket, …).
    if (r.error().reason == Reason::StorageError) {
      auto get = GetObject(bucket, key, ByteRange{0, 0}, stop);
      if (!get && get.error().reason == Reason::StorageError) {
        return get.error();
      }
    }
    return r.error();
  }
  if (r->status == 404) {
    return std::optional<ObjectInfo>();
  }
  ObjectInfo info;
  if (const std::string* v = r->Header("content-length")) {
    info.size = ParseU64(*v);
  }
  if (const std::string* v = r->Header("etag")) {
    info.etag = Unquote(*v);
  }
  if (const std::string* v = r->Header("x-amz-checksum-sha256")) {
    info.checksum_sha256 = *v;
  }
  if (const std::string* v = r->Header("last-modified")) {
    info.last_modified = *v;
  }
  constexpr std::string_view kMeta = "x-amz-meta-";
  for (const auto& [name, value] : r->headers) {
    if (name.size() > kMeta.size() && name.compare(0, kMeta.size(), kMeta) == 0) {
      info.metadata[name.substr(kMeta.size())] = value;
    }
  }
  return std::optional<ObjectInfo>(std::move(info));
}

VoidResult S3Client::DeleteObject(const std::string& bucket, const std::string& key,
                                  std::stop_token stop) {
  auto r = Execute({"DeleteObject", "DELETE", bucket, key, {}, {}, {}}, stop);
  if (!r) {
    return r.error();
  }
  return {};
}

Result<ListPage> S3Client::ListObjectsV2(const std::string& bucket, const std::string& prefix,
                                         const std::string& continuation_token,
                                         const std::string& delimiter, int max_keys,
                                         std::stop_token stop) {
  Call call{"ListObjectsV2", "GET", bucket, "", {}, {}, {}};
  call.query = {{"list-type", "2"},
                {"max-keys", std::to_string(max_keys)},
                {"prefix", prefix},
                {"encoding-type", "url"}};
  if (!continuation_token.empty()) {
    call.query.emplace_back("continuation-token", continuation_token);
  }
  if (!delimiter.empty()) {
    call.query.emplace_back("delimiter", delimiter);
  }
  auto r = Execute(call, stop);
  if (!r) {
    return r.error();
  }
  ListPage page;
  for (std::string_view contents : XmlElements(r->body, "Contents")) {
    ListedObject object;
    object.key = ListedName(r->body, contents, "Key");
    object.size = ParseU64(XmlText(contents, "Size").value_or("0"));
    object.etag = Unquote(XmlText(contents, "ETag").value_or(""));
    page.objects.push_back(std::move(object));
  }
  for (std::string_view common : XmlElements(r->body, "CommonPrefixes")) {
    if (XmlText(common, "Prefix")) {
      page.common_prefixes.push_back(ListedName(r->body, common, "Prefix"));
    }
  }
  if (XmlText(r->body, "IsTruncated").value_or("false") == "true") {
    page.next_continuation_token = XmlText(r->body, "NextContinuationToken").value_or("");
    if (page.next_continuation_token.empty()) {
      return Error(Reason::StorageError,
                   fmt::format("S3 ListObjectsV2 s3://{}/{}: truncated answer without "
                               "NextContinuationToken",
                               bucket, prefix));
    }
  }
  return page;
}

VoidResult S3Client::CopyObject(const std::string& bucket, const std::string& source_key,
                                const std::string& key, std::stop_token stop,
                                const ObjectMetadata* replace_metadata) {
  Call call{"CopyObject", "PUT", bucket, key, {}, {}, {}};
  // The copy source is "/bucket/key", URL-encoded like a path.
  call.headers.emplace_back("x-amz-copy-source", EncodePath("/" + bucket + "/" + source_key));
  call.headers.emplace_back("x-amz-metadata-directive", replace_metadata ? "REPLACE" : "COPY");
  if (replace_metadata != nullptr) {
    call.headers.emplace_back("content-type", "application/octet-stream");
    AddMetadata(call.headers, *replace_metadata);
  }
  auto r = Execute(call, stop);
  if (!r) {
    return r.error();
  }
  return {};
}

Result<std::string> S3Client::CreateMultipartUpload(const std::string& bucket,
                                                    const std::string& key, std::stop_token stop,
                                                    const ObjectMetadata& metadata) {
  Call call{"CreateMultipartUpload", "POST", bucket, key, {{"uploads", ""}}, {}, {}};
  call.headers.emplace_back("content-type", "application/octet-stream");
  AddMetadata(call.headers, metadata);
  auto r = Execute(call, stop);
  if (!r) {
    return r.error();
  }
  std::optional<std::string> id = XmlText(r->body, "UploadId");
  if (!id || id->empty()) {
    return Error(
        Reason::StorageError,
        fmt::format("S3 CreateMultipartUpload s3://{}/{}: answer has no UploadId", bucket, key));
  }
  return std::move(*id);
}

Result<UploadedPart> S3Client::UploadPart(const std::string& bucket, const std::string& key,
                                          const std::string& upload_id, int part_number,
                                          std::string_view body, std::stop_token stop) {
  Call call{"UploadPart",
            "PUT",
            bucket,
            key,
            {{"partNumber", std::to_string(part_number)}, {"uploadId", upload_id}},
            {{"content-type", "application/octet-stream"}, {"content-md5", Base64(Md5Raw(body))}},
            std::string(body)};
  auto r = Execute(call, stop);
  if (!r) {
    return r.error();
  }
  UploadedPart part;
  part.number = part_number;
  part.size = body.size();
  if (const std::string* etag = r->Header("etag")) {
    part.etag = Unquote(*etag);
  }
  if (part.etag.empty()) {
    return Error(Reason::StorageError,
                 fmt::format("S3 UploadPart s3://{}/{} part {}: answer has no ETag", bucket, key,
                             part_number));
  }
  return part;
}

Result<UploadedPart> S3Client::UploadPartCopy(const std::string& bucket, const std::string& key,
                                              const std::string& upload_id, int part_number,
                                              const std::string& source_key, uint64_t first,
                                              uint64_t last, std::stop_token stop) {
  Call call{"UploadPartCopy",
            "PUT",
            bucket,
            key,
            {{"partNumber", std::to_string(part_number)}, {"uploadId", upload_id}},
            {{"x-amz-copy-source", EncodePath("/" + bucket + "/" + source_key)},
             {"x-amz-copy-source-range", fmt::format("bytes={}-{}", first, last)}},
            {}};
  auto r = Execute(call, stop);
  if (!r) {
    return r.error();
  }
  UploadedPart part;
  part.number = part_number;
  part.size = last - first + 1;
  // The part's ETag is in the <CopyPartResult> body, not in a header.
  part.etag = Unquote(XmlText(r->body, "ETag").value_or(""));
  if (part.etag.empty()) {
    return Error(Reason::StorageError,
                 fmt::format("S3 UploadPartCopy s3://{}/{} part {}: answer has no ETag", bucket,
                             key, part_number));
  }
  return part;
}

Result<std::vector<UploadedPart>> S3Client::ListParts(const std::string& bucket,
                                                      const std::string& key,
                                                      const std::string& upload_id,
                                                      std::stop_token stop) {
  std::vector<UploadedPart> parts;
  std::string marker;
  for (;;) {
    Call call{"ListParts", "GET", bucket, key, {{"uploadId", upload_id}}, {}, {}};
    if (!marker.empty()) {
      call.query.emplace_back("part-number-marker", marker);
    }
    auto r = Execute(call, stop);
    if (!r) {
      return r.error();
    }
    for (std::string_view element : XmlElements(r->body, "Part")) {
      UploadedPart part;
      part.number = static_cast<int>(ParseU64(XmlText(element, "PartNumber").value_or("0")));
      part.etag = Unquote(XmlText(element, "ETag").value_or(""));
      part.size = ParseU64(XmlText(element, "Size").value_or("0"));
      parts.push_back(std::move(part));
    }
    if (XmlText(r->body, "IsTruncated").value_or("false") != "true") {
      break;
    }
    std::string next = XmlText(r->body, "NextPartNumberMarker").value_or("");
    if (next.empty() || next == marker) {
      return Error(Reason::StorageError,
                   fmt::format("S3 ListParts s3://{}/{}: truncated answer without a new "
                               "NextPartNumberMarker",
                               bucket, key));
    }
    marker = next;
  }
  std::sort(parts.begin(), parts.end(),
            [](const UploadedPart& a, const UploadedPart& b) { return a.number < b.number; });
  return parts;
}

VoidResult S3Client::CompleteMultipartUpload(const std::string& bucket, const std::string& key,
                                             const std::string& upload_id,
                                             const std::vector<UploadedPart>& parts,
                                             std::stop_token stop) {
  std::string body = "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">";
  for (const UploadedPart& part : parts) {
    body += fmt::format("<Part><PartNumber>{}</PartNumber><ETag>&quot;{}&quot;</ETag></Part>",
                        part.number, XmlEscape(part.etag));
  }
  body += "</CompleteMultipartUpload>";
  Call call{"CompleteMultipartUpload",
            "POST",
            bucket,
            key,
            {{"uploadId", upload_id}},
            {{"content-type", "application/xml"}},
            std::move(body)};
  auto r = Execute(call, stop);
  if (!r) {
    return r.error();
  }
  return {};
}

Result<std::vector<MultipartUploadInfo>> S3Client::ListMultipartUploads(
    const std::string& bucket, const std::string& prefix, std::stop_token stop) {
  std::vector<MultipartUploadInfo> uploads;
  std::string key_marker;
  std::string id_marker;
  for (;;) {
    Call call{"ListMultipartUploads",
              "GET",
              bucket,
              "",
              {{"uploads", ""}, {"prefix", prefix}, {"encoding-type", "url"}},
              {},
              {}};
    if (!key_marker.empty()) {
      call.query.emplace_back("key-marker", key_marker);
    }
    if (!id_marker.empty()) {
      call.query.emplace_back("upload-id-marker", id_marker);
    }
    auto r = Execute(call, stop);
    if (!r) {
      return r.error();
    }
    for (std::string_view element : XmlElements(r->body, "Upload")) {
      MultipartUploadInfo upload;
      upload.key = ListedName(r->body, element, "Key");
      upload.upload_id = XmlText(element, "UploadId").value_or("");
      upload.initiated = XmlText(element, "Initiated").value_or("");
      uploads.push_back(std::move(upload));
    }
    if (XmlText(r->body, "IsTruncated").value_or("false") != "true") {
      break;
    }
    std::string next_key = ListedName(r->body, r->body, "NextKeyMarker");
    std::string next_id = XmlText(r->body, "NextUploadIdMarker").value_or("");
    if (next_key.empty() || (next_key == key_marker && next_id == id_marker)) {
      return Error(Reason::StorageError,
                   fmt::format("S3 ListMultipartUploads s3://{}/{}: truncated answer without a "
                               "new NextKeyMarker",
                               bucket, prefix));
    }
    key_marker = std::move(next_key);
    id_marker = std::move(next_id);
  }
  std::stable_sort(uploads.begin(), uploads.end(),
                   [](const MultipartUploadInfo& a, const MultipartUploadInfo& b) {
                     return std::tie(a.key, a.initiated) < std::tie(b.key, b.initiated);
                   });
  return uploads;
}

Result<HttpResponse> S3Client::Send(const S3Request& request, std::stop_token stop) const {
  Call call{request.op,    request.method,  request.bucket, request.key,
            request.query, request.headers, request.body};
  return Execute(call, stop, request.streamed);
}

std::string ObjectInfo::Meta(std::string_view name) const {
  auto it = metadata.find(std::string(name));
  return it == metadata.end() ? "" : it->second;
}

VoidResult S3Client::AbortMultipartUpload(const std::string& bucket, const std::string& key,
                                          const std::string& upload_id, std::stop_token stop) {
  auto r = Execute(
      {"AbortMultipartUpload", "DELETE", bucket, key, {{"uploadId", upload_id}}, {}, {}}, stop);
  if (!r) {
    return r.error();
  }
  return {};
}

}  // namespace modelcache::store
