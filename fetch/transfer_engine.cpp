#include "fetch/transfer_engine.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
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
#include "common/http_client.h"
#include "common/sha256.h"
#include "fetch/internal/blob_batch.h"
#include "fetch/internal/hub_http.h"

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

struct JobQueue;
struct Request;

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

  enum class Verdict { None, Data, IgnoredRange, Changed, BadRange, Overflow, NotData };
  Verdict verdict = Verdict::None;
  HttpResponse response;
  bool new_header_block = true;
  CURLcode code = CURLE_OK;
  bool cancelled = false;  // removed by CancelJob or engine shutdown
  std::optional<Error> write_error;
  uint64_t pos = 0;  // next file offset to write
  std::string etag_seen;
  CURL* easy = nullptr;
  curl_slist* slist = nullptr;
};

// Completed requests of one Run, handed from the engine thread to the job thread.
struct JobQueue {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Request*> done;
  bool wake = false;
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

// Runs on the engine thread: the body goes straight to the file with pwrite.
size_t OnData(char* data, size_t size, size_t n, void* user) {
  auto& r = *static_cast<Request*>(user);
  size_t len = size * n;
  if (r.abort.load(std::memory_order_relaxed)) {
    return 0;
  }
  if (r.bucket != nullptr && r.bucket->rate > 0) {
    if (r.bucket->tokens <= 0) {
      r.bucket->paused.push_back(&r);
      return CURL_WRITEFUNC_PAUSE;  // libcurl hands the same bytes again once resumed
    }
    r.bucket->tokens -= static_cast<int64_t>(len);
  }
  if (r.verdict == Request::Verdict::None) {
    Classify(r);
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
      r.write_error = Error(err == ENOSPC || err == EDQUOT ? Reason::InsufficientStorage
                                                           : Reason::StorageError,
                            ErrnoMessage(err));
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
  explicit Impl(TransferEngineOptions o) : options(std::move(o)) {
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
    bucket.refilled = Clock::now();
    thread = std::thread([this] { Loop(); });
  }

  ~Impl() {
    {
      std::lock_guard lock(mu);
      stopping = true;
    }
    curl_multi_wakeup(multi);
    thread.join();
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

  static void Complete(Request* r) {
    JobQueue* q = r->queue;
    {
      std::lock_guard lock(q->mu);
      q->done.push_back(r);
    }
    q->cv.notify_all();
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
    Complete(r);
  }

  void Add(Request* r) {
    CURL* e = curl_easy_init();
    r->easy = e;
    r->pos = r->first;
    for (const auto& [name, value] : r->headers) {
      r->slist = curl_slist_append(r->slist, (name + ": " + value).c_str());
    }
    curl_easy_setopt(e, CURLOPT_URL, r->url.c_str());
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
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
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
    active.push_back(r);
    if (curl_multi_add_handle(multi, e) != CURLM_OK) {
      Finish(r, CURLE_FAILED_INIT, false);
    }
  }

  void Refill() {
    auto now = Clock::now();
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
    for (auto& f : files_) {
      if (f.fd >= 0) {
        ::close(f.fd);
      }
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
  void StartReset(FileState& f, bool single_stream, const std::string& new_etag);
  VoidResult FinishReset(FileState& f);
  VoidResult AdvanceHash(FileState& f, uint64_t& budget);
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
    return std::clamp<uint64_t>(per, opts_.min_chunk_size, opts_.chunk_size);
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
    if (err == ENOSPC || err == EDQUOT) {
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
  bool progressed = r->pos > r->first;
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
            Error(Reason::NetworkError,
                  r->code != CURLE_OK
                      ? internal::ScrubUrl(
                            fmt::format("{}: {}", what, curl_easy_strerror(r->code)), r->url)
                      : fmt::format("{} ended at byte {} of {}", what, r->pos, c.end)),
            progressed);
      return;
    case V::None:
    case V::NotData:
      break;
  }
  if (r->code != CURLE_OK || status == 0) {
    Retry(f, c,
          Error(Reason::NetworkError,
                fmt::format("{}: {}", what, curl_easy_strerror(r->code))),
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
    f.data_url = internal::ResolveLocation(r->url, *location);
    return;  // scheduled again at once, to the new location
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
  std::string buf;
  while (f.hashed < limit && budget > 0) {
    auto want = static_cast<size_t>(std::min<uint64_t>({kHashPiece, limit - f.hashed, budget}));
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
    std::string_view piece(buf.data(), static_cast<size_t>(n));
    f.sha256->Update(piece);
    if (f.sha1) {
      f.sha1->Update(piece);
    }
    f.hashed += static_cast<uint64_t>(n);
    budget -= std::min<uint64_t>(budget, static_cast<uint64_t>(n));
  }
  if (f.hashed == t.size && f.in_flight == 0) {
    return Verify(f);
  }
  return {};
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
    p.result = Publish(*f.task, f.mapped, p.fd);
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
    std::deque<Publication> published;
    {
      std::unique_lock lock(queue_.mu);
      queue_.cv.wait_until(lock, deadline,
                           [this] { return !queue_.done.empty() || queue_.wake; });
      done.swap(queue_.done);
      published.swap(published_);
      queue_.wake = false;
    }
    for (Publication& p : published) {
      Published(p);
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
