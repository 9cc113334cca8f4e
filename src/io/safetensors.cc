// Safetensors reading (memory-mapped, validated) and streaming writing.
//
// Everything read from a file is untrusted: every length, offset and shape is
// checked before it is used, with overflow-safe arithmetic, so that a corrupt
// or hostile file ends in an epwa::Error rather than an out-of-bounds read.

#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "base/error.h"
#include "base/file_read.h"
#include "base/mapped_regions.h"
#include "io/atomic_file.h"

namespace epwa {

void ReleaseMappedPages(const void* data, size_t bytes) {
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The reference implementation refuses headers above 100 MB; a larger length
// prefix can only come from a corrupt file, and honouring it would make us
// allocate a JSON tree of that size.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// A valid header nests at most three containers deep: the top-level object,
// a tensor entry (or "__metadata__"), and a shape or offsets array. Deeper
// JSON is rejected while parsing, before it is built, so a header made of
// millions of '[' cannot exhaust memory.
constexpr int kMaxJsonDepth = 2;

// "[10, 4]". A corrupt header may hold millions of dimensions, so long
// shapes are cut short to keep messages to one readable line.
std::string ShapeString(const std::vector<int64_t>& shape) {
  constexpr size_t kMaxDims = 16;
  std::string s = "[";
  for (size_t i = 0; i < shape.size() && i < kMaxDims; ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() > kMaxDims) s += ", ... (" + std::to_string(shape.size()) + " dimensions)";
  return s + "]";
}

// Formats a byte count for messages about disk space, readable at any size.
std::string HumanBytes(uint64_t bytes) {
  char buf[64];
  const double b = static_cast<double>(bytes);
  if (bytes >= (uint64_t{1} << 30)) {
    std::snprintf(buf, sizeof buf, "%.2f GB", b / double(uint64_t{1} << 30));
  } else if (bytes >= (uint64_t{1} << 20)) {
    std::snprintf(buf, sizeof buf, "%.2f MB", b / double(uint64_t{1} << 20));
  } else if (bytes >= 1024) {
    std::snprintf(buf, sizeof buf, "%.2f KB", b / 1024.0);
  } else {
    std::snprintf(buf, sizeof buf, "%llu bytes", static_cast<unsigned long long>(bytes));
  }
  return buf;
}

// A JSON value as text for a message, cut short: values come from untrusted
// files and may be arbitrarily long.
std::string Excerpt(std::string text) {
  constexpr size_t kMaxChars = 80;
  if (text.size() > kMaxChars) text = text.substr(0, kMaxChars) + "...";
  return text;
}
std::string Excerpt(const json& value) { return Excerpt(value.dump()); }

// nlohmann's exception text without its "[json.exception.parse_error.101] "
// prefix, and shortened, since it quotes the offending token.
std::string JsonErrorText(const json::exception& e) {
  std::string what = e.what();
  if (size_t pos = what.find("] "); pos != std::string::npos) what = what.substr(pos + 2);
  if (what.size() > 240) what = what.substr(0, 240) + "...";
  return what;
}

// Element count of `shape`, or false if it does not fit in int64.
bool CheckedNumElements(const std::vector<int64_t>& shape, uint64_t* out) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  }
  if (n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
  *out = n;
  return true;
}

// Byte size of a tensor of `shape` x `dtype`, or false on overflow.
bool CheckedNumBytes(const std::vector<int64_t>& shape, DType dtype, uint64_t* out) {
  uint64_t n = 0;
  if (!CheckedNumElements(shape, &n)) return false;
  return !__builtin_mul_overflow(n, static_cast<uint64_t>(DTypeSize(dtype)), out);
}

// Parses the header JSON, refusing containers nested deeper than a valid
// header ever is and duplicate keys (which nlohmann would otherwise resolve
// silently by keeping the last, hiding a corrupt entry).
json ParseHeaderJson(const uint8_t* begin, const uint8_t* end, const std::string& origin) {
  std::set<std::string> top_keys;    // tensor names (and "__metadata__")
  std::set<std::string> entry_keys;  // keys inside the entry being parsed
  std::string current_entry;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (depth > kMaxJsonDepth) {
          throw Error(
              origin + ": the header JSON nests deeper than a safetensors header can" +
              (current_entry.empty() ? std::string() : " (in entry '" + current_entry + "')"));
        }
        if (depth == 1) entry_keys.clear();
        break;
      case json::parse_event_t::key:
        if (depth == 1) {
          current_entry = parsed.get<std::string>();
          if (!top_keys.insert(current_entry).second) {
            throw Error(origin + ": tensor '" + current_entry +
                        "' appears more than once in the header");
          }
        } else if (depth == 2) {
          const std::string& key = parsed.get_ref<const std::string&>();
          if (!entry_keys.insert(key).second) {
            throw Error(origin + ": entry '" + current_entry + "' has the key '" + key +
                        "' more than once");
          }
        }
        break;
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(begin, end, callback);
  } catch (const json::exception& e) {
    throw Error(origin + ": the header is not valid JSON (" + JsonErrorText(e) + ")");
  }
}

