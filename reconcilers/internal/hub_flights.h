#pragma once

// The Hub requests of cache jobs that many jobs make at the same moment — thousands of
// resources of one model resolving repo@main on a daemon's first sync — shared among the jobs
// that ask while the same request is in flight (common/single_flight.h: nothing is cached; a job
// that asks after the answer came makes its own request). Requests are told apart by endpoint,
// token (by its hash), repo type, repo and revision or commit, so a job never gets an answer
// obtained with another token. Private to reconcilers/.
//
// Thread-safe.

#include <stop_token>
#include <string>
#include <vector>

#include "common/result.h"
#include "fetch/hub_client.h"

namespace modelcache::reconcilers {

// hub.ResolveRevision(type, repo, revision, stop), shared. `options` are hub's.
Result<std::string> SharedResolveRevision(fetch::HubClient& hub, const fetch::HubOptions& options,
                                          const std::string& type, const std::string& repo,
                                          const std::string& revision, std::stop_token stop);

// hub.ListFiles(type, repo, commit, stop), shared.
Result<std::vector<fetch::RepoFile>> SharedListFiles(fetch::HubClient& hub,
                                                     const fetch::HubOptions& options,
                                                     const std::string& type,
                                                     const std::string& repo,
                                                     const std::string& commit,
                                                     std::stop_token stop);

}  // namespace modelcache::reconcilers
