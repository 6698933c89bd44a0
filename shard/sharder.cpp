#include "shard/sharder.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <tuple>

#include "common/guard.h"
#include "common/files.h"
#include "shard/dtype.h"
#include "shard/engine_layout.h"
#include "shard/safetensors.h"
#include "shard/shard_plan.h"

namespace modelcache::shard {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Source bytes per job. Small enough that per-thread buffers stay a few MiB, large enough that
// syscall and scheduling overhead vanish next to the copy.
constexpr uint64_t kChunkBytes = 8ULL << 20;

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    s += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return s + "]";
}

// One piece's rows inside one job, to one destination.
struct Op {
  SafetensorsWriter* out = nullptr;
  uint64_t dst_offset = 0;  // absolute offset in the destination file
  int64_t src_row = 0;
  int64_t rows = 0;
  int64_t src_col = 0;
  int64_t width = 0;  // elements per destination row
  DType dtype = DType::F32;
};

// A chunk of one source tensor with every destination that needs it (so each source byte is read
// once, however many ranks take it), or a fill of zeros / ones.
struct Job {
  const Checkpoint::Entry* src = nullptr;
  uint64_t src_begin = 0;  // data-section range read, released after the job
  uint64_t src_end = 0;
  Piece::Kind fill = Piece::Kind::Copy;
  std::vector<Op> ops;
};

uint64_t OpBytes(const Op& op) {
  return static_cast<uint64_t>(op.rows * op.width) * DTypeSize(op.dtype);
}

Error FromCopy(const std::string& path, int err) {
  return {err == ENOSPC ? Reason::InsufficientStorage : Reason::StorageError,
          "cannot write " + path + ": " + ErrnoMessage(err)};
}

// Copies `len` bytes between files inside the kernel. Returns false (nothing or part copied; the
// caller falls back for the rest) when the filesystem pair does not support it.
Result<bool> CopyRange(int in_fd, uint64_t in_off, int out_fd, uint64_t out_off, uint64_t len,
                       const std::string& out_path, uint64_t* copied) {
  *copied = 0;
  while (len > 0) {
    auto in = static_cast<loff_t>(in_off);
    auto out = static_cast<loff_t>(out_off);
    ssize_t n = ::copy_file_range(in_fd, &in, out_fd, &out, len, 0);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      if (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP ||
          errno == EBADF) {
        return false;
      }
      return FromCopy(out_path, errno);
    }
    if (n == 0) {
      return false;
    }
    in_off += static_cast<uint64_t>(n);
    out_off += static_cast<uint64_t>(n);
    len -= static_cast<uint64_t>(n);
    *copied += static_cast<uint64_t>(n);
  }
  return true;
}

class Executor {
 public:
  Executor(std::vector<Job>& jobs, ShardProgress& progress, std::stop_token stop)
      : jobs_(jobs), progress_(progress), stop_(std::move(stop)) {}

  VoidResult Run(int threads) {
    int n = std::max(1, std::min<int>(threads, static_cast<int>(jobs_.size())));
    {
      std::vector<std::jthread> workers;
      for (int i = 1; i < n; ++i) {
        workers.emplace_back([this] { Work(); });
      }
      Work();
    }
    if (error_) {
      return *error_;
    }
    return {};
  }

 private:
  void Work() {
    std::vector<unsigned char> buffer;
    for (;;) {
      if (failed_.load()) {
        return;
      }
      if (stop_.stop_requested()) {
        Fail(Error(Reason::Cancelled, "sharding cancelled"));
        return;
      }
      size_t i = next_.fetch_add(1);
      if (i >= jobs_.size()) {
        return;
      }
      // The last resort: an exception fails the sharding, not the daemon.
      auto r = ResultOrInternalError("sharding", [&] { return RunJob(jobs_[i], buffer); });
      if (!r) {
        Fail(r.error());
        return;
      }
    }
  }

