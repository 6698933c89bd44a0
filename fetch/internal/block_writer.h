#pragma once

// Writes staged blocks (block_pool.h) in the order they are queued, on its own thread, so that
// neither the engine thread nor the hashing waits for the disk. A block goes to the file with
// O_DIRECT when its offset and length are aligned (its memory always is): large files then bypass
// the page cache, whose writeback is the bottleneck on fast links; the rest goes through the page
// cache. Once written, a block counts as on disk for its chunk and is handed to its job; a request
// is completed only after its last block is written.
//
// Thread-safe: Write and Complete are called by the engine thread.

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

namespace modelcache::fetch::internal {

struct Block;
class BlockPool;
struct Request;

class BlockWriter {
 public:
  explicit BlockWriter(BlockPool& pool) : pool_(pool), thread_([this] { Loop(); }) {}
  ~BlockWriter() { Stop(); }
  BlockWriter(const BlockWriter&) = delete;
  BlockWriter& operator=(const BlockWriter&) = delete;

  // Writes and completes what is queued, then ends the thread.
  void Stop();

  // Writes b (a block of r's body), then hands it to r's job; on a failed write, r is aborted
  // with r.write_error set and the rest of its body is dropped.
  void Write(Request* r, Block* b) { Push(r, b); }
  // Completes r once every block queued before is written.
  void Complete(Request* r) { Push(r, nullptr); }

 private:
  void Push(Request* r, Block* b);
  void Loop();

  BlockPool& pool_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<Request*, Block*>> items_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace modelcache::fetch::internal
