#pragma once

// Pulls of S3 artifact versions through the transfer engine: S3ArtifactStore::Pull presigns a GET
// URL for every file (store::PullObject) and these hand them to a fetch::Transfer as FileTasks, so
// a pull gets the engine's parallel byte ranges over several connections, its retries (a range
// that failed is fetched again from where it stopped), its bandwidth limit and its verification
// (size and sha256 against the manifest, fsync, then rename) instead of one range at a time.

#include "fetch/downloader.h"
#include "fetch/hub_client.h"
#include "store/s3_store.h"

namespace modelcache::fetch {

// The HubOptions of a Transfer that fetches presigned S3 URLs: `base`'s retry settings, no token
// and no Hub endpoint. An error answer is classified as S3Client classifies its own
// (store::IsRetriableS3Error): 5xx, SlowDown and the like are retried up to max_attempts, any
// other (NoSuchKey, AccessDenied) fails at once as StorageError; both name the host, the HTTP
// status, the S3 code and the file (never the URL's query, which holds the signature).
HubOptions S3PullHubOptions(const HubOptions& base = {});

// A PullDownloadFn running the objects through `transfer` (made with S3PullHubOptions), counting
// into `progress` (its totals are set from the objects when both are 0, as Transfer::Run does).
// Both must outlive every call of the returned function. Errors as Transfer::Run's.
store::PullDownloadFn TransferPullDownload(Transfer& transfer, TransferProgress& progress);

}  // namespace modelcache::fetch
