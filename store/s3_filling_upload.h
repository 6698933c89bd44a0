#pragma once

// Uploads local files that are written out of order (the rank files of a sharded artifact, filled
// slice by slice as the weights download: docs/sharding.md, "S3 targets") to S3 while they are
// written: each file is one multipart upload, and a part goes out as soon as every byte of it is
// in the file, instead of the whole file after the last byte.
//
// - Parts: the S3Uploader's part size for the file's size (UploadOptions.min_part_size grown to
//   fit 10 000 parts), so the parts of an interrupted run line up with the next run's.
// - Coverage: the caller says which byte ranges are still to be written (`pending`) and reports
//   every write (Written). A part is queued when none of its bytes is pending; a part written
//   again after it was read for its upload (a source file fetched again after a failed
//   verification rewrites its slices) is uploaded again, so what is in the bucket is what the
//   file holds at the end.
// - Resume without local state: Start continues the newest unfinished multipart upload of each
//   key (ListMultipartUploads, ListParts); a part listed there is not sent again when its size and
//   MD5 (its ETag) equal the local bytes once they are written. Without one, a new upload is
//   created when the file's first part is ready, and a completed object left at the key by an
//   interrupted run is deleted first.
// - Integrity: each part is sent with its signed sha256 (S3 checks the bytes it received); Finish
//   completes every upload and checks each object's size with HeadObject. The objects carry no
//   x-amz-meta-sha256 (the file's sha256 is not known when its upload starts): they are staging
//   objects, to be copied to their final keys with it (S3ArtifactStore::PutStaged).
// - Errors: the first failed part (after S3Client's retries) stops the uploads; Finish returns it.
//   Unfinished uploads stay in the bucket to be resumed (a bucket's
//   AbortIncompleteMultipartUpload lifecycle rule removes those never resumed).
// - Memory: one part buffer per worker.
//
// Thread-safety: Written is called from one thread at a time (the one writing the files) and is
// cheap (a lock, no I/O); Start and Finish from the owner.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/result.h"
#include "store/s3_client.h"
#include "store/s3_uploader.h"

namespace modelcache::store {

class S3FillingUpload {
 public:
  struct File {
    std::string local_path;
    std::string key;
    uint64_t size = 0;
    // Byte ranges [first, second) not written yet, sorted, not overlapping.
    std::vector<std::pair<uint64_t, uint64_t>> pending;
  };

  // `options`: min_part_size (the part size rule) and parallel_parts (worker threads).
  S3FillingUpload(S3Client& client, std::string bucket, std::vector<File> files,
                  UploadOptions options = {});
  // Stops the workers; unfinished uploads stay in the bucket.
  ~S3FillingUpload();
  S3FillingUpload(const S3FillingUpload&) = delete;
  S3FillingUpload& operator=(const S3FillingUpload&) = delete;

  // Finds the unfinished uploads to continue, starts the workers and queues the parts that are
  // complete already. `stop` also cuts the workers' requests short.
  VoidResult Start(std::stop_token stop);
  // Bytes [offset, offset + length) of file `file` are now in the file.
  void Written(size_t file, uint64_t offset, uint64_t length);
  // Once every file is written and final: waits for the queued parts, completes every upload and
  // checks each object's size. Internal if a file still has pending bytes; the first part's
  // error otherwise.
  VoidResult Finish();

  // Body bytes of parts sent, and how many of them before Finish was called.
  uint64_t bytes_sent() const { return bytes_sent_.load(); }
  uint64_t bytes_sent_before_finish() const { return bytes_before_finish_; }
  int parts_reused() const { return parts_reused_.load(); }
  int parts_sent_again() const { return parts_again_.load(); }

 private:
  enum class PartState { Filling, Queued, Uploading, Done };
  struct Part {
    uint64_t first = 0;
    uint64_t size = 0;
    uint64_t missing = 0;  // bytes still pending
    PartState state = PartState::Filling;
    bool again = false;  // written while it was being uploaded
    UploadedPart uploaded;
  };
  struct FileState {
    File file;
    std::map<uint64_t, uint64_t> pending;  // first -> end, not overlapping
    uint64_t part_size = 0;
    std::vector<Part> parts;
    std::string upload_id;
    std::map<int, UploadedPart> existing;  // from an earlier run's upload
    std::mutex create_mu;                  // creating upload_id
  };

  void Queue(size_t file, size_t part);  // REQUIRES: mu_ held
  void WorkerLoop();
  VoidResult UploadPart(size_t file, size_t part, std::string& buffer);
  Result<std::string> UploadIdFor(FileState& f);

  S3Client& client_;
  const std::string bucket_;
  UploadOptions options_;
  std::vector<std::unique_ptr<FileState>> files_;
  std::stop_source stop_;
  std::optional<std::stop_callback<std::function<void()>>> forward_stop_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<size_t, size_t>> queue_;
  size_t busy_ = 0;
  bool closing_ = false;
  std::optional<Error> error_;
  std::vector<std::thread> workers_;

  std::atomic<uint64_t> bytes_sent_{0};
  uint64_t bytes_before_finish_ = 0;
  std::atomic<int> parts_reused_{0};
  std::atomic<int> parts_again_{0};
};

}  // namespace modelcache::store
