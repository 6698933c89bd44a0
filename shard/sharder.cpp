#include "shard/sharder.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <tuple>

#include "common/files.h"
#include "common/guard.h"
#include "common/sha256.h"
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
      return IoError("cannot write", out_path, errno);
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
      std::string message = "checkpoint " + dir;
      message.append(" has no tensor '").append(name).append("', which ");
      message.append(plan.model.architecture).append(" needs");
      return Error(Reason::ShardConfigInvalid, message);
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
    return IoError("cannot write", path, errno);
  }
  auto written = PWriteAll(fd, content.data(), content.size(), 0, path);
  if (written && sync && ::fsync(fd) != 0) {
    written = IoError("cannot write", path, errno);
  }
  if (::close(fd) != 0 && written) {
    written = IoError("cannot write", path, errno);
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

// What both ways of sharding decide before any tensor byte moves: the options checked, the
// engine layout, config.json and the plan.
struct Prepared {
  std::optional<DType> target;
  EngineLayout layout;
  json config;
  ShardPlan plan;
};

Result<Prepared> Prepare(const ShardOptions& options, std::string_view config_text,
                         const std::string& config_path) {
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
  json config = json::parse(config_text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) {
    return Error(Reason::ShardConfigInvalid, config_path + " is not valid JSON");
  }
  auto plan = PlanFromConfig(config, layout->engine, layout->release, options.tensor_parallel_size);
  if (!plan) {
    // PlanFromConfig knows the file only as "config.json"; the user needs to know which one.
    return Error(plan.error().reason, config_path + ": " + plan.error().message);
  }
  return Prepared{*target, std::move(*layout), std::move(config), std::move(*plan)};
}

// One piece of a rank tensor read from the checkpoint: `op.rows` source rows from `op.src_row`,
// columns [op.src_col, op.src_col + op.width).
struct SourceOp {
  const Checkpoint::Entry* src = nullptr;
  Op op;
};

// Where the last checkpoint byte a rank tensor is made of lies: (file index, end offset in that
// file's data section); {0, 0} for a tensor of fills only. The checkpoint's files download in
// file order, each front to back, so this is when the tensor can be complete.
std::pair<size_t, uint64_t> LastSourceByte(const RankTensor& t, const Checkpoint& ckpt) {
  std::pair<size_t, uint64_t> last{0, 0};
  for (const Piece& p : t.pieces) {
    const Checkpoint::Entry* e = p.kind == Piece::Kind::Copy ? ckpt.Find(p.source) : nullptr;
    if (e == nullptr) {
      continue;
    }
    const uint64_t rows = e->info->shape.empty() ? 1 : static_cast<uint64_t>(e->info->shape[0]);
    const uint64_t row_bytes = rows == 0 ? 0 : e->info->size() / rows;
    const auto end_row = static_cast<uint64_t>(std::max<int64_t>(0, p.src_row + p.rows));
    const uint64_t end = e->info->begin + std::min(e->info->size(), end_row * row_bytes);
    last = std::max(last, std::pair<size_t, uint64_t>{e->file_index, end});
  }
  return last;
}

// The rank files, created with their headers and sizes, and every copy and fill that fills them.
struct RankFiles {
  std::vector<std::unique_ptr<SafetensorsWriter>> writers;
  std::vector<std::string> files;
  std::vector<int64_t> parts_per_rank;
  std::vector<SourceOp> copies;  // in plan order
  std::vector<Job> fills;
  uint64_t total_bytes = 0;
};

Result<RankFiles> CreateRankFiles(const ShardOptions& options, const Prepared& prep,
                                  const Checkpoint& ckpt) {
  const ShardPlan& plan = prep.plan;
  if (auto r = CheckSources(plan, ckpt, options.src_dir); !r) {
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
  RankFiles out;
  for (int64_t rank = 0; rank < plan.tensor_parallel_size; ++rank) {
    const auto& tensors = plan.ranks[static_cast<size_t>(rank)];
    std::vector<std::vector<size_t>> parts;  // indices into tensors
    uint64_t part_bytes = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      TensorSpec spec{tensors[i].name, ResolveDType(tensors[i], prep.target, ckpt),
                      tensors[i].shape};
      uint64_t bytes = SpecBytes(spec);
      if (parts.empty() || (part_bytes + bytes > options.max_file_size && !parts.back().empty())) {
        parts.emplace_back();
        part_bytes = 0;
      }
      parts.back().push_back(i);
      part_bytes += bytes;
    }
    out.parts_per_rank.push_back(static_cast<int64_t>(parts.size()));
    for (size_t part = 0; part < parts.size(); ++part) {
      // Within a part, the tensors lie in the order their last source byte arrives, not by name
      // (the order does not matter to a loader): a rank file then fills front to back while the
      // checkpoint downloads, so StreamSharder hashes it from the page cache as it grows instead
      // of reading back pages written long before their prefix was complete.
      std::vector<size_t> order = parts[part];
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
        return LastSourceByte(tensors[a], ckpt) < LastSourceByte(tensors[b], ckpt);
      });
      std::vector<TensorSpec> specs;
      specs.reserve(order.size());
      for (size_t i : order) {
        specs.push_back(
            {tensors[i].name, ResolveDType(tensors[i], prep.target, ckpt), tensors[i].shape});
      }
      auto file_layout =
          SafetensorsLayout::Make(std::move(specs), metadata, SafetensorsLayout::Order::AsGiven);
      if (!file_layout) {
        return file_layout.error();
      }
      std::string name = RankFileName(prep.layout, rank, static_cast<int64_t>(part));
      auto writer =
          SafetensorsWriter::Create(options.out_dir + "/" + name, std::move(*file_layout));
      if (!writer) {
        return writer.error();
      }
      out.files.push_back(name);
      SafetensorsWriter* w = writer->get();
      out.writers.push_back(std::move(*writer));
      for (size_t i : parts[part]) {
        const RankTensor& t = tensors[i];
        const TensorInfo* info = w->layout().Find(t.name);
        const DType dtype = info->dtype;
        const uint64_t out_row = static_cast<uint64_t>(t.row_width()) * DTypeSize(dtype);
        const uint64_t base = w->layout().data_offset() + info->begin;
        out.total_bytes += info->size();
        int64_t dst_row = 0;
        for (const Piece& p : t.pieces) {
          const uint64_t dst = base + static_cast<uint64_t>(dst_row) * out_row;
          dst_row += p.rows;
          if (p.kind != Piece::Kind::Copy) {
            // Fills are tiny (vocab padding rows, scalar buffers); split only to bound buffers.
            int64_t rows_per_job =
                std::max<int64_t>(1, static_cast<int64_t>(kChunkBytes / out_row));
            for (int64_t row = 0; row < p.rows; row += rows_per_job) {
              Job job;
              job.fill = p.kind;
              job.ops.push_back(Op{w, dst + static_cast<uint64_t>(row) * out_row, 0,
                                   std::min(rows_per_job, p.rows - row), 0, t.row_width(), dtype});
              out.fills.push_back(std::move(job));
            }
            continue;
          }
          const Checkpoint::Entry* e = ckpt.Find(p.source);
          const int64_t src_rows = e->info->shape.empty() ? 1 : e->info->shape[0];
          const int64_t src_cols = e->info->shape.size() >= 2 ? e->info->shape[1] : 1;
          if (p.src_row < 0 || p.rows < 0 || p.src_row + p.rows > src_rows ||
              p.src_col + t.row_width() > src_cols) {
            return Error(Reason::Internal, "plan reads outside '" + p.source + "' for " + t.name);
          }
          out.copies.push_back(
              SourceOp{e, Op{w, dst, p.src_row, p.rows, p.src_col, t.row_width(), dtype}});
        }
        if (dst_row != t.rows()) {
          return Error(Reason::Internal, "plan for " + t.name + " fills " +
                                             std::to_string(dst_row) + " of " +
                                             std::to_string(t.rows()) + " rows");
        }
      }
    }
  }
  return out;
}

