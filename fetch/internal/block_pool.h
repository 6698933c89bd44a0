#pragma once

// The transfer engine's staging memory: a large file's body is received into 2 MiB blocks
// aligned for O_DIRECT, which the block writer (block_writer.h) writes and then hands to the job
// that hashes them. The pool bounds how many blocks are in use across all jobs.
//
// Thread-safe: Get, Overdrawn and Available run on the engine thread, Put on the writer and job
// threads.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

namespace modelcache::fetch::internal {

// Large files are staged in blocks of this size, aligned for O_DIRECT.
inline constexpr size_t kBlockSize = 2 << 20;
inline constexpr size_t kDirectAlign = 4096;
// Written blocks a job keeps in memory for hashing while they are ahead of the hashed prefix: as
// many as its ranges in flight span, within this bound.
inline constexpr int kMaxHeldBlocks = 32;

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

// At most `max` blocks in use, except that a write callback that fills a block mid-way may
// overdraw one (it cannot give back bytes it has taken); transfers then pause until the pool is
// back within `max`. A Get that finds none (or Overdrawn) calls `on_wanted` once a block is put
// back, so the engine resumes the transfers it paused.
class BlockPool {
 public:
  BlockPool(size_t max, std::function<void()> on_wanted)
      : max_(max), on_wanted_(std::move(on_wanted)) {}
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  // A block (contents and fields unset), or nullptr when `max` are in use and !overdraw, or when
  // memory runs out.
  Block* Get(bool overdraw);

  // Whether paused transfers may go on: those with a block can (see Overdrawn); one without
  // finds out with Get and pauses again if there is none.
  bool Available();

  // Whether a transfer waits for a block: jobs then give back the blocks they hold for hashing.
  bool Wanted();

  // Whether more than `max` are in use (after overdrawing); like a failed Get, it asks for a wake.
  bool Overdrawn();

  // Gives `b` back (kept for reuse, or freed if overdrawn); calls on_wanted if a Get was refused.
  void Put(Block* b);

 private:
  const size_t max_;
  const std::function<void()> on_wanted_;
  std::mutex mu_;
  std::vector<std::unique_ptr<Block>> free_;
  size_t used_ = 0;
  bool wanted_ = false;
};

}  // namespace modelcache::fetch::internal
