#include "store/s3_filling_upload.h"

#include <algorithm>
#include <cerrno>

#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>

#include "common/files.h"
#include "common/guard.h"
#include "common/sha256.h"
#include "store/sigv4.h"

namespace modelcache::store {
namespace {

}  // namespace

S3FillingUpload::S3FillingUpload(S3Client& client, std::string bucket, std::vector<File> files,
                                 UploadOptions options)
    : client_(client), bucket_(std::move(bucket)), options_(options) {
  options_.parallel_parts = std::max(1, options_.parallel_parts);
  const S3Uploader sizing(client_, options_);
  for (File& file : files) {
    auto f = std::make_unique<FileState>();
    f->part_size = std::max<uint64_t>(1, sizing.PartSizeFor(file.size));
    for (uint64_t first = 0; first < file.size; first += f->part_size) {
      Part p;
      p.first = first;
      p.size = std::min(f->part_size, file.size - first);
      f->parts.push_back(p);
    }
    for (const auto& [a, b] : file.pending) {
      uint64_t end = std::min(b, file.size);
      if (a >= end) {
        continue;
      }
      f->pending[a] = end;
      for (uint64_t at = a; at < end;) {
        Part& p = f->parts[at / f->part_size];
        uint64_t upto = std::min(end, p.first + p.size);
        p.missing += upto - at;
        at = upto;
      }
    }
    f->file = std::move(file);
    files_.push_back(std::move(f));
  }
}

S3FillingUpload::~S3FillingUpload() {
  stop_.request_stop();
  {
    std::lock_guard lock(mu_);
    closing_ = true;
    cv_.notify_all();
  }
  for (std::thread& t : workers_) {
    t.join();
  }
}

VoidResult S3FillingUpload::Start(std::stop_token stop) {
  forward_stop_.emplace(stop, [this] { stop_.request_stop(); });
  for (auto& f : files_) {
    const std::string& key = f->file.key;
    auto uploads = client_.ListMultipartUploads(bucket_, key, stop_.get_token());
    if (!uploads) {
      return uploads.error();
    }
    // The newest upload first (clang-tidy 14 cannot parse the std::ranges::reverse_view of
    // libstdc++ 12 that modernize-loop-convert suggests).
    // NOLINTNEXTLINE(modernize-loop-convert)
    for (auto it = uploads->rbegin(); it != uploads->rend(); ++it) {
      if (it->key != key) {
        continue;
      }
      auto parts = client_.ListParts(bucket_, key, it->upload_id, stop_.get_token());
      if (!parts) {
        if (parts.error().message.find("NoSuchUpload") != std::string::npos) {
          continue;
        }
        return parts.error();
      }
      f->upload_id = it->upload_id;
      for (UploadedPart& p : *parts) {
        f->existing[p.number] = std::move(p);
      }
      spdlog::info("s3://{}/{}: resuming multipart upload with {} parts already uploaded", bucket_,
                   key, f->existing.size());
      break;
    }
    if (f->upload_id.empty()) {
      // An object an interrupted run completed but did not copy to its final key yet.
      if (auto r = client_.DeleteObject(bucket_, key, stop_.get_token()); !r) {
        return r.error();
      }
    }
  }
  for (int i = 0; i < options_.parallel_parts; ++i) {
    workers_.emplace_back([this] {
      if (!LogExceptions("S3 filling upload worker", [this] { WorkerLoop(); })) {
        std::lock_guard lock(mu_);
        if (!error_) {
          error_ = Error(Reason::Internal, "an S3 upload worker stopped on an exception");
        }
        stop_.request_stop();
        cv_.notify_all();
      }
    });
  }
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < files_.size(); ++i) {
    for (size_t k = 0; k < files_[i]->parts.size(); ++k) {
      if (files_[i]->parts[k].missing == 0) {
        Queue(i, k);
      }
    }
  }
  return {};
}

void S3FillingUpload::Queue(size_t file, size_t part) {
  files_[file]->parts[part].state = PartState::Queued;
  queue_.emplace_back(file, part);
  cv_.notify_all();
}

void S3FillingUpload::Written(size_t file, uint64_t offset, uint64_t length) {
  if (length == 0 || file >= files_.size()) {
    return;
  }
  std::lock_guard lock(mu_);
  FileState& f = *files_[file];
  const uint64_t end = std::min(offset + length, f.file.size);
  if (offset >= end) {
    return;
  }
  // Parts complete before this write hold bytes now replaced: they go again.
  for (size_t k = offset / f.part_size; k <= (end - 1) / f.part_size; ++k) {
    Part& p = f.parts[k];
    if (p.missing != 0) {
      continue;
    }
    if (p.state == PartState::Uploading) {
      p.again = true;
    } else if (p.state == PartState::Done) {
      parts_again_.fetch_add(1);
      Queue(file, k);
    }
  }
  // The newly written bytes.
  auto it = f.pending.upper_bound(offset);
  if (it != f.pending.begin() && std::prev(it)->second > offset) {
    --it;
  }
  while (it != f.pending.end() && it->first < end) {
    const uint64_t first = it->first;
    const uint64_t last = it->second;
    const uint64_t a = std::max(first, offset);
    const uint64_t b = std::min(last, end);
    it = f.pending.erase(it);
    if (first < a) {
      f.pending.emplace(first, a);
    }
    if (b < last) {
      it = f.pending.emplace(b, last).first;
    }
    for (uint64_t at = a; at < b;) {
      const size_t k = at / f.part_size;
      Part& p = f.parts[k];
      const uint64_t upto = std::min(b, p.first + p.size);
      p.missing -= std::min(p.missing, upto - at);
      if (p.missing == 0 && p.state == PartState::Filling) {
        Queue(file, k);
      }
      at = upto;
    }
  }
}

