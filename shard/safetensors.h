#pragma once

// safetensors files: a validating reader over mmap, a checkpoint (one or many files, with or
// without model.safetensors.index.json) read as one, and a writer whose output is a function of
// its inputs only.
//
// Format (https://github.com/huggingface/safetensors): 8 bytes little-endian header length N,
// N bytes of JSON {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...,
// "__metadata__": {"k": "v"}}, then the data section; offsets are relative to the data section.
//
// Nothing in a file is trusted before it is checked: the header length must fit in the file and
// be at most kMaxHeaderSize, the JSON must be one object without duplicate names, dtypes must be
// known, shape x element size must equal the byte range, ranges must lie inside the data section
// and must tile it exactly (no overlap, no gap, no trailing bytes). A file that fails gives
// ShardConfigInvalid naming the file and, where there is one, the tensor.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"
#include "shard/dtype.h"

namespace modelcache::shard {

// The safetensors reference implementation refuses headers above 100 MB (MAX_HEADER_SIZE,
// 100 000 000 bytes, not 100 MiB); so do we.
inline constexpr uint64_t kMaxHeaderSize = 100'000'000;

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // empty: a scalar (one element)
  uint64_t begin = 0;          // byte range in the data section
  uint64_t end = 0;

  uint64_t num_elements() const;
  uint64_t size() const { return end - begin; }
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in data order (ascending begin)
  std::map<std::string, std::string> metadata;
};

// Parses and validates a header (the JSON text without the length prefix) for a data section of
// `data_size` bytes. `file` only names the file in error messages. Never reads outside `json`.
Result<SafetensorsHeader> ParseSafetensorsHeader(std::string_view json, uint64_t data_size,
                                                 std::string_view file);

// Validates a whole file image held in memory: length prefix, header, data section.
Result<SafetensorsHeader> ParseSafetensors(std::string_view image, std::string_view file);

// One safetensors file, mapped read-only. Immutable after Open; safe for concurrent readers.
class SafetensorsFile {
 public:
  // Maps and validates `path`. StorageError if it cannot be opened or mapped; ShardConfigInvalid
  // if it is not a valid safetensors file.
  static Result<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // The same file known from its first bytes only (the length prefix and the header, as a loader
  // reads them with a ranged request), validated against `file_size`: nothing is mapped, so data(),
  // fd() and Release() must not be used. ShardConfigInvalid as for Open, or if `prefix` is shorter
  // than the header it announces.
  static Result<std::unique_ptr<SafetensorsFile>> FromHeader(const std::string& path,
                                                             uint64_t file_size,
                                                             std::string_view prefix);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  // nullptr if there is no tensor of that name.
  const TensorInfo* Find(std::string_view name) const;
  // The tensor's bytes inside the mapping; valid while this object lives.
  const unsigned char* data(const TensorInfo& tensor) const { return data_ + tensor.begin; }
  // Absolute file offset of the data section, and the open descriptor (for copy_file_range).
  uint64_t data_offset() const { return data_offset_; }
  int fd() const { return fd_; }
  // Drops the pages of data-section bytes [begin, end) from this process's resident set (the page
  // cache keeps them). Later reads fault them back in, so this is only about memory, never
  // correctness.
  void Release(uint64_t begin, uint64_t end) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  int fd_ = -1;
  void* map_ = nullptr;
  uint64_t map_size_ = 0;
  const unsigned char* data_ = nullptr;
  uint64_t data_offset_ = 0;
  SafetensorsHeader header_;
  std::map<std::string, size_t, std::less<>> by_name_;
};

// The weights of a HuggingFace checkpoint directory read as one. With model.safetensors.index.json
// the files it names are read (every tensor of the weight map must be in the file it names, and
// no tensor may appear in two files); without it, every top-level *.safetensors file is.
// Immutable after Open; safe for concurrent readers.
class Checkpoint {
 public:
  struct Entry {
    const SafetensorsFile* file = nullptr;
    const TensorInfo* info = nullptr;
    size_t file_index = 0;
  };

