#pragma once

// The downloader: one libcurl multi handle driven by one thread, shared by all jobs of a process
// (the reconciler builds one from the run/prefetch flags), fetching many files at once and large
// files as parallel byte ranges.
//
// Each job (one reconcile) gets a fetch::Transfer from NewTransfer(); its Run() keeps up to
// max_connections_per_job requests in flight, the engine at most max_connections connections in
// all (keep-alive, reused per host, HTTP/2 multiplexed where the server offers it over TLS).
//
// A file of more than one chunk is preallocated as its `.incomplete` file and its chunk map (which
// byte ranges are on disk, and the ETag they came with) is kept next to it as
// `<incomplete_path>.chunks`, rewritten atomically about ten times a second (the written prefix of
// every range, also of ranges still being received) after an fdatasync of the data, so a restart
// (even after kill -9) fetches exactly the ranges the map does not cover. A
// one-chunk file is a plain prefix of the blob, resumed with one Range request from its end.
//
// A one-chunk file's body goes to its file with pwrite as it arrives. A larger file's body is
// received into 2 MiB blocks aligned for O_DIRECT, which a writer thread writes (bypassing the page
// cache, whose writeback bounds a fast link, where offset and length are aligned) before handing
// them to the job. Hashes (sha256, and the git blob sha1 for regular files) advance in file order
// over the contiguous prefix on disk: from the blocks while they are held in memory (ranges are
// small and handed out in file order, so the data in flight is close to the hashed prefix), else
// by reading the file back; on resume the data already on disk is re-hashed the same way.
//
// The Hub protocol follows huggingface_hub's http_get: the /resolve URL is fetched with the token
// and without following redirects; a redirect to another host (the CDN) is fetched without
// Authorization, and a 403/410 from that host sends the file back to the Hub for a fresh Location.
// A 200 to a ranged request (the server ignores Range) switches the file to one stream from byte
// 0; a Content-Range total other than the expected size, or a data ETag other than the one the
// ranges on disk came with, discards the file and starts over.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>

#include "fetch/transfer.h"
#include "fetch/hub_client.h"

namespace modelcache::fetch {

struct TransferEngineOptions {
  int max_connections = 16;          // in all, over every job; at least 1
  int max_connections_per_job = 8;   // requests in flight per Run; at least 1
  // Largest byte range per request. A file is split into about max_connections_per_job ranges of
  // at most chunk_size and at least min_chunk_size bytes.
  uint64_t chunk_size = 8ULL << 20;
  uint64_t min_chunk_size = 8ULL << 20;
  uint64_t max_bytes_per_second = 0;  // over the whole engine; 0 = unlimited
  // Memory that a multi-range file's bytes are received into (2 MiB blocks) before they are
  // written and hashed; transfers wait while it is all in use. 0 = 4 MiB per connection plus
  // 64 MiB for data ahead of the hashed prefix.
  uint64_t staging_bytes = 0;
  // A request that receives no byte for this long is aborted and retried (at least 1 s).
  std::chrono::milliseconds stall_timeout{30000};
  std::chrono::milliseconds connect_timeout{10000};
  // How often a chunk map is persisted while its file downloads: a kill -9 loses about this much
  // of the download (what arrived since the last map), which is then fetched again.
  std::chrono::milliseconds persist_interval{100};
  // Test seam: the clock the bandwidth limit's token bucket refills by (default: steady_clock),
  // so that a test can hold time still and count bytes instead of measuring a rate.
  std::function<std::chrono::steady_clock::time_point()> bandwidth_clock_for_test;
  // Test seam: replaces pwrite(2) for file data (return -1 and set errno to fail).
  std::function<ssize_t(int fd, const void* data, size_t size, off_t offset)> pwrite_for_test;
};

class TransferEngine {
 public:
  // Starts the engine thread.
  explicit TransferEngine(TransferEngineOptions options);
  // The engine thread stops once the engine and every Transfer it handed out are destroyed (a
  // Transfer shares ownership of it).
  ~TransferEngine();
  TransferEngine(const TransferEngine&) = delete;
  TransferEngine& operator=(const TransferEngine&) = delete;

  // A Transfer for one job, using this engine's connections: with the job's Hub options
  // (endpoint, token, max_attempts and backoff per request), or for presigned S3 URLs.
  std::unique_ptr<Transfer> NewTransfer(const TransferSource& source);

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace modelcache::fetch
