#include "shard/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <initializer_list>
#include <set>

#include <nlohmann/json.hpp>

#include "common/files.h"

namespace modelcache::shard {
namespace {

using nlohmann::json;

// Joins message pieces without the temporaries that chained operator+ makes.
std::string Cat(std::initializer_list<std::string_view> parts) {
  std::string out;
  for (std::string_view p : parts) {
    out.append(p);
  }
  return out;
}

Error Invalid(std::string_view file, const std::string& what) {
  return {Reason::ShardConfigInvalid, "safetensors file " + std::string(file) + ": " + what};
}

Error InvalidTensor(std::string_view file, std::string_view tensor, const std::string& what) {
  return {Reason::ShardConfigInvalid, "safetensors file " + std::string(file) + ", tensor '" +
                                          std::string(tensor) + "': " + what};
}

uint64_t ReadLe64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) {
    v = (v << 8) | p[i];
  }
  return v;
}

// Parses `text` into a JSON value, refusing duplicate top-level names (nlohmann would silently keep
// the last one, and then a reader and a writer could disagree about which tensor a name means) and
// nesting deeper than a header ever needs.
Result<json> ParseHeaderJson(std::string_view text, std::string_view file) {
  std::set<std::string> seen;
  std::string duplicate;
  bool too_deep = false;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth > 8) {
      too_deep = true;
    }
    if (event == json::parse_event_t::key && depth == 1) {
      std::string key = parsed.get<std::string>();
      if (!seen.insert(key).second && duplicate.empty()) {
        duplicate = key;
      }
    }
    return true;
  };
  json parsed = json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return Invalid(file, "header is not valid JSON");
  }
  if (too_deep) {
    return Invalid(file, "header JSON is nested too deeply");
  }
  if (!duplicate.empty()) {
    return InvalidTensor(file, duplicate, "appears twice in the header");
  }
  if (!parsed.is_object()) {
    return Invalid(file, "header is not a JSON object");
  }
  return parsed;
}

}  // namespace

uint64_t TensorInfo::num_elements() const {
  uint64_t n = 1;
  for (int64_t d : shape) {
    n *= static_cast<uint64_t>(d);
  }
  return n;
}