// Reads one non-negative integer that fits in int64 (a shape dimension).
bool JsonToDim(const json& v, int64_t* out) {
  if (!v.is_number_integer()) return false;  // also false for floats
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = static_cast<int64_t>(u);
    return true;
  }
  const int64_t s = v.get<int64_t>();
  if (s < 0) return false;
  *out = s;
  return true;
}

TensorInfo ParseEntry(const std::string& name, const json& entry, uint64_t data_size,
                      const std::string& origin) {
  const std::string where = origin + ": tensor '" + name + "'";
  Require(entry.is_object(), where + " is not described by a JSON object");

  TensorInfo info;
  info.name = name;
  info.file = origin;

  const auto dtype_it = entry.find("dtype");
  Require(dtype_it != entry.end(), where + " has no \"dtype\"");
  Require(dtype_it->is_string(), where + " has a \"dtype\" that is not a string");
  const std::string& dtype_name = dtype_it->get_ref<const std::string&>();
  if (!ParseDType(dtype_name, &info.dtype)) {
    throw Error("unsupported dtype " + Excerpt(dtype_name) + " for tensor '" + name + "' in " +
                origin + " (epwa reads F32, F16, BF16, and U8 for MXFP4 blocks and scales)");
  }

  const auto shape_it = entry.find("shape");
  Require(shape_it != entry.end(), where + " has no \"shape\"");
  Require(shape_it->is_array(), where + " has a \"shape\" that is not an array");
  for (const json& d : *shape_it) {
    int64_t dim = 0;
    Require(JsonToDim(d, &dim),
            where + " has a shape entry " + Excerpt(d) + " that is not a non-negative integer");
    info.shape.push_back(dim);
  }

  const auto offsets_it = entry.find("data_offsets");
  Require(offsets_it != entry.end(), where + " has no \"data_offsets\"");
  Require(offsets_it->is_array() && offsets_it->size() == 2 &&
              (*offsets_it)[0].is_number_unsigned() && (*offsets_it)[1].is_number_unsigned(),
          where + " has \"data_offsets\" " + Excerpt(*offsets_it) +
              " instead of two non-negative integers [begin, end]");
  info.begin = (*offsets_it)[0].get<uint64_t>();
  info.end = (*offsets_it)[1].get<uint64_t>();
  const std::string offsets_text =
      "[" + std::to_string(info.begin) + ", " + std::to_string(info.end) + "]";
  Require(info.begin <= info.end,
          where + " has data_offsets " + offsets_text + " that end before they begin");

  uint64_t needed = 0;
  Require(CheckedNumBytes(info.shape, info.dtype, &needed),
          where + " has shape " + ShapeString(info.shape) + " whose size overflows 64 bits");
  Require(info.end - info.begin == needed,
          where + " has data_offsets " + offsets_text + " but shape " + ShapeString(info.shape) +
              " x " + DTypeName(info.dtype) + " needs " + std::to_string(needed) + " bytes");
  Require(info.end <= data_size,
          where + " has data_offsets " + offsets_text + " past the end of the data section (" +
              std::to_string(data_size) + " bytes; the file may be truncated)");
  return info;
}

}  // namespace

