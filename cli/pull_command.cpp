// `modelcache pull`: materialise an artifact version of an S3 store as a local directory, so that
// a cluster downloads from the Hub once and nodes fill from the object store.

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <iostream>
#include <memory>
#include <thread>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "cli/flag_types.h"
#include "cli/progress_bar.h"
#include "cli/run_config.h"
#include "common/log.h"
#include "common/units.h"
#include "fetch/s3_pull.h"
#include "fetch/transfer_engine.h"
#include "store/aws_config.h"
#include "store/s3_store.h"

namespace modelcache::controller {

int Pull(const PullOptions& options, const Environment& env) {
  if (auto r = SetupLogging(LogFormat::Text, "warn"); !r) {
    std::cerr << "modelcache pull: " << r.error().message << "\n";
    return 2;
  }
  auto ref = store::ParseS3ArtifactUri(options.uri);
  if (!ref) {
    std::cerr << "modelcache pull: " << ref.error().message << "\n";
    return 2;
  }
  store::AwsOverrides overrides;
  overrides.endpoint_url = options.s3_endpoint;
  auto config = store::LoadAwsConfig(env.aws, overrides);
  if (!config) {
    std::cerr << "modelcache pull: " << config.error().ToString() << "\n";
    return 2;
  }
  store::S3ArtifactStore s3(ref->store, std::make_shared<store::S3Client>(std::move(*config)));

  // The files come through the transfer engine (presigned URLs, parallel ranges, verified).
  fetch::TransferEngine engine(TransferEngineOptionsFrom(options.transfer));
  auto transfer = engine.NewTransfer(fetch::S3PullOptions{});
  fetch::TransferProgress downloaded;

  store::S3TransferProgress progress;
  Result<store::PulledArtifact> result = Error(Reason::Internal, "not run");
  std::atomic<bool> done{false};
  std::jthread worker([&] {
    result = s3.Pull(ref->name, ref->version, options.dir, progress, {},
                     fetch::TransferPullDownload(*transfer, downloaded));
    done = true;
  });
  ProgressBar bar(::isatty(STDERR_FILENO) != 0);
  while (!done) {
    bar.Update("Pulling", std::max(progress.bytes_done.load(), downloaded.bytes_done.load()),
               progress.bytes_total, downloaded.bytes_per_second);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  worker.join();
  bar.Clear();
  if (!result) {
    std::cerr << "modelcache pull: " << result.error().ToString() << "\n";
    return 1;
  }
  std::cerr << (result->already_present ? "up to date: " : "pulled ") << result->name << " "
            << result->version << " into " << result->dir << " (" << result->files << " files, "
            << FormatBytes(result->size_bytes) << ", verified)\n";
  std::cout << result->id << "\n";
  return 0;
}

Command AddPullCommand(CLI::App& app, const Environment& env) {
  auto pull = std::make_shared<PullOptions>();
  CLI::App* cmd = app.add_subcommand(
      "pull", "Download a published artifact version from S3 into DIR, verified, atomically");
  cmd->add_option("uri", pull->uri,
                  "s3://BUCKET[/PREFIX]/artifacts/NAME[/VERSION] (no VERSION: the current one)")
      ->required();
  cmd->add_option("dir", pull->dir, "Target directory (replaced atomically by the new version)")
      ->required();
  cmd->add_option("--s3-endpoint", pull->s3_endpoint,
                  "S3 endpoint URL (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the "
                  "profile's, else AWS)");
  AddTransferFlags(cmd, pull->transfer);
  return {cmd, [pull, &env] { return Pull(*pull, env); }};
}

}  // namespace modelcache::controller
