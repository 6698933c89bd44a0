#pragma once

// Tensor-parallel sharding on the CPU: turns a HuggingFace safetensors checkpoint into the
// per-rank `model-rank-{rank}-part-{part}.safetensors` files that
// `vllm serve DIR --load-format sharded_state --tensor-parallel-size N` (and SGLang's
// `--load-format sharded_state --tp N`) load directly, plus the checkpoint's non-weight files.
//
// Streaming and bounded: sources are mmap'd and released chunk by chunk, destination bytes go out
// with copy_file_range or pwrite, and no buffer is larger than a few MiB per thread, so a model
// larger than RAM shards with a small resident set. Deterministic: the same inputs and options
// give byte-identical files, whatever the thread count.

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"

namespace modelcache::shard {

struct ShardOptions {
  // A HF checkpoint directory: config.json + *.safetensors (+ model.safetensors.index.json) +
  // tokenizer files.
  std::string src_dir;
  // Created if missing; stale model-rank-* files in it are removed first. The caller publishes it
  // atomically.
  std::string out_dir;
  int64_t tensor_parallel_size = 1;
  std::string engine = "vllm";  // vllm | sglang
  // The engine release to produce the layout for; "" = the pinned default
  // (engine_layout.h: kDefaultVllmRelease, kDefaultSglangRelease).
  std::string engine_release;
  // auto (keep each tensor's dtype) | float16 | bfloat16 | float32. When set, config.json's
  // torch_dtype in out_dir is rewritten to match, so `--dtype auto` loads without a second
  // rounding.
  std::string dtype = "auto";
  // Parts of a rank are cut so that their tensor bytes stay within this, exactly as the engines'
  // save_model does (a single tensor larger than this gets a part of its own).
  uint64_t max_file_size = 5ULL << 30;
  // Worker threads copying tensor bytes (jobs are handed out in source order).
  int threads = 2;
  // fsync every written file before returning.
  bool fsync = true;
};

struct ShardProgress {
  std::atomic<uint64_t> bytes_total{0};
  std::atomic<uint64_t> bytes_done{0};
};

// Names the sharder's output format in modelcache.json ("shard.sharder"): bumped whenever the same
// checkpoint and settings would give other rank file bytes (2: tensors in the order their source
// bytes arrive, not by name).
inline constexpr std::string_view kSharderVersion = "modelcache-shard/2";

struct ShardResult {  // NOLINT(bugprone-exception-escape): json's defaulted members
  // Relative paths written into out_dir (rank files and copied non-weight files), sorted.
  std::vector<std::string> files;
  // The sha256 of rank files, by path, when the sharder knows them without reading the files
  // again (StreamSharder hashes them while they fill); empty from ShardCheckpoint.
  std::map<std::string, std::string> sha256;
  // For modelcache.json "shard": engine, engineRelease, engineReleases, loadFormat, filePattern,
  // tensorParallelSize, dtype, maxFileSize, architecture, modelType, vocabSize, paddedVocabSize,
  // attentionScaleBuffers, partsPerRank, sharder.
  nlohmann::json settings;
};

// Shards options.src_dir into options.out_dir. Errors:
//   UnsupportedArchitecture naming the architecture (or saying the checkpoint is quantized);
//   ShardConfigInvalid saying why: tp does not divide the heads / KV heads / intermediate size /
//     padded vocab, a malformed safetensors file (naming file and tensor), a tensor missing,
//     unexpected or of the wrong shape for the architecture, a malformed config.json;
//   InvalidSpec for an unknown engine or dtype or a non-positive tp, max_file_size or threads;
//   StorageError / InsufficientStorage for I/O;
//   Cancelled when `stop` is requested (partial outputs may remain in out_dir; discard it).
// progress.bytes_total is set once the plan is known; bytes_done grows to it. Thread-safe: any
// number of calls may run at once on different directories.
Result<ShardResult> ShardCheckpoint(const ShardOptions& options, ShardProgress& progress,
                                    std::stop_token stop = {});

class Checkpoint;

// Sharding while the checkpoint downloads (docs/sharding.md, "Sharding while downloading"). The
// layout of every rank file depends only on config.json and the weight files' headers, so Create
// writes every rank file's header, size and fills (vocab padding, scale buffers) before any
// weight byte is there; Feed then writes each tensor slice to its planned offset as the source
// bytes that complete it arrive (in order per file, as the downloader hashes them); Finish reads
// from disk only the files that were not fed completely, and copies the non-weight files. The
// rank files are byte-identical to ShardCheckpoint's on the same checkpoint. Each rank file is
// hashed (sha256) while it fills, on a thread of its own, over the prefix of it that is completely
// written; a write below what is hashed (a file fed again) starts that file's hash over; Finish
// hashes the rest and returns the digests in ShardResult::sha256. Memory: one gather buffer about
// the size of the largest Feed, and the hasher's 8 MiB.
class StreamSharder {
 public:
  // `options` as for ShardCheckpoint (threads unused); options.src_dir is where Finish finds the
  // checkpoint, which need not exist yet. `config_text` is config.json; `headers` the checkpoint
  // known from its headers (Checkpoint::FromHeaders with options.src_dir). Errors as
  // ShardCheckpoint's before it copies anything.
  static Result<std::unique_ptr<StreamSharder>> Create(const ShardOptions& options,
                                                       std::string_view config_text,
                                                       std::unique_ptr<Checkpoint> headers,
                                                       ShardProgress& progress);
  ~StreamSharder();
  StreamSharder(const StreamSharder&) = delete;
  StreamSharder& operator=(const StreamSharder&) = delete;