  void Fail(Error e) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!error_) {
      error_ = std::move(e);
    }
    failed_.store(true);
  }

  VoidResult RunJob(const Job& job, std::vector<unsigned char>& buffer) {
    bool touched_map = false;
    for (const Op& op : job.ops) {
      uint64_t bytes = OpBytes(op);
      if (job.src == nullptr) {
        if (auto r = Fill(job.fill, op, bytes, buffer); !r) {
          return r;
        }
      } else if (auto r = Copy(job, op, bytes, buffer, &touched_map); !r) {
        return r;
      }
      progress_.bytes_done.fetch_add(bytes);
    }
    if (touched_map) {
      job.src->file->Release(job.src_begin, job.src_end);
    }
    return {};
  }

  VoidResult Fill(Piece::Kind kind, const Op& op, uint64_t bytes,
                  std::vector<unsigned char>& buffer) {
    buffer.assign(bytes, 0);
    if (kind == Piece::Kind::Ones) {
      float one = 1.0f;
      size_t es = DTypeSize(op.dtype);
      for (uint64_t at = 0; at < bytes; at += es) {
        ConvertElements(DType::F32, &one, op.dtype, buffer.data() + at, 1);
      }
    }
    return PWriteAll(op.out->fd(), buffer.data(), bytes, op.dst_offset, op.out->path());
  }

  VoidResult Copy(const Job& job, const Op& op, uint64_t bytes, std::vector<unsigned char>& buffer,
                  bool* touched_map) {
    const TensorInfo& info = *job.src->info;
    const SafetensorsFile& file = *job.src->file;
    const int64_t src_cols = info.shape.size() >= 2 ? info.shape[1] : 1;
    const size_t in_es = DTypeSize(info.dtype);
    const uint64_t row_bytes = static_cast<uint64_t>(src_cols) * in_es;
    const uint64_t start =
        static_cast<uint64_t>(op.src_row) * row_bytes + static_cast<uint64_t>(op.src_col) * in_es;
    if (op.width == src_cols && op.dtype == info.dtype) {
      // Whole rows, same dtype: one contiguous range. Let the kernel move it page cache to page
      // cache; fall back to writing from the mapping where the filesystems cannot.
      uint64_t copied = 0;
      auto done = CopyRange(file.fd(), file.data_offset() + info.begin + start, op.out->fd(),
                            op.dst_offset, bytes, op.out->path(), &copied);
      if (!done) {
        return done.error();
      }
      if (*done) {
        return {};
      }
      *touched_map = true;
      return PWriteAll(op.out->fd(), file.data(info) + start + copied, bytes - copied,
                       op.dst_offset + copied, op.out->path());
    }
    // A column slice (row-parallel) or a dtype change: gather row by row into the buffer.
    *touched_map = true;
    buffer.resize(bytes);
    const size_t out_row = static_cast<size_t>(op.width) * DTypeSize(op.dtype);
    const unsigned char* src = file.data(info) + start;
    for (int64_t r = 0; r < op.rows; ++r) {
      ConvertElements(info.dtype, src + static_cast<uint64_t>(r) * row_bytes, op.dtype,
                      buffer.data() + static_cast<size_t>(r) * out_row,
                      static_cast<size_t>(op.width));
    }
    return PWriteAll(op.out->fd(), buffer.data(), bytes, op.dst_offset, op.out->path());
  }

  std::vector<Job>& jobs_;
  ShardProgress& progress_;
  std::stop_token stop_;
  std::atomic<size_t> next_{0};
  std::atomic<bool> failed_{false};
  std::mutex mu_;
  std::optional<Error> error_;
};

// Checks every tensor the plan reads against the checkpoint, and that the checkpoint holds nothing
// the architecture has no place for (the engines' own loaders would reject that too).
VoidResult CheckSources(const ShardPlan& plan, const Checkpoint& ckpt, const std::string& dir) {
  for (const auto& [name, shape] : plan.sources) {
    const auto* e = ckpt.Find(name);
    if (e == nullptr) {
      return Error(Reason::ShardConfigInvalid, "checkpoint " + dir + " has no tensor '" +
                                                   name + "', which " + plan.model.architecture +
                                                   " needs");
    }
    if (e->info->shape != shape) {
      return Error(Reason::ShardConfigInvalid, "tensor '" + name + "' in " + e->file->path() +
                                                   " has shape " + ShapeString(e->info->shape) +
                                                   " but config.json implies " +
                                                   ShapeString(shape));
    }
    if (!IsConvertibleFloat(e->info->dtype)) {
      return Error(Reason::ShardConfigInvalid, "tensor '" + name + "' in " + e->file->path() +
                                                   " is " + std::string(DTypeName(e->info->dtype)) +
                                                   "; only F32, F16 and BF16 checkpoints shard");
    }
  }
  for (const auto& name : ckpt.names()) {
    if (plan.sources.count(name) == 0 && !plan.Ignorable(name)) {
      return Error(Reason::ShardConfigInvalid,
                   "tensor '" + name + "' in " + ckpt.Find(name)->file->path() +
                       " has no place in " + plan.model.architecture +
                       " (config.json and the weights disagree)");
    }
  }
  return {};
}

