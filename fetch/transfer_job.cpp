#include "fetch/internal/transfer_job.h"

#include <sys/stat.h>

#include <algorithm>

#include <spdlog/spdlog.h>

#include "common/sha256.h"
#include "fetch/internal/hub_http.h"

namespace modelcache::fetch::internal {
namespace {

// Hashing is bounded per loop turn so that completions and cancellation stay prompt.
constexpr uint64_t kHashBudget = 64ULL << 20;
constexpr auto kRateWindow = std::chrono::seconds(5);
constexpr auto kRateSample = std::chrono::milliseconds(250);
constexpr auto kIdleWait = std::chrono::milliseconds(100);

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

VoidResult CheckSpaceFor(const std::vector<const FileTask*>& tasks) {
  std::vector<SpaceNeed> needs;
  needs.reserve(tasks.size());
  for (const FileTask* task : tasks) {
    needs.push_back({task->incomplete_path, BytesNeeded(*task)});
  }
  return CheckFreeSpace(needs);
}

}  // namespace

TransferJob::TransferJob(TransferEngine::Impl& engine, const SourceSettings& source,
                         TransferProgress& progress, std::stop_token stop)
    : engine_(engine),
      stop_(std::move(stop)),
      ctx_{engine.options, source, engine.stall_floor, progress, engine.pool, queue_, persister_},
      held_limit_(static_cast<int>(std::min<uint64_t>(
          kMaxHeldBlocks, static_cast<uint64_t>(engine.options.max_connections_per_job) *
                              ((engine.options.chunk_size + kBlockSize - 1) / kBlockSize)))),
      publisher_(queue_) {}

TransferJob::~TransferJob() {
  for (Block* b : queue_.written) {
    engine_.pool.Put(b);
  }
  for (auto& f : files_) {
    f.Close();
  }
}

VoidResult TransferJob::Prepare(const std::vector<FileTask>& tasks, const BlobBatch& batch) {
  std::vector<const FileTask*> unique;
  for (size_t i : batch.unique) {
    unique.push_back(&tasks[i]);
  }
  TransferProgress& progress = ctx_.progress;
  // A caller that knows the whole job (files already in the store, which it did not hand over)
  // sets the totals and seeds the done counters itself; otherwise the batch is the job.
  if (progress.bytes_total.load() == 0 && progress.files_total.load() == 0) {
    progress.bytes_total.store(batch.bytes);
    progress.files_total.store(static_cast<int64_t>(tasks.size()));
  }
  progress.bytes_per_second.store(0);
  if (auto r = CheckSpaceFor(unique); !r) {
    return r.error();
  }
  results_.resize(tasks.size());
  files_.reserve(unique.size());
  for (const FileTask* t : unique) {
    auto index = static_cast<size_t>(t - tasks.data());
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
        progress.bytes_done.fetch_add(t->size);
        progress.files_done.fetch_add(1);
        results_[index] = FileResult{t->path, sha256, t->size, false};
        continue;
      }
      spdlog::warn("{} has {} bytes instead of {}; fetching it again", t->final_path, *existing,
                   t->size);
    }
    files_.emplace_back(ctx_, *t, files_.size(), index);
  }
  return {};
}

void TransferJob::Submit(std::unique_ptr<Request> r) {
  Request* raw = r.get();
  in_flight_.emplace(raw, std::move(r));
  engine_.Submit(raw);
}

void TransferJob::Schedule() {
  auto now = Clock::now();
  auto limit = static_cast<size_t>(ctx_.opts.max_connections_per_job);
  for (auto& f : files_) {
    if (in_flight_.size() >= limit || error_) {
      return;
    }
    if (f.phase() == FileDownload::Phase::Done || f.reset_pending()) {
      continue;
    }
    if (f.phase() == FileDownload::Phase::Waiting) {
      if (auto r = f.Activate(); !r) {
        Fail(r.error());
        return;
      }
    }
    while (in_flight_.size() < limit) {
      std::unique_ptr<Request> r = f.NextRequest(now);
      if (r == nullptr) {
        break;
      }
      Submit(std::move(r));
    }
  }
}

void TransferJob::Handle(Request* r) {
  std::unique_ptr<Request> owned = std::move(in_flight_[r]);
  in_flight_.erase(r);
  bool stopping = error_.has_value() || stop_.stop_requested();
  if (auto res = files_[r->file].Completed(*r, stopping); !res) {
    Fail(res.error());
  }
}

void TransferJob::Publish(FileDownload& f) {
  Publication p;
  p.file = static_cast<size_t>(&f - files_.data());
  p.task = &f.task();
  p.mapped = f.mapped();
  p.sha256 = f.sha256();
  p.fd = f.TakeForPublishing();
  publishing_ += 1;
  publisher_.Publish(std::move(p), publishing_);
}