void S3FillingUpload::WorkerLoop() {
  std::string buffer;
  for (;;) {
    std::pair<size_t, size_t> job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return closing_ || !queue_.empty(); });
      if (closing_) {
        return;
      }
      job = queue_.front();
      queue_.pop_front();
      Part& p = files_[job.first]->parts[job.second];
      if (p.state != PartState::Queued || error_) {
        continue;  // queued twice (a rewrite), or the uploads have failed
      }
      p.state = PartState::Uploading;
      ++busy_;
    }
    VoidResult r = UploadPart(job.first, job.second, buffer);
    std::lock_guard lock(mu_);
    --busy_;
    Part& p = files_[job.first]->parts[job.second];
    if (!r) {
      p.state = PartState::Queued;
      if (!error_) {
        error_ = r.error();
      }
      stop_.request_stop();
    } else if (p.again) {
      p.again = false;
      parts_again_.fetch_add(1);
      Queue(job.first, job.second);
    } else {
      p.state = PartState::Done;
    }
    cv_.notify_all();
  }
}

Result<std::string> S3FillingUpload::UploadIdFor(FileState& f) {
  std::lock_guard lock(f.create_mu);
  if (f.upload_id.empty()) {
    auto id = client_.CreateMultipartUpload(bucket_, f.file.key, stop_.get_token());
    if (!id) {
      return id.error();
    }
    f.upload_id = std::move(*id);
  }
  return f.upload_id;
}

VoidResult S3FillingUpload::UploadPart(size_t file, size_t part, std::string& buffer) {
  FileState& f = *files_[file];
  const Part& p = f.parts[part];  // first and size never change
  const int number = static_cast<int>(part) + 1;
  buffer.resize(static_cast<size_t>(p.size));
  if (auto r = ReadAt(f.file.local_path, p.first, buffer); !r) {
    return r;
  }
  auto listed = f.existing.find(number);
  if (listed != f.existing.end() && listed->second.size == p.size &&
      listed->second.etag == HexEncode(Md5Raw(buffer))) {
    parts_reused_.fetch_add(1);
    std::lock_guard lock(mu_);
    f.parts[part].uploaded = listed->second;
    return {};
  }
  auto upload_id = UploadIdFor(f);
  if (!upload_id) {
    return upload_id.error();
  }
  S3Body body;
  body.source.size = buffer.size();
  body.source.read = [&buffer](uint64_t offset, char* out, size_t n) -> Result<size_t> {
    size_t take = static_cast<size_t>(std::min<uint64_t>(n, buffer.size() - offset));
    std::copy_n(buffer.data() + offset, take, out);
    return take;
  };
  body.payload_hash = Sha256Hex(buffer);
  S3Request request{"UploadPart",
                    "PUT",
                    bucket_,
                    f.file.key,
                    {{"partNumber", std::to_string(number)}, {"uploadId", *upload_id}},
                    {{"content-type", "application/octet-stream"}},
                    "",
                    &body};
  auto r = client_.Send(request, stop_.get_token());
  if (!r) {
    return r.error();
  }
  UploadedPart uploaded{number, "", p.size};
  if (const std::string* etag = r->Header("etag")) {
    uploaded.etag = *etag;
  }
  if (uploaded.etag.size() >= 2 && uploaded.etag.front() == '"' && uploaded.etag.back() == '"') {
    uploaded.etag = uploaded.etag.substr(1, uploaded.etag.size() - 2);
  }
  if (uploaded.etag.empty()) {
    return Error(Reason::StorageError, fmt::format("S3 UploadPart s3://{}/{} part {}: answer has "
                                                   "no ETag",
                                                   bucket_, f.file.key, number));
  }
  bytes_sent_.fetch_add(p.size);
  std::lock_guard lock(mu_);
  f.parts[part].uploaded = std::move(uploaded);
  return {};
}

VoidResult S3FillingUpload::Finish() {
  {
    std::unique_lock lock(mu_);
    bytes_before_finish_ = bytes_sent_.load();
    for (const auto& f : files_) {
      if (!f->pending.empty()) {
        return Error(Reason::Internal,
                     fmt::format("{}: {} byte ranges were never written (first at {})",
                                 f->file.local_path, f->pending.size(), f->pending.begin()->first));
      }
    }
    cv_.wait(lock, [&] { return (queue_.empty() && busy_ == 0) || error_.has_value(); });
    if (error_) {
      return *error_;
    }
    closing_ = true;
    cv_.notify_all();
  }
  for (std::thread& t : workers_) {
    t.join();
  }
  workers_.clear();
  for (const auto& f : files_) {
    std::vector<UploadedPart> parts;
    for (const Part& p : f->parts) {
      if (p.state != PartState::Done) {
        return Error(Reason::Internal,
                     fmt::format("{}: part at {} was never uploaded", f->file.local_path, p.first));
      }
      parts.push_back(p.uploaded);
    }
    auto upload_id = UploadIdFor(*f);
    if (!upload_id) {
      return upload_id.error();
    }
    if (auto r = client_.CompleteMultipartUpload(bucket_, f->file.key, *upload_id, parts,
                                                 stop_.get_token());
        !r) {
      return r;
    }
    auto info = client_.HeadObject(bucket_, f->file.key, stop_.get_token());
    if (!info) {
      return info.error();
    }
    if (!*info || (*info)->size != f->file.size) {
      return Error(Reason::StorageError,
                   fmt::format("s3://{}/{}: after the upload the object does not have {} bytes",
                               bucket_, f->file.key, f->file.size));
    }
  }
  return {};
}

}  // namespace modelcache::store
