#pragma once

// One HTTP request of the transfer engine, for one byte range of one file, and the libcurl
// callbacks that run it on the engine thread: the answer's headers are collected, the answer is
// classified at its first body byte (is this the data asked for?), and the body goes to the file
// with pwrite, or for a staged request (a large file) into blocks for the block writer.
//
// Ownership moves with the request: the job thread fills it and hands it to the engine (Submit);
// the engine thread runs it; once completed (JobQueue::done) the job thread owns it again.

#include <curl/curl.h>
#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/http_client.h"
#include "common/result.h"

namespace modelcache::fetch {
struct FileTask;
}  // namespace modelcache::fetch

namespace modelcache::fetch::internal {

struct Block;
class BlockPool;
class BlockWriter;
class BandwidthBucket;
struct Request;

// A file handed to the publisher threads (fsync, rename, sync the directory) and back.
struct Publication {
  size_t file = 0;  // the job's index of the file
  const FileTask* task = nullptr;
  bool mapped = false;  // a multi-range file: its chunk map goes too
  int fd = -1;
  std::string sha256;
  VoidResult result;
};

// What the engine, the writer and the publishers hand to the job thread of one Run.
struct JobQueue {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Request*> done;          // completed requests
  std::deque<Block*> written;         // blocks on disk, for hashing from memory
  std::deque<Publication> published;  // files renamed into place (or failed to be)
  bool wake = false;                  // something else changed: a stop, a transfer waits
};

using PwriteFn = std::function<ssize_t(int fd, const void* data, size_t size, off_t offset)>;

struct Request {
  std::string url;
  HttpHeaders headers;
  bool ranged = false;
  uint64_t first = 0;  // file offset of the first byte asked for
  uint64_t end = 0;    // one past the last byte this request may write
  uint64_t file_size = 0;
  std::string expected_etag;  // "" = any
  int fd = -1;
  std::atomic<uint64_t>* chunk_done = nullptr;
  std::atomic<uint64_t>* bytes_done = nullptr;
  std::atomic<uint64_t>* downloaded = nullptr;
  const PwriteFn* pwrite_hook = nullptr;
  JobQueue* queue = nullptr;
  size_t file = 0;
  size_t chunk = 0;
  std::atomic<bool> abort{false};
  // A staged request (a large file) gathers its body in blocks that the writer thread writes
  // (with O_DIRECT through direct_fd where aligned) before handing them to the job for hashing.
  bool staged = false;
  int direct_fd = -1;  // -1: through the page cache only
  uint64_t generation = 0;

  // Set by the engine when it adds the request (engine thread from then on).
  BandwidthBucket* bucket = nullptr;
  std::vector<Request*>* rate_waiters = nullptr;   // paused for want of tokens
  Block* block = nullptr;                          // being filled
  BlockPool* pool = nullptr;
  BlockWriter* writer = nullptr;
  std::vector<Request*>* block_waiters = nullptr;  // paused for want of a block

  enum class Verdict { None, Data, IgnoredRange, Changed, BadRange, Overflow, WrongLength, NotData };
  Verdict verdict = Verdict::None;
  HttpResponse response;
  CURLcode code = CURLE_OK;
  bool cancelled = false;  // removed by CancelJob or engine shutdown
  std::optional<Error> write_error;
  size_t header_bytes = 0;         // of the current response
  bool headers_too_large = false;  // more than kMaxResponseHeaderBytes: aborted
  uint64_t pos = 0;                // next file offset to write
  std::string etag_seen;
  CURL* easy = nullptr;
  curl_slist* slist = nullptr;
};

// Hands a finished request to its job.
void Complete(Request* r);

// pwrite(2), or the test seam that replaces it.
ssize_t Pwrite(const Request& r, int fd, const void* data, size_t size, off_t offset);

// An ETag without W/ and quotes.
std::string NormalizeEtag(std::string etag);

// Decides, at the first body byte (or the end of a bodiless answer), whether r's answer is the
// data asked for: sets r.verdict (and r.etag_seen).
void Classify(Request& r);

// libcurl's header, write and progress callbacks; `user` is the Request.
size_t OnHeader(char* data, size_t size, size_t n, void* user);
size_t OnData(char* data, size_t size, size_t n, void* user);
int OnProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t);

}  // namespace modelcache::fetch::internal
