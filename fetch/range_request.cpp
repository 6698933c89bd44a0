#include "fetch/internal/range_request.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <utility>

#include "common/files.h"
#include "fetch/internal/block_pool.h"
#include "fetch/internal/block_writer.h"
#include "fetch/internal/bandwidth_bucket.h"

namespace modelcache::fetch::internal {
namespace {

// What an answer that is not data may leave in memory for the error message.
constexpr size_t kMaxErrorBody = 64 << 10;

// A new block for r's next bytes, or nullptr when the pool has none (and !overdraw).
Block* NextBlock(Request& r, bool overdraw) {
  Block* b = r.pool->Get(overdraw);
  if (b != nullptr) {
    b->offset = r.pos;
    b->len = 0;
    b->cap = static_cast<size_t>(
        std::min<uint64_t>(kBlockSize - r.pos % kBlockSize, r.end - r.pos));
    b->file = r.file;
    b->generation = r.generation;
  }
  return b;
}

// Copies a staged request's bytes into its blocks, queueing each full one for the writer.
void Stage(Request& r, const char* data, size_t want) {
  size_t copied = 0;
  while (copied < want) {
    Block& b = *r.block;
    size_t n = std::min(want - copied, b.cap - b.len);
    std::memcpy(b.data.get() + b.len, data + copied, n);
    b.len += n;
    copied += n;
    r.pos += n;
    if (b.len == b.cap) {
      r.writer->Write(&r, std::exchange(r.block, nullptr));
      if (r.pos < r.end) {
        r.block = NextBlock(r, true);  // the bytes are taken: this one may not wait
      }
    }
  }
}

// Whether a staged request must wait for a block before it takes bytes; if so it is queued
// among the block waiters and its job is woken (it may hold blocks it can give back).
bool WaitsForBlock(Request& r) {
  bool wait = r.block == nullptr ? (r.block = NextBlock(r, false)) == nullptr
                                 : r.pool->Overdrawn();
  if (!wait) {
    return false;
  }
  r.block_waiters->push_back(&r);
  {
    std::lock_guard lock(r.queue->mu);
    r.queue->wake = true;
  }
  r.queue->cv.notify_all();
  return true;
}

// A one-chunk file's bytes go straight to the file, counted as they land.
bool WriteThrough(Request& r, const char* data, size_t want) {
  size_t written = 0;
  while (written < want) {
    ssize_t w = Pwrite(r, r.fd, data + written, want - written, static_cast<off_t>(r.pos));
    if (w < 0 && errno == EINTR) {
      continue;
    }
    if (w <= 0) {
      int err = w < 0 ? errno : EIO;
      r.write_error = Error(IoReason(err), ErrnoMessage(err));
      return false;
    }
    auto wn = static_cast<uint64_t>(w);
    written += static_cast<size_t>(w);
    r.pos += wn;
    r.chunk_done->fetch_add(wn, std::memory_order_release);
    r.bytes_done->fetch_add(wn, std::memory_order_relaxed);
    r.downloaded->fetch_add(wn, std::memory_order_relaxed);
  }
  return true;
}

}  // namespace

void Complete(Request* r) {
  JobQueue* q = r->queue;
  // Notified under the lock: the last completion lets the job return and destroy the queue, which
  // it cannot do before this thread lets go of the mutex (found by ThreadSanitizer: a notify after
  // the unlock raced with ~JobQueue).
  std::lock_guard lock(q->mu);
  q->done.push_back(r);
  q->cv.notify_all();
}

ssize_t Pwrite(const Request& r, int fd, const void* data, size_t size, off_t offset) {
  return r.pwrite_hook != nullptr && *r.pwrite_hook ? (*r.pwrite_hook)(fd, data, size, offset)
                                                    : ::pwrite(fd, data, size, offset);
}

std::string NormalizeEtag(std::string etag) {
  if (etag.rfind("W/", 0) == 0) {
    etag = etag.substr(2);
  }
  if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"') {
    etag = etag.substr(1, etag.size() - 2);
  }
  return etag;
}