int64_t TensorInfo::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // validated not to overflow when parsed
  return n;
}

// ---------------------------------------------------------------- MappedFile

std::shared_ptr<MappedFile> MappedFile::Open(const std::string& path) {
  // OpenRegularFile opens without blocking (a FIFO in place of a weight file
  // would otherwise hang here forever) and refuses folders, FIFOs and devices.
  const int fd = OpenRegularFile(path, UINT64_MAX, "file");
  // The descriptor is not needed once mapped (the mapping keeps the file
  // alive), so it is closed on every path out of this function.
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};

  struct stat st;
  if (::fstat(fd, &st) != 0) {
    throw Error("cannot stat '" + path + "': " + std::strerror(errno));
  }

  std::shared_ptr<MappedFile> file(new MappedFile());
  file->path_ = path;
  file->size_ = static_cast<size_t>(st.st_size);
  if (file->size_ == 0) return file;  // mmap rejects length 0

  void* p = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) {
    throw Error("cannot memory-map '" + path + "': " + std::strerror(errno));
  }
  file->data_ = static_cast<const uint8_t*>(p);
  // A read past the end of a file truncated while mapped raises SIGBUS; the
  // handler names the file (base/mapped_regions.h).
  InstallMappedFileFaultReport();
  RegisterMappedFile(p, file->size_, path);
  // Every weight is read on every forward pass, so ask the kernel to start
  // reading the file in now rather than fault it in page by page later. This
  // is only advice; failure is harmless.
  ::madvise(p, file->size_, MADV_WILLNEED);
  return file;
}

MappedFile::~MappedFile() {
  UnregisterMappedFile(data_);
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

// ---------------------------------------------------------------- parsing

SafetensorsHeader ParseSafetensors(const uint8_t* bytes, size_t size, const std::string& origin) {
  Require(size >= 8, origin + " is too short to be a safetensors file (" + std::to_string(size) +
                         " bytes; the 8-byte header length alone needs 8)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];  // little-endian
  Require(header_len <= kMaxHeaderBytes,
          origin + " declares a header of " + std::to_string(header_len) +
              " bytes, more than the 100 MB limit; it is not a safetensors file or is corrupt");
  Require(header_len <= size - 8,
          origin + " declares a header of " + std::to_string(header_len) + " bytes but only " +
              std::to_string(size - 8) +
              " bytes follow the length prefix; the file is truncated or corrupt");

  const uint8_t* header_begin = bytes + 8;
  const uint8_t* header_end = header_begin + header_len;
  const json root = ParseHeaderJson(header_begin, header_end, origin);
  Require(root.is_object(), origin + ": the header JSON is not an object");

  SafetensorsHeader result;
  result.data_section_offset = 8 + header_len;
  const uint64_t data_size = size - result.data_section_offset;

  for (const auto& [name, value] : root.items()) {
    if (name == "__metadata__") {
      Require(value.is_object(), origin + ": \"__metadata__\" is not a JSON object");
      for (const auto& [key, v] : value.items()) {
        Require(v.is_string(), origin + ": \"__metadata__\" entry '" + key + "' is not a string (" +
                                   Excerpt(v) + ")");
        result.metadata[key] = v.get<std::string>();
      }
      continue;
    }
    result.tensors.push_back(ParseEntry(name, value, data_size, origin));
  }

  // File order, which is also the order needed for the overlap check.
  std::sort(result.tensors.begin(), result.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              if (a.begin != b.begin) return a.begin < b.begin;
              if (a.end != b.end) return a.end < b.end;
              return a.name < b.name;
            });
  // Tensors with no bytes occupy no range and cannot overlap anything.
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& t : result.tensors) {
    if (t.begin == t.end) continue;
    if (previous != nullptr && previous->end > t.begin) {
      throw Error(origin + ": tensors '" + previous->name + "' [" +
                  std::to_string(previous->begin) + ", " + std::to_string(previous->end) +
                  ") and '" + t.name + "' [" + std::to_string(t.begin) + ", " +
                  std::to_string(t.end) + ") overlap in the data section");
    }
    previous = &t;
  }
  return result;
}

