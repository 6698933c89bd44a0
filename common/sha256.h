#pragma once

// Streaming digests through OpenSSL EVP, the project's only digest code: SHA-256 (LFS files,
// artifact ids, S3 payload checksums), the git blob SHA-1 that the Hub uses as the ETag of
// regular files ("blob <size>\0" + content) and MD5 (S3's Content-MD5 and part ETags; not for
// security).
//
// A Hasher is not thread-safe; use one per stream. The free functions are thread-safe.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/result.h"

namespace modelcache {

class Hasher {
 public:
  enum class Kind { Sha256, Sha1, Md5 };
  explicit Hasher(Kind kind);
  ~Hasher();
  Hasher(Hasher&&) noexcept;
  Hasher& operator=(Hasher&&) noexcept;
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;

  void Update(std::string_view data);
  void Update(const void* data, size_t size);
  // Lower-case hex digest; the hasher must not be updated afterwards.
  std::string FinalHex();
  // The digest's bytes (16 for MD5, 32 for SHA-256); as FinalHex, the end of the stream.
  std::string FinalRaw();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A git blob hasher: Sha1 over "blob <size>\0" followed by the content.
Hasher GitBlobHasher(uint64_t size);

std::string Sha256Hex(std::string_view data);

// The digests' bytes of `data` (not hex): what Base64 turns into Content-MD5 and
// x-amz-checksum-sha256.
std::string Sha256Raw(std::string_view data);
std::string Md5Raw(std::string_view data);

// Hashes a whole file; StorageError if it cannot be read.
Result<std::string> Sha256File(const std::string& path);
Result<std::string> GitBlobSha1File(const std::string& path);

}  // namespace modelcache