void Classify(Request& r) {
  long status = r.response.status;
  if (status != 200 && status != 206) {
    r.verdict = Request::Verdict::NotData;
    return;
  }
  const std::string* linked = r.response.Header("x-linked-etag");
  const std::string* etag = linked != nullptr ? linked : r.response.Header("etag");
  if (etag != nullptr) {
    r.etag_seen = NormalizeEtag(*etag);
  }
  if (!r.expected_etag.empty() && !r.etag_seen.empty() && r.etag_seen != r.expected_etag) {
    r.verdict = Request::Verdict::Changed;
    return;
  }
  // A Content-Length that disagrees with the tree's size (200) or the range (206) is a lie
  // about the body: refused before a byte of it is written.
  if (const std::string* length = r.response.Header("content-length"); length != nullptr) {
    char* end = nullptr;
    unsigned long long n = std::strtoull(length->c_str(), &end, 10);
    bool wrong = status == 200 ? n != r.file_size : n > r.file_size - r.first;
    if (end == length->c_str() || *end != '\0' || wrong) {
      r.verdict = Request::Verdict::WrongLength;
      return;
    }
  }
  if (status == 200) {
    if (r.ranged && !(r.first == 0 && r.end == r.file_size)) {
      r.verdict = Request::Verdict::IgnoredRange;
      return;
    }
    if (r.first != 0) {
      r.verdict = Request::Verdict::IgnoredRange;
      return;
    }
    r.verdict = Request::Verdict::Data;
    return;
  }
  const std::string* range = r.response.Header("content-range");
  unsigned long long a = 0;
  unsigned long long b = 0;
  char total[32] = {0};
  if (range == nullptr ||
      std::sscanf(range->c_str(), "bytes %llu-%llu/%31s", &a, &b, total) != 3) {
    r.verdict = Request::Verdict::BadRange;
    return;
  }
  if (std::string(total) != "*" && std::string(total) != std::to_string(r.file_size)) {
    r.verdict = Request::Verdict::Changed;
    return;
  }
  r.verdict = a == r.first ? Request::Verdict::Data : Request::Verdict::BadRange;
}

size_t OnHeader(char* data, size_t size, size_t n, void* user) {
  auto& r = *static_cast<Request*>(user);
  std::string_view line(data, size * n);
  r.header_bytes = line.rfind("HTTP/", 0) == 0 ? line.size() : r.header_bytes + line.size();
  if (r.header_bytes > kMaxResponseHeaderBytes) {
    r.headers_too_large = true;  // an endless header stream
    return 0;
  }
  if (line.rfind("HTTP/", 0) == 0) {
    r.response.headers.clear();
    unsigned status = 0;
    std::string s(line);
    size_t space = s.find(' ');
    if (space != std::string::npos) {
      status = static_cast<unsigned>(std::strtoul(s.c_str() + space + 1, nullptr, 10));
    }
    r.response.status = static_cast<long>(status);
    return size * n;
  }
  size_t colon = line.find(':');
  if (colon == std::string_view::npos) {
    return size * n;
  }
  std::string name(line.substr(0, colon));
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  std::string_view value = line.substr(colon + 1);
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) {
    value.remove_prefix(1);
  }
  while (!value.empty() && (value.back() == '\r' || value.back() == '\n' || value.back() == ' ')) {
    value.remove_suffix(1);
  }
  r.response.headers.emplace_back(std::move(name), std::string(value));
  return size * n;
}

// Runs on the engine thread: the body goes to the file with pwrite, or for a staged request into
// blocks for the writer thread.
size_t OnData(char* data, size_t size, size_t n, void* user) {
  auto& r = *static_cast<Request*>(user);
  size_t len = size * n;
  if (r.abort.load(std::memory_order_relaxed)) {
    return 0;
  }
  if (r.bucket != nullptr && r.bucket->Empty()) {
    r.rate_waiters->push_back(&r);
    return CURL_WRITEFUNC_PAUSE;  // libcurl hands the same bytes again once resumed
  }
  if (r.verdict == Request::Verdict::None) {
    Classify(r);
  }
  if (r.staged && r.verdict == Request::Verdict::Data && r.pos < r.end && WaitsForBlock(r)) {
    return CURL_WRITEFUNC_PAUSE;
  }
  if (r.bucket != nullptr) {
    r.bucket->Take(len);
  }
  if (r.verdict == Request::Verdict::NotData) {
    if (r.response.body.size() < kMaxErrorBody) {
      r.response.body.append(data, std::min(len, kMaxErrorBody - r.response.body.size()));
    }
    return len;
  }
  if (r.verdict != Request::Verdict::Data) {
    return 0;
  }
  if (r.pos + len > r.end) {
    if (r.pos + len > r.file_size || r.response.status == 206) {
      r.verdict = Request::Verdict::Overflow;
      return 0;
    }
  }
  size_t want = static_cast<size_t>(std::min<uint64_t>(len, r.end - r.pos));
  if (r.staged) {
    Stage(r, data, want);
    r.downloaded->fetch_add(want, std::memory_order_relaxed);
  } else if (!WriteThrough(r, data, want)) {
    return 0;
  }
  // A whole-file 200 answering a request for only its first range: the rest is not ours to write
  // here, so the request ends once its range is in.
  return want < len ? 0 : len;
}

int OnProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return static_cast<Request*>(user)->abort.load(std::memory_order_relaxed) ? 1 : 0;
}

}  // namespace modelcache::fetch::internal
