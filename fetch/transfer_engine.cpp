#include "fetch/transfer_engine.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>

#include "common/files.h"
#include "common/guard.h"
#include "common/http_client.h"
#include "common/sha256.h"
#include "fetch/internal/blob_batch.h"
#include "fetch/internal/hub_http.h"
#include "store/s3_client.h"

namespace modelcache::fetch {
namespace {

using internal::FileSize;
using internal::ParentDir;
using internal::RepoOf;

using Clock = std::chrono::steady_clock;

constexpr size_t kHashPiece = 1 << 20;
// Hashing is bounded per loop turn so that completions and cancellation stay prompt.
constexpr uint64_t kHashBudget = 64ULL << 20;
constexpr int kMaxRedirects = 10;
constexpr size_t kMaxErrorBody = 64 << 10;

// " AccessDenied": the <Code> of an XML error body, as object stores (S3, the CDNs in front of
// them) send, so that a refused presigned URL says why; "" if there is none. Only the code: other
// elements of such bodies (SignatureDoesNotMatch's StringToSign) are not for messages.
std::string DataHostCode(const HttpResponse& response) {
  const std::string& body = response.body;
  size_t open = body.find("<Code>");
  size_t close = open == std::string::npos ? open : body.find("</Code>", open);
  if (close == std::string::npos || close - open - 6 > 64) {
    return "";
  }
  std::string code = body.substr(open + 6, close - open - 6);
  for (char ch : code) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) {
      return "";
    }
  }
  return code.empty() ? "" : " " + code;
}
constexpr auto kRateWindow = std::chrono::seconds(5);
constexpr auto kRateSample = std::chrono::milliseconds(250);
constexpr auto kIdleWait = std::chrono::milliseconds(100);
// Large files are staged in blocks of this size, aligned for O_DIRECT.
constexpr size_t kBlockSize = 2 << 20;
constexpr size_t kDirectAlign = 4096;
// Written blocks a job keeps in memory for hashing while they are ahead of the hashed prefix: as
// many as its ranges in flight span, within this bound.
constexpr int kMaxHeldBlocks = 32;

struct JobQueue;
struct Request;

// Part of a large file's body: the bytes [offset, offset + len) of file `file` of a job, received
// into memory aligned for O_DIRECT. `cap` is how many it may hold: up to the next multiple of
// kBlockSize or the end of its range, so that every block but the first and last of a range is
// aligned in the file.
struct Block {
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, Free> data;
  uint64_t offset = 0;
  size_t len = 0;
  size_t cap = 0;
  size_t file = 0;
  uint64_t generation = 0;  // of the file's data when received; a reset makes it stale
};

// The engine's staging memory: at most `max` blocks in use, except that a write callback that
// fills a block mid-way may overdraw one (it cannot give back bytes it has taken); transfers then
// pause until the pool is back within `max`. A Get that finds none (or Overdrawn) calls
// `on_wanted` once a block is put back, so the engine resumes the transfers it paused.
class BlockPool {
 public:
  BlockPool(size_t max, std::function<void()> on_wanted)
      : max_(max), on_wanted_(std::move(on_wanted)) {}

  Block* Get(bool overdraw) {
    std::lock_guard lock(mu_);
    if (!free_.empty()) {
      Block* b = free_.back().release();
      free_.pop_back();
      ++used_;
      return b;
    }
    if (used_ >= max_ && !overdraw) {
      wanted_ = true;
      return nullptr;
    }
    auto* memory = static_cast<char*>(std::aligned_alloc(kDirectAlign, kBlockSize));
    if (memory == nullptr) {
      wanted_ = true;
      return nullptr;
    }
    ++used_;
    auto* b = new Block;
    b->data.reset(memory);
    return b;
  }

  // Whether paused transfers may go on: those with a block can (see Overdrawn); one without
  // finds out with Get and pauses again if there is none.
  bool Available() {
    std::lock_guard lock(mu_);
    return used_ <= max_;
  }

  // Whether a transfer waits for a block: jobs then give back the blocks they hold for hashing.
  bool Wanted() {
    std::lock_guard lock(mu_);
    return wanted_;
  }

  // Whether more than `max` are in use (after overdrawing); like a failed Get, it asks for a wake.
  bool Overdrawn() {
    std::lock_guard lock(mu_);
    wanted_ = wanted_ || used_ > max_;
    return used_ > max_;
  }

  void Put(Block* b) {
    bool wake = false;
    {
      std::lock_guard lock(mu_);
      --used_;
      if (used_ + free_.size() < max_) {
        free_.emplace_back(b);
      } else {
        delete b;  // an overdrawn one
      }
      wake = std::exchange(wanted_, false);
    }
    if (wake) {
      on_wanted_();
    }
  }

 private:
  const size_t max_;
  const std::function<void()> on_wanted_;
  std::mutex mu_;
  std::vector<std::unique_ptr<Block>> free_;
  size_t used_ = 0;
  bool wanted_ = false;
};

class BlockWriter;

// The engine's bandwidth limit: a token bucket shared by every request. A write callback that
// finds it empty pauses its transfer; the engine thread refills it and resumes them.
struct Bucket {
  uint64_t rate = 0;  // bytes per second; 0 = unlimited
  int64_t burst = 0;
  int64_t tokens = 0;
  Clock::time_point refilled{};
  std::vector<Request*> paused;
};

// One HTTP request for one byte range of one file. The job thread fills the first block and hands
// it to the engine; the engine thread writes the body to the file and fills the second block;
// after completion the job thread owns it again.
struct Request {
  std::string url;
  HttpHeaders headers;
  bool ranged = false;
  uint64_t first = 0;  // file offset of the first byte asked for
  uint64_t end = 0;    // one past the last byte this request may write
  uint64_t file_size = 0;
  std::string expected_etag;  // "" = any
  int fd = -1;
  std::atomic<uint64_t>* chunk_done = nullptr;
  std::atomic<uint64_t>* bytes_done = nullptr;
  std::atomic<uint64_t>* downloaded = nullptr;
  const std::function<ssize_t(int, const void*, size_t, off_t)>* pwrite_hook = nullptr;
  JobQueue* queue = nullptr;
  Bucket* bucket = nullptr;
  size_t file = 0;
  size_t chunk = 0;
  std::atomic<bool> abort{false};
  // A staged request (a large file) gathers its body in blocks that the writer thread writes
  // (with O_DIRECT through direct_fd where aligned) before handing them to the job for hashing.
  bool staged = false;
  int direct_fd = -1;  // -1: through the page cache only
  uint64_t generation = 0;
  Block* block = nullptr;  // being filled; engine thread
  BlockPool* pool = nullptr;
  BlockWriter* writer = nullptr;
  std::vector<Request*>* block_waiters = nullptr;

  enum class Verdict { None, Data, IgnoredRange, Changed, BadRange, Overflow, WrongLength, NotData };
  Verdict verdict = Verdict::None;
  HttpResponse response;
  bool new_header_block = true;
  CURLcode code = CURLE_OK;
  bool cancelled = false;  // removed by CancelJob or engine shutdown
  std::optional<Error> write_error;
  size_t header_bytes = 0;         // of the current response
  bool headers_too_large = false;  // more than kMaxResponseHeaderBytes: aborted
  uint64_t pos = 0;  // next file offset to write
  std::string etag_seen;
  CURL* easy = nullptr;
  curl_slist* slist = nullptr;
};

// Completed requests and written blocks of one Run, handed to the job thread.
struct JobQueue {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Request*> done;
  std::deque<Block*> written;
  bool wake = false;
};

void Complete(Request* r) {
  JobQueue* q = r->queue;
  // Notified under the lock: the last completion lets the job return and destroy the queue, which
  // it cannot do before this thread lets go of the mutex (found by ThreadSanitizer: a notify after
  // the unlock raced with ~JobQueue).
  std::lock_guard lock(q->mu);
  q->done.push_back(r);
  q->cv.notify_all();
}

// Writes staged blocks in the order they are queued, on its own thread, so that neither the
// engine thread nor the hashing waits for the disk. A block goes to the file with O_DIRECT when
// its offset and length are aligned (its memory always is): large files then bypass the page
// cache, whose writeback is the bottleneck on fast links; the rest goes through the page cache.
// Once written, a block counts as on disk for its chunk and is handed to its job; a request is
// completed only after its last block is written.
class BlockWriter {
 public:
  explicit BlockWriter(BlockPool& pool) : pool_(pool), thread_([this] { Loop(); }) {}
  ~BlockWriter() { Stop(); }