  // True if `file` (a path relative to the checkpoint directory) is one of the weight files.
  bool Wants(std::string_view file) const;
  // Bytes [offset, offset + bytes.size()) of weight file `file`. A file's bytes must come in order
  // from offset 0 on; offset 0 again starts the file over (a file fetched again after a failed
  // verification rewrites all its slices). Bytes after a gap are ignored and Finish reads that file
  // from disk. Writes every slice the bytes complete (a dtype conversion keeps the few bytes of an
  // element cut by the end of `bytes`). StorageError / InsufficientStorage from the rank files.
  // Not thread-safe: one caller at a time.
  VoidResult Feed(std::string_view file, uint64_t offset, std::string_view bytes);
  // Reads from options.src_dir every weight file not fed to its end (already in the store before
  // the download, or fed with a gap), then closes the rank files, copies the non-weight files and
  // returns as ShardCheckpoint. The caller publishes only after every source file verified.
  Result<ShardResult> Finish(std::stop_token stop = {});
  // Weight bytes Finish read from disk because they were not fed.
  uint64_t bytes_read_back() const;
  // Rank file bytes hashed while the files filled, before Finish (valid after Finish).
  uint64_t bytes_hashed_early() const;

  // The rank files as Create laid them out, for a caller that ships them while they fill (the
  // S3 upload of docs/sharding.md): path relative to options.out_dir, size, and the byte ranges
  // [first, second) that Feed (or Finish) will write, sorted and merged. Every other byte (the
  // header, the fills) is on disk already.
  struct RankFileLayout {
    std::string path;
    uint64_t size = 0;
    std::vector<std::pair<uint64_t, uint64_t>> pending;
  };
  std::vector<RankFileLayout> RankFileLayouts() const;
  // Called after every write Feed (or Finish) makes to a rank file, once the bytes are in the
  // file: the file's index in RankFileLayouts(), the offset and the length. Runs on the feeding
  // thread, so it must be quick. A range may be written again (a file fed again from offset 0).
  using WriteObserver = std::function<void(size_t file, uint64_t offset, uint64_t length)>;
  void SetWriteObserver(WriteObserver observer);

  struct State;

 private:
  explicit StreamSharder(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// True for the top-level checkpoint files a sharded artifact carries besides the weights:
// config.json, generation_config.json, tokenizer*, special_tokens_map.json, vocab*/merges* files,
// *.txt, *.model, *.tiktoken, *.jinja and other *.json (chat templates, preprocessor configs).
// False for weights (*.safetensors, *.bin, *.pt, *.pth, *.gguf, …), index files, hidden files and
// modelcache.json.
bool IsNonWeightFile(std::string_view name);

}  // namespace modelcache::shard