Result<SafetensorsHeader> ParseSafetensorsHeader(std::string_view text, uint64_t data_size,
                                                 std::string_view file) {
  auto parsed = ParseHeaderJson(text, file);
  if (!parsed) {
    return parsed.error();
  }
  SafetensorsHeader header;
  for (const auto& [name, value] : parsed->items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) {
        return Invalid(file, "__metadata__ is not an object");
      }
      for (const auto& [key, v] : value.items()) {
        if (!v.is_string()) {
          return Invalid(file, "__metadata__ value for '" + key + "' is not a string");
        }
        header.metadata[key] = v.get<std::string>();
      }
      continue;
    }
    if (!value.is_object()) {
      return InvalidTensor(file, name, "entry is not an object");
    }
    TensorInfo t;
    t.name = name;
    auto dtype_it = value.find("dtype");
    if (dtype_it == value.end() || !dtype_it->is_string()) {
      return InvalidTensor(file, name, "missing dtype");
    }
    auto dtype = ParseDType(dtype_it->get<std::string>());
    if (!dtype) {
      return InvalidTensor(file, name, "unknown dtype '" + dtype_it->get<std::string>() + "'");
    }
    t.dtype = *dtype;
    auto shape_it = value.find("shape");
    if (shape_it == value.end() || !shape_it->is_array()) {
      return InvalidTensor(file, name, "missing shape");
    }
    if (shape_it->size() > 16) {
      return InvalidTensor(file, name, "shape has more than 16 dimensions");
    }
    uint64_t elements = 1;
    bool overflow = false;
    for (const auto& d : *shape_it) {
      if (!d.is_number_unsigned()) {
        return InvalidTensor(
            file, name,
            "shape " + shape_it->dump() + " has a dimension that is not a non-negative integer");
      }
      uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(INT64_MAX)) {
        overflow = true;
      }
      overflow = overflow || __builtin_mul_overflow(elements, dim, &elements);
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    uint64_t bytes = 0;
    overflow = overflow || __builtin_mul_overflow(elements, DTypeSize(t.dtype), &bytes);
    if (overflow) {
      return InvalidTensor(file, name, "shape " + shape_it->dump() + " overflows");
    }
    auto offsets_it = value.find("data_offsets");
    if (offsets_it == value.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
        !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned()) {
      return InvalidTensor(file, name, "data_offsets is not a pair of non-negative integers");
    }
    t.begin = (*offsets_it)[0].get<uint64_t>();
    t.end = (*offsets_it)[1].get<uint64_t>();
    if (t.end < t.begin) {
      return InvalidTensor(file, name, "data_offsets end before they begin");
    }
    if (t.end > data_size) {
      return InvalidTensor(file, name,
                           "data_offsets [" + std::to_string(t.begin) + ", " +
                               std::to_string(t.end) + ") run past the end of the data section (" +
                               std::to_string(data_size) + " bytes); the file is truncated");
    }
    if (t.end - t.begin != bytes) {
      return InvalidTensor(file, name,
                           "shape " + shape_it->dump() + " of " + std::string(DTypeName(t.dtype)) +
                               " needs " + std::to_string(bytes) + " bytes but data_offsets span " +
                               std::to_string(t.end - t.begin));
    }
    header.tensors.push_back(std::move(t));
  }
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  // The ranges must tile the data section: an overlap means two tensors alias each other's bytes,
  // and a gap or tail means bytes nobody accounts for (a header that lies about what the file
  // holds).
  uint64_t expected = 0;
  for (const auto& t : header.tensors) {
    if (t.begin < expected) {
      return InvalidTensor(file, t.name, "data_offsets overlap another tensor");
    }
    if (t.begin > expected) {
      return InvalidTensor(file, t.name,
                           "bytes [" + std::to_string(expected) + ", " + std::to_string(t.begin) +
                               ") before it belong to no tensor");
    }
    expected = t.end;
  }
  if (expected != data_size) {
    return Invalid(file, "data section has " + std::to_string(data_size - expected) +
                             " trailing bytes that belong to no tensor");
  }
  return header;
}

namespace {

// Validates the length prefix and header at the start of `prefix`, the first bytes of a file of
// `file_size` bytes.
Result<SafetensorsHeader> ParsePrefix(std::string_view prefix, uint64_t file_size,
                                      std::string_view file) {
  if (file_size < 8 || prefix.size() < 8) {
    return Invalid(
        file, "shorter than the 8-byte header length (" + std::to_string(file_size) + " bytes)");
  }
  uint64_t n = ReadLe64(reinterpret_cast<const unsigned char*>(prefix.data()));
  if (n > kMaxHeaderSize) {
    return Invalid(file, "header length " + std::to_string(n) + " exceeds the limit of " +
                             std::to_string(kMaxHeaderSize));
  }
  if (n > file_size - 8) {
    return Invalid(file, "header length " + std::to_string(n) + " runs past the end of the file (" +
                             std::to_string(file_size) + " bytes)");
  }
  if (n > prefix.size() - 8) {
    return Invalid(file, "only " + std::to_string(prefix.size()) + " bytes of its " +
                             std::to_string(n + 8) + "-byte header were given");
  }
  return ParseSafetensorsHeader(prefix.substr(8, n), file_size - 8 - n, file);
}

}  // namespace