  // Writes and completes what is queued, then ends the thread.
  void Stop() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable()) {
      thread_.join();
    }
  }

  void Write(Request* r, Block* b) { Push(r, b); }
  // Completes r once every block queued before is written.
  void Complete(Request* r) { Push(r, nullptr); }

 private:
  void Push(Request* r, Block* b) {
    {
      std::lock_guard lock(mu_);
      items_.emplace_back(r, b);
    }
    cv_.notify_one();
  }

  void Loop() {
    while (true) {
      std::pair<Request*, Block*> item;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [this] { return !items_.empty() || stopping_; });
        if (items_.empty()) {
          return;  // stopping, and everything queued is done
        }
        item = items_.front();
        items_.pop_front();
      }
      auto [r, b] = item;
      if (b == nullptr) {
        ::modelcache::fetch::Complete(r);
        continue;
      }
      if (r->write_error) {
        pool_.Put(b);  // the request is failing; the rest of its body is dropped
        continue;
      }
      if (int err = WriteBlock(*r, *b); err != 0) {
        r->write_error = Error(IoReason(err), ErrnoMessage(err));
        r->abort.store(true);
        pool_.Put(b);
        continue;
      }
      r->chunk_done->fetch_add(b->len, std::memory_order_release);
      r->bytes_done->fetch_add(b->len, std::memory_order_relaxed);
      {
        std::lock_guard lock(r->queue->mu);
        r->queue->written.push_back(b);
      }
      r->queue->cv.notify_all();
    }
  }

  // Returns 0 or the errno of the failed write.
  static int WriteBlock(const Request& r, const Block& b) {
    bool direct = r.direct_fd >= 0 && b.offset % kDirectAlign == 0 && b.len % kDirectAlign == 0;
    size_t done = 0;
    while (done < b.len) {
      int fd = direct ? r.direct_fd : r.fd;
      const char* data = b.data.get() + done;
      size_t size = b.len - done;
      auto offset = static_cast<off_t>(b.offset + done);
      ssize_t w = r.pwrite_hook != nullptr && *r.pwrite_hook
                      ? (*r.pwrite_hook)(fd, data, size, offset)
                      : ::pwrite(fd, data, size, offset);
      if (w < 0 && errno == EINTR) {
        continue;
      }
      if (w < 0 && errno == EINVAL && direct) {
        direct = false;  // the filesystem refuses this direct write; the page cache takes it
        continue;
      }
      if (w <= 0) {
        return w < 0 ? errno : EIO;
      }
      done += static_cast<size_t>(w);
      direct = direct && done % kDirectAlign == 0;
    }
    return 0;
  }

  BlockPool& pool_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<Request*, Block*>> items_;
  bool stopping_ = false;
  std::thread thread_;
};

std::string NormalizeEtag(std::string etag) {
  if (etag.rfind("W/", 0) == 0) {
    etag = etag.substr(2);
  }
  if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"') {
    etag = etag.substr(1, etag.size() - 2);
  }
  return etag;
}

// Decides, at the first body byte (or the end of a bodiless answer), whether this answer's body
// is the data asked for.
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

// Runs on the engine thread: the body goes to the file with pwrite, or for a staged request into
// blocks for the writer thread.
size_t OnData(char* data, size_t size, size_t n, void* user) {
  auto& r = *static_cast<Request*>(user);
  size_t len = size * n;
  if (r.abort.load(std::memory_order_relaxed)) {
    return 0;
  }
  if (r.bucket != nullptr && r.bucket->rate > 0 && r.bucket->tokens <= 0) {
    r.bucket->paused.push_back(&r);
    return CURL_WRITEFUNC_PAUSE;  // libcurl hands the same bytes again once resumed
  }
  if (r.verdict == Request::Verdict::None) {
    Classify(r);
  }
  if (r.staged && r.verdict == Request::Verdict::Data && r.pos < r.end) {
    bool wait = r.block == nullptr ? (r.block = NextBlock(r, false)) == nullptr
                                   : r.pool->Overdrawn();
    if (wait) {
      r.block_waiters->push_back(&r);
      {
        std::lock_guard lock(r.queue->mu);  // its job may hold blocks it can give back
        r.queue->wake = true;
      }
      r.queue->cv.notify_all();
      return CURL_WRITEFUNC_PAUSE;
    }
  }
  if (r.bucket != nullptr && r.bucket->rate > 0) {
    r.bucket->tokens -= static_cast<int64_t>(len);
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
    return want < len ? 0 : len;
  }
  size_t written = 0;
  while (written < want) {
    ssize_t w = r.pwrite_hook != nullptr && *r.pwrite_hook
                    ? (*r.pwrite_hook)(r.fd, data + written, want - written,
                                       static_cast<off_t>(r.pos))
                    : ::pwrite(r.fd, data + written, want - written, static_cast<off_t>(r.pos));
    if (w < 0 && errno == EINTR) {
      continue;
    }
    if (w <= 0) {
      int err = w < 0 ? errno : EIO;
      r.write_error = Error(IoReason(err), ErrnoMessage(err));
      return 0;
    }
    auto wn = static_cast<uint64_t>(w);
    written += static_cast<size_t>(w);
    r.pos += wn;
    r.chunk_done->fetch_add(wn, std::memory_order_release);
    r.bytes_done->fetch_add(wn, std::memory_order_relaxed);
    r.downloaded->fetch_add(wn, std::memory_order_relaxed);
  }
  // A whole-file 200 answering a request for only its first range: the rest is not ours to write
  // here, so the request ends once its range is in.
  return want < len ? 0 : len;
}

int OnProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return static_cast<Request*>(user)->abort.load(std::memory_order_relaxed) ? 1 : 0;
}

}  // namespace