std::vector<TensorInfo> ParseSafetensorsHeader(const uint8_t* bytes, size_t size,
                                               const std::string& origin,
                                               uint64_t* data_section_offset) {
  SafetensorsHeader header = ParseSafetensors(bytes, size, origin);
  if (data_section_offset != nullptr) *data_section_offset = header.data_section_offset;
  return std::move(header.tensors);
}

// ---------------------------------------------------------------- SafetensorsFile

std::unique_ptr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->file_ = MappedFile::Open(path);
  SafetensorsHeader header = ParseSafetensors(file->file_->data(), file->file_->size(), path);
  const uint8_t* data_section = file->file_->data() + header.data_section_offset;
  for (TensorInfo& t : header.tensors) t.data = data_section + t.begin;
  file->tensors_ = std::move(header.tensors);
  file->metadata_ = std::move(header.metadata);
  return file;
}

// ---------------------------------------------------------------- TensorStore

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

// Reads model.safetensors.index.json and returns its weight_map.
std::map<std::string, std::string> ReadWeightMap(const std::string& index_path) {
  // A real index is a few hundred KB even for the largest checkpoints.
  const std::string text = ReadRegularFile(index_path, kMaxTokenizerFileBytes, "the shard index");
  json index;
  try {
    index = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(index_path + " is not valid JSON (" + JsonErrorText(e) + ")");
  }
  Require(index.is_object(), index_path + " is not a JSON object");
  const auto map_it = index.find("weight_map");
  Require(map_it != index.end() && map_it->is_object(),
          index_path + " has no \"weight_map\" object");
  std::map<std::string, std::string> weight_map;
  for (const auto& [name, shard] : map_it->items()) {
    Require(shard.is_string(),
            index_path + " maps tensor '" + name + "' to " + Excerpt(shard) + ", not a file name");
    const std::string& shard_name = shard.get_ref<const std::string&>();
    // Shards live beside the index; a path here would let an index point
    // anywhere on disk.
    Require(!shard_name.empty() && shard_name != "." && shard_name != ".." &&
                shard_name.find('/') == std::string::npos,
            index_path + " maps tensor '" + name + "' to '" + shard_name +
                "', which is not a plain file name in the model folder");
    weight_map[name] = shard_name;
  }
  Require(!weight_map.empty(), index_path + " lists no tensors in its \"weight_map\"");
  return weight_map;
}

}  // namespace