Result<SafetensorsHeader> ParseSafetensors(std::string_view image, std::string_view file) {
  return ParsePrefix(image, image.size(), file);
}

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromHeader(const std::string& path,
                                                                     uint64_t file_size,
                                                                     std::string_view prefix) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  auto header = ParsePrefix(prefix, file_size, path);
  if (!header) {
    return header.error();
  }
  f->header_ = std::move(*header);
  f->data_offset_ = 8 + ReadLe64(reinterpret_cast<const unsigned char*>(prefix.data()));
  for (size_t i = 0; i < f->header_.tensors.size(); ++i) {
    f->by_name_.emplace(f->header_.tensors[i].name, i);
  }
  return f;
}

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f->fd_ < 0) {
    return IoError("cannot open", path, errno);
  }
  struct stat st {};
  if (::fstat(f->fd_, &st) != 0) {
    return IoError("cannot stat", path, errno);
  }
  f->map_size_ = static_cast<uint64_t>(st.st_size);
  if (f->map_size_ < 8) {
    return Invalid(
        path, "shorter than the 8-byte header length (" + std::to_string(f->map_size_) + " bytes)");
  }
  void* map = ::mmap(nullptr, f->map_size_, PROT_READ, MAP_SHARED, f->fd_, 0);
  if (map == MAP_FAILED) {
    return IoError("cannot map", path, errno);
  }
  f->map_ = map;
  std::string_view image(static_cast<const char*>(map), f->map_size_);
  auto header = ParseSafetensors(image, path);
  if (!header) {
    return header.error();
  }
  f->header_ = std::move(*header);
  f->data_offset_ = 8 + ReadLe64(static_cast<const unsigned char*>(map));
  f->data_ = static_cast<const unsigned char*>(map) + f->data_offset_;
  for (size_t i = 0; i < f->header_.tensors.size(); ++i) {
    f->by_name_.emplace(f->header_.tensors[i].name, i);
  }
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) {
    ::munmap(map_, map_size_);
  }
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &header_.tensors[it->second];
}

void SafetensorsFile::Release(uint64_t begin, uint64_t end) const {
  static const auto page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  uint64_t first = (data_offset_ + begin) / page * page;
  uint64_t last = std::min(map_size_, data_offset_ + end);
  if (last <= first) {
    return;
  }
  // Neighbouring jobs may share the boundary pages; dropping them is harmless (they fault back
  // in from the page cache), so the range is widened, not narrowed.
  ::madvise(static_cast<char*>(map_) + first, last - first, MADV_DONTNEED);
}

Result<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  namespace fs = std::filesystem;
  std::string index_path = dir + "/model.safetensors.index.json";
  std::error_code ec;
  std::optional<std::string> index;
  std::vector<std::string> listed;
  if (fs::exists(index_path, ec)) {
    auto text = ReadFile(index_path);
    if (!text) {
      return text.error();
    }
    index = std::move(*text);
  } else {
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      if (e.is_regular_file() && e.path().extension() == ".safetensors") {
        listed.push_back(e.path().filename().string());
      }
    }
    if (ec) {
      return Error(Reason::StorageError, "cannot list " + dir + ": " + ec.message());
    }
  }
  return Assemble(dir, index, std::move(listed),
                  [](const std::string& path) { return SafetensorsFile::Open(path); });
}

Result<std::unique_ptr<Checkpoint>> Checkpoint::FromHeaders(
    const std::string& dir, const std::optional<std::string>& index,
    const std::map<std::string, HeaderBytes>& headers) {
  std::vector<std::string> listed;
  for (const auto& [name, bytes] : headers) {
    if (name.size() > 12 && name.substr(name.size() - 12) == ".safetensors") {
      listed.push_back(name);
    }
  }
  const size_t prefix = dir.size() + 1;
  return Assemble(dir, index, std::move(listed),
                  [&](const std::string& path) -> Result<std::unique_ptr<SafetensorsFile>> {
                    auto it = headers.find(path.substr(prefix));
                    if (it == headers.end()) {
                      return Error(Reason::ShardConfigInvalid, path + ": no header was read");
                    }
                    return SafetensorsFile::FromHeader(path, it->second.file_size,
                                                       it->second.prefix);
                  });
}