void TransferJob::Published(Publication& p) {
  FileDownload& f = files_[p.file];
  publishing_ -= 1;
  f.Published();
  if (!p.result) {
    Fail(p.result.error());
    return;
  }
  results_[f.index()] = FileResult{f.task().path, p.sha256, f.task().size, true};
  ctx_.progress.files_done.fetch_add(1);
}

void TransferJob::Hold(Block* b) {
  if (!files_[b->file].Keep(b)) {
    engine_.pool.Put(b);
    return;
  }
  while (ctx_.held_blocks > held_limit_) {
    ReleaseFurthest();
  }
}

void TransferJob::ReleaseFurthest() {
  FileDownload* furthest = nullptr;
  for (auto& g : files_) {
    if (g.holds_blocks() && (furthest == nullptr || g.held_lead() > furthest->held_lead())) {
      furthest = &g;
    }
  }
  furthest->ReleaseFurthestHeld();
}

void TransferJob::SampleRate() {
  auto now = Clock::now();
  if (now < next_sample_) {
    return;
  }
  next_sample_ = now + kRateSample;
  samples_.emplace_back(now, ctx_.downloaded.load());
  while (samples_.size() > 2 && now - samples_.front().first > kRateWindow) {
    samples_.pop_front();
  }
  auto span = std::chrono::duration<double>(now - samples_.front().first).count();
  if (span > 0) {
    ctx_.progress.bytes_per_second.store(static_cast<uint64_t>(
        static_cast<double>(samples_.back().second - samples_.front().second) / span));
  }
}

bool TransferJob::Work() {
  Schedule();
  uint64_t budget = kHashBudget;
  for (auto& f : files_) {
    if (f.phase() != FileDownload::Phase::Active || f.reset_pending() || budget == 0) {
      continue;
    }
    if (auto r = f.AdvanceHash(budget); !r) {
      Fail(r.error());
      break;
    }
    if (f.phase() == FileDownload::Phase::Verified) {
      Publish(f);
    }
  }
  for (auto& f : files_) {
    if (f.phase() == FileDownload::Phase::Active) {
      f.PersistMap(false);
    }
  }
  SampleRate();
  return budget == 0;
}

void TransferJob::WaitAndTake(bool hash_behind) {
  // While hashing lags behind the data, only completions already queued are taken.
  auto deadline = Clock::now() + (hash_behind ? std::chrono::milliseconds(0) : kIdleWait);
  for (const auto& f : files_) {
    deadline = f.NextRetry(deadline);
  }
  std::deque<Request*> done;
  std::deque<Block*> written;
  std::deque<Publication> published;
  {
    std::unique_lock lock(queue_.mu);
    queue_.cv.wait_until(lock, deadline, [this] {
      return !queue_.done.empty() || !queue_.written.empty() || queue_.wake;
    });
    done.swap(queue_.done);
    written.swap(queue_.written);
    published.swap(queue_.published);
    queue_.wake = false;
  }
  for (Publication& p : published) {
    Published(p);
  }
  // Before the completions: a request's blocks are all written, and queued, before it is.
  for (Block* b : written) {
    Hold(b);
  }
  // Transfers wait for blocks (several jobs at once, or a slow disk): what this job holds only
  // saves reading back, while a stalled transfer could stall the hashing for good.
  while (ctx_.held_blocks > 0 && engine_.pool.Wanted()) {
    ReleaseFurthest();
  }
  for (Request* r : done) {
    Handle(r);
  }
}

Result<std::vector<FileResult>> TransferJob::Run(const std::vector<FileTask>& tasks) {
  BlobBatch batch = GroupByBlob(tasks);
  if (auto r = Prepare(tasks, batch); !r) {
    return r.error();
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
      hash_behind = Work();
    }
    bool all_done = std::all_of(files_.begin(), files_.end(), [](const FileDownload& f) {
      return f.phase() == FileDownload::Phase::Done;
    });
    if (in_flight_.empty() && publishing_ == 0 && (all_done || cancelling || error_)) {
      break;
    }
    WaitAndTake(hash_behind);
  }
  for (auto& f : files_) {
    if (f.phase() == FileDownload::Phase::Active) {
      f.PersistMap(true);
    }
  }
  persister_.Drain();
  ctx_.progress.bytes_per_second.store(0);
  spdlog::debug("transfer of {} files: {} bytes hashed as they arrived, {} read back to hash",
                files_.size(), ctx_.hashed_from_memory, ctx_.hashed_from_file);
  if (error_) {
    return *error_;
  }
  if (stop_.stop_requested()) {
    return Error(Reason::Cancelled, "download cancelled; partial files are kept for resume");
  }
  return FanOut(batch, tasks, results_, ctx_.progress);
}

}  // namespace modelcache::fetch::internal
