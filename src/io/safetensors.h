// Reading (memory-mapped, zero-copy) and writing safetensors checkpoints.
//
// Format: an 8-byte little-endian header length N, N bytes of JSON mapping
// tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// relative to the end of the header) plus an optional "__metadata__" object
// of strings, then the raw little-endian tensor bytes.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tensor/dtype.h"

namespace epwa {

// A read-only memory mapping of a whole file, shared through shared_ptr so
// that every tensor view keeps it alive. Not copyable; unmaps on destruction.
// An empty file is represented by data() == nullptr and size() == 0, because
// mmap refuses a length of zero.
// Drops the pages of [data, data + bytes) inside a read-only file mapping from
// this process's resident memory (madvise MADV_DONTNEED on the whole pages
// inside the range). Later reads fault them back in from the file. Used after
// a tensor has been converted, so that the source and its copy are not both
// resident for the rest of the run.
void ReleaseMappedPages(const void* data, size_t bytes);

class MappedFile {
 public:
  // Throws epwa::Error naming the path if it cannot be opened or mapped.
  static std::shared_ptr<MappedFile> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data section
  uint64_t end = 0;
  const uint8_t* data = nullptr;  // points into the mapping; set by SafetensorsFile
  std::string file;               // file name it came from, for messages

  int64_t NumElements() const;
  size_t NumBytes() const { return static_cast<size_t>(end - begin); }
};

// Parses and fully validates a safetensors header held in `bytes`, which
// must be the whole file (`size` is the file size: the data section is
// everything after the header, and offsets are checked against it). Checks:
// the length prefix fits in the file (and is at most 100 MB), the JSON is
// well formed and an object, "__metadata__" (if present) is an object of
// strings, no name appears twice, every entry has a known dtype, a shape of
// non-negative integers and two offsets, shape x dtype size == end - begin,
// every range lies in the data section, and ranges do not overlap. Throws
// epwa::Error naming `origin` and the tensor. Tensors come back in data
// offset order (file order); TensorInfo::data is left null and
// TensorInfo::file is set to `origin`. *data_section_offset receives 8 + N.
// This is the fuzzed entry point: it must never read outside
// [bytes, bytes + size).
std::vector<TensorInfo> ParseSafetensorsHeader(const uint8_t* bytes, size_t size,
                                               const std::string& origin,
                                               uint64_t* data_section_offset = nullptr);

// The same as ParseSafetensorsHeader, also returning the "__metadata__"
// strings.
struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
  uint64_t data_section_offset = 0;
};
SafetensorsHeader ParseSafetensors(const uint8_t* bytes, size_t size, const std::string& origin);

// One opened, validated safetensors file.
class SafetensorsFile {
 public:
  static std::unique_ptr<SafetensorsFile> Open(const std::string& path);
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return file_->path(); }

 private:
  std::shared_ptr<MappedFile> file_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a model folder: either model.safetensors, or the shards
// listed in model.safetensors.index.json ("weight_map": name -> shard file).
// With neither, a lone *.safetensors file in the folder is accepted.
class TensorStore {
 public:
  static std::unique_ptr<TensorStore> OpenDir(const std::string& model_dir);

  // nullptr when absent.
  const TensorInfo* Find(const std::string& name) const;
  // The tensor, checked to exist with exactly `shape`; otherwise throws
  // epwa::Error naming the file, the tensor, and expected vs actual shape.
  const TensorInfo& Require(const std::string& name, const std::vector<int64_t>& shape) const;
  // Every tensor, sorted by name.
  std::vector<const TensorInfo*> All() const;
  // Total bytes of tensor data across shards.
  uint64_t TotalBytes() const;
  // Paths of the opened safetensors files, in the order they were opened.
  const std::vector<std::string>& files() const { return files_; }

 private:
  std::string dir_;  // the model folder, for messages
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, const TensorInfo*> by_name_;
  std::vector<std::string> files_;
};

// Writes a safetensors file tensor by tensor without holding the data in
// memory: the header is computed from the declared tensors up front (its JSON
// padded with spaces to a multiple of 8 bytes, as the reference
// implementation does, so the data section starts 8-byte aligned), then the
// tensors are laid out back to back in declaration order, each tensor's
// bytes produced by its callback. Free space on the target folder is checked
// first, and the file appears atomically (written to a temporary name, then
// renamed), so a failure never leaves a partial file behind.
struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  // Fills out[0, nbytes) with bytes [offset_bytes, offset_bytes + nbytes) of
  // the tensor's raw little-endian, row-major data. Called on a buffer reused
  // across calls, in increasing offset order, with chunks of at most about
  // 64 MB that cover the tensor exactly once. Chunk boundaries fall on whole
  // rows (a row is the last dimension x the dtype size; a single row larger
  // than the chunk limit comes as one chunk). Not called for a tensor with no
  // elements, and may then be left empty.
  std::function<void(uint8_t* out, size_t offset_bytes, size_t nbytes)> fill;
};
void WriteSafetensors(const std::string& path, const std::vector<TensorSpec>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// The chunk limit WriteSafetensors uses, and a variant taking another limit
// so that tests can exercise chunking with small tensors.
inline constexpr size_t kSafetensorsWriteChunkBytes = size_t{64} << 20;
void WriteSafetensorsChunked(const std::string& path, const std::vector<TensorSpec>& tensors,
                             const std::map<std::string, std::string>& metadata,
                             size_t max_chunk_bytes);

}  // namespace epwa
