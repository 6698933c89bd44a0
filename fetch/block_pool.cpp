#include "fetch/internal/block_pool.h"

#include <utility>

namespace modelcache::fetch::internal {

Block* BlockPool::Get(bool overdraw) {
  std::lock_guard lock(mu_);
  if (!free_.empty()) {
    Block* b = free_.back().release();
    free_.pop_back();
    ++used_;
    return b;
  }
  if (used_ >= max_ && !overdraw) {
    wanted_ = true;
    return nullptr;
  }
  auto* memory = static_cast<char*>(std::aligned_alloc(kDirectAlign, kBlockSize));
  if (memory == nullptr) {
    wanted_ = true;
    return nullptr;
  }
  ++used_;
  auto* b = new Block;
  b->data.reset(memory);
  return b;
}

bool BlockPool::Available() {
  std::lock_guard lock(mu_);
  return used_ <= max_;
}

bool BlockPool::Wanted() {
  std::lock_guard lock(mu_);
  return wanted_;
}

bool BlockPool::Overdrawn() {
  std::lock_guard lock(mu_);
  wanted_ = wanted_ || used_ > max_;
  return used_ > max_;
}

void BlockPool::Put(Block* b) {
  bool wake = false;
  {
    std::lock_guard lock(mu_);
    --used_;
    if (used_ + free_.size() < max_) {
      free_.emplace_back(b);
    } else {
      delete b;  // an overdrawn one
    }
    wake = std::exchange(wanted_, false);
  }
  if (wake) {
    on_wanted_();
  }
}

}  // namespace modelcache::fetch::internal
