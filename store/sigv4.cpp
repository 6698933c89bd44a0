#include "store/sigv4.h"

#include <algorithm>
#include <ctime>
#include <map>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <spdlog/fmt/fmt.h>

#include "common/sha256.h"
#include "common/strings.h"

namespace modelcache::store {
namespace {

constexpr std::string_view kAlgorithm = "AWS4-HMAC-SHA256";

std::string FormatTime(std::chrono::system_clock::time_point t, const char* format) {
  std::time_t secs = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  size_t n = std::strftime(buf, sizeof(buf), format, &tm);
  return {buf, n};
}

// The AWS rule for header values: strip leading and trailing spaces and collapse runs of spaces
// into one, quoted or not (the test suite's get-header-value-trim signs "a   b   c" as "a b c").
std::string TrimAll(std::string_view v) {
  std::string out;
  bool pending_space = false;
  for (char c : v) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) {
      out.push_back(' ');
    }
    pending_space = false;
    out.push_back(c);
  }
  return out;
}

struct Canonical {
  std::string headers;         // "name:value\n" lines
  std::string signed_headers;  // "a;b;c"
};

// Header names are lower-cased and sorted; repeated names are joined with ',' in arrival order,
// which is why a map of vectors rather than a sort of the pairs (a sort would reorder values).
Canonical CanonicalizeHeaders(const HttpHeaders& headers) {
  std::map<std::string, std::vector<std::string>> by_name;
  for (const auto& [name, value] : headers) {
    by_name[AsciiLower(name)].push_back(TrimAll(value));
  }
  Canonical out;
  for (const auto& [name, values] : by_name) {
    out.headers += name;
    out.headers += ':';
    for (size_t i = 0; i < values.size(); ++i) {
      if (i > 0) {
        out.headers += ',';
      }
      out.headers += values[i];
    }
    out.headers += '\n';
    if (!out.signed_headers.empty()) {
      out.signed_headers += ';';
    }
    out.signed_headers += name;
  }
  return out;
}

std::string BuildCanonicalRequest(std::string_view method, std::string_view path,
                                  std::string_view query, const Canonical& headers,
                                  std::string_view payload_hash) {
  return fmt::format("{}\n{}\n{}\n{}\n{}\n{}", method, EncodePath(path), query, headers.headers,
                     headers.signed_headers, payload_hash);
}

std::string BuildStringToSign(const SigningScope& scope, std::string_view canonical_request) {
  return fmt::format("{}\n{}\n{}\n{}", kAlgorithm, scope.AmzDate(), scope.CredentialScope(),
                     Sha256Hex(canonical_request));
}

}  // namespace

std::string SigningScope::AmzDate() const { return FormatTime(time, "%Y%m%dT%H%M%SZ"); }
std::string SigningScope::Date() const { return FormatTime(time, "%Y%m%d"); }
std::string SigningScope::CredentialScope() const {
  return fmt::format("{}/{}/{}/aws4_request", Date(), region, service);
}

std::string SigV4Encode(std::string_view s, bool keep_slash) {
  return PercentEncode(s, keep_slash);
}

std::string EncodePath(std::string_view path) {
  if (path.empty()) {
    return "/";
  }
  return SigV4Encode(path, /*keep_slash=*/true);
}

std::string EncodeQuery(const std::vector<std::pair<std::string, std::string>>& query) {
  std::vector<std::pair<std::string, std::string>> encoded;
  encoded.reserve(query.size());
  for (const auto& [name, value] : query) {
    encoded.emplace_back(SigV4Encode(name, false), SigV4Encode(value, false));
  }
  // Sorted by code point of the encoded form, as the specification says.
  std::sort(encoded.begin(), encoded.end());
  std::string out;
  for (const auto& [name, value] : encoded) {
    if (!out.empty()) {
      out += '&';
    }
    out += name;
    out += '=';
    out += value;
  }
  return out;
}

std::string HmacSha256(std::string_view key, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out, &len);
  return {reinterpret_cast<const char*>(out), len};
}

std::string HexEncode(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char ch : bytes) {
    auto c = static_cast<unsigned char>(ch);
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 0xF]);
  }
  return out;
}

std::string DeriveSigningKey(std::string_view secret, const SigningScope& scope) {
  std::string k_date = HmacSha256(std::string("AWS4").append(secret), scope.Date());
  std::string k_region = HmacSha256(k_date, scope.region);
  std::string k_service = HmacSha256(k_region, scope.service);
  return HmacSha256(k_service, "aws4_request");
}

