#pragma once

// The engine thread behind a TransferEngine: one libcurl multi handle driving the requests of
// every job of the process. Jobs Submit requests and CancelJob; the thread adds them to the multi
// handle (keep-alive, reused per host, HTTP/2 multiplexed), runs their callbacks
// (range_request.h), refills the token bucket and resumes the transfers that waited for tokens
// or blocks, and hands every finished request back to its job (through the block writer for a
// staged one, so that it completes after its last block is on disk).
//
// Thread-safe: Submit and CancelJob may be called from any thread; the rest is the engine
// thread's.

#include <curl/curl.h>

#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "fetch/internal/block_pool.h"
#include "fetch/internal/block_writer.h"
#include "fetch/internal/range_request.h"
#include "fetch/internal/bandwidth_bucket.h"
#include "fetch/transfer_engine.h"

namespace modelcache::fetch {

struct TransferEngine::Impl {
  explicit Impl(TransferEngineOptions o);
  ~Impl();
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  // Hands r to the engine thread; it comes back through r->queue once finished.
  void Submit(internal::Request* r);
  // Ends every request of the job `q` (cancelled = true).
  void CancelJob(internal::JobQueue* q);

  TransferEngineOptions options;  // normalized (at least one connection, ...)
  internal::BlockPool pool;
  uint64_t stall_floor = 1;  // LOW_SPEED_LIMIT of every request; set at construction

 private:
  void Add(internal::Request* r);
  void Finish(internal::Request* r, CURLcode code, bool cancelled);
  void Loop();
  // One turn's take of the inbox and the cancels; false once the engine stops.
  bool TakeWork();
  // Resumes the transfers paused for blocks (when the pool has some) and for tokens.
  void ResumeWaiters();

  CURLM* multi_ = nullptr;
  std::mutex mu_;
  std::vector<internal::Request*> inbox_;
  std::vector<internal::JobQueue*> cancels_;
  bool stopping_ = false;
  // Engine thread only.
  std::vector<internal::Request*> active_;
  internal::BandwidthBucket bucket_;
  std::vector<internal::Request*> rate_waiters_;   // paused for want of tokens
  std::vector<internal::Request*> block_waiters_;  // paused for want of a block
  // Declared after what it uses and destroyed before it: it completes the requests still queued
  // once the engine thread has ended them all.
  internal::BlockWriter writer_;
  std::thread thread_;
};

}  // namespace modelcache::fetch
