#include "fetch/internal/engine_thread.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include <spdlog/fmt/fmt.h>

#include "common/guard.h"

namespace modelcache::fetch {

using internal::Block;
using internal::JobQueue;
using internal::Request;

namespace {

size_t PoolBlocks(const TransferEngineOptions& o) {
  return o.staging_bytes > 0
             ? std::max<size_t>(1, o.staging_bytes / internal::kBlockSize)
             : 2 * static_cast<size_t>(std::max(1, o.max_connections)) + internal::kMaxHeldBlocks;
}

void Unpause(std::vector<Request*>& waiters) {
  std::vector<Request*> resume;
  resume.swap(waiters);
  for (Request* r : resume) {
    // May call the write callback at once, which may pause it again.
    curl_easy_pause(r->easy, CURLPAUSE_CONT);
  }
}

}  // namespace

TransferEngine::Impl::Impl(TransferEngineOptions o)
    : options(std::move(o)),
      pool(PoolBlocks(options), [this] { curl_multi_wakeup(multi_); }),
      bucket_(options.max_bytes_per_second, options.bandwidth_clock_for_test),
      writer_(pool) {
  options.max_connections = std::max(1, options.max_connections);
  options.max_connections_per_job = std::max(1, options.max_connections_per_job);
  options.chunk_size = std::max<uint64_t>(options.chunk_size, 64 << 10);
  options.min_chunk_size = std::clamp<uint64_t>(options.min_chunk_size, 1, options.chunk_size);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  multi_ = curl_multi_init();
  curl_multi_setopt(multi_, CURLMOPT_MAX_TOTAL_CONNECTIONS,
                    static_cast<long>(options.max_connections));
  curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, static_cast<long>(options.max_connections));
  curl_multi_setopt(multi_, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
  // A server dripping bytes is stalled too: below kStallBytesPerSecond, unless a bandwidth
  // limit shared by all connections leaves each of them less than that.
  stall_floor = kStallBytesPerSecond;
  if (bucket_.limited()) {
    stall_floor = std::clamp<uint64_t>(
        bucket_.rate() / (4 * static_cast<uint64_t>(options.max_connections)), 1, stall_floor);
  }
  // The last resort: an exception out of an iteration (std::bad_alloc) is logged and the loop
  // goes on, so the jobs of other resources keep their transfers.
  thread_ = std::thread([this] {
    while (!LogExceptions("transfer engine thread", [this] { Loop(); })) {
    }
  });
}

TransferEngine::Impl::~Impl() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  curl_multi_wakeup(multi_);
  thread_.join();
  writer_.Stop();  // it may still wake the engine's multi handle
  curl_multi_cleanup(multi_);
}

void TransferEngine::Impl::Submit(Request* r) {
  {
    std::lock_guard lock(mu_);
    inbox_.push_back(r);
  }
  curl_multi_wakeup(multi_);
}

void TransferEngine::Impl::CancelJob(JobQueue* q) {
  {
    std::lock_guard lock(mu_);
    cancels_.push_back(q);
  }
  curl_multi_wakeup(multi_);
}

void TransferEngine::Impl::Finish(Request* r, CURLcode code, bool cancelled) {
  curl_multi_remove_handle(multi_, r->easy);
  curl_easy_cleanup(r->easy);
  curl_slist_free_all(r->slist);
  r->easy = nullptr;
  r->slist = nullptr;
  r->code = code;
  r->cancelled = cancelled;
  if (r->verdict == Request::Verdict::None) {
    internal::Classify(*r);  // a bodiless answer: a redirect, an error, or an empty range
  }
  auto forget = [r](std::vector<Request*>& list) {
    list.erase(std::remove(list.begin(), list.end(), r), list.end());
  };
  forget(active_);
  forget(rate_waiters_);
  forget(block_waiters_);
  if (!r->staged) {
    internal::Complete(r);
    return;
  }
  if (Block* b = std::exchange(r->block, nullptr); b != nullptr) {
    if (b->len > 0) {
      writer_.Write(r, b);  // what arrived before the end is kept
    } else {
      pool.Put(b);
    }
  }
  writer_.Complete(r);
}

void TransferEngine::Impl::Add(Request* r) {
  CURL* e = curl_easy_init();
  r->easy = e;
  r->pos = r->first;
  for (const auto& [name, value] : r->headers) {
    r->slist = curl_slist_append(r->slist, fmt::format("{}: {}", name, value).c_str());
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
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, internal::OnHeader);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, internal::OnData);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, internal::OnProgress);
  curl_easy_setopt(e, CURLOPT_XFERINFODATA, r);
  curl_easy_setopt(e, CURLOPT_PRIVATE, r);
  // The bucket is shared only when it limits: an unlimited one is never waited for.
  r->bucket = bucket_.limited() ? &bucket_ : nullptr;
  r->rate_waiters = &rate_waiters_;
  r->pool = &pool;
  r->writer = &writer_;
  r->block_waiters = &block_waiters_;
  active_.push_back(r);
  if (curl_multi_add_handle(multi_, e) != CURLM_OK) {
    Finish(r, CURLE_FAILED_INIT, false);
  }
}

bool TransferEngine::Impl::TakeWork() {
  std::vector<Request*> adds;
  std::vector<JobQueue*> cancel;
  bool stop = false;
  {
    std::lock_guard lock(mu_);
    adds.swap(inbox_);
    cancel.swap(cancels_);
    stop = stopping_;
  }
  for (Request* r : adds) {
    Add(r);
  }
  for (JobQueue* q : cancel) {
    std::vector<Request*> victims;
    for (Request* r : active_) {
      if (r->queue == q) {
        victims.push_back(r);
      }
    }
    for (Request* r : victims) {
      Finish(r, CURLE_ABORTED_BY_CALLBACK, true);
    }
  }
  if (stop) {
    while (!active_.empty()) {
      Finish(active_.front(), CURLE_ABORTED_BY_CALLBACK, true);
    }
    return false;
  }
  return true;
}

void TransferEngine::Impl::ResumeWaiters() {
  if (!block_waiters_.empty() && pool.Available()) {
    // Put back blocks wake this loop (BlockPool's on_wanted); a resumed transfer that still
    // finds none pauses again.
    Unpause(block_waiters_);
  }
  if (bucket_.limited() && bucket_.Refill() && !rate_waiters_.empty()) {
    Unpause(rate_waiters_);
  }
}

void TransferEngine::Impl::Loop() {
  while (TakeWork()) {
    int running = 0;
    curl_multi_perform(multi_, &running);
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
      if (msg->msg != CURLMSG_DONE) {
        continue;
      }
      Request* r = nullptr;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &r);
      CURLcode code = msg->data.result;
      Finish(r, code, false);
    }
    ResumeWaiters();
    int timeout_ms = 1000;
    if (bucket_.limited()) {
      timeout_ms = rate_waiters_.empty() ? 1000 : 5;
    }
    curl_multi_poll(multi_, nullptr, 0, timeout_ms, nullptr);
  }
}

}  // namespace modelcache::fetch
