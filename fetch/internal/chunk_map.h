#pragma once

// A file's chunk map: which byte ranges of a multi-range file are on disk, and the ETag they came
// with. It lives next to the preallocated `.incomplete` file as `<incomplete_path>.chunks`,
//   {"size": <file size>, "etag": "<etag>", "chunks": [[start, end, done], ...]}
// (ranges in order, covering [0, size); `done` bytes from `start` are on disk), and is rewritten
// atomically after an fdatasync of the data, so a restart fetches exactly what it does not cover.
// A one-chunk file has no map: it is a plain prefix of the blob.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace modelcache::fetch::internal {

// One byte range of a file, fetched by one request at a time.
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
  std::chrono::steady_clock::time_point not_before{};
  uint64_t len() const { return end - start; }
  // What `done` claims, capped at the range.
  uint64_t on_disk() const { return std::min(done.load(std::memory_order_acquire), len()); }
  bool complete() const { return done.load(std::memory_order_acquire) >= len(); }
};

using Chunks = std::vector<std::unique_ptr<Chunk>>;

// The range size for a file of `size` bytes: about `per_job` ranges, each within
// [min_chunk, max_chunk], rounded up to a multiple of 4096 (so staging blocks stay aligned).
uint64_t ChunkSizeFor(uint64_t size, int per_job, uint64_t min_chunk, uint64_t max_chunk);

// [0, size) cut into ranges of `chunk_size`, of which the first `have` bytes are on disk.
Chunks SplitChunks(uint64_t size, uint64_t chunk_size, uint64_t have);

// Bytes on disk over all chunks.
uint64_t OnDisk(const Chunks& chunks);

// The end of the prefix of the file that is on disk without a gap: what may be hashed.
uint64_t ContiguousEnd(const Chunks& chunks);

// A map read back from its file.
struct ChunkMap {
  std::string etag;
  Chunks chunks;
};

// The map's text; `claimed` (if set) receives the bytes it says are on disk.
std::string ChunkMapText(uint64_t size, const std::string& etag, const Chunks& chunks,
                         uint64_t* claimed = nullptr);

// The map `text` describes, or nullopt unless it is one of a file of `size` bytes: JSON with that
// size, ranges in order without gap or overlap covering [0, size), none claiming more than its
// length.
std::optional<ChunkMap> ParseChunkMap(std::string_view text, uint64_t size);

// Writes chunk maps on its own thread, each after an fdatasync of its file's data: done on the
// job thread they would stall scheduling and completions for as long as the disk takes. Maps are
// written in order, so the last one of a file wins; one still waiting is replaced by a newer one.
// The thread starts with the first map; destruction writes what is queued, then joins.
//
// Thread-safe.
class MapPersister {
 public:
  MapPersister() = default;
  ~MapPersister();
  MapPersister(const MapPersister&) = delete;
  MapPersister& operator=(const MapPersister&) = delete;

  // Queues `text` for `map_path`; `data_fd` (a dup of the data file's descriptor, synced before
  // the map is written) is closed by the persister. A failure is logged: the map on disk then
  // stays the older one, which is still true.
  void Persist(int data_fd, std::string map_path, std::string text);

  // Waits until every map queued is written.
  void Drain();

 private:
  struct MapWrite {
    int fd = -1;
    std::string map_path;
    std::string text;
  };
  void Loop(std::stop_token stop);

  std::mutex mu_;
  std::condition_variable_any cv_;
  std::deque<MapWrite> queue_;  // guarded by mu_
  int pending_ = 0;             // queued or being written; guarded by mu_
  std::jthread thread_;         // last: joined first
};

}  // namespace modelcache::fetch::internal