struct TransferEngine::Impl {
  explicit Impl(TransferEngineOptions o)
      : options(std::move(o)),
        pool(options.staging_bytes > 0
                 ? std::max<size_t>(1, options.staging_bytes / kBlockSize)
                 : 2 * static_cast<size_t>(std::max(1, options.max_connections)) + kMaxHeldBlocks,
             [this] { curl_multi_wakeup(multi); }),
        writer(pool) {
    options.max_connections = std::max(1, options.max_connections);
    options.max_connections_per_job = std::max(1, options.max_connections_per_job);
    options.chunk_size = std::max<uint64_t>(options.chunk_size, 64 << 10);
    options.min_chunk_size = std::clamp<uint64_t>(options.min_chunk_size, 1, options.chunk_size);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    multi = curl_multi_init();
    curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS,
                      static_cast<long>(options.max_connections));
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, static_cast<long>(options.max_connections));
    curl_multi_setopt(multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    bucket.rate = options.max_bytes_per_second;
    bucket.burst = static_cast<int64_t>(std::max<uint64_t>(bucket.rate / 20, 64 << 10));
    bucket.tokens = bucket.burst;
    bucket.refilled = BucketNow();
    // A server dripping bytes is stalled too: below kStallBytesPerSecond, unless a bandwidth
    // limit shared by all connections leaves each of them less than that.
    stall_floor = kStallBytesPerSecond;
    if (bucket.rate > 0) {
      stall_floor = std::clamp<uint64_t>(
          bucket.rate / (4 * static_cast<uint64_t>(options.max_connections)), 1, stall_floor);
    }
    // The last resort: an exception out of an iteration (std::bad_alloc) is logged and the loop
    // goes on, so the jobs of other resources keep their transfers.
    thread = std::thread([this] {
      while (!LogExceptions("transfer engine thread", [this] { Loop(); })) {
      }
    });
  }

  ~Impl() {
    {
      std::lock_guard lock(mu);
      stopping = true;
    }
    curl_multi_wakeup(multi);
    thread.join();
    writer.Stop();  // it may still wake the engine's multi handle
    curl_multi_cleanup(multi);
  }

  void Submit(Request* r) {
    {
      std::lock_guard lock(mu);
      inbox.push_back(r);
    }
    curl_multi_wakeup(multi);
  }

  void CancelJob(JobQueue* q) {
    {
      std::lock_guard lock(mu);
      cancels.push_back(q);
    }
    curl_multi_wakeup(multi);
  }

  void Finish(Request* r, CURLcode code, bool cancelled) {
    curl_multi_remove_handle(multi, r->easy);
    curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->slist);
    r->easy = nullptr;
    r->slist = nullptr;
    r->code = code;
    r->cancelled = cancelled;
    if (r->verdict == Request::Verdict::None) {
      Classify(*r);  // a bodiless answer: a redirect, an error, or an empty range
    }
    active.erase(std::remove(active.begin(), active.end(), r), active.end());
    bucket.paused.erase(std::remove(bucket.paused.begin(), bucket.paused.end(), r),
                        bucket.paused.end());
    block_waiters.erase(std::remove(block_waiters.begin(), block_waiters.end(), r),
                        block_waiters.end());
    if (!r->staged) {
      Complete(r);
      return;
    }
    if (Block* b = std::exchange(r->block, nullptr); b != nullptr) {
      if (b->len > 0) {
        writer.Write(r, b);  // what arrived before the end is kept
      } else {
        pool.Put(b);
      }
    }
    writer.Complete(r);
  }

  void Add(Request* r) {
    CURL* e = curl_easy_init();
    r->easy = e;
    r->pos = r->first;
    for (const auto& [name, value] : r->headers) {
      r->slist = curl_slist_append(r->slist, (name + ": " + value).c_str());
    }
    curl_easy_setopt(e, CURLOPT_URL, r->url.c_str());
    // Only http(s): a Location of file:// or ftp:// is refused before it gets here, and this
    // makes sure of it. Bodies are never decompressed (see HttpRequest::max_body_bytes).
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_HTTP_CONTENT_DECODING, 0L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->slist);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_2TLS));
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 512L << 10);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     static_cast<long>(options.connect_timeout.count()));
    auto stall = std::max<int64_t>(
        1, std::chrono::duration_cast<std::chrono::seconds>(options.stall_timeout).count());

    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, static_cast<long>(stall_floor));
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, static_cast<long>(stall));
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, OnHeader);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, OnData);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, OnProgress);
    curl_easy_setopt(e, CURLOPT_XFERINFODATA, r);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    r->bucket = &bucket;
    r->pool = &pool;
    r->writer = &writer;
    r->block_waiters = &block_waiters;
    active.push_back(r);
    if (curl_multi_add_handle(multi, e) != CURLM_OK) {
      Finish(r, CURLE_FAILED_INIT, false);
    }
  }

  Clock::time_point BucketNow() const {
    return options.bandwidth_clock_for_test ? options.bandwidth_clock_for_test() : Clock::now();
  }

  void Refill() {
    auto now = BucketNow();
    double seconds = std::chrono::duration<double>(now - bucket.refilled).count();
    bucket.refilled = now;
    bucket.tokens = std::min<int64_t>(
        bucket.burst,
        bucket.tokens + static_cast<int64_t>(seconds * static_cast<double>(bucket.rate)));
    if (bucket.tokens <= 0 || bucket.paused.empty()) {
      return;
    }
    std::vector<Request*> resume;
    resume.swap(bucket.paused);
    for (Request* r : resume) {
      // May call the write callback at once, which may pause it again.
      curl_easy_pause(r->easy, CURLPAUSE_CONT);
    }
  }

  void Loop() {
    while (true) {
      std::vector<Request*> adds;
      std::vector<JobQueue*> cancel;
      bool stop = false;
      {
        std::lock_guard lock(mu);
        adds.swap(inbox);
        cancel.swap(cancels);
        stop = stopping;
      }
      for (Request* r : adds) {
        Add(r);
      }
      for (JobQueue* q : cancel) {
        std::vector<Request*> victims;
        for (Request* r : active) {
          if (r->queue == q) {
            victims.push_back(r);
          }
        }
        for (Request* r : victims) {
          Finish(r, CURLE_ABORTED_BY_CALLBACK, true);
        }
      }
      if (stop) {
        while (!active.empty()) {
          Finish(active.front(), CURLE_ABORTED_BY_CALLBACK, true);
        }
        return;
      }
      int running = 0;
      curl_multi_perform(multi, &running);
      int left = 0;
      while (CURLMsg* msg = curl_multi_info_read(multi, &left)) {
        if (msg->msg != CURLMSG_DONE) {
          continue;
        }
        Request* r = nullptr;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &r);
        CURLcode code = msg->data.result;
        Finish(r, code, false);
      }
      if (!block_waiters.empty() && pool.Available()) {
        // Put back blocks wake this loop (BlockPool's on_wanted); a resumed transfer that still
        // finds none pauses again.
        std::vector<Request*> resume;
        resume.swap(block_waiters);
        for (Request* r : resume) {
          curl_easy_pause(r->easy, CURLPAUSE_CONT);
        }
      }
      int timeout_ms = 1000;
      if (bucket.rate > 0) {
        Refill();
        timeout_ms = bucket.paused.empty() ? 1000 : 5;
      }
      curl_multi_poll(multi, nullptr, 0, timeout_ms, nullptr);
    }
  }

  TransferEngineOptions options;
  CURLM* multi = nullptr;
  std::mutex mu;
  std::vector<Request*> inbox;
  std::vector<JobQueue*> cancels;
  bool stopping = false;
  std::vector<Request*> active;  // engine thread only
  Bucket bucket;                 // engine thread only
  uint64_t stall_floor = 1;      // LOW_SPEED_LIMIT of every request; set at construction
  std::vector<Request*> block_waiters;  // paused for want of a block; engine thread only
  BlockPool pool;
  // Declared after what it uses and destroyed before it: it completes the requests still queued
  // once the engine thread has ended them all.
  BlockWriter writer;
  std::thread thread;
};

namespace {

// Bytes the disk must still provide for `task`: a preallocated file already holds its blocks.
uint64_t BytesNeeded(const FileTask& task) {
  if (auto final_size = FileSize(task.final_path); final_size && *final_size == task.size) {
    return 0;
  }
  struct stat st {};
  if (::stat(task.incomplete_path.c_str(), &st) != 0) {
    return task.size;
  }
  auto have = std::min<uint64_t>(static_cast<uint64_t>(st.st_blocks) * 512,
                                 static_cast<uint64_t>(st.st_size));
  return have >= task.size ? 0 : task.size - have;
}

VoidResult CheckFreeSpace(const std::vector<const FileTask*>& tasks) {
  std::vector<internal::SpaceNeed> needs;
  for (const FileTask* task : tasks) {
    needs.push_back({task->incomplete_path, BytesNeeded(*task)});
  }
  return internal::CheckFreeSpace(needs);
}

struct Chunk {
  Chunk(uint64_t s, uint64_t e, uint64_t d) : start(s), end(e), done(d) {}
  uint64_t start;
  uint64_t end;
  std::atomic<uint64_t> done;  // bytes on disk from `start`; advanced by the engine thread
  bool in_flight = false;
  int failures = 0;
  // The furthest file offset any request of this chunk reached: a single stream starts over from
  // 0 on every attempt, and only getting further than before is progress.
  uint64_t furthest = 0;
  Clock::time_point not_before{};
  uint64_t len() const { return end - start; }
  bool complete() const { return done.load(std::memory_order_acquire) >= len(); }
};

struct FileState {
  const FileTask* task = nullptr;
  size_t index = 0;
  enum class Phase { Waiting, Active, Publishing, Done } phase = Phase::Waiting;
  int fd = -1;
  bool mapped = false;         // several chunks: preallocated, chunk map persisted
  bool single_stream = false;  // the server ignores Range
  std::vector<std::unique_ptr<Chunk>> chunks;
  std::string etag;      // of the data on disk; "" = not known yet
  std::string data_url;  // where the data is (the CDN); "" = ask the Hub
  int redirects = 0;
  int in_flight = 0;
  bool reset_pending = false;
  uint64_t hashed = 0;
  std::optional<Hasher> sha256;
  std::optional<Hasher> sha1;
  int verify_failures = 0;
  int changes = 0;
  int direct_fd = -1;        // the .incomplete file opened with O_DIRECT (mapped files), or -1
  uint64_t generation = 0;   // bumped whenever the data on disk is discarded
  std::map<uint64_t, Block*> held;  // written blocks at or beyond `hashed`, by offset
  bool dirty = false;        // the map changed other than by bytes arriving (etag, reset)
  uint64_t persisted = 0;    // data bytes the map on disk claims
  Clock::time_point last_persist{};