Result<std::unique_ptr<Checkpoint>> Checkpoint::Assemble(
    const std::string& dir, const std::optional<std::string>& index,
    std::vector<std::string> listed,
    const std::function<Result<std::unique_ptr<SafetensorsFile>>(const std::string&)>& open) {
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());
  std::vector<std::string> names;
  std::string index_path = dir + "/model.safetensors.index.json";
  std::map<std::string, std::string> weight_map;
  if (index) {
    json parsed = json::parse(*index, nullptr, /*allow_exceptions=*/false);
    if (parsed.is_discarded() || !parsed.is_object() || !parsed.contains("weight_map") ||
        !parsed["weight_map"].is_object()) {
      return Error(Reason::ShardConfigInvalid,
                   index_path + ": not a safetensors index (no weight_map object)");
    }
    std::set<std::string> files;
    for (const auto& [tensor, file] : parsed["weight_map"].items()) {
      if (!file.is_string()) {
        return Error(Reason::ShardConfigInvalid,
                     Cat({index_path, ": weight_map entry for '", tensor, "' is not a file name"}));
      }
      std::string name = file.get<std::string>();
      if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
        return Error(Reason::ShardConfigInvalid, Cat({index_path, ": weight_map names '", name,
                                                      "', which is not a file here"}));
      }
      files.insert(name);
      weight_map[tensor] = name;
    }
    names.assign(files.begin(), files.end());
  } else {
    names = std::move(listed);
    std::sort(names.begin(), names.end());
  }
  if (names.empty()) {
    return Error(Reason::ShardConfigInvalid, dir + " holds no *.safetensors weights");
  }
  for (size_t i = 0; i < names.size(); ++i) {
    auto file = open(dir + "/" + names[i]);
    if (!file) {
      return file.error();
    }
    ckpt->files_.push_back(std::move(*file));
    const SafetensorsFile* f = ckpt->files_.back().get();
    for (const auto& t : f->tensors()) {
      auto [it, inserted] = ckpt->entries_.emplace(t.name, Entry{f, &t, i});
      if (!inserted) {
        return Error(Reason::ShardConfigInvalid, "tensor '" + t.name + "' is in both " +
                                                     it->second.file->path() + " and " + f->path());
      }
    }
  }
  for (const auto& [tensor, file] : weight_map) {
    auto it = ckpt->entries_.find(tensor);
    if (it == ckpt->entries_.end() || it->second.file->path() != Cat({dir, "/", file})) {
      return Error(Reason::ShardConfigInvalid, Cat({index_path, " places tensor '", tensor, "' in ",
                                                    file, ", which does not hold it"}));
    }
  }
  return ckpt;
}

const Checkpoint::Entry* Checkpoint::Find(std::string_view name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) {
    out.push_back(name);
  }
  return out;
}

uint64_t Checkpoint::data_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, entry] : entries_) {
    total += entry.info->size();
  }
  return total;
}

