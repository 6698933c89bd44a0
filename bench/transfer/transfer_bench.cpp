// Downloads every file of one Hub repo with the TransferEngine and prints one line:
//   files=<n> bytes=<n> seconds=<s> mb_per_s=<r> peak_rss_kib=<k>
// The driver for bench/transfer/run.sh; not a test.

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "fetch/hub_client.h"
#include "fetch/transfer_engine.h"

int main(int argc, char** argv) {
  using namespace modelcache;
  CLI::App app("Download a repo with the TransferEngine and report time and peak RSS");
  std::string endpoint;
  std::string repo;
  std::string type = "model";
  std::string out;
  fetch::TransferEngineOptions options;
  uint64_t chunk_mib = 32;
  app.add_option("--endpoint", endpoint, "Hub URL")->required();
  app.add_option("--repo", repo, "org/name")->required();
  app.add_option("--type", type, "model | dataset");
  app.add_option("--out", out, "directory the blobs are written to")->required();
  app.add_option("--connections", options.max_connections, "connections in all");
  app.add_option("--per-job", options.max_connections_per_job, "connections per job");
  app.add_option("--chunk-mib", chunk_mib, "largest range per request, MiB");
  int64_t persist_ms = options.persist_interval.count();
  app.add_option("--persist-ms", persist_ms, "how often chunk maps are persisted");
  CLI11_PARSE(app, argc, argv);
  options.chunk_size = chunk_mib << 20;
  options.persist_interval = std::chrono::milliseconds(persist_ms);
  options.min_chunk_size = std::min<uint64_t>(options.min_chunk_size, options.chunk_size);

  fetch::HubOptions hub;
  hub.endpoint = endpoint;
  fetch::HubClient client(hub);
  auto commit = client.ResolveRevision(type, repo, "main");
  if (!commit) {
    std::fprintf(stderr, "%s\n", commit.error().ToString().c_str());
    return 1;
  }
  auto files = client.ListFiles(type, repo, *commit);
  if (!files) {
    std::fprintf(stderr, "%s\n", files.error().ToString().c_str());
    return 1;
  }
  std::vector<fetch::FileTask> tasks;
  for (const auto& f : *files) {
    fetch::FileTask t;
    t.path = f.path;
    t.url = client.ResolveUrl(type, repo, *commit, f.path);
    t.size = f.size;
    if (f.lfs_sha256) {
      t.expected_sha256 = *f.lfs_sha256;
    } else {
      t.expected_git_sha1 = f.blob_id;
    }
    t.incomplete_path = out + "/" + f.etag() + ".incomplete";
    t.final_path = out + "/" + f.etag();
    tasks.push_back(t);
  }
  fetch::TransferEngine engine(options);
  fetch::TransferProgress progress;
  auto start = std::chrono::steady_clock::now();
  auto results = engine.NewTransfer(hub)->Run(tasks, progress, {});
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!results) {
    std::fprintf(stderr, "%s\n", results.error().ToString().c_str());
    return 1;
  }
  uint64_t bytes = progress.bytes_total.load();
  struct rusage usage {};
  ::getrusage(RUSAGE_SELF, &usage);
  std::printf("files=%zu bytes=%llu seconds=%.3f mb_per_s=%.1f peak_rss_kib=%ld\n", tasks.size(),
              static_cast<unsigned long long>(bytes), seconds,
              seconds > 0 ? static_cast<double>(bytes) / 1e6 / seconds : 0.0, usage.ru_maxrss);
  return 0;
}
