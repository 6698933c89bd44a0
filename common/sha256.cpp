#include "common/sha256.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <vector>

#include <openssl/evp.h>

#include "common/files.h"

namespace modelcache {

struct Hasher::Impl {
  EVP_MD_CTX* ctx = nullptr;
  ~Impl() { EVP_MD_CTX_free(ctx); }
};

namespace {

const EVP_MD* Digest(Hasher::Kind kind) {
  switch (kind) {
    case Hasher::Kind::Sha256:
      return EVP_sha256();
    case Hasher::Kind::Sha1:
      return EVP_sha1();
    case Hasher::Kind::Md5:
      return EVP_md5();
  }
  return EVP_sha256();
}

std::string DigestRaw(const EVP_MD* md, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), out, &len, md, nullptr);
  return {reinterpret_cast<const char*>(out), len};
}

}  // namespace

Hasher::Hasher(Kind kind) : impl_(std::make_unique<Impl>()) {
  impl_->ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(impl_->ctx, Digest(kind), nullptr);
}
Hasher::~Hasher() = default;
Hasher::Hasher(Hasher&&) noexcept = default;
Hasher& Hasher::operator=(Hasher&&) noexcept = default;

void Hasher::Update(std::string_view data) { Update(data.data(), data.size()); }

void Hasher::Update(const void* data, size_t size) {
  EVP_DigestUpdate(impl_->ctx, data, size);
}

std::string Hasher::FinalRaw() {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(impl_->ctx, md, &len);
  return {reinterpret_cast<const char*>(md), len};
}

std::string Hasher::FinalHex() {
  std::string raw = FinalRaw();
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(raw.size() * 2, '0');
  for (size_t i = 0; i < raw.size(); ++i) {
    auto byte = static_cast<unsigned char>(raw[i]);
    out[2 * i] = kHex[byte >> 4];
    out[2 * i + 1] = kHex[byte & 0xf];
  }
  return out;
}

Hasher GitBlobHasher(uint64_t size) {
  Hasher h(Hasher::Kind::Sha1);
  std::string prefix = "blob " + std::to_string(size);
  h.Update(prefix.data(), prefix.size() + 1);  // includes the NUL terminator
  return h;
}

std::string Sha256Hex(std::string_view data) {
  Hasher h(Hasher::Kind::Sha256);
  h.Update(data);
  return h.FinalHex();
}

std::string Sha256Raw(std::string_view data) { return DigestRaw(EVP_sha256(), data); }

std::string Md5Raw(std::string_view data) { return DigestRaw(EVP_md5(), data); }

namespace {

Result<std::string> HashFile(const std::string& path, bool git_blob) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return Error(Reason::StorageError, "cannot open " + path + ": " + ErrnoMessage(errno));
  }
  off_t size = ::lseek(fd, 0, SEEK_END);
  ::lseek(fd, 0, SEEK_SET);
  Hasher h = git_blob ? GitBlobHasher(static_cast<uint64_t>(size)) : Hasher(Hasher::Kind::Sha256);
  // Sized to the file (up to 1 MiB) and not zeroed: most files hashed are small (config,
  // tokenizer), and a zeroed 1 MiB buffer per call cost more than hashing them.
  size_t cap = static_cast<size_t>(std::clamp<off_t>(size + 1, 4096, 1 << 20));
  std::unique_ptr<char[]> buf(new char[cap]);
  while (true) {
    ssize_t n = ::read(fd, buf.get(), cap);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      int err = errno;
      ::close(fd);
      return Error(Reason::StorageError, "cannot read " + path + ": " + ErrnoMessage(err));
    }
    if (n == 0) {
      break;
    }
    h.Update(buf.get(), static_cast<size_t>(n));
  }
  ::close(fd);
  return h.FinalHex();
}

}  // namespace

Result<std::string> Sha256File(const std::string& path) { return HashFile(path, false); }
Result<std::string> GitBlobSha1File(const std::string& path) { return HashFile(path, true); }

}  // namespace modelcache