Result<SafetensorsLayout> SafetensorsLayout::Make(
    std::vector<TensorSpec> tensors, const std::map<std::string, std::string>& metadata,
    Order order) {
  std::stable_sort(tensors.begin(), tensors.end(),
                   [order](const TensorSpec& a, const TensorSpec& b) {
                     size_t sa = DTypeSize(a.dtype);
                     size_t sb = DTypeSize(b.dtype);
                     if (sa != sb) {
                       return sa > sb;
                     }
                     return order == Order::ByName && a.name < b.name;
                   });
  SafetensorsLayout layout;
  json header = json::object();
  if (!metadata.empty()) {
    header["__metadata__"] = metadata;
  }
  uint64_t offset = 0;
  for (auto& spec : tensors) {
    if (spec.name.empty() || spec.name == "__metadata__") {
      return Error(Reason::ShardConfigInvalid, "invalid tensor name '" + spec.name + "'");
    }
    if (header.contains(spec.name)) {
      return Error(Reason::ShardConfigInvalid, "tensor '" + spec.name + "' written twice");
    }
    TensorInfo t;
    t.name = spec.name;
    t.dtype = spec.dtype;
    t.shape = spec.shape;
    for (int64_t d : t.shape) {
      if (d < 0) {
        return Error(Reason::ShardConfigInvalid,
                     "tensor '" + spec.name + "' has a negative dimension");
      }
    }
    t.begin = offset;
    t.end = offset + t.num_elements() * DTypeSize(t.dtype);
    offset = t.end;
    header[spec.name] = {
        {"dtype", DTypeName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {t.begin, t.end}}};
    layout.tensors_.push_back(std::move(t));
  }
  std::string text = header.dump();
  size_t padded = (8 + text.size() + 7) / 8 * 8 - 8;
  text.append(padded - text.size(), ' ');
  std::string prefix(8, '\0');
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) {
    prefix[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  }
  layout.header_ = prefix + text;
  layout.data_size_ = offset;
  return layout;
}

const TensorInfo* SafetensorsLayout::Find(std::string_view name) const {
  for (const auto& t : tensors_) {
    if (t.name == name) {
      return &t;
    }
  }
  return nullptr;
}

VoidResult PWriteAll(int fd, const void* data, uint64_t size, uint64_t offset,
                     const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::pwrite(fd, p, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return IoError("cannot write", path, errno);
    }
    p += n;
    size -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return {};
}

Result<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(const std::string& path,
                                                                     SafetensorsLayout layout) {
  std::unique_ptr<SafetensorsWriter> w(new SafetensorsWriter());
  w->path_ = path;
  w->layout_ = std::move(layout);
  w->fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (w->fd_ < 0) {
    return IoError("cannot create", path, errno);
  }
  const std::string& header = w->layout_.header();
  if (auto r = PWriteAll(w->fd_, header.data(), header.size(), 0, path); !r) {
    return r.error();
  }
  if (::ftruncate(w->fd_, static_cast<off_t>(w->layout_.file_size())) != 0) {
    return IoError("cannot size", path, errno);
  }
  return w;
}

SafetensorsWriter::~SafetensorsWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

VoidResult SafetensorsWriter::WriteAt(std::string_view name, uint64_t offset, const void* data,
                                      uint64_t size) {
  const TensorInfo* t = layout_.Find(name);
  if (t == nullptr || offset > t->size() || size > t->size() - offset) {
    return Error(Reason::ShardConfigInvalid,
                 path_ + ": write outside tensor '" + std::string(name) + "'");
  }
  return PWriteAll(fd_, data, size, layout_.data_offset() + t->begin + offset, path_);
}

VoidResult SafetensorsWriter::Finish(bool sync) {
  if (fd_ < 0) {
    return {};
  }
  int fd = fd_;
  fd_ = -1;
  if (sync && ::fsync(fd) != 0) {
    int err = errno;
    ::close(fd);
    return IoError("cannot sync", path_, err);
  }
  if (::close(fd) != 0) {
    return IoError("cannot close", path_, errno);
  }
  return {};
}

VoidResult WriteSafetensorsFile(const std::string& path,
                                const std::vector<std::pair<TensorSpec, std::string>>& tensors,
                                const std::map<std::string, std::string>& metadata) {
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const auto& [spec, data] : tensors) {
    specs.push_back(spec);
  }
  auto layout = SafetensorsLayout::Make(std::move(specs), metadata);
  if (!layout) {
    return layout.error();
  }
  auto writer = SafetensorsWriter::Create(path, std::move(*layout));
  if (!writer) {
    return writer.error();
  }
  for (const auto& [spec, data] : tensors) {
    if (auto r = (*writer)->WriteAt(spec.name, 0, data.data(), data.size()); !r) {
      return r.error();
    }
  }
  return (*writer)->Finish(false);
}

}  // namespace modelcache::shard