  std::string map_path() const { return task->incomplete_path + ".chunks"; }
  uint64_t on_disk() const {
    uint64_t sum = 0;
    for (const auto& c : chunks) {
      sum += std::min(c->done.load(std::memory_order_acquire), c->len());
    }
    return sum;
  }
};

class EngineTransfer final : public Transfer {
 public:
  EngineTransfer(std::shared_ptr<TransferEngine::Impl> engine, HubOptions hub)
      : engine_(std::move(engine)), hub_(std::move(hub)) {
    while (!hub_.endpoint.empty() && hub_.endpoint.back() == '/') {
      hub_.endpoint.pop_back();
    }
    hub_.max_attempts = std::max(1, hub_.max_attempts);
  }

  Result<std::vector<FileResult>> Run(const std::vector<FileTask>& tasks,
                                      TransferProgress& progress, std::stop_token stop) override;

 private:
  std::shared_ptr<TransferEngine::Impl> engine_;
  HubOptions hub_;
};

// The state of one Run, driven on the caller's thread.
class Job {
 public:
  Job(TransferEngine::Impl& engine, const HubOptions& hub, TransferProgress& progress,
      std::stop_token stop)
      : engine_(engine), opts_(engine.options), hub_(hub), progress_(progress),
        stop_(std::move(stop)) {}

  ~Job() {
    for (Block* b : queue_.written) {
      engine_.pool.Put(b);
    }
    for (auto& f : files_) {
      DropHeld(f);
      if (f.fd >= 0) {
        ::close(f.fd);
      }
      CloseDirect(f);
    }
  }
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;

  Result<std::vector<FileResult>> Run(const std::vector<FileTask>& tasks);

 private:
  VoidResult Activate(FileState& f);
  VoidResult LoadMap(FileState& f, uint64_t chunk_size);
  // Records f's chunk map (after an fdatasync of its data) on the persister thread, at most once per
  // persist_interval unless `force`.
  void PersistMap(FileState& f, bool force);
  // Waits until every map handed to the persister is written.
  void DrainPersists();
  void Submit(FileState& f, size_t ci);
  void Schedule();
  void Handle(Request* r);
  void Retry(FileState& f, Chunk& c, Error error, bool progressed);
  // Why a request ended early, in words ("stalled: ..." for the stall timeout).
  std::string TransferFailure(CURLcode code) const;
  // A NetworkError for a request that ended with `code`, marked stalled for the stall timeout.
  static Error NetworkFailure(std::string message, CURLcode code) {
    Error e(Reason::NetworkError, std::move(message));
    e.stalled = code == CURLE_OPERATION_TIMEDOUT;
    return e;
  }
  void StartReset(FileState& f, bool single_stream, const std::string& new_etag);
  VoidResult FinishReset(FileState& f);
  VoidResult AdvanceHash(FileState& f, uint64_t& budget);
  // Keeps a written block for hashing from memory, within held_limit_ blocks for the job.
  void Hold(Block* b);
  // Gives back the held block furthest ahead of its file's hashed prefix.
  void ReleaseFurthest();
  // Gives back f's held blocks and makes blocks still on their way stale.
  void DropHeld(FileState& f);
  static void CloseDirect(FileState& f) {
    if (f.direct_fd >= 0) {
      ::close(f.direct_fd);
      f.direct_fd = -1;
    }
  }
  VoidResult Verify(FileState& f);
  void Fail(Error e) {
    if (!error_) {
      error_ = std::move(e);
    }
  }
  void SampleRate();

  struct Publication {
    size_t file = 0;
    int fd = -1;
    std::string sha256;
    VoidResult result;
  };
  struct MapWrite {
    int fd = -1;  // a dup of the data file's descriptor, closed by the persister
    std::string map_path;
    std::string text;
  };
  void PersistLoop(std::stop_token stop);
  static constexpr size_t kPublishers = 8;
  static VoidResult Publish(const FileTask& t, bool mapped, int fd);
  void PublishLoop(std::stop_token stop);
  void Published(Publication& p);
  Error MapError(const HttpResponse& answer, const FileTask& task, const std::string& what) const {
    auto [type, repo] = RepoOf(hub_.endpoint, task.url);
    return HubClient::MapError(answer, what, hub_.endpoint, repo, type);
  }
  uint64_t ChunkSizeFor(uint64_t size) const {
    uint64_t per = (size + static_cast<uint64_t>(opts_.max_connections_per_job) - 1) /
                   static_cast<uint64_t>(opts_.max_connections_per_job);
    per = std::clamp<uint64_t>(per, opts_.min_chunk_size, opts_.chunk_size);
    return (per + kDirectAlign - 1) / kDirectAlign * kDirectAlign;  // blocks stay aligned
  }

  TransferEngine::Impl& engine_;
  const TransferEngineOptions& opts_;
  const HubOptions& hub_;
  TransferProgress& progress_;
  std::stop_token stop_;
  JobQueue queue_;
  std::vector<FileState> files_;
  std::vector<std::optional<FileResult>> results_;
  std::map<Request*, std::unique_ptr<Request>> in_flight_;
  std::optional<Error> error_;
  int held_blocks_ = 0;
  const int held_limit_ = static_cast<int>(std::min<uint64_t>(
      kMaxHeldBlocks, static_cast<uint64_t>(opts_.max_connections_per_job) *
                          ((opts_.chunk_size + kBlockSize - 1) / kBlockSize)));
  uint64_t hashed_from_memory_ = 0;  // for the debug summary: what was not read back
  uint64_t hashed_from_file_ = 0;
  std::atomic<uint64_t> downloaded_{0};
  std::deque<std::pair<Clock::time_point, uint64_t>> samples_;
  Clock::time_point next_sample_{};
  int publishing_ = 0;                   // files handed to publishers, not yet back
  std::deque<Publication> published_;    // guarded by queue_.mu
  std::mutex publish_mu_;
  std::condition_variable_any publish_cv_;
  std::deque<Publication> to_publish_;   // guarded by publish_mu_
  std::mutex persist_mu_;
  std::condition_variable_any persist_cv_;
  std::deque<MapWrite> to_persist_;  // guarded by persist_mu_
  int persists_pending_ = 0;         // queued or being written; guarded by persist_mu_
  // Last members: joined first on destruction, while everything they touch is still alive.
  std::jthread persister_;
  std::vector<std::jthread> publishers_;
};

VoidResult Job::LoadMap(FileState& f, uint64_t chunk_size) {
  const FileTask& t = *f.task;
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) {
    return Error(Reason::StorageError, "cannot stat " + t.incomplete_path + ": " +
                                           ErrnoMessage(errno));
  }
  auto have = static_cast<uint64_t>(st.st_size);
  if (f.mapped) {
    if (auto text = ReadFile(f.map_path()); text && have == t.size) {
      auto doc = nlohmann::json::parse(*text, nullptr, false);
      if (!doc.is_discarded() && doc.is_object() && doc.value("size", uint64_t{0}) == t.size &&
          doc.contains("chunks") && doc["chunks"].is_array()) {
        uint64_t expect = 0;
        bool ok = true;
        for (const auto& c : doc["chunks"]) {
          if (!c.is_array() || c.size() != 3) {
            ok = false;
            break;
          }
          auto s = c[0].get<uint64_t>();
          auto e = c[1].get<uint64_t>();
          auto d = c[2].get<uint64_t>();
          if (s != expect || e <= s || e > t.size || d > e - s) {
            ok = false;
            break;
          }
          f.chunks.push_back(std::make_unique<Chunk>(s, e, d));
          expect = e;
        }
        if (ok && expect == t.size) {
          f.etag = doc.value("etag", std::string());
          return {};
        }
        f.chunks.clear();
      }
      spdlog::warn("{}: unreadable chunk map; starting over", f.map_path());
      have = 0;
    } else if (::access(f.map_path().c_str(), F_OK) == 0) {
      have = 0;  // a map without its preallocated file: the data is not what it describes
    }
  }
  // No map: the file is a plain prefix of the blob (a one-chunk file).
  if (have > t.size) {
    have = 0;
  }
  if (have == 0 && st.st_size != 0 && ::ftruncate(f.fd, 0) != 0) {
    return Error(Reason::StorageError, "cannot truncate " + t.incomplete_path + ": " +
                                           ErrnoMessage(errno));
  }
  if (!f.mapped) {
    f.chunks.push_back(std::make_unique<Chunk>(0, t.size, have));
    return {};
  }
  for (uint64_t s = 0; s < t.size; s += chunk_size) {
    uint64_t e = std::min(t.size, s + chunk_size);
    uint64_t d = have > s ? std::min(have - s, e - s) : 0;
    f.chunks.push_back(std::make_unique<Chunk>(s, e, d));
  }
  return {};
}