DType ResolveDType(const RankTensor& t, std::optional<DType> target, const Checkpoint& ckpt) {
  if (t.dtype) {
    return *t.dtype;
  }
  if (target) {
    return *target;
  }
  for (const auto& p : t.pieces) {
    if (p.kind == Piece::Kind::Copy) {
      return ckpt.Find(p.source)->info->dtype;
    }
  }
  return DType::F32;
}

uint64_t SpecBytes(const TensorSpec& s) {
  uint64_t n = 1;
  for (int64_t d : s.shape) {
    n *= static_cast<uint64_t>(d);
  }
  return n * DTypeSize(s.dtype);
}

// Writes a whole small file (a copied config or tokenizer). The caller publishes the directory
// atomically, so there is no temporary-and-rename here; fsync only when asked.
VoidResult WriteWholeFile(const std::string& path, std::string_view content, bool sync) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return FromCopy(path, errno);
  }
  auto written = PWriteAll(fd, content.data(), content.size(), 0, path);
  if (written && sync && ::fsync(fd) != 0) {
    written = FromCopy(path, errno);
  }
  if (::close(fd) != 0 && written) {
    written = FromCopy(path, errno);
  }
  return written;
}

// Removes rank files a previous run left, so that a loader's glob sees only this run's parts.
VoidResult RemoveStaleRankFiles(const std::string& dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string name = e.path().filename().string();
    if (name.rfind("model-rank-", 0) == 0 && e.path().extension() == ".safetensors") {
      fs::remove(e.path(), ec);
      if (ec) {
        return Error(Reason::StorageError,
                     "cannot remove " + e.path().string() + ": " + ec.message());
      }
    }
  }
  if (ec) {
    return Error(Reason::StorageError, "cannot list " + dir + ": " + ec.message());
  }
  return {};
}

}  // namespace

bool IsNonWeightFile(std::string_view name) {
  if (name.empty() || name.front() == '.' || name == "modelcache.json") {
    return false;
  }
  auto ends_with = [&](std::string_view s) {
    return name.size() >= s.size() && name.substr(name.size() - s.size()) == s;
  };
  for (std::string_view weight : {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack",
                                  ".gguf", ".onnx", ".npz", ".ot", ".index.json"}) {
    if (ends_with(weight)) {
      return false;
    }
  }
  if (name.rfind("tokenizer", 0) == 0 || name.rfind("vocab", 0) == 0 ||
      name.rfind("merges", 0) == 0) {
    return true;
  }
  for (std::string_view keep : {".json", ".txt", ".model", ".tiktoken", ".jinja"}) {
    if (ends_with(keep)) {
      return true;
    }
  }
  return false;
}

