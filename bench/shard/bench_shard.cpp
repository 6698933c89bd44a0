// bench_shard: shards a synthetic 7B-shaped checkpoint to several tensor-parallel sizes and copies
// the same bytes with cp in the same run, then prints time, throughput, ratio to cp and peak RSS.
//
//   bench_shard --dir /path/with/space [--arch llama] [--size 7b] [--layers N] [--tp 2,4,8]
//               [--keep]
//
// The MoE shape: --arch qwen3-moe --size full --layers 1 is one Qwen3-235B-A22B layer (128 experts
// of 1536, hidden 4096) with its embedding and lm_head, sharded expert by expert.
//
// The checkpoint is generated once into DIR/src (reused if DIR/src/config.json exists). Every
// measured run is a child process (so its peak RSS is its own, from wait4), starts after a
// sync(), and includes a final sync() so that cp and the sharder both pay for getting their bytes
// to disk (the parent syncs after the child exits). Outputs are deleted after each run.

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "shard/sharder.h"
#include "tests/fixtures/checkpoint/checkpoint_gen.h"

namespace {

namespace fs = std::filesystem;

struct Run {
  std::string name;
  uint64_t bytes = 0;
  double seconds = 0;
  long peak_rss_kib = 0;
  bool ok = false;
};

// Runs `body` in a child process, timing it (plus a sync) and reading the child's peak RSS.
template <typename F>
Run Measure(const std::string& name, F body) {
  Run run;
  run.name = name;
  ::sync();
  auto start = std::chrono::steady_clock::now();
  pid_t pid = ::fork();
  if (pid == 0) {
    std::_Exit(body());
  }
  int status = 0;
  struct rusage usage {};
  ::wait4(pid, &status, 0, &usage);
  ::sync();  // the run is done when its bytes are on disk, for cp and the sharder alike
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  run.peak_rss_kib = usage.ru_maxrss;
  run.ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  return run;
}

uint64_t DirBytes(const std::string& dir, const std::string& suffix) {
  uint64_t total = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string n = e.path().filename().string();
    if (n.size() >= suffix.size() &&
        n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0) {
      total += e.file_size();
    }
  }
  return total;
}

int BenchMain(int argc, char** argv) {
  CLI::App app{"Shard a synthetic checkpoint to tp 2/4/8 and compare with cp"};
  std::string dir;
  std::string arch = "llama";
  std::string size = "7b";
  std::string tps = "2,4,8";
  int threads = 2;
  int64_t layers = 0;
  bool keep = false;
  app.add_option("--dir", dir, "scratch directory (needs ~3x the checkpoint size free)")
      ->required();
  app.add_option("--arch", arch, "checkpoint architecture (mc-make-checkpoint --arch)");
  app.add_option("--size", size, "tiny | 7b | full");
  app.add_option("--layers", layers, "layers (default: the size's)");
  app.add_option("--tp", tps, "comma-separated tensor-parallel sizes");
  app.add_option("--threads", threads, "sharder threads");
  app.add_flag("--keep", keep, "keep the generated checkpoint");
  CLI11_PARSE(app, argc, argv);

  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress lines show up as they happen
  const std::string src = dir + "/src";
  fs::create_directories(dir);
  if (!fs::exists(src + "/config.json")) {
    std::printf("generating %s %s checkpoint into %s ...\n", arch.c_str(), size.c_str(),
                src.c_str());
    std::fflush(stdout);
    auto t0 = std::chrono::steady_clock::now();
    modelcache::fixtures::CheckpointSpec spec;
    spec.arch = arch;
    spec.size = size;
    spec.files = size == "tiny" ? 1 : 3;
    if (layers > 0) {
      spec.layers = layers;
    }
    auto made = modelcache::fixtures::MakeCheckpoint(src, spec);
    if (!made) {
      std::fprintf(stderr, "bench_shard: %s\n", made.error().ToString().c_str());
      return 1;
    }
    ::sync();
    std::printf("generated in %.1f s\n",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const uint64_t src_bytes = DirBytes(src, ".safetensors");

  // cp runs first and again last, so that neither side benefits from running on a warmer or
  // cooler page cache; ratios are against the faster cp.
  auto run_cp = [&](const std::string& name) {
    const std::string out = dir + "/cp";
    fs::remove_all(out);
    fs::create_directories(out);
    Run run = Measure(name, [&] {
      std::vector<std::string> args = {"cp"};
      for (const auto& e : fs::directory_iterator(src)) {
        if (e.path().extension() == ".safetensors") {
          args.push_back(e.path().string());
        }
      }
      args.push_back(out + "/");
      std::vector<char*> argv_c;
      argv_c.reserve(args.size() + 1);
      for (auto& a : args) {
        argv_c.push_back(a.data());
      }
      argv_c.push_back(nullptr);
      ::execvp("cp", argv_c.data());
      return 127;
    });
    run.bytes = DirBytes(out, ".safetensors");
    fs::remove_all(out);
    return run;
  };
  std::vector<Run> runs;
  runs.push_back(run_cp("cp"));
  std::stringstream ss(tps);
  for (std::string item; std::getline(ss, item, ',');) {
    int64_t tp = std::stoll(item);
    std::string out = dir;
    out.append("/tp").append(item);
    fs::remove_all(out);
    Run run = Measure("shard tp=" + item, [&] {
      modelcache::shard::ShardOptions o;
      o.src_dir = src;
      o.out_dir = out;
      o.tensor_parallel_size = tp;
      o.threads = threads;
      o.fsync = false;  // Measure() syncs after the child exits, as for cp
      modelcache::shard::ShardProgress progress;
      auto r = modelcache::shard::ShardCheckpoint(o, progress);
      if (!r) {
        std::fprintf(stderr, "bench_shard: %s\n", r.error().ToString().c_str());
        return 1;
      }
      return 0;
    });
    run.bytes = run.ok ? DirBytes(out, ".safetensors") : 0;
    runs.push_back(run);
    fs::remove_all(out);
  }

  runs.push_back(run_cp("cp (again)"));
  const double cp_seconds = std::min(runs.front().seconds, runs.back().seconds);
  std::printf("\ncheckpoint: %s %s, %.2f GB of safetensors, %d sharder threads, %ld cores\n",
              arch.c_str(), size.c_str(), static_cast<double>(src_bytes) / 1e9, threads,
              ::sysconf(_SC_NPROCESSORS_ONLN));
  std::printf("| run | bytes written | time (s) | MB/s | ratio to cp | peak RSS (MiB) |\n");
  std::printf("| --- | ---: | ---: | ---: | ---: | ---: |\n");
  int rc = 0;
  for (const auto& r : runs) {
    if (!r.ok) {
      std::printf("| %s | failed | | | | |\n", r.name.c_str());
      rc = 1;
      continue;
    }
    std::printf("| %s | %.2f GB | %.1f | %.0f | %.2f | %.0f |\n", r.name.c_str(),
                static_cast<double>(r.bytes) / 1e9, r.seconds,
                static_cast<double>(r.bytes) / 1e6 / r.seconds, r.seconds / cp_seconds,
                static_cast<double>(r.peak_rss_kib) / 1024.0);
  }
  if (!keep) {
    fs::remove_all(src);
  }
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return BenchMain(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_shard: %s\n", e.what());
    return 1;
  }
}
