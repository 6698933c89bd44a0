#include "fetch/internal/publisher.h"

#include <unistd.h>

#include <cerrno>
#include <string>
#include <utility>

#include "common/files.h"
#include "common/guard.h"
#include "fetch/internal/hub_http.h"
#include "fetch/transfer.h"

namespace modelcache::fetch::internal {

void Publisher::Publish(Publication p, int publishing) {
  {
    std::lock_guard lock(mu_);
    to_publish_.push_back(std::move(p));
    if (threads_.size() < kPublishers && threads_.size() < static_cast<size_t>(publishing)) {
      threads_.emplace_back([this](std::stop_token stop) { Loop(stop); });
    }
  }
  cv_.notify_one();
}

VoidResult Publisher::PutInPlace(const FileTask& t, bool mapped, int fd) {
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

void Publisher::Loop(std::stop_token stop) {
  while (true) {
    Publication p;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, stop, [this] { return !to_publish_.empty(); });
      if (to_publish_.empty()) {
        return;  // stop requested and nothing left
      }
      p = std::move(to_publish_.front());
      to_publish_.pop_front();
    }
    p.result = ResultOrInternalError("publishing " + p.task->path,
                                     [&] { return PutInPlace(*p.task, p.mapped, p.fd); });
    {
      std::lock_guard lock(queue_.mu);
      queue_.published.push_back(std::move(p));
      queue_.wake = true;
    }
    queue_.cv.notify_all();
  }
}

}  // namespace modelcache::fetch::internal
