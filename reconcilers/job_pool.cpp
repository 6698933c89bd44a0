#include "reconcilers/internal/job_pool.h"

#include <algorithm>

#include "common/guard.h"

namespace modelcache::reconcilers {

JobPool::JobPool(int threads) {
  for (int i = 0; i < std::max(1, threads); ++i) {
    threads_.emplace_back([this] { Loop(); });
  }
}

JobPool::~JobPool() { Join(); }

void JobPool::Join() {
  Stop();
  threads_.clear();  // joins
}

void JobPool::Submit(const std::string& tenant, std::function<void()> job,
                     std::function<bool()> preempt) {
  {
    std::lock_guard lock(mu_);
    if (stopping_) {
      return;
    }
    tenants_[tenant].queue.push_back(Queued{std::move(job), std::move(preempt)});
    ++queued_;
  }
  cv_.notify_one();
  Preempt();
}

std::vector<std::function<void()>> JobPool::Stop() {
  std::vector<std::function<void()>> dropped;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    for (auto& [name, tenant] : tenants_) {
      for (auto& queued : tenant.queue) {
        dropped.push_back(std::move(queued.job));
      }
      tenant.queue.clear();
    }
    queued_ = 0;
  }
  cv_.notify_all();
  return dropped;
}

bool JobPool::HasFreeThread() {
  std::lock_guard lock(mu_);
  // Queued jobs are about to be taken by free threads: count them as running.
  return !stopping_ && running_.size() + queued_ < threads_.size();
}

std::vector<JobPool::Preemption> JobPool::PickPreemptions() {
  std::vector<Preemption> picked;
  if (stopping_ || queued_ == 0) {
    return picked;
  }
  // Slots that are free or being given back go to the waiting tenants with the fewest running
  // jobs anyway; preempt only for the waiting tenants below their share that they do not cover.
  size_t share = std::max<size_t>(1, threads_.size() / tenants_.size());
  std::map<std::string, size_t> staying;  // running jobs per tenant, not counting those leaving
  size_t leaving = 0;
  for (const auto& r : running_) {
    if (r.preempting) {
      ++leaving;
    } else {
      ++staying[r.tenant];
    }
  }
  size_t waiting_below = 0;
  for (const auto& [name, tenant] : tenants_) {
    if (!tenant.queue.empty() && staying[name] < share) {
      ++waiting_below;
    }
  }
  size_t freeing = threads_.size() - std::min(threads_.size(), running_.size()) + leaving;
  while (waiting_below > freeing) {
    // The tenant furthest above its share; its job started last (the least work to redo).
    auto victim = running_.rend();
    size_t most = share;
    for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
      if (!it->preempting && it->preempt && staying[it->tenant] > most) {
        most = staying[it->tenant];
        victim = it;
      }
    }
    if (victim == running_.rend()) {
      break;
    }
    victim->preempting = true;
    --staying[victim->tenant];
    picked.push_back(Preemption{victim->id, std::move(victim->preempt)});
    victim->preempt = nullptr;
    ++freeing;
  }
  return picked;
}

void JobPool::Preempt() {
  std::vector<Preemption> picked;
  {
    std::lock_guard lock(mu_);
    picked = PickPreemptions();
  }
  while (!picked.empty()) {
    std::vector<uint64_t> refused;
    for (auto& p : picked) {
      if (!p.preempt()) {
        refused.push_back(p.id);
      }
    }
    std::lock_guard lock(mu_);
    if (refused.empty()) {
      return;
    }
    // A job that cannot stop now keeps its slot and is not asked again; ask the next one.
    for (auto& r : running_) {
      if (std::find(refused.begin(), refused.end(), r.id) != refused.end()) {
        r.preempting = false;
      }
    }
    picked = PickPreemptions();
  }
}

void JobPool::Loop() {
  while (true) {
    Queued next;
    std::list<Running>::iterator me;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || queued_ > 0; });
      if (queued_ == 0) {
        return;
      }
      // The waiting tenant with the fewest running jobs; ties: the one served longest ago.
      auto pick = tenants_.end();
      for (auto it = tenants_.begin(); it != tenants_.end(); ++it) {
        if (!it->second.queue.empty() &&
            (pick == tenants_.end() || it->second.running < pick->second.running ||
             (it->second.running == pick->second.running &&
              it->second.served < pick->second.served))) {
          pick = it;
        }
      }
      Tenant& tenant = pick->second;
      next = std::move(tenant.queue.front());
      tenant.queue.pop_front();
      --queued_;
      ++tenant.running;
      tenant.served = ++clock_;
      me = running_.insert(running_.end(), Running{clock_, pick->first, std::move(next.preempt)});
    }
    // Jobs catch their own exceptions (ResultOrInternalError); this keeps the thread alive even
    // if one does not.
    LogExceptions("job thread", next.job);
    {
      std::lock_guard lock(mu_);
      auto it = tenants_.find(me->tenant);
      if (--it->second.running == 0 && it->second.queue.empty()) {
        tenants_.erase(it);  // a tenant without work takes no share
      }
      running_.erase(me);
    }
    // One tenant fewer may raise the others' shares; one job fewer frees a slot.
    Preempt();
  }
}

}  // namespace modelcache::reconcilers