// The checkpoint's non-weight files to carry over, sorted, and their total size.
Result<std::pair<std::vector<std::string>, uint64_t>> ListExtraFiles(const std::string& dir) {
  std::vector<std::string> extra;
  uint64_t bytes = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string name = e.path().filename().string();
    if (e.is_regular_file() && IsNonWeightFile(name)) {
      extra.push_back(name);
      bytes += e.file_size();
    }
  }
  if (ec) {
    return Error(Reason::StorageError, "cannot list " + dir + ": " + ec.message());
  }
  std::sort(extra.begin(), extra.end());
  return std::make_pair(std::move(extra), bytes);
}

// Once every tensor byte is written: closes the rank files, copies the non-weight files and
// describes the result.
Result<ShardResult> FinishOutputs(const ShardOptions& options, const Prepared& prep,
                                  RankFiles& rank_files, const std::vector<std::string>& extra,
                                  ShardProgress& progress, const std::stop_token& stop) {
  for (auto& w : rank_files.writers) {
    if (auto r = w->Finish(options.fsync); !r) {
      return r.error();
    }
  }
  std::vector<std::string> files = rank_files.files;
  for (const auto& name : extra) {
    if (stop.stop_requested()) {
      return Error(Reason::Cancelled, "sharding cancelled");
    }
    auto content = ReadFile(options.src_dir + "/" + name);
    if (!content) {
      return content.error();
    }
    uint64_t size = content->size();
    if (name == "config.json" && prep.target) {
      // The weights are now in the target dtype; say so, or `--dtype auto` would build the model
      // in the old dtype and round every weight a second time while loading.
      json out = prep.config;
      std::string dtype_name(TargetDTypeName(*prep.target));
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

  const EngineLayout& layout = prep.layout;
  const ShardPlan& plan = prep.plan;
  ShardResult result;
  result.files = std::move(files);
  json& s = result.settings;
  s["engine"] = layout.engine;
  s["engineRelease"] = layout.release;
  s["engineReleases"] =
      layout.engine == "vllm" && plan.model.table->moe ? layout.moe_compatible : layout.compatible;
  s["loadFormat"] = "sharded_state";
  s["filePattern"] = layout.file_pattern;
  s["tensorParallelSize"] = plan.tensor_parallel_size;
  s["dtype"] = prep.target ? std::string(TargetDTypeName(*prep.target)) : std::string("auto");
  s["maxFileSize"] = options.max_file_size;
  s["architecture"] = plan.model.architecture;
  s["modelType"] = plan.model.model_type;
  s["vocabSize"] = plan.model.vocab_size;
  s["paddedVocabSize"] = plan.padded_vocab;
  s["attentionScaleBuffers"] = layout.attention_scale_buffers;
  s["partsPerRank"] = rank_files.parts_per_rank;
  s["sharder"] = kSharderVersion;
  return result;
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
  const std::string config_path = options.src_dir + "/config.json";
  auto config_text = ReadFile(config_path);
  if (!config_text) {
    return config_text.error();
  }
  auto prep = Prepare(options, *config_text, config_path);
  if (!prep) {
    return prep.error();
  }
  auto ckpt = Checkpoint::Open(options.src_dir);
  if (!ckpt) {
    return ckpt.error();
  }
  auto rank_files = CreateRankFiles(options, *prep, **ckpt);
  if (!rank_files) {
    return rank_files.error();
  }
  // Each piece cut into jobs of at most kChunkBytes of its source tensor, one job per chunk with
  // every destination that needs it.
  std::map<std::tuple<size_t, uint64_t, uint64_t>, Job> source_jobs;
  for (const SourceOp& c : rank_files->copies) {
    const Checkpoint::Entry* e = c.src;
    const int64_t src_cols = e->info->shape.size() >= 2 ? e->info->shape[1] : 1;
    const uint64_t row_bytes = static_cast<uint64_t>(src_cols) * DTypeSize(e->info->dtype);
    const uint64_t out_row = static_cast<uint64_t>(c.op.width) * DTypeSize(c.op.dtype);
    const int64_t rows_per_chunk =
        std::max<int64_t>(1, static_cast<int64_t>(kChunkBytes / row_bytes));
    const int64_t first = c.op.src_row;
    const int64_t last = c.op.src_row + c.op.rows;
    for (int64_t row = first; row < last;) {
      const int64_t chunk = row / rows_per_chunk;
      const int64_t end = std::min(last, (chunk + 1) * rows_per_chunk);
      Job& job = source_jobs[{e->file_index, e->info->begin, static_cast<uint64_t>(chunk)}];
      job.src = e;
      job.src_begin = e->info->begin + static_cast<uint64_t>(chunk * rows_per_chunk) * row_bytes;
      job.src_end =
          std::min(e->info->end, job.src_begin + static_cast<uint64_t>(rows_per_chunk) * row_bytes);
      Op op = c.op;
      op.dst_offset += static_cast<uint64_t>(row - first) * out_row;
      op.src_row = row;
      op.rows = end - row;
      job.ops.push_back(op);
      row = end;
    }
  }
  auto extra = ListExtraFiles(options.src_dir);
  if (!extra) {
    return extra.error();
  }
  progress.bytes_total.store(rank_files->total_bytes + extra->second);
  progress.bytes_done.store(0);

  // Source jobs in file order so reads sweep each file once, front to back.
  std::vector<Job> jobs;
  jobs.reserve(source_jobs.size() + rank_files->fills.size());
  for (auto& [key, job] : source_jobs) {
    jobs.push_back(std::move(job));
  }
  for (auto& job : rank_files->fills) {
    jobs.push_back(std::move(job));
  }
  Executor executor(jobs, progress, stop);
  if (auto r = executor.Run(options.threads); !r) {
    return r.error();
  }
  return FinishOutputs(options, *prep, *rank_files, extra->first, progress, stop);
}

}  // namespace modelcache::shard

namespace modelcache::shard {
namespace {

// One piece of a rank tensor as byte ranges of its source file: `rows` rows of `len` bytes, one
// every `stride` bytes from absolute offset `src`, written as rows of `dst_row` bytes from `dst`
// (converted from `from` to `to`).
struct Segment {
  uint64_t src = 0;
  uint64_t stride = 0;
  uint64_t len = 0;
  uint64_t end = 0;  // one past the last source byte
  int64_t rows = 0;
  SafetensorsWriter* out = nullptr;
  size_t out_index = 0;  // of `out` in RankFiles::writers
  uint64_t dst = 0;
  uint64_t dst_row = 0;
  DType from = DType::F32;
  DType to = DType::F32;
};

// A weight file as it is fed.
struct FedFile {
  std::string name;  // relative to the checkpoint directory
  uint64_t size = 0;
  std::vector<Segment> segments;        // by src
  uint64_t fed = 0;                     // bytes fed, in order from 0
  bool gap = false;                     // bytes came out of order: Finish reads the file
  size_t first_live = 0;                // segments before it end at or before `fed`
  std::array<unsigned char, 8> tail{};  // the last tail_len bytes before `fed`
  size_t tail_len = 0;
  uint64_t written = 0;  // rank bytes written from this file, for progress
};

constexpr uint64_t kReadBackBytes = 8ULL << 20;
// The rank files' hashes advance in steps of this many bytes.
constexpr uint64_t kHashStep = 8ULL << 20;

// Hashes the rank files while they fill (see StreamSharder): per file, the sha256 of the prefix
// whose bytes are all written, advanced by one thread as the prefix grows.
class PrefixHasher {
 public:
  PrefixHasher(const std::string& dir, const std::vector<StreamSharder::RankFileLayout>& layouts) {
    for (const auto& l : layouts) {
      auto f = std::make_unique<File>();
      f->path = dir + "/" + l.path;
      f->name = l.path;
      f->size = l.size;
      for (const auto& [a, b] : l.pending) {
        f->pending[a] = b;
      }
      files_.push_back(std::move(f));
    }
    thread_ = std::thread([this] {
      if (!LogExceptions("rank file hasher", [this] { Loop(); })) {
        std::lock_guard lock(mu_);
        failed_ = Error(Reason::Internal, "the rank file hasher stopped on an exception");
      }
    });
  }
  ~PrefixHasher() { Stop(); }
  PrefixHasher(const PrefixHasher&) = delete;
  PrefixHasher& operator=(const PrefixHasher&) = delete;

  void Written(size_t file, uint64_t offset, uint64_t length) {
    std::lock_guard lock(mu_);
    File& f = *files_[file];
    const uint64_t end = offset + length;
    if (offset < std::max(f.hashed, f.reading_end)) {
      f.reset = true;  // bytes already hashed (or being hashed) changed
      f.gen += 1;
    }
    auto it = f.pending.upper_bound(offset);
    if (it != f.pending.begin() && std::prev(it)->second > offset) {
      --it;
    }
    while (it != f.pending.end() && it->first < end) {
      const uint64_t first = it->first;
      const uint64_t last = it->second;
      it = f.pending.erase(it);
      if (first < offset) {
        f.pending.emplace(first, offset);
      }
      if (end < last) {
        it = f.pending.emplace(end, last).first;
      }
    }
    cv_.notify_all();
  }

  // Stops the thread, hashes what is left of every file (`threads` files at a time) and returns
  // the digests by path relative to the output directory.
  Result<std::map<std::string, std::string>> Finish(int threads) {
    Stop();
    if (failed_) {
      return *failed_;
    }
    std::vector<std::optional<Error>> errors(files_.size());
    std::atomic<size_t> next{0};
    {
      std::vector<std::jthread> workers;
      for (int t = 0; t < std::max(1, threads); ++t) {
        workers.emplace_back([&] {
          std::vector<char> buffer;
          for (size_t i = next.fetch_add(1); i < files_.size(); i = next.fetch_add(1)) {
            File& f = *files_[i];
            if (!f.pending.empty()) {
              errors[i] = Error(Reason::Internal, f.path + " has bytes never written");
              continue;
            }
            if (f.reset || !f.sha) {
              f.sha = std::make_unique<Hasher>(Hasher::Kind::Sha256);
              f.hashed = 0;
            }
            while (f.hashed < f.size) {
              buffer.resize(static_cast<size_t>(std::min(kHashStep, f.size - f.hashed)));
              if (auto r = ReadAt(f.path, f.hashed, buffer); !r) {
                errors[i] = r.error();
                break;
              }
              f.sha->Update(buffer.data(), buffer.size());
              f.hashed += buffer.size();
            }
          }
        });
      }
    }
    std::map<std::string, std::string> out;
    for (size_t i = 0; i < files_.size(); ++i) {
      if (errors[i]) {
        return *errors[i];
      }
      out[files_[i]->name] = files_[i]->sha->FinalHex();
    }
    return out;
  }

  // Bytes hashed while the files filled (before Finish).
  uint64_t hashed_early() const { return hashed_early_; }

 private:
  struct File {
    std::string path;
    std::string name;
    uint64_t size = 0;
    std::map<uint64_t, uint64_t> pending;
    uint64_t hashed = 0;       // sha covers [0, hashed)
    uint64_t reading_end = 0;  // the hasher is reading [hashed, reading_end)
    uint64_t gen = 0;
    bool reset = false;           // start over: bytes below `hashed` were written again
    std::unique_ptr<Hasher> sha;  // touched by the hashing thread only (then by Finish)
  };

  void Stop() {
    {
      std::lock_guard lock(mu_);
      closing_ = true;
      cv_.notify_all();
    }
    if (thread_.joinable()) {
      thread_.join();
    }
  }

  void Loop() {
    std::vector<char> buffer;
    std::unique_lock lock(mu_);
    while (!closing_) {
      File* pick = nullptr;
      for (auto& f : files_) {
        uint64_t from = f->reset ? 0 : f->hashed;
        uint64_t prefix = f->pending.empty() ? f->size : f->pending.begin()->first;
        if (prefix >= from + kHashStep || (prefix == f->size && from < f->size)) {
          pick = f.get();
          break;
        }
      }
      if (pick == nullptr) {
        cv_.wait(lock);
        continue;
      }
      File& f = *pick;
      if (f.reset || !f.sha) {
        f.sha = std::make_unique<Hasher>(Hasher::Kind::Sha256);
        f.hashed = 0;
        f.reset = false;
      }
      const uint64_t prefix = f.pending.empty() ? f.size : f.pending.begin()->first;
      const uint64_t start = f.hashed;
      const uint64_t end = std::min(prefix, start + kHashStep);
      const uint64_t gen = f.gen;
      f.reading_end = end;
      lock.unlock();
      buffer.resize(static_cast<size_t>(end - start));
      VoidResult read = ReadAt(f.path, start, buffer);
      if (read) {
        f.sha->Update(buffer.data(), buffer.size());
      }
      lock.lock();
      f.reading_end = 0;
      if (!read) {
        failed_ = read.error();
        return;
      }
      if (f.gen == gen) {
        f.hashed = end;
        hashed_early_ += end - start;
      } else {
        f.reset = true;
      }
    }
  }

  std::vector<std::unique_ptr<File>> files_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool closing_ = false;
  std::optional<Error> failed_;
  uint64_t hashed_early_ = 0;
  std::thread thread_;
};

struct FdCloser {
  int fd;
  explicit FdCloser(int f) : fd(f) {}
  ~FdCloser() { ::close(fd); }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
};

}  // namespace

struct StreamSharder::State {
  ShardOptions options;
  Prepared prep;
  std::unique_ptr<Checkpoint> ckpt;
  RankFiles rank_files;
  std::vector<FedFile> files;
  std::map<std::string, size_t, std::less<>> by_name;
  ShardProgress* progress = nullptr;
  std::vector<unsigned char> buffer;
  uint64_t read_back = 0;
  std::vector<StreamSharder::RankFileLayout> layouts;
  StreamSharder::WriteObserver observer;
  std::unique_ptr<PrefixHasher> hasher;

  VoidResult Write(FedFile& f, const Segment& seg, uint64_t o, std::string_view bytes);
};

StreamSharder::StreamSharder(std::unique_ptr<State> state) : state_(std::move(state)) {}
StreamSharder::~StreamSharder() = default;

Result<std::unique_ptr<StreamSharder>> StreamSharder::Create(const ShardOptions& options,
                                                             std::string_view config_text,
                                                             std::unique_ptr<Checkpoint> headers,
                                                             ShardProgress& progress) {
  auto prep = Prepare(options, config_text, options.src_dir + "/config.json");
  if (!prep) {
    return prep.error();
  }
  auto rank_files = CreateRankFiles(options, *prep, *headers);
  if (!rank_files) {
    return rank_files.error();
  }
  progress.bytes_total.store(rank_files->total_bytes);
  progress.bytes_done.store(0);
  // The fills need no source byte: written now.
  Executor fills(rank_files->fills, progress, {});
  if (auto r = fills.Run(1); !r) {
    return r.error();
  }
  auto state = std::make_unique<State>();
  state->options = options;
  state->progress = &progress;
  for (const auto& file : headers->files()) {
    FedFile f;
    f.name = file->path().substr(options.src_dir.size() + 1);
    f.size = file->data_offset();
    for (const auto& t : file->tensors()) {
      f.size = std::max(f.size, file->data_offset() + t.end);
    }
    state->by_name.emplace(f.name, state->files.size());
    state->files.push_back(std::move(f));
  }
  std::map<const SafetensorsWriter*, size_t> writer_index;
  for (size_t i = 0; i < rank_files->writers.size(); ++i) {
    writer_index[rank_files->writers[i].get()] = i;
    StreamSharder::RankFileLayout layout;
    layout.path = rank_files->files[i];
    layout.size = rank_files->writers[i]->layout().file_size();
    state->layouts.push_back(std::move(layout));
  }
  for (const SourceOp& c : rank_files->copies) {
    const Checkpoint::Entry* e = c.src;
    if (c.op.rows == 0) {
      continue;
    }
    const uint64_t in_es = DTypeSize(e->info->dtype);
    const int64_t src_cols = e->info->shape.size() >= 2 ? e->info->shape[1] : 1;
    Segment seg;
    seg.stride = static_cast<uint64_t>(src_cols) * in_es;
    seg.src = e->file->data_offset() + e->info->begin +
              static_cast<uint64_t>(c.op.src_row) * seg.stride +
              static_cast<uint64_t>(c.op.src_col) * in_es;
    seg.len = static_cast<uint64_t>(c.op.width) * in_es;
    seg.rows = c.op.rows;
    seg.end = seg.src + static_cast<uint64_t>(c.op.rows - 1) * seg.stride + seg.len;
    seg.out = c.op.out;
    seg.out_index = writer_index.at(c.op.out);
    seg.dst = c.op.dst_offset;
    seg.dst_row = static_cast<uint64_t>(c.op.width) * DTypeSize(c.op.dtype);
    if (seg.dst_row > 0) {
      state->layouts[seg.out_index].pending.emplace_back(
          seg.dst, seg.dst + static_cast<uint64_t>(seg.rows) * seg.dst_row);
    }
    seg.from = e->info->dtype;
    seg.to = c.op.dtype;
    state->files[e->file_index].segments.push_back(seg);
  }
  for (auto& f : state->files) {
    std::stable_sort(f.segments.begin(), f.segments.end(),
                     [](const Segment& a, const Segment& b) { return a.src < b.src; });
  }
  for (auto& layout : state->layouts) {
    auto& ranges = layout.pending;
    std::sort(ranges.begin(), ranges.end());
    std::vector<std::pair<uint64_t, uint64_t>> merged;
    for (const auto& r : ranges) {
      if (!merged.empty() && r.first <= merged.back().second) {
        merged.back().second = std::max(merged.back().second, r.second);
      } else {
        merged.push_back(r);
      }
    }
    ranges = std::move(merged);
  }
  state->prep = std::move(*prep);
  state->ckpt = std::move(headers);
  state->rank_files = std::move(*rank_files);
  state->hasher = std::make_unique<PrefixHasher>(options.out_dir, state->layouts);
  return std::unique_ptr<StreamSharder>(new StreamSharder(std::move(state)));
}

bool StreamSharder::Wants(std::string_view file) const { return state_->by_name.count(file) != 0; }

uint64_t StreamSharder::bytes_read_back() const { return state_->read_back; }

std::vector<StreamSharder::RankFileLayout> StreamSharder::RankFileLayouts() const {
  return state_->layouts;
}

void StreamSharder::SetWriteObserver(WriteObserver observer) {
  state_->observer = std::move(observer);
}

VoidResult StreamSharder::Feed(std::string_view file, uint64_t offset, std::string_view bytes) {
  State& s = *state_;
  auto it = s.by_name.find(file);
  if (it == s.by_name.end()) {
    return {};
  }
  FedFile& f = s.files[it->second];
  if (offset == 0 && (f.fed != 0 || f.gap)) {
    // The file starts over (fetched again): every slice of it is written again.
    s.progress->bytes_done.fetch_sub(std::min(f.written, s.progress->bytes_done.load()));
    f.fed = 0;
    f.gap = false;
    f.first_live = 0;
    f.tail_len = 0;
    f.written = 0;
  }
  if (f.gap || bytes.empty()) {
    return {};
  }
  if (offset != f.fed || offset + bytes.size() > f.size) {
    f.gap = true;
    return {};
  }
  const uint64_t o = offset;
  const uint64_t e = o + bytes.size();
  while (f.first_live < f.segments.size() && f.segments[f.first_live].end <= o) {
    f.first_live += 1;
  }
  for (size_t k = f.first_live; k < f.segments.size() && f.segments[k].src < e; ++k) {
    if (f.segments[k].end <= o) {
      continue;
    }
    if (auto r = s.Write(f, f.segments[k], o, bytes); !r) {
      return r;
    }
  }
  // Keep the last bytes: an element cut by the end of these bytes is completed by the next ones.
  if (bytes.size() >= f.tail.size()) {
    std::memcpy(f.tail.data(), bytes.data() + bytes.size() - f.tail.size(), f.tail.size());
    f.tail_len = f.tail.size();
  } else {
    size_t keep = std::min(f.tail_len, f.tail.size() - bytes.size());
    std::memmove(f.tail.data(), f.tail.data() + f.tail_len - keep, keep);
    std::memcpy(f.tail.data() + keep, bytes.data(), bytes.size());
    f.tail_len = keep + bytes.size();
  }
  f.fed = e;
  return {};
}

// Writes the part of `seg` that bytes [o, o + bytes.size()) complete: whole-row copies in the
// same dtype straight from `bytes`; column windows and conversions gathered into one contiguous
// destination range (only the first row can start, and only the last end, inside the window).
VoidResult StreamSharder::State::Write(FedFile& f, const Segment& seg, uint64_t o,
                                       std::string_view bytes) {
  const uint64_t e = o + bytes.size();
  const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  const bool same = seg.from == seg.to;
  uint64_t written = 0;
  if (same && seg.stride == seg.len) {
    const uint64_t a = std::max(o, seg.src);
    const uint64_t b = std::min(e, seg.end);
    if (auto r = PWriteAll(seg.out->fd(), data + (a - o), b - a, seg.dst + (a - seg.src),
                           seg.out->path());
        !r) {
      return r;
    }
    written = b - a;
    if (written > 0) {
      hasher->Written(seg.out_index, seg.dst + (a - seg.src), written);
      if (observer) {
        observer(seg.out_index, seg.dst + (a - seg.src), written);
      }
    }
  } else {
    // A unit is what is converted at once: a byte when the dtype stays, else an element.
    const uint64_t in_unit = same ? 1 : DTypeSize(seg.from);
    const uint64_t out_unit = same ? 1 : DTypeSize(seg.to);
    const uint64_t units = seg.len / in_unit;
    const auto rows = static_cast<uint64_t>(seg.rows);
    uint64_t r = o >= seg.src + seg.len ? (o - seg.src - seg.len) / seg.stride + 1 : 0;
    const uint64_t r_end = std::min(rows, (e - seg.src + seg.stride - 1) / seg.stride);
    buffer.clear();
    uint64_t dst = 0;
    bool started = false;
    for (; r < r_end; ++r) {
      const uint64_t rs = seg.src + r * seg.stride;
      uint64_t k = o > rs ? (o - rs) / in_unit : 0;
      const uint64_t k_end = e > rs ? std::min(units, (e - rs) / in_unit) : 0;
      if (k >= k_end) {
        continue;
      }
      if (!started) {
        dst = seg.dst + r * seg.dst_row + k * out_unit;
        started = true;
      }
      size_t at = buffer.size();
      buffer.resize(at + (k_end - k) * out_unit);
      if (rs + k * in_unit < o) {
        // An element begun in the bytes fed before: its start is in the tail.
        std::array<unsigned char, 8> element{};
        const auto before = static_cast<size_t>(o - (rs + k * in_unit));
        std::memcpy(element.data(), f.tail.data() + f.tail_len - before, before);
        std::memcpy(element.data() + before, data, in_unit - before);
        ConvertElements(seg.from, element.data(), seg.to, buffer.data() + at, 1);
        at += out_unit;
        k += 1;
      }
      const unsigned char* src = data + (rs + k * in_unit - o);
      if (same) {
        std::memcpy(buffer.data() + at, src, k_end - k);
      } else {
        ConvertElements(seg.from, src, seg.to, buffer.data() + at, k_end - k);
      }
    }
    if (buffer.empty()) {
      return {};
    }
    if (auto r2 = PWriteAll(seg.out->fd(), buffer.data(), buffer.size(), dst, seg.out->path());
        !r2) {
      return r2;
    }
    written = buffer.size();
    hasher->Written(seg.out_index, dst, written);
    if (observer) {
      observer(seg.out_index, dst, written);
    }
  }
  f.written += written;
  progress->bytes_done.fetch_add(written);
  return {};
}

// The stop_token is taken by value, as std::jthread passes it.
Result<ShardResult> StreamSharder::Finish(
    std::stop_token stop) {  // NOLINT(performance-unnecessary-value-param)
  State& s = *state_;
  std::vector<char> chunk;
  for (auto& f : s.files) {
    if (f.fed == f.size && !f.gap) {
      continue;
    }
    const std::string path = s.options.src_dir + "/" + f.name;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return Error(Reason::StorageError, "cannot open " + path + ": " + ErrnoMessage(errno));
    }
    FdCloser closer(fd);
    chunk.resize(kReadBackBytes);
    for (uint64_t at = 0; at < f.size;) {
      if (stop.stop_requested()) {
        return Error(Reason::Cancelled, "sharding cancelled");
      }
      auto want = static_cast<size_t>(std::min<uint64_t>(chunk.size(), f.size - at));
      ssize_t n = ::pread(fd, chunk.data(), want, static_cast<off_t>(at));
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n <= 0) {
        return Error(Reason::StorageError,
                     "cannot read " + path + ": " +
                         (n < 0 ? ErrnoMessage(errno) : std::string("unexpected end of file")));
      }
      if (auto r = Feed(f.name, at, std::string_view(chunk.data(), static_cast<size_t>(n))); !r) {
        return r.error();
      }
      at += static_cast<uint64_t>(n);
      s.read_back += static_cast<uint64_t>(n);
    }
    if (f.fed != f.size || f.gap) {
      return Error(Reason::Internal, "sharding " + path + " stopped short of its end");
    }
  }
  auto extra = ListExtraFiles(s.options.src_dir);
  if (!extra) {
    return extra.error();
  }
  s.progress->bytes_total.fetch_add(extra->second);
  auto result = FinishOutputs(s.options, s.prep, s.rank_files, extra->first, *s.progress, stop);
  if (!result) {
    return result;
  }
  auto digests = s.hasher->Finish(s.options.threads);
  if (!digests) {
    return digests.error();
  }
  result->sha256 = std::move(*digests);
  return result;
}

uint64_t StreamSharder::bytes_hashed_early() const { return state_->hasher->hashed_early(); }

}  // namespace modelcache::shard