  static Result<std::unique_ptr<Checkpoint>> Open(const std::string& dir);
  // The checkpoint of `dir` known from its files' headers alone (SafetensorsFile::FromHeader):
  // `index` is the text of model.safetensors.index.json if the checkpoint has one; `headers` maps
  // each top-level *.safetensors file name to its size and first bytes (at least the length
  // prefix and the header). The files are chosen and checked exactly as Open does;
  // ShardConfigInvalid also when a file the index names has no entry in `headers`.
  struct HeaderBytes {
    uint64_t file_size = 0;
    std::string prefix;
  };
  static Result<std::unique_ptr<Checkpoint>> FromHeaders(
      const std::string& dir, const std::optional<std::string>& index,
      const std::map<std::string, HeaderBytes>& headers);

  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  // nullptr if absent.
  const Entry* Find(std::string_view name) const;
  // All tensor names, sorted.
  std::vector<std::string> names() const;
  // Sum of the data sections.
  uint64_t data_bytes() const;

 private:
  Checkpoint() = default;
  // Open and FromHeaders: the file names chosen (by the index, or every listed name), each opened
  // by `open`, the weight map checked.
  static Result<std::unique_ptr<Checkpoint>> Assemble(
      const std::string& dir, const std::optional<std::string>& index,
      std::vector<std::string> listed,
      const std::function<Result<std::unique_ptr<SafetensorsFile>>(const std::string&)>& open);
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry, std::less<>> entries_;
};

struct TensorSpec {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
};

// The header and offsets of a file to be written. Tensors are laid out larger element size first,
// so every tensor is aligned to its element size, and among tensors of one element size by name
// (the way the safetensors reference writer lays them out) or in the order given (a reader finds
// tensors by name, so the order of the data is free; the sharder writes its rank files in the
// order their source bytes arrive). The JSON is padded with spaces so the data section starts at
// a multiple of 8. Same specs, order and metadata -> same bytes.
class SafetensorsLayout {
 public:
  enum class Order { ByName, AsGiven };
  // ShardConfigInvalid on duplicate or empty names or negative dimensions.
  static Result<SafetensorsLayout> Make(std::vector<TensorSpec> tensors,
                                        const std::map<std::string, std::string>& metadata,
                                        Order order = Order::ByName);

  // Length prefix + JSON + padding; the data section starts right after it.
  const std::string& header() const { return header_; }
  uint64_t data_offset() const { return header_.size(); }
  uint64_t file_size() const { return header_.size() + data_size_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* Find(std::string_view name) const;

 private:
  std::string header_;
  uint64_t data_size_ = 0;
  std::vector<TensorInfo> tensors_;
};

// Writes one file: Create writes the header and sizes the file; WriteAt fills tensor bytes at any
// offset from any thread (pwrite); Finish optionally fsyncs and closes. A file whose tensors were
// not all written holds zeros there.
class SafetensorsWriter {
 public:
  static Result<std::unique_ptr<SafetensorsWriter>> Create(const std::string& path,
                                                           SafetensorsLayout layout);
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  const SafetensorsLayout& layout() const { return layout_; }
  const std::string& path() const { return path_; }
  int fd() const { return fd_; }
  // Writes `size` bytes at byte `offset` of tensor `name`'s range. ShardConfigInvalid if that is
  // outside the tensor; StorageError (InsufficientStorage on ENOSPC) on I/O failure.
  VoidResult WriteAt(std::string_view name, uint64_t offset, const void* data, uint64_t size);
  VoidResult Finish(bool sync);

 private:
  SafetensorsWriter() = default;
  std::string path_;
  int fd_ = -1;
  SafetensorsLayout layout_;
};

// pwrite all of `size` bytes at absolute file `offset`, retrying short writes and EINTR.
VoidResult PWriteAll(int fd, const void* data, uint64_t size, uint64_t offset,
                     const std::string& path);

// Convenience for small files (tests, fixtures): writes the tensors with their bytes in one go.
// REQUIRES: each data's size equals the tensor's byte size.
VoidResult WriteSafetensorsFile(const std::string& path,
                                const std::vector<std::pair<TensorSpec, std::string>>& tensors,
                                const std::map<std::string, std::string>& metadata);

}  // namespace modelcache::shard
