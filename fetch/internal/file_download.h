#pragma once

// The download of one file within a Run: its ranges (chunk_map.h) and the requests that fetch
// them, what each finished request means (data, a redirect to follow, a retry after backoff, a
// changed ETag or an ignored Range that starts the file over, a permanent error), the hashing of
// the contiguous prefix on disk (from held blocks, else read back) and the verification of the
// whole. A verified file is handed back to its job, which publishes it.
//
// Not thread-safe: the job thread drives it; the engine and writer threads only advance its
// chunks' `done` counters through the requests.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/sha256.h"
#include "fetch/hub_client.h"
#include "fetch/internal/chunk_map.h"
#include "fetch/internal/range_request.h"
#include "fetch/transfer.h"
#include "fetch/transfer_engine.h"

namespace modelcache::fetch::internal {

class BlockPool;

// Where a Transfer's files come from.
struct SourceSettings {
  // The Hub's endpoint and token (sent to its origin only) and the retry settings; for presigned
  // S3 URLs no endpoint and no token, only the retry settings.
  HubOptions hub;
  // Presigned S3 URLs (fetch/s3_pull.h): there is no Hub to ask for a fresh location, and an
  // error answer is classified as S3Client classifies its own (store::IsRetriableS3Error).
  bool presigned_s3 = false;
};

// What the file downloads of one Run share; owned by the job.
struct JobContext {
  const TransferEngineOptions& opts;
  const SourceSettings& source;
  uint64_t stall_floor;  // the engine's, for messages
  TransferProgress& progress;
  BlockPool& pool;
  JobQueue& queue;
  MapPersister& persister;
  std::atomic<uint64_t> downloaded{0};  // bytes received, for the rate
  int held_blocks = 0;                  // written blocks kept for hashing, over all files
  uint64_t hashed_from_memory = 0;      // for the debug summary: what was not read back
  uint64_t hashed_from_file = 0;
};

class FileDownload {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Phase { Waiting, Active, Verified, Publishing, Done };

  // `slot` is the file's index in its job, `index` its task's index in the Run.
  FileDownload(JobContext& job, const FileTask& task, size_t slot, size_t index)
      : job_(job), task_(&task), slot_(slot), index_(index) {}
  FileDownload(FileDownload&&) = default;
  FileDownload(const FileDownload&) = delete;
  FileDownload& operator=(const FileDownload&) = delete;
  FileDownload& operator=(FileDownload&&) = delete;

  const FileTask& task() const { return *task_; }
  size_t index() const { return index_; }
  Phase phase() const { return phase_; }
  bool mapped() const { return mapped_; }
  bool reset_pending() const { return reset_pending_; }
  const std::string& sha256() const { return sha256_; }

  // Opens (creating) the `.incomplete` file, takes up what is on disk (its chunk map, or its
  // prefix), preallocates a multi-range file and counts the bytes on disk as done.
  VoidResult Activate();

  // The next request to hand to the engine (one of a chunk that is neither in flight, complete
  // nor waiting for its retry time), or nullptr. Until the Hub has told where the data is, one
  // request per file asks it.
  std::unique_ptr<Request> NextRequest(Clock::time_point now);

  // Takes back a finished request of this file. `stopping`: the job is failing or cancelled, so
  // only the bookkeeping is done. Returns the error that ends the job (a permanent answer, or a
  // transient one past max_attempts).
  VoidResult Completed(Request& r, bool stopping);

  // Hashes what is contiguous on disk beyond the hashed prefix, within `budget` bytes (less what
  // it hashed); verifies the file once all of it is hashed (then phase() is Verified, or the file
  // starts over after a mismatch). Errors: StorageError (read), ChecksumMismatch past
  // max_attempts, or what on_data returned.
  VoidResult AdvanceHash(uint64_t& budget);

  // Records the chunk map (after an fdatasync of the data, on the persister thread), at most once
  // per persist_interval unless `force`; only a multi-range file that is open has one.
  void PersistMap(bool force);

  // The earliest retry time of a chunk waiting for one, if before `deadline`.
  Clock::time_point NextRetry(Clock::time_point deadline) const;

  // Keeps a written block of this file for hashing from memory; false if it is of no use (stale,
  // or already hashed): the caller puts it back.
  bool Keep(Block* b);
  bool holds_blocks() const { return !held_.empty(); }
  // How far the furthest held block is ahead of the hashed prefix.
  uint64_t held_lead() const { return held_.rbegin()->first - hashed_; }
  // Gives back the furthest held block: it is read back when the hashing gets there.
  void ReleaseFurthestHeld();

  // The verified file's descriptor, for publishing (phase() becomes Publishing).
  int TakeForPublishing();
  void Published() { phase_ = Phase::Done; }

  // Gives back the held blocks and closes the files (the job ends).
  void Close();

 private:
  VoidResult LoadMap(uint64_t chunk_size);
  VoidResult Preallocate();
  void StartHashing();
  uint64_t ChunkSize() const;
  void StartReset(bool single_stream, const std::string& new_etag);
  VoidResult FinishReset();
  // StartReset, and FinishReset at once if no request of the file is in flight.
  VoidResult Reset(bool single_stream, const std::string& new_etag);
  VoidResult Retry(Chunk& c, Error error, bool progressed);
  VoidResult OnData(Request& r, Chunk& c, const std::string& what, bool progressed);
  VoidResult OnRedirect(Request& r, const std::string& what);
  VoidResult OnErrorAnswer(Request& r, Chunk& c, const std::string& what, bool progressed);
  VoidResult HashFromFile(uint64_t until, uint64_t& budget, std::string& buf);
  VoidResult Hash(std::string_view piece);
  VoidResult Verify();
  // Gives back the held blocks and makes blocks still on their way stale.
  void DropHeld();
  void CloseDirect();
  std::string TransferFailure(CURLcode code) const;
  std::string map_path() const { return task_->incomplete_path + ".chunks"; }

  JobContext& job_;
  const FileTask* task_;
  size_t slot_;
  size_t index_;
  Phase phase_ = Phase::Waiting;
  int fd_ = -1;
  int direct_fd_ = -1;         // the .incomplete file opened with O_DIRECT (mapped files), or -1
  bool mapped_ = false;        // several chunks: preallocated, chunk map persisted
  bool single_stream_ = false;  // the server ignores Range
  Chunks chunks_;
  std::vector<Request*> in_flight_;  // owned by the job while in flight
  std::string etag_;      // of the data on disk; "" = not known yet
  std::string data_url_;  // where the data is (the CDN); "" = ask the Hub
  int redirects_ = 0;
  bool reset_pending_ = false;
  int verify_failures_ = 0;
  int changes_ = 0;
  uint64_t hashed_ = 0;
  std::optional<Hasher> sha256_hasher_;
  std::optional<Hasher> sha1_hasher_;
  std::string sha256_;                // once verified
  uint64_t generation_ = 0;           // bumped whenever the data on disk is discarded
  std::map<uint64_t, Block*> held_;   // written blocks at or beyond hashed_, by offset
  bool dirty_ = false;                // the map changed other than by bytes arriving
  uint64_t persisted_ = 0;            // data bytes the map on disk claims
  Clock::time_point last_persist_{};
};

}  // namespace modelcache::fetch::internal
