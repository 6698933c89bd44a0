#pragma once

// The credentials a job of the reconciler is given: a resource's Hub token (its own
// tokenSecretRef, or the daemon's token for the daemon's endpoint only) and the daemon's S3
// configuration (its environment, overridden by the --s3-secret entry). Errors name variables,
// files and secrets, never a value. Private to reconcilers/.

#include <string>

#include "common/allow_list.h"
#include "common/result.h"
#include "crds/model_cache.h"
#include "reconcilers/model_cache_reconciler.h"
#include "store/aws_config.h"

namespace modelcache::reconcilers {

// The AWS configuration for the S3 store or source `uri`: options.aws_env and aws_overrides,
// overridden by the options.s3_secret entry when one is named (read with options.read_secret,
// else from <secrets_dir>/<s3_secret>/). InvalidSpec, with retry_after, when the secret or one of
// its two required keys is missing.
Result<store::AwsConfig> AwsConfigFor(const ReconcilerOptions& options, const std::string& uri);

// The Hub token for `obj`'s source: its tokenSecretRef (options.secret_lookup, else
// <secrets_dir>/<name>/<key>), trimmed; without one, options.hf_token when the source's endpoint is
// the daemon's (`own_endpoint`), else "". InvalidSpec when the secret cannot be read.
Result<std::string> HubTokenFor(const ReconcilerOptions& options, const AllowList& own_endpoint,
                                const crds::ModelCache& obj);

}  // namespace modelcache::reconcilers