std::unique_ptr<TensorStore> TensorStore::OpenDir(const std::string& model_dir) {
  std::error_code ec;
  epwa::Require(fs::exists(model_dir, ec), "model folder '" + model_dir + "' does not exist");
  epwa::Require(fs::is_directory(model_dir, ec),
                "model folder '" + model_dir + "' is not a folder");

  std::unique_ptr<TensorStore> store(new TensorStore());
  store->dir_ = model_dir;
  const fs::path dir(model_dir);

  // Opens one file and adds all its tensors, refusing a name seen before.
  auto add_file = [&](const std::string& path) -> const SafetensorsFile& {
    store->shards_.push_back(SafetensorsFile::Open(path));
    store->files_.push_back(path);
    const SafetensorsFile& file = *store->shards_.back();
    for (const TensorInfo& t : file.tensors()) {
      auto [it, inserted] = store->by_name_.emplace(t.name, &t);
      if (!inserted) {
        throw Error("tensor '" + t.name + "' is stored twice in model folder '" + model_dir +
                    "': in " + it->second->file + " and in " + t.file);
      }
    }
    return file;
  };

  const fs::path index_path = dir / kIndexName;
  if (fs::exists(index_path, ec)) {
    const std::map<std::string, std::string> weight_map = ReadWeightMap(index_path.string());
    // Shard name -> tensors the index says it holds, opened in name order.
    std::map<std::string, std::vector<std::string>> shards;
    for (const auto& [tensor, shard] : weight_map) shards[shard].push_back(tensor);
    for (const auto& [shard, tensor_names] : shards) {
      const fs::path shard_path = dir / shard;
      epwa::Require(fs::exists(shard_path, ec),
                    index_path.string() + " lists shard '" + shard + "' (for tensor '" +
                        tensor_names.front() + "') but " + shard_path.string() + " does not exist");
      const SafetensorsFile& file = add_file(shard_path.string());
      std::set<std::string> present;
      for (const TensorInfo& t : file.tensors()) present.insert(t.name);
      for (const std::string& name : tensor_names) {
        epwa::Require(present.count(name) != 0, index_path.string() + " says tensor '" + name +
                                                    "' is in " + shard_path.string() +
                                                    ", but that file does not contain it");
      }
    }
    return store;
  }

  const fs::path single_path = dir / kSingleName;
  if (fs::exists(single_path, ec)) {
    add_file(single_path.string());
    return store;
  }
  // fs::exists follows links, so a link to a missing blob (a Hugging Face
  // cache whose download did not finish) or a link loop lands here: say so
  // rather than claim there are no weights.
  if (fs::is_symlink(fs::symlink_status(single_path, ec))) {
    std::error_code target_ec;
    const fs::path target = fs::read_symlink(single_path, target_ec);
    (void)fs::status(single_path, ec);
    throw Error(single_path.string() + " is a symbolic link to '" + target.string() +
                "', which cannot be opened (" +
                (ec ? ec.message() : std::string("missing")) +
                "); the download may be incomplete");
  }

  std::vector<std::string> candidates;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, ec)) {
    if (entry.path().extension() == ".safetensors" && entry.is_regular_file(ec)) {
      candidates.push_back(entry.path().string());
    }
  }
  std::sort(candidates.begin(), candidates.end());
  epwa::Require(!candidates.empty(), "no .safetensors weights in '" + model_dir +
                                         "' (expected model.safetensors or "
                                         "model.safetensors.index.json)");
  if (candidates.size() > 1) {
    std::string list;
    for (const std::string& c : candidates) list += (list.empty() ? "" : ", ") + c;
    throw Error("model folder '" + model_dir + "' holds several .safetensors files (" + list +
                ") but no model.safetensors.index.json saying which tensors each holds");
  }
  add_file(candidates.front());
  return store;
}

