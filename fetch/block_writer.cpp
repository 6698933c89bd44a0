#include "fetch/internal/block_writer.h"

#include <sys/types.h>
#include <unistd.h>

#include <cerrno>

#include "common/files.h"
#include "fetch/internal/block_pool.h"
#include "fetch/internal/range_request.h"

namespace modelcache::fetch::internal {
namespace {

// Returns 0 or the errno of the failed write.
int WriteBlock(const Request& r, const Block& b) {
  bool direct = r.direct_fd >= 0 && b.offset % kDirectAlign == 0 && b.len % kDirectAlign == 0;
  size_t done = 0;
  while (done < b.len) {
    int fd = direct ? r.direct_fd : r.fd;
    ssize_t w = Pwrite(r, fd, b.data.get() + done, b.len - done,
                       static_cast<off_t>(b.offset + done));
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

}  // namespace

void BlockWriter::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) {
    thread_.join();
  }
}

void BlockWriter::Push(Request* r, Block* b) {
  {
    std::lock_guard lock(mu_);
    items_.emplace_back(r, b);
  }
  cv_.notify_one();
}

void BlockWriter::Loop() {
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
      internal::Complete(r);
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

}  // namespace modelcache::fetch::internal