SignedRequest SignRequest(const SigningRequest& request, const AwsCredentials& credentials,
                          const SigningScope& scope) {
  SignedRequest out;
  out.headers.emplace_back("x-amz-date", scope.AmzDate());
  if (!credentials.session_token.empty()) {
    out.headers.emplace_back("x-amz-security-token", credentials.session_token);
  }
  HttpHeaders all = request.headers;
  all.insert(all.end(), out.headers.begin(), out.headers.end());
  Canonical canonical = CanonicalizeHeaders(all);
  out.signed_headers = canonical.signed_headers;
  out.canonical_request = BuildCanonicalRequest(
      request.method, request.path, EncodeQuery(request.query), canonical, request.payload_hash);
  out.string_to_sign = BuildStringToSign(scope, out.canonical_request);
  out.signature = HexEncode(
      HmacSha256(DeriveSigningKey(credentials.secret_access_key, scope), out.string_to_sign));
  out.headers.emplace_back(
      "authorization", fmt::format("{} Credential={}/{}, SignedHeaders={}, Signature={}",
                                   kAlgorithm, credentials.access_key_id, scope.CredentialScope(),
                                   out.signed_headers, out.signature));
  return out;
}

std::string PresignQuery(const SigningRequest& request, const AwsCredentials& credentials,
                         const SigningScope& scope, std::chrono::seconds expires) {
  Canonical canonical = CanonicalizeHeaders(request.headers);
  auto query = request.query;
  query.emplace_back("X-Amz-Algorithm", std::string(kAlgorithm));
  query.emplace_back("X-Amz-Credential",
                     fmt::format("{}/{}", credentials.access_key_id, scope.CredentialScope()));
  query.emplace_back("X-Amz-Date", scope.AmzDate());
  query.emplace_back("X-Amz-Expires", std::to_string(expires.count()));
  if (!credentials.session_token.empty()) {
    query.emplace_back("X-Amz-Security-Token", credentials.session_token);
  }
  query.emplace_back("X-Amz-SignedHeaders", canonical.signed_headers);
  std::string canonical_query = EncodeQuery(query);
  std::string canonical_request = BuildCanonicalRequest(
      request.method, request.path, canonical_query, canonical, kUnsignedPayload);
  std::string signature =
      HexEncode(HmacSha256(DeriveSigningKey(credentials.secret_access_key, scope),
                           BuildStringToSign(scope, canonical_request)));
  return canonical_query + "&X-Amz-Signature=" + signature;
}

ChunkSigner::ChunkSigner(const AwsCredentials& credentials, SigningScope scope,
                         std::string seed_signature)
    : signing_key_(DeriveSigningKey(credentials.secret_access_key, scope)),
      scope_(std::move(scope)),
      previous_(std::move(seed_signature)) {}

std::string ChunkSigner::SignChunk(std::string_view data) {
  std::string string_to_sign =
      fmt::format("AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{}\n{}\n{}", scope_.AmzDate(),
                  scope_.CredentialScope(), previous_, kEmptySha256, Sha256Hex(data));
  previous_ = HexEncode(HmacSha256(signing_key_, string_to_sign));
  return previous_;
}

std::string ChunkSigner::EncodeChunk(std::string_view data) {
  std::string signature = SignChunk(data);
  std::string out = fmt::format("{:x};chunk-signature={}\r\n", data.size(), signature);
  out.append(data);
  out.append("\r\n");
  return out;
}

uint64_t ChunkSigner::EncodedLength(uint64_t payload, uint64_t chunk_size) {
  // Each chunk: hex size + ";chunk-signature=" (17) + 64 hex + "\r\n" + data + "\r\n".
  auto chunk_overhead = [](uint64_t size) {
    return static_cast<uint64_t>(fmt::format("{:x}", size).size()) + 17 + 64 + 2 + 2;
  };
  uint64_t total = 0;
  if (chunk_size > 0) {
    uint64_t full = payload / chunk_size;
    uint64_t rest = payload % chunk_size;
    total += full * (chunk_size + chunk_overhead(chunk_size));
    if (rest > 0) {
      total += rest + chunk_overhead(rest);
    }
  }
  return total + chunk_overhead(0);
}

}  // namespace modelcache::store
