#pragma once

// Pulls of S3 artifact versions through the transfer engine: S3ArtifactStore::Pull presigns a GET
// URL for every file (store::PullObject) and these hand them to a fetch::Transfer as FileTasks, so
// a pull gets the engine's parallel byte ranges over several connections, its retries (a range
// that failed is fetched again from where it stopped), its bandwidth limit and its verification
// (size and sha256 against the manifest, fsync, then rename) instead of one range at a time.

#include "fetch/transfer.h"
#include "fetch/hub_client.h"
#include "store/s3_store.h"

namespace modelcache::fetch {

// The S3PullOptions (fetch/transfer.h) with the retry settings of `hub` (max_attempts and backoff;
// its endpoint and token are not for the bucket), for a pull that retries as the job's Hub
// requests do.
S3PullOptions S3PullRetriesOf(const HubOptions& hub);

// A PullDownloadFn running the objects through `transfer` (made with S3PullOptions), counting
// into `progress` (its totals are set from the objects when both are 0, as Transfer::Run does).
// Both must outlive every call of the returned function. Errors as Transfer::Run's.
store::PullDownloadFn TransferPullDownload(Transfer& transfer, TransferProgress& progress);

}  // namespace modelcache::fetch