// The stop_token is taken by value, as std::jthread passes it; copying one is a refcount bump.
Result<ShardResult> ShardCheckpoint(
    const ShardOptions& options, ShardProgress& progress,
    std::stop_token stop) {  // NOLINT(performance-unnecessary-value-param)
  if (options.tensor_parallel_size < 1) {
    return Error(Reason::InvalidSpec, "tensorParallelSize must be at least 1, not " +
                                          std::to_string(options.tensor_parallel_size));
  }
  if (options.max_file_size == 0) {
    return Error(Reason::InvalidSpec, "maxFileSize must be positive");
  }
  if (options.threads < 1) {
    return Error(Reason::InvalidSpec, "threads must be at least 1");
  }
  {
    std::error_code ec;
    if (fs::exists(options.out_dir, ec) && fs::equivalent(options.src_dir, options.out_dir, ec)) {
      return Error(Reason::InvalidSpec, "output directory " + options.out_dir +
                                            " is the checkpoint directory; shard into another one");
    }
  }
  auto target = ParseTargetDType(options.dtype);
  if (!target) {
    return target.error();
  }
  auto layout = ResolveEngineLayout(options.engine, options.engine_release);
  if (!layout) {
    return layout.error();
  }
  const std::string config_path = options.src_dir + "/config.json";
  auto config_text = ReadFile(config_path);
  if (!config_text) {
    return config_text.error();
  }
  json config = json::parse(*config_text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) {
    return Error(Reason::ShardConfigInvalid, config_path + " is not valid JSON");
  }
  auto plan = PlanFromConfig(config, layout->engine, layout->release, options.tensor_parallel_size);
  if (!plan) {
    // PlanFromConfig knows the file only as "config.json"; the user needs to know which one.
    return Error(plan.error().reason, config_path + ": " + plan.error().message);
  }
  auto ckpt_or = Checkpoint::Open(options.src_dir);
  if (!ckpt_or) {
    return ckpt_or.error();
  }
  const Checkpoint& ckpt = **ckpt_or;
  if (auto r = CheckSources(*plan, ckpt, options.src_dir); !r) {
    return r.error();
  }
  if (auto r = MakeDirs(options.out_dir); !r) {
    return r.error();
  }
  if (auto r = RemoveStaleRankFiles(options.out_dir); !r) {
    return r.error();
  }

  // Cut each rank into parts the way save_model does: walk the state dict in order and start a
  // new part when the next tensor would take this one past max_file_size.
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  std::vector<std::unique_ptr<SafetensorsWriter>> writers;
  std::vector<std::string> files;
  std::vector<int64_t> parts_per_rank;
  std::map<std::tuple<size_t, uint64_t, uint64_t>, Job> source_jobs;
  std::vector<Job> fill_jobs;
  uint64_t total_bytes = 0;
  for (int64_t rank = 0; rank < plan->tensor_parallel_size; ++rank) {
    const auto& tensors = plan->ranks[static_cast<size_t>(rank)];
    std::vector<std::vector<size_t>> parts;  // indices into tensors
    uint64_t part_bytes = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      TensorSpec spec{tensors[i].name, ResolveDType(tensors[i], *target, ckpt), tensors[i].shape};
      uint64_t bytes = SpecBytes(spec);
      if (parts.empty() || (part_bytes + bytes > options.max_file_size && !parts.back().empty())) {
        parts.emplace_back();
        part_bytes = 0;
      }
      parts.back().push_back(i);
      part_bytes += bytes;
    }
    parts_per_rank.push_back(static_cast<int64_t>(parts.size()));
    for (size_t part = 0; part < parts.size(); ++part) {
      std::vector<TensorSpec> specs;
      for (size_t i : parts[part]) {
        specs.push_back(
            {tensors[i].name, ResolveDType(tensors[i], *target, ckpt), tensors[i].shape});
      }
      auto file_layout = SafetensorsLayout::Make(std::move(specs), metadata);
      if (!file_layout) {
        return file_layout.error();
      }
      std::string name = RankFileName(*layout, rank, static_cast<int64_t>(part));
      auto writer =
          SafetensorsWriter::Create(options.out_dir + "/" + name, std::move(*file_layout));
      if (!writer) {
        return writer.error();
      }
      files.push_back(name);
      SafetensorsWriter* out = writer->get();
      writers.push_back(std::move(*writer));
      for (size_t i : parts[part]) {
        const RankTensor& t = tensors[i];
        const TensorInfo* info = out->layout().Find(t.name);
        const DType dtype = info->dtype;
        const uint64_t out_row = static_cast<uint64_t>(t.row_width()) * DTypeSize(dtype);
        const uint64_t base = out->layout().data_offset() + info->begin;
        total_bytes += info->size();
        int64_t dst_row = 0;
        for (const Piece& p : t.pieces) {
          if (p.kind != Piece::Kind::Copy) {
            // Fills are tiny (vocab padding rows, scalar buffers); split only to bound buffers.
            int64_t rows_per_job =
                std::max<int64_t>(1, static_cast<int64_t>(kChunkBytes / out_row));
            for (int64_t row = 0; row < p.rows; row += rows_per_job) {
              Job job;
              job.fill = p.kind;
              Op op{out,  base + static_cast<uint64_t>(dst_row + row) * out_row,
                    0,    std::min(rows_per_job, p.rows - row),
                    0,    t.row_width(),
                    dtype};
              job.ops.push_back(op);
              fill_jobs.push_back(std::move(job));
            }
            dst_row += p.rows;
            continue;
          }
          const Checkpoint::Entry* e = ckpt.Find(p.source);
          const int64_t src_rows = e->info->shape.empty() ? 1 : e->info->shape[0];
          const int64_t src_cols = e->info->shape.size() >= 2 ? e->info->shape[1] : 1;
          if (p.src_row < 0 || p.rows < 0 || p.src_row + p.rows > src_rows ||
              p.src_col + t.row_width() > src_cols) {
            return Error(Reason::Internal, "plan reads outside '" + p.source + "' for " + t.name);
          }
          const uint64_t row_bytes = static_cast<uint64_t>(src_cols) * DTypeSize(e->info->dtype);
          const int64_t rows_per_chunk =
              std::max<int64_t>(1, static_cast<int64_t>(kChunkBytes / row_bytes));
          for (int64_t row = p.src_row; row < p.src_row + p.rows;) {
            const int64_t chunk = row / rows_per_chunk;
            const int64_t end = std::min(p.src_row + p.rows, (chunk + 1) * rows_per_chunk);
            Job& job = source_jobs[{e->file_index, e->info->begin, static_cast<uint64_t>(chunk)}];
            job.src = e;
            job.src_begin =
                e->info->begin + static_cast<uint64_t>(chunk * rows_per_chunk) * row_bytes;
            job.src_end = std::min(
                e->info->end, job.src_begin + static_cast<uint64_t>(rows_per_chunk) * row_bytes);
            Op op{out,       base + static_cast<uint64_t>(dst_row + (row - p.src_row)) * out_row,
                  row,       end - row,
                  p.src_col, t.row_width(),
                  dtype};
            job.ops.push_back(op);
            row = end;
          }
          dst_row += p.rows;
        }
        if (dst_row != t.rows()) {
          return Error(Reason::Internal, "plan for " + t.name + " fills " +
                                             std::to_string(dst_row) + " of " +
                                             std::to_string(t.rows()) + " rows");
        }
      }
    }
  }

  // Non-weight files to carry over, counted in the progress total up front.
  std::vector<std::string> extra;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(options.src_dir, ec)) {
    std::string name = e.path().filename().string();
    if (e.is_regular_file() && IsNonWeightFile(name)) {
      extra.push_back(name);
      total_bytes += e.file_size();
    }
  }
  if (ec) {
    return Error(Reason::StorageError, "cannot list " + options.src_dir + ": " + ec.message());
  }
  std::sort(extra.begin(), extra.end());
  progress.bytes_total.store(total_bytes);
  progress.bytes_done.store(0);

  // Source jobs in file order so reads sweep each file once, front to back.
  std::vector<Job> jobs;
  jobs.reserve(source_jobs.size() + fill_jobs.size());
  for (auto& [key, job] : source_jobs) {
    jobs.push_back(std::move(job));
  }
  for (auto& job : fill_jobs) {
    jobs.push_back(std::move(job));
  }
  Executor executor(jobs, progress, stop);
  if (auto r = executor.Run(options.threads); !r) {
    return r.error();
  }
  for (auto& w : writers) {
    if (auto r = w->Finish(options.fsync); !r) {
      return r.error();
    }
  }

  for (const auto& name : extra) {
    if (stop.stop_requested()) {
      return Error(Reason::Cancelled, "sharding cancelled");
    }
    auto content = ReadFile(options.src_dir + "/" + name);
    if (!content) {
      return content.error();
    }
    uint64_t size = content->size();
    if (name == "config.json" && *target) {
      // The weights are now in the target dtype; say so, or `--dtype auto` would build the model
      // in the old dtype and round every weight a second time while loading.
      json out = config;
      std::string dtype_name(TargetDTypeName(**target));
      out["torch_dtype"] = dtype_name;
      if (out.contains("dtype")) {
        out["dtype"] = dtype_name;
      }
      *content = out.dump(2) + "\n";
    }
    if (auto r = WriteWholeFile(options.out_dir + "/" + name, *content, options.fsync); !r) {
      return r.error();
    }
    progress.bytes_done.fetch_add(size);
    files.push_back(name);
  }
  if (options.fsync) {
    if (auto r = SyncDir(options.out_dir); !r) {
      return r.error();
    }
  }
  std::sort(files.begin(), files.end());

  ShardResult result;
  result.files = std::move(files);
  json& s = result.settings;
  s["engine"] = layout->engine;
  s["engineRelease"] = layout->release;
  s["engineReleases"] = layout->engine == "vllm" && plan->model.table->moe ? layout->moe_compatible
                                                                           : layout->compatible;
  s["loadFormat"] = "sharded_state";
  s["filePattern"] = layout->file_pattern;
  s["tensorParallelSize"] = plan->tensor_parallel_size;
  s["dtype"] = *target ? std::string(TargetDTypeName(**target)) : std::string("auto");
  s["maxFileSize"] = options.max_file_size;
  s["architecture"] = plan->model.architecture;
  s["modelType"] = plan->model.model_type;
  s["vocabSize"] = plan->model.vocab_size;
  s["paddedVocabSize"] = plan->padded_vocab;
  s["attentionScaleBuffers"] = layout->attention_scale_buffers;
  s["partsPerRank"] = parts_per_rank;
  s["sharder"] = "modelcache-shard/1";
  return result;
}

}  // namespace modelcache::shard
