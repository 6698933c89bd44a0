#pragma once

// Hub -> S3 without staging: one Hub file is fetched through the Hub protocol (the /resolve URL
// with the token on the Hub's origin only, redirects to the CDN followed without it, Range
// resumes after a dropped connection) and piped into S3Uploader::UploadStream, so the bytes
// never touch the local disk and memory stays bounded (StreamOptions::connections x
// segment_size of ranges in flight, or a 4 MiB pipe for a file read in one request, plus the
// uploader's parallel_parts x part_size). An LFS file larger than one segment is fetched as
// ranges on several connections at once, as the transfer engine fetches to disk: a CDN caps
// what one connection gets.
//
// Verification as the bytes pass: the uploader checks the size and the sha256 of LFS files
// (expected_sha256); regular files are checked against their git blob sha1 here. A mismatch fails
// with ChecksumMismatch and the multipart upload is aborted, so nothing is published.
//
// Errors: those of the Hub (RepoNotFound, RevisionNotFound, Unauthorized, RateLimited,
// NetworkError after max_attempts, see hub_client.h) and of the upload (StorageError with the S3
// code, ChecksumMismatch, Cancelled). The token never appears in an error.
//
// A failed stream that is not a checksum mismatch leaves its multipart upload in place: the next
// attempt streams the file again from the Hub and re-uploads only the parts S3 does not already
// hold with the same MD5 (see s3_uploader.h).

#include <cstdint>
#include <optional>
#include <stop_token>
#include <string>

#include "common/result.h"
#include "fetch/hub_client.h"
#include "store/s3_uploader.h"

namespace modelcache::fetch {

struct HubFileSource {
  std::string path;  // path in the repo, for messages
  std::string url;   // the /resolve URL (HubClient::ResolveUrl)
  uint64_t size = 0;
  std::optional<std::string> expected_sha256;    // LFS files
  std::optional<std::string> expected_git_sha1;  // regular files
};

struct StreamOptions {
  int connections = 4;              // ranged requests in flight for one file; 1: one request
  uint64_t segment_size = 8 << 20;  // bytes per ranged request
};

// Streams `file` to s3://bucket/key. Thread-safe (each call has its own download threads). A
// regular file (checked against its git blob sha1) is read in one request.
Result<store::UploadResult> StreamHubFileToS3(const HubOptions& hub, store::S3Uploader& uploader,
                                              const HubFileSource& file,
                                              const std::string& bucket, const std::string& key,
                                              const store::UploadProgressFn& on_bytes = {},
                                              std::stop_token stop = {},
                                              const StreamOptions& options = {});

// Reads a whole (small) Hub file into memory through the same protocol, checking its git blob
// sha1 or size: for regular (non-LFS) files, whose sha256 the Hub does not list and which must
// be hashed before the artifact's version (a digest over every file's sha256) is known. Fails
// with InvalidSpec when file.size exceeds `max_bytes`. Errors as StreamHubFileToS3's Hub side.
Result<std::string> ReadHubFile(const HubOptions& hub, const HubFileSource& file,
                                uint64_t max_bytes, std::stop_token stop = {});

}  // namespace modelcache::fetch