const TensorInfo* TensorStore::Find(const std::string& name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

const TensorInfo& TensorStore::Require(const std::string& name,
                                       const std::vector<int64_t>& shape) const {
  const TensorInfo* t = Find(name);
  if (t == nullptr) {
    throw Error("tensor '" + name + "' is missing from model folder '" + dir_ + "'");
  }
  if (t->shape != shape) {
    throw Error(t->file + ": tensor '" + name + "' has shape " + ShapeString(t->shape) +
                " but shape " + ShapeString(shape) + " was expected");
  }
  return *t;
}

std::vector<const TensorInfo*> TensorStore::All() const {
  std::vector<const TensorInfo*> all;
  all.reserve(by_name_.size());
  for (const auto& [name, info] : by_name_) all.push_back(info);  // map order = by name
  return all;
}

uint64_t TensorStore::TotalBytes() const {
  uint64_t total = 0;
  for (const auto& [name, info] : by_name_) total += info->NumBytes();
  return total;
}

// ---------------------------------------------------------------- writing

void WriteSafetensors(const std::string& path, const std::vector<TensorSpec>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  WriteSafetensorsChunked(path, tensors, metadata, kSafetensorsWriteChunkBytes);
}

void WriteSafetensorsChunked(const std::string& path, const std::vector<TensorSpec>& tensors,
                             const std::map<std::string, std::string>& metadata,
                             size_t max_chunk_bytes) {
  // Lay the tensors out and build the header before touching the disk, so
  // that a bad spec fails without creating anything.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header["__metadata__"] = std::move(meta);
  }
  std::vector<uint64_t> sizes;
  std::set<std::string> names;
  uint64_t data_bytes = 0;
  for (const TensorSpec& spec : tensors) {
    const std::string where = "writing " + path + ": tensor '" + spec.name + "'";
    Require(spec.name != "__metadata__", where + " uses the reserved name \"__metadata__\"");
    Require(names.insert(spec.name).second, where + " is declared more than once");
    uint64_t nbytes = 0;
    Require(CheckedNumBytes(spec.shape, spec.dtype, &nbytes),
            where + " has shape " + ShapeString(spec.shape) +
                ", which has a negative dimension or overflows 64 bits");
    Require(nbytes == 0 || static_cast<bool>(spec.fill), where + " has no fill function");
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = DTypeName(spec.dtype);
    entry["shape"] = spec.shape;
    entry["data_offsets"] = {data_bytes, data_bytes + nbytes};
    header[spec.name] = std::move(entry);
    sizes.push_back(nbytes);
    Require(!__builtin_add_overflow(data_bytes, nbytes, &data_bytes),
            "writing " + path + ": the tensors' total size overflows 64 bits");
  }
  std::string header_text = header.dump();
  // Spaces are JSON whitespace, so padding keeps the header valid while
  // aligning the data section to 8 bytes.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const uint64_t total_bytes = 8 + header_text.size() + data_bytes;

  // Refuse up front rather than fail hours into writing a large checkpoint.
  fs::path folder = fs::path(path).parent_path();
  if (folder.empty()) folder = ".";
  struct statvfs vfs;
  if (::statvfs(folder.c_str(), &vfs) != 0) {
    throw Error("cannot write " + path + ": folder '" + folder.string() +
                "' is not accessible: " + std::strerror(errno));
  }
  const uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  if (total_bytes > free_bytes) {
    throw Error("writing " + path + " needs " + HumanBytes(total_bytes) + " but only " +
                HumanBytes(free_bytes) + " are free on " + folder.string());
  }

  AtomicFile out(path);
  uint8_t prefix[8];
  for (int i = 0; i < 8; ++i)
    prefix[i] = static_cast<uint8_t>(uint64_t{header_text.size()} >> (8 * i));
  out.Write(prefix, sizeof prefix);
  out.Write(header_text.data(), header_text.size());

  std::unique_ptr<uint8_t[]> buffer;
  size_t buffer_size = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorSpec& spec = tensors[i];
    const uint64_t nbytes = sizes[i];
    if (nbytes == 0) continue;
    const size_t row_bytes =
        (spec.shape.empty() ? 1 : static_cast<size_t>(spec.shape.back())) * DTypeSize(spec.dtype);
    const size_t rows_per_chunk = std::max<size_t>(1, max_chunk_bytes / row_bytes);
    const size_t chunk =
        static_cast<size_t>(std::min<uint64_t>(nbytes, rows_per_chunk * row_bytes));
    if (chunk > buffer_size) {
      buffer = std::make_unique_for_overwrite<uint8_t[]>(chunk);
      buffer_size = chunk;
    }
    for (uint64_t offset = 0; offset < nbytes; offset += chunk) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk, nbytes - offset));
      spec.fill(buffer.get(), static_cast<size_t>(offset), n);
      out.Write(buffer.get(), n);
    }
  }
  out.Commit();
}

}  // namespace epwa
