#include "fetch/internal/chunk_map.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "common/files.h"
#include "fetch/internal/block_pool.h"

namespace modelcache::fetch::internal {

uint64_t ChunkSizeFor(uint64_t size, int per_job, uint64_t min_chunk, uint64_t max_chunk) {
  auto n = static_cast<uint64_t>(per_job);
  uint64_t per = (size + n - 1) / n;
  per = std::clamp<uint64_t>(per, min_chunk, max_chunk);
  return (per + kDirectAlign - 1) / kDirectAlign * kDirectAlign;
}

Chunks SplitChunks(uint64_t size, uint64_t chunk_size, uint64_t have) {
  Chunks chunks;
  for (uint64_t s = 0; s < size; s += chunk_size) {
    uint64_t e = std::min(size, s + chunk_size);
    uint64_t d = have > s ? std::min(have - s, e - s) : 0;
    chunks.push_back(std::make_unique<Chunk>(s, e, d));
  }
  return chunks;
}

uint64_t OnDisk(const Chunks& chunks) {
  uint64_t sum = 0;
  for (const auto& c : chunks) {
    sum += c->on_disk();
  }
  return sum;
}

uint64_t ContiguousEnd(const Chunks& chunks) {
  uint64_t end = 0;
  for (const auto& c : chunks) {
    uint64_t d = c->on_disk();
    end = c->start + d;
    if (d < c->len()) {
      break;
    }
  }
  return end;
}

std::string ChunkMapText(uint64_t size, const std::string& etag, const Chunks& chunks,
                         uint64_t* claimed) {
  nlohmann::json list = nlohmann::json::array();
  uint64_t sum = 0;
  for (const auto& c : chunks) {
    uint64_t d = c->on_disk();
    sum += d;
    list.push_back({c->start, c->end, d});
  }
  if (claimed != nullptr) {
    *claimed = sum;
  }
  nlohmann::json doc = {{"size", size}, {"etag", etag}, {"chunks", list}};
  return doc.dump();
}

std::optional<ChunkMap> ParseChunkMap(std::string_view text, uint64_t size) {
  auto doc = nlohmann::json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    return std::nullopt;
  }
  auto field = doc.find("size");
  auto etag = doc.find("etag");
  auto list = doc.find("chunks");
  if (field == doc.end() || !field->is_number_unsigned() || field->get<uint64_t>() != size ||
      list == doc.end() || !list->is_array() || (etag != doc.end() && !etag->is_string())) {
    return std::nullopt;
  }
  ChunkMap map;
  uint64_t expect = 0;
  for (const auto& c : *list) {
    if (!c.is_array() || c.size() != 3 || !c[0].is_number_unsigned() ||
        !c[1].is_number_unsigned() || !c[2].is_number_unsigned()) {
      return std::nullopt;
    }
    auto s = c[0].get<uint64_t>();
    auto e = c[1].get<uint64_t>();
    auto d = c[2].get<uint64_t>();
    if (s != expect || e <= s || e > size || d > e - s) {
      return std::nullopt;
    }
    map.chunks.push_back(std::make_unique<Chunk>(s, e, d));
    expect = e;
  }
  if (expect != size) {
    return std::nullopt;
  }
  map.etag = etag != doc.end() ? etag->get<std::string>() : std::string();
  return map;
}

MapPersister::~MapPersister() {
  if (thread_.joinable()) {
    thread_.request_stop();
    thread_.join();
  }
}

void MapPersister::Persist(int data_fd, std::string map_path, std::string text) {
  {
    std::lock_guard lock(mu_);
    // A newer snapshot replaces one still waiting for the same file (its claims are newer and are
    // read before its own sync, so they stay safe to record).
    auto waiting = std::find_if(queue_.begin(), queue_.end(),
                                [&](const MapWrite& w) { return w.map_path == map_path; });
    if (waiting != queue_.end()) {
      ::close(waiting->fd);
      waiting->fd = data_fd;
      waiting->text = std::move(text);
    } else {
      queue_.push_back(MapWrite{data_fd, std::move(map_path), std::move(text)});
      pending_ += 1;
    }
    if (!thread_.joinable()) {
      thread_ = std::jthread([this](std::stop_token stop) { Loop(stop); });
    }
  }
  cv_.notify_one();
}

void MapPersister::Drain() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [this] { return pending_ == 0; });
}

void MapPersister::Loop(std::stop_token stop) {
  while (true) {
    MapWrite w;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, stop, [this] { return !queue_.empty(); });
      if (queue_.empty()) {
        return;  // stop requested and nothing left
      }
      w = std::move(queue_.front());
      queue_.pop_front();
    }
    if (::fdatasync(w.fd) != 0) {
      spdlog::warn("cannot sync the data of {}: {}", w.map_path, ErrnoMessage(errno));
    } else if (auto r = WriteFileAtomic(w.map_path, w.text); !r) {
      spdlog::warn("{}", r.error().ToString());
    }
    ::close(w.fd);
    {
      std::lock_guard lock(mu_);
      pending_ -= 1;
    }
    cv_.notify_all();
  }
}

}  // namespace modelcache::fetch::internal