VoidResult Job::Activate(FileState& f) {
  const FileTask& t = *f.task;
  if (auto r = MakeDirs(ParentDir(t.incomplete_path)); !r) {
    return r.error();
  }
  f.fd = ::open(t.incomplete_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (f.fd < 0) {
    return Error(Reason::StorageError,
                 "cannot open " + t.incomplete_path + ": " + ErrnoMessage(errno));
  }
  uint64_t chunk_size = ChunkSizeFor(t.size);
  f.mapped = t.size > chunk_size;
  if (auto r = LoadMap(f, chunk_size); !r) {
    return r.error();
  }
  if (f.mapped) {
    int err = ::posix_fallocate(f.fd, 0, static_cast<off_t>(t.size));
    if (IoReason(err) == Reason::InsufficientStorage) {
      return Error(Reason::InsufficientStorage,
                   fmt::format("no space left to allocate {} bytes for {} in {}", t.size, t.path,
                               t.incomplete_path));
    }
    if (err != 0 && err != EOPNOTSUPP && err != EINVAL) {
      return Error(Reason::StorageError,
                   "cannot allocate " + t.incomplete_path + ": " + ErrnoMessage(err));
    }
    if (err != 0 && ::ftruncate(f.fd, static_cast<off_t>(t.size)) != 0) {
      return Error(Reason::StorageError,
                   "cannot size " + t.incomplete_path + ": " + ErrnoMessage(errno));
    }
    // From here on the file is as long as the blob: only the map tells what is data.
    PersistMap(f, true);
    // -1 where the filesystem has no O_DIRECT: the blocks then go through the page cache.
    f.direct_fd = ::open(t.incomplete_path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  }
  f.sha256.emplace(Hasher::Kind::Sha256);
  if (t.expected_git_sha1) {
    f.sha1.emplace(GitBlobHasher(t.size));
  }
  progress_.bytes_done.fetch_add(f.on_disk());
  f.phase = FileState::Phase::Active;
  return {};
}

void Job::PersistMap(FileState& f, bool force) {
  if (!f.mapped || f.fd < 0) {
    return;
  }
  auto now = Clock::now();
  // Ranges that are still being received count too: a long range would otherwise be recorded only
  // once it completes, and a kill before that would lose all of it.
  uint64_t on_disk = f.on_disk();
  if (!force && ((!f.dirty && on_disk == f.persisted) ||
                 now - f.last_persist < opts_.persist_interval)) {
    return;
  }
  // Claims are read before the data is synced, so the map never names bytes that are not durable.
  nlohmann::json chunks = nlohmann::json::array();
  uint64_t claimed = 0;
  for (const auto& c : f.chunks) {
    uint64_t d = std::min(c->done.load(std::memory_order_acquire), c->len());
    claimed += d;
    chunks.push_back({c->start, c->end, d});
  }
  nlohmann::json doc = {{"size", f.task->size}, {"etag", f.etag}, {"chunks", chunks}};
  // The fdatasync (which writes back everything the file has in the page cache) and the map write
  // run on the persister thread: done here they stall scheduling and completions for as long as
  // the disk takes, leaving connections idle. The persister works in order, so the last map wins.
  int fd = ::dup(f.fd);
  if (fd < 0) {
    spdlog::warn("cannot dup {}: {}", f.task->incomplete_path, ErrnoMessage(errno));
    return;
  }
  {
    std::lock_guard lock(persist_mu_);
    std::string path = f.map_path();
    // A newer snapshot replaces one still waiting for the same file (its claims are newer and are
    // read before its own sync, so they stay safe to record).
    auto waiting = std::find_if(to_persist_.begin(), to_persist_.end(),
                                [&](const MapWrite& w) { return w.map_path == path; });
    if (waiting != to_persist_.end()) {
      ::close(waiting->fd);
      waiting->fd = fd;
      waiting->text = doc.dump();
    } else {
      to_persist_.push_back(MapWrite{fd, std::move(path), doc.dump()});
      persists_pending_ += 1;
    }
    if (!persister_.joinable()) {
      persister_ = std::jthread([this](std::stop_token stop) { PersistLoop(stop); });
    }
  }
  persist_cv_.notify_one();
  f.dirty = false;
  f.persisted = claimed;
  f.last_persist = now;
}

void Job::PersistLoop(std::stop_token stop) {
  while (true) {
    MapWrite w;
    {
      std::unique_lock lock(persist_mu_);
      persist_cv_.wait(lock, stop, [this] { return !to_persist_.empty(); });
      if (to_persist_.empty()) {
        return;  // stop requested and nothing left
      }
      w = std::move(to_persist_.front());
      to_persist_.pop_front();
    }
    if (::fdatasync(w.fd) != 0) {
      spdlog::warn("cannot sync the data of {}: {}", w.map_path, ErrnoMessage(errno));
    } else if (auto r = WriteFileAtomic(w.map_path, w.text); !r) {
      spdlog::warn("{}", r.error().ToString());
    }
    ::close(w.fd);
    {
      std::lock_guard lock(persist_mu_);
      persists_pending_ -= 1;
    }
    persist_cv_.notify_all();
  }
}

void Job::DrainPersists() {
  std::unique_lock lock(persist_mu_);
  persist_cv_.wait(lock, [this] { return persists_pending_ == 0; });
}

void Job::Submit(FileState& f, size_t ci) {
  Chunk& c = *f.chunks[ci];
  auto r = std::make_unique<Request>();
  r->url = f.data_url.empty() ? f.task->url : f.data_url;
  r->headers = internal::HubHeaders(hub_, r->url);
  uint64_t done = c.done.load(std::memory_order_acquire);
  if (f.single_stream && done > 0) {
    // The server ignores Range: there is no resuming, only starting over.
    progress_.bytes_done.fetch_sub(done);
    c.done.store(0);
    done = 0;
    f.hashed = 0;
    DropHeld(f);
    f.sha256.emplace(Hasher::Kind::Sha256);
    if (f.task->expected_git_sha1) {
      f.sha1.emplace(GitBlobHasher(f.task->size));
    }
  }
  r->first = c.start + done;
  r->end = c.end;
  r->ranged = !f.single_stream;
  if (r->ranged) {
    r->headers.emplace_back("Range", fmt::format("bytes={}-{}", r->first, c.end - 1));
  }
  r->file_size = f.task->size;
  r->expected_etag = f.etag;
  r->fd = f.fd;
  r->chunk_done = &c.done;
  r->bytes_done = &progress_.bytes_done;
  r->downloaded = &downloaded_;
  r->pwrite_hook = &opts_.pwrite_for_test;
  r->staged = f.mapped;
  r->direct_fd = f.direct_fd;
  r->generation = f.generation;
  r->queue = &queue_;
  r->file = static_cast<size_t>(&f - files_.data());
  r->chunk = ci;
  c.in_flight = true;
  f.in_flight += 1;
  Request* raw = r.get();
  in_flight_.emplace(raw, std::move(r));
  engine_.Submit(raw);
}

void Job::Schedule() {
  auto now = Clock::now();
  auto limit = static_cast<size_t>(opts_.max_connections_per_job);
  for (auto& f : files_) {
    if (in_flight_.size() >= limit || error_) {
      return;
    }
    if (f.phase == FileState::Phase::Done || f.reset_pending) {
      continue;
    }
    if (f.phase == FileState::Phase::Waiting) {
      if (auto r = Activate(f); !r) {
        Fail(r.error());
        return;
      }
    }
    for (size_t ci = 0; ci < f.chunks.size() && in_flight_.size() < limit; ++ci) {
      Chunk& c = *f.chunks[ci];
      if (c.in_flight || c.complete() || now < c.not_before) {
        continue;
      }
      // Until the Hub has told us where the data is, one request per file asks it.
      if (f.data_url.empty() && f.in_flight > 0) {
        break;
      }
      Submit(f, ci);
    }
  }
}

void Job::StartReset(FileState& f, bool single_stream, const std::string& new_etag) {
  if (!f.reset_pending) {
    f.reset_pending = true;
    for (auto& [raw, owned] : in_flight_) {
      if (&files_[raw->file] == &f) {
        raw->abort.store(true);
      }
    }
  }
  f.single_stream = f.single_stream || single_stream;
  f.etag = new_etag;
}

VoidResult Job::FinishReset(FileState& f) {
  progress_.bytes_done.fetch_sub(f.on_disk());
  const FileTask& t = *f.task;
  f.chunks.clear();
  if (f.single_stream) {
    f.chunks.push_back(std::make_unique<Chunk>(0, t.size, 0));
  } else {
    uint64_t cs = ChunkSizeFor(t.size);
    for (uint64_t s = 0; s < t.size; s += cs) {
      f.chunks.push_back(std::make_unique<Chunk>(s, std::min(t.size, s + cs), 0));
    }
  }
  f.hashed = 0;
  DropHeld(f);
  f.sha256.emplace(Hasher::Kind::Sha256);
  if (t.expected_git_sha1) {
    f.sha1.emplace(GitBlobHasher(t.size));
  }
  f.reset_pending = false;
  if (!f.mapped && ::ftruncate(f.fd, 0) != 0) {
    return Error(Reason::StorageError,
                 "cannot truncate " + t.incomplete_path + ": " + ErrnoMessage(errno));
  }
  PersistMap(f, true);
  return {};
}

std::string Job::TransferFailure(CURLcode code) const {
  if (code == CURLE_OPERATION_TIMEDOUT) {
    return fmt::format("stalled: less than {} bytes/s for {} s", engine_.stall_floor,
                       std::chrono::duration_cast<std::chrono::seconds>(
                           engine_.options.stall_timeout)
                           .count());
  }
  return curl_easy_strerror(code);
}

void Job::Retry(FileState& f, Chunk& c, Error error, bool progressed) {
  if (progressed) {
    c.failures = 0;
  }
  c.failures += 1;
  if (c.failures >= hub_.max_attempts) {
    error.message += fmt::format(" (after {} attempts)", c.failures);
    Fail(std::move(error));
    return;
  }
  std::chrono::milliseconds wait = internal::BackoffDelay(hub_, c.failures);
  if (error.retry_after) {
    if (*error.retry_after > hub_.backoff_cap) {
      Fail(std::move(error));  // the caller requeues after retry_after instead of waiting here
      return;
    }
    wait = *error.retry_after;
  }
  spdlog::debug("{}: {}; retrying in {} ms", f.task->path, error.ToString(), wait.count());
  c.not_before = Clock::now() + wait;
}

void Job::Handle(Request* r) {
  std::unique_ptr<Request> owned = std::move(in_flight_[r]);
  in_flight_.erase(r);
  FileState& f = files_[r->file];
  Chunk& c = *f.chunks[r->chunk];
  c.in_flight = false;
  f.in_flight -= 1;
  f.dirty = f.dirty || r->pos > r->first;
  if (f.reset_pending) {
    if (f.in_flight == 0) {
      if (auto res = FinishReset(f); !res) {
        Fail(res.error());
      }
    }
    return;
  }
  if (r->cancelled || error_ || stop_.stop_requested()) {
    return;
  }
  const FileTask& t = *f.task;
  std::string what = fmt::format("{} ({})", t.path, internal::WithoutQuery(r->url));
  // Data that arrived resets the request's failure count, unless the request ended as stalled
  // (a server dripping a byte a second) or got no further than an earlier attempt (a server that
  // ignores Range and ends early every time): either would otherwise be retried without end.
  bool progressed = r->pos > std::max(r->first, c.furthest) && r->code != CURLE_OPERATION_TIMEDOUT;
  c.furthest = std::max(c.furthest, r->pos);
  if (r->write_error) {
    Error e = *r->write_error;
    e.message = e.reason == Reason::InsufficientStorage
                    ? fmt::format("no space left writing {} ({}); {} of {} bytes of {} are kept "
                                  "for resume",
                                  t.incomplete_path, e.message, f.on_disk(), t.size, t.path)
                    : fmt::format("cannot write {}: {}", t.incomplete_path, e.message);
    Fail(std::move(e));
    return;
  }
  if (r->headers_too_large) {
    Retry(f, c,
          Error(Reason::NetworkError, fmt::format("{}: the answer's headers exceed {} bytes", what,
                                                  kMaxResponseHeaderBytes)),
          progressed);
    return;
  }
  using V = Request::Verdict;
  long status = r->response.status;
  switch (r->verdict) {
    case V::IgnoredRange:
      spdlog::info("{}: the server ignored Range; fetching it as one stream", what);
      StartReset(f, true, f.etag);
      if (f.in_flight == 0) {
        if (auto res = FinishReset(f); !res) {
          Fail(res.error());
        }
      }
      return;
    case V::Changed:
      f.changes += 1;
      if (f.changes >= hub_.max_attempts) {
        Fail(Error(Reason::NetworkError,
                   fmt::format("{} kept changing during the download", what)));
        return;
      }
      spdlog::warn("{} changed during the download (ETag {} instead of {}); starting over", what,
                   r->etag_seen, f.etag);
      StartReset(f, false, r->etag_seen);
      if (f.in_flight == 0) {
        if (auto res = FinishReset(f); !res) {
          Fail(res.error());
        }
      }
      return;
    case V::BadRange:
    case V::Overflow:
      Retry(f, c,
            Error(Reason::NetworkError,
                  fmt::format("{} answered bytes other than the range asked for", what)),
            progressed);
      return;
    case V::WrongLength: {
      const std::string* length = r->response.Header("content-length");
      Retry(f, c,
            Error(Reason::NetworkError,
                  fmt::format("{} answered Content-Length {} for bytes {}-{} of a {}-byte file "
                              "(the size in the tree listing)",
                              what, length != nullptr ? PrintablePath(*length) : "?", r->first,
                              r->end, t.size)),
            progressed);
      return;
    }
    case V::Data:
      if (f.etag.empty() && !r->etag_seen.empty()) {
        f.etag = r->etag_seen;
      }
      if (f.data_url.empty()) {
        f.data_url = r->url;  // the Hub serves it itself: no need to ask one at a time
      }
      if (c.complete()) {
        f.redirects = 0;
        return;
      }
      Retry(f, c,
            NetworkFailure(r->code != CURLE_OK
                               ? internal::ScrubUrl(
                                     fmt::format("{}: {}", what, TransferFailure(r->code)), r->url)
                               : fmt::format("{} ended at byte {} of {}", what, r->pos, c.end),
                           r->code),
            progressed);
      return;
    case V::None:
    case V::NotData:
      break;
  }
  if (r->code != CURLE_OK || status == 0) {
    Retry(f, c, NetworkFailure(fmt::format("{}: {}", what, TransferFailure(r->code)), r->code),
          progressed);
    return;
  }
  if (status >= 300 && status < 400) {
    const std::string* location = r->response.Header("location");
    if (location == nullptr) {
      Fail(Error(Reason::NetworkError,
                 fmt::format("{} answered HTTP {} without a Location", what, status)));
      return;
    }
    if (++f.redirects > kMaxRedirects) {
      Fail(Error(Reason::NetworkError,
                 fmt::format("more than {} redirects for {}", kMaxRedirects, t.path)));
      return;
    }
    std::string next = internal::ResolveLocation(r->url, *location);
    if (!IsHttpUrl(next)) {
      Fail(Error(Reason::NetworkError,
                 fmt::format("{} redirects to {}: only http:// and https:// URLs are fetched",
                             what, PrintablePath(internal::WithoutQuery(next)))));
      return;
    }
    f.data_url = std::move(next);
    return;  // scheduled again at once, to the new location
  }
  if (hub_.endpoint.empty() && status != 416) {
    // Presigned S3 URLs (fetch/s3_pull.h): there is no Hub to ask for a fresh location, and S3
    // says with its code whether an answer can change (SlowDown, a 503) or not (NoSuchKey: the
    // object was deleted; AccessDenied): classified as S3Client classifies its own calls.
    std::string code = DataHostCode(r->response);
    if (!store::IsRetriableS3Error(status, code.empty() ? "" : code.substr(1))) {
      Fail(Error(Reason::StorageError,
                 fmt::format("{} answered HTTP {}{} for {}", internal::Origin(r->url), status,
                             code, t.path)));
      return;
    }
  }
  bool on_hub = internal::Origin(r->url) == internal::Origin(hub_.endpoint);
  if (!on_hub && (status == 403 || status == 410)) {
    // An expired or revoked signed URL: the Hub hands out a fresh one (unless another request
    // already fetched a newer one).
    if (r->url == f.data_url) {
      f.data_url.clear();
    }
    Retry(f, c,
          Error(Reason::NetworkError,
                fmt::format("{} answered HTTP {}{} for {}", internal::Origin(r->url), status,
                            DataHostCode(r->response), t.path)),
          progressed);
    return;
  }
  if (status == 416) {
    StartReset(f, false, "");
    if (f.in_flight == 0) {
      if (auto res = FinishReset(f); !res) {
        Fail(res.error());
      }
    }
    return;
  }
  Error mapped = MapError(r->response, t, what);
  if (internal::IsRetryableStatus(status)) {
    Retry(f, c, std::move(mapped), progressed);
    return;
  }
  if (!on_hub) {
    if (r->url == f.data_url) {
      f.data_url.clear();
    }
    Retry(f, c,
          Error(Reason::NetworkError,
                fmt::format("{} answered HTTP {}{} for {}", internal::Origin(r->url), status,
                            DataHostCode(r->response), t.path)),
          progressed);
    return;
  }
  Fail(std::move(mapped));
}

VoidResult Job::AdvanceHash(FileState& f, uint64_t& budget) {
  const FileTask& t = *f.task;
  uint64_t limit = 0;
  for (const auto& c : f.chunks) {
    uint64_t d = std::min(c->done.load(std::memory_order_acquire), c->len());
    limit = c->start + d;
    if (d < c->len()) {
      break;
    }
  }
  auto hash = [&f, &t](std::string_view piece) -> VoidResult {
    f.sha256->Update(piece);
    if (f.sha1) {
      f.sha1->Update(piece);
    }
    if (t.on_data) {
      if (auto r = t.on_data(f.hashed, piece); !r) {
        return r;
      }
    }
    f.hashed += piece.size();
    return {};
  };
  std::string buf;
  while (f.hashed < limit && budget > 0) {
    // From memory while a held block has the next bytes; from the file otherwise.
    auto held = f.held.upper_bound(f.hashed);
    if (held != f.held.begin()) {
      --held;
      Block* b = held->second;
      if (b->offset + b->len > f.hashed) {
        auto skip = static_cast<size_t>(f.hashed - b->offset);
        if (auto r = hash(std::string_view(b->data.get() + skip, b->len - skip)); !r) {
          return r;
        }
        hashed_from_memory_ += b->len - skip;
        budget -= std::min<uint64_t>(budget, b->len - skip);
      }
      f.held.erase(held);
      held_blocks_ -= 1;
      engine_.pool.Put(b);
      continue;
    }
    uint64_t until = limit;
    if (auto next = f.held.upper_bound(f.hashed); next != f.held.end()) {
      until = std::min(until, next->first);
    }
    auto want = static_cast<size_t>(std::min<uint64_t>({kHashPiece, until - f.hashed, budget}));
    buf.resize(want);
    ssize_t n = ::pread(f.fd, buf.data(), want, static_cast<off_t>(f.hashed));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return Error(Reason::StorageError,
                   "cannot read " + t.incomplete_path + ": " +
                       (n < 0 ? ErrnoMessage(errno) : std::string("unexpected end of file")));
    }
    if (auto r = hash(std::string_view(buf.data(), static_cast<size_t>(n))); !r) {
      return r;
    }
    hashed_from_file_ += static_cast<uint64_t>(n);
    budget -= std::min<uint64_t>(budget, static_cast<uint64_t>(n));
  }
  if (f.hashed == t.size && f.in_flight == 0) {
    return Verify(f);
  }
  return {};
}

void Job::Hold(Block* b) {
  FileState& f = files_[b->file];
  if (b->generation != f.generation || f.reset_pending || f.phase != FileState::Phase::Active ||
      b->offset + b->len <= f.hashed) {
    engine_.pool.Put(b);
    return;
  }
  f.held.emplace(b->offset, b);
  held_blocks_ += 1;
  while (held_blocks_ > held_limit_) {
    ReleaseFurthest();
  }
}

// The block is on disk: it is read back when the hashing gets there.
void Job::ReleaseFurthest() {
  FileState* furthest = nullptr;
  for (auto& g : files_) {
    if (!g.held.empty() &&
        (furthest == nullptr ||
         g.held.rbegin()->first - g.hashed > furthest->held.rbegin()->first - furthest->hashed)) {
      furthest = &g;
    }
  }
  auto last = std::prev(furthest->held.end());
  engine_.pool.Put(last->second);
  furthest->held.erase(last);
  held_blocks_ -= 1;
}

void Job::DropHeld(FileState& f) {
  for (auto& [offset, b] : f.held) {
    engine_.pool.Put(b);
  }
  held_blocks_ -= static_cast<int>(f.held.size());
  f.held.clear();
  f.generation += 1;
}

VoidResult Job::Verify(FileState& f) {
  const FileTask& t = *f.task;
  std::string sha256 = f.sha256->FinalHex();
  std::optional<std::string> sha1;
  if (f.sha1) {
    sha1 = f.sha1->FinalHex();
  }
  std::optional<Error> mismatch;
  if (t.expected_sha256 && *t.expected_sha256 != sha256) {
    mismatch = Error(Reason::ChecksumMismatch,
                     fmt::format("{}: expected sha256 {}, got {} ({} bytes from {})", t.path,
                                 *t.expected_sha256, sha256, t.size,
                                 internal::WithoutQuery(t.url)));
  } else if (t.expected_git_sha1 && sha1 && *t.expected_git_sha1 != *sha1) {
    mismatch = Error(Reason::ChecksumMismatch,
                     fmt::format("{}: expected git blob sha1 {}, got {} ({} bytes from {})",
                                 t.path, *t.expected_git_sha1, *sha1, t.size,
                                 internal::WithoutQuery(t.url)));
  }
  if (mismatch) {
    f.verify_failures += 1;
    spdlog::warn("{}", mismatch->message);
    if (f.verify_failures >= hub_.max_attempts) {
      // Nothing half-verified stays behind to be resumed from.
      progress_.bytes_done.fetch_sub(f.on_disk());
      DrainPersists();  // or a queued map would reappear after the unlink
      ::close(f.fd);
      f.fd = -1;
      CloseDirect(f);
      ::unlink(t.incomplete_path.c_str());
      ::unlink(f.map_path().c_str());
      f.phase = FileState::Phase::Done;
      mismatch->message += fmt::format(" (after {} attempts)", f.verify_failures);
      return *mismatch;
    }
    StartReset(f, false, f.etag);
    return FinishReset(f);
  }
  if (f.mapped) {
    DrainPersists();  // the publisher removes the map; none may be written after that
  }
  // fsync, rename and the directory sync run on publisher threads: one file's fsync takes
  // milliseconds, and many small files would otherwise queue behind each other here.
  CloseDirect(f);
  Publication p;
  p.file = static_cast<size_t>(&f - files_.data());
  p.fd = f.fd;
  p.sha256 = std::move(sha256);
  f.fd = -1;
  f.phase = FileState::Phase::Publishing;
  publishing_ += 1;
  {
    std::lock_guard lock(publish_mu_);
    to_publish_.push_back(std::move(p));
    if (publishers_.size() < kPublishers && publishers_.size() < static_cast<size_t>(publishing_)) {
      publishers_.emplace_back([this](std::stop_token stop) { PublishLoop(stop); });
    }
  }
  publish_cv_.notify_one();
  return {};
}

VoidResult Job::Publish(const FileTask& t, bool mapped, int fd) {
  if (::fsync(fd) != 0) {
    int err = errno;
    ::close(fd);
    return Error(Reason::StorageError, "cannot sync " + t.incomplete_path + ": " +
                                           ErrnoMessage(err));
  }
  if (::close(fd) != 0) {
    return Error(Reason::StorageError,
                 "cannot close " + t.incomplete_path + ": " + ErrnoMessage(errno));
  }
  std::string dir = ParentDir(t.final_path);
  if (auto r = MakeDirs(dir); !r) {
    return r.error();
  }
  if (::rename(t.incomplete_path.c_str(), t.final_path.c_str()) != 0) {
    return Error(Reason::StorageError, "cannot rename " + t.incomplete_path + " to " +
                                           t.final_path + ": " + ErrnoMessage(errno));
  }
  if (mapped) {
    ::unlink((t.incomplete_path + ".chunks").c_str());
  }
  return SyncDir(dir);
}

void Job::PublishLoop(std::stop_token stop) {
  while (true) {
    Publication p;
    {
      std::unique_lock lock(publish_mu_);
      publish_cv_.wait(lock, stop, [this] { return !to_publish_.empty(); });
      if (to_publish_.empty()) {
        return;  // stop requested and nothing left
      }
      p = std::move(to_publish_.front());
      to_publish_.pop_front();
    }
    const FileState& f = files_[p.file];
    p.result = ResultOrInternalError("publishing " + f.task->path,
                                     [&] { return Publish(*f.task, f.mapped, p.fd); });
    {
      std::lock_guard lock(queue_.mu);
      published_.push_back(std::move(p));
      queue_.wake = true;
    }
    queue_.cv.notify_all();
  }
}

void Job::Published(Publication& p) {
  FileState& f = files_[p.file];
  publishing_ -= 1;
  if (!p.result) {
    f.phase = FileState::Phase::Done;
    Fail(p.result.error());
    return;
  }
  f.phase = FileState::Phase::Done;
  results_[f.index] = FileResult{f.task->path, p.sha256, f.task->size, true};
  progress_.files_done.fetch_add(1);
}

void Job::SampleRate() {
  auto now = Clock::now();
  if (now < next_sample_) {
    return;
  }
  next_sample_ = now + kRateSample;
  samples_.emplace_back(now, downloaded_.load());
  while (samples_.size() > 2 && now - samples_.front().first > kRateWindow) {
    samples_.pop_front();
  }
  auto span = std::chrono::duration<double>(now - samples_.front().first).count();
  if (span > 0) {
    progress_.bytes_per_second.store(static_cast<uint64_t>(
        static_cast<double>(samples_.back().second - samples_.front().second) / span));
  }
}

Result<std::vector<FileResult>> Job::Run(const std::vector<FileTask>& tasks) {
  internal::BlobBatch batch = internal::GroupByBlob(tasks);
  std::vector<const FileTask*> unique;
  for (size_t i : batch.unique) {
    unique.push_back(&tasks[i]);
  }
  // A caller that knows the whole job (files already in the store, which it did not hand over)
  // sets the totals and seeds the done counters itself; otherwise the batch is the job.
  if (progress_.bytes_total.load() == 0 && progress_.files_total.load() == 0) {
    progress_.bytes_total.store(batch.bytes);
    progress_.files_total.store(static_cast<int64_t>(tasks.size()));
  }
  progress_.bytes_per_second.store(0);
  if (auto r = CheckFreeSpace(unique); !r) {
    return r.error();
  }
  results_.resize(tasks.size());
  files_.reserve(unique.size());
  for (const FileTask* t : unique) {
    size_t index = static_cast<size_t>(t - tasks.data());
    if (auto existing = FileSize(t->final_path); existing) {
      if (*existing == t->size) {
        std::string sha256;
        if (t->expected_sha256) {
          sha256 = *t->expected_sha256;
        } else {
          auto digest = Sha256File(t->final_path);
          if (!digest) {
            return digest.error();
          }
          sha256 = *digest;
        }
        progress_.bytes_done.fetch_add(t->size);
        progress_.files_done.fetch_add(1);
        results_[index] = FileResult{t->path, sha256, t->size, false};
        continue;
      }
      spdlog::warn("{} has {} bytes instead of {}; fetching it again", t->final_path, *existing,
                   t->size);
    }
    FileState f;
    f.task = t;
    f.index = index;
    files_.push_back(std::move(f));
  }

  std::stop_callback wake(stop_, [this] {
    {
      std::lock_guard lock(queue_.mu);
      queue_.wake = true;
    }
    queue_.cv.notify_all();
  });
  bool cancelling = false;
  bool hash_behind = false;
  while (true) {
    if ((stop_.stop_requested() || error_) && !cancelling) {
      cancelling = true;
      engine_.CancelJob(&queue_);
    }
    if (!cancelling) {
      Schedule();
      uint64_t budget = kHashBudget;
      hash_behind = false;
      for (auto& f : files_) {
        if (f.phase != FileState::Phase::Active || f.reset_pending || budget == 0) {
          continue;
        }
        if (auto r = AdvanceHash(f, budget); !r) {
          Fail(r.error());
          break;
        }
      }
      hash_behind = budget == 0;
      for (auto& f : files_) {
        if (f.phase == FileState::Phase::Active) {
          PersistMap(f, false);
        }
      }
      SampleRate();
    }
    bool all_done = std::all_of(files_.begin(), files_.end(), [](const FileState& f) {
      return f.phase == FileState::Phase::Done;
    });
    if (in_flight_.empty() && publishing_ == 0 && (all_done || cancelling || error_)) {
      break;
    }
    // Wait for a completion, a stop, the next retry time or the next bookkeeping turn.
    // While hashing lags behind the data, only completions already queued are taken.
    auto deadline = Clock::now() + (hash_behind ? std::chrono::milliseconds(0) : kIdleWait);
    for (const auto& f : files_) {
      if (f.phase != FileState::Phase::Active || f.reset_pending) {
        continue;
      }
      for (const auto& c : f.chunks) {
        if (!c->in_flight && !c->complete()) {
          deadline = std::min(deadline, c->not_before);
        }
      }
    }
    std::deque<Request*> done;
    std::deque<Block*> written;
    std::deque<Publication> published;
    {
      std::unique_lock lock(queue_.mu);
      queue_.cv.wait_until(lock, deadline, [this] {
        return !queue_.done.empty() || !queue_.written.empty() || queue_.wake;
      });
      done.swap(queue_.done);
      written.swap(queue_.written);
      published.swap(published_);
      queue_.wake = false;
    }
    for (Publication& p : published) {
      Published(p);
    }
    // Before the completions: a request's blocks are all written, and queued, before it is.
    for (Block* b : written) {
      Hold(b);
    }
    // Transfers wait for blocks (several jobs at once, or a slow disk): what this job holds only
    // saves reading back, while a stalled transfer could stall the hashing for good.
    while (held_blocks_ > 0 && engine_.pool.Wanted()) {
      ReleaseFurthest();
    }
    for (Request* r : done) {
      Handle(r);
    }
  }
  for (auto& f : files_) {
    if (f.phase == FileState::Phase::Active) {
      f.dirty = true;
      PersistMap(f, true);
    }
  }
  DrainPersists();
  progress_.bytes_per_second.store(0);
  spdlog::debug("transfer of {} files: {} bytes hashed as they arrived, {} read back to hash",
                files_.size(), hashed_from_memory_, hashed_from_file_);
  if (error_) {
    return *error_;
  }
  if (stop_.stop_requested()) {
    return Error(Reason::Cancelled, "download cancelled; partial files are kept for resume");
  }
  return internal::FanOut(batch, tasks, results_, progress_);
}

Result<std::vector<FileResult>> EngineTransfer::Run(const std::vector<FileTask>& tasks,
                                                    TransferProgress& progress,
                                                    std::stop_token stop) {
  Job job(*engine_, hub_, progress, std::move(stop));
  return job.Run(tasks);
}

}  // namespace

TransferEngine::TransferEngine(TransferEngineOptions options)
    : impl_(std::make_shared<Impl>(std::move(options))) {}

TransferEngine::~TransferEngine() = default;

std::unique_ptr<Transfer> TransferEngine::NewTransfer(const HubOptions& hub) {
  return std::make_unique<EngineTransfer>(impl_, hub);
}

}  // namespace modelcache::fetch
