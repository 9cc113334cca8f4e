#include "plan/weight_cache.h"

#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/file_read.h"
#include "base/temp_files.h"
#include "base/sha256.h"
#include "io/atomic_file.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kMagic[8] = {'E', 'P', 'W', 'A', 'Q', 'C', '1', '\n'};
constexpr uint64_t kAlign = 64;
// Format 1 kept each matrix's scales in an array after its codes; format 2
// stores each row's scales after its codes, the layout the model computes
// with (tensor/dtype.h). A file of another format is refused and rebuilt.
constexpr int kFormat = 2;
// Headers beyond this size are not ours (a cache of 100k matrices would need ~20 MB).
constexpr uint64_t kMaxHeaderBytes = 64ull << 20;

uint64_t AlignUp(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// The first `max_bytes` of a regular file (fewer if it is shorter). Opened
// without blocking, so a FIFO in place of the file is an error, not a hang.
std::string ReadHead(const std::string& path, uint64_t max_bytes) {
  const int fd = OpenRegularFile(path, UINT64_MAX, "file");
  std::string out(max_bytes, '\0');
  size_t have = 0;
  while (have < out.size()) {
    const ssize_t n = ::read(fd, out.data() + have, out.size() - have);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    have += static_cast<size_t>(n);
  }
  ::close(fd);
  out.resize(have);
  return out;
}

// The matrices of `plan` that the cache holds, with their current views.
struct Entry {
  const TensorPlan* plan;
  WeightView* view;
};
std::vector<Entry> CachedEntries(const ModelConfig& config, ModelWeights& weights,
                                 const std::vector<TensorPlan>& plan) {
  std::vector<MatrixSlot> slots = ListMatrices(config, weights);
  Require(slots.size() == plan.size(), "internal: the plan does not match the model's matrices");
  std::vector<Entry> out;
  for (size_t i = 0; i < plan.size(); ++i)
    if (IsQuantized(plan[i].target)) out.push_back({&plan[i], slots[i].view});
  return out;
}

std::string PlanIdentity(QuantLevel level, const std::vector<TensorPlan>& plan) {
  Sha256 h;
  h.AddString(std::string(QuantLevelName(level)));
  for (const TensorPlan& t : plan) {
    h.AddString(t.name);
    h.AddString(std::string(DTypeName(t.target)));
    h.AddU64(static_cast<uint64_t>(t.rows));
    h.AddU64(static_cast<uint64_t>(t.cols));
  }
  return h.Hex();
}

std::string Hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

std::string DefaultCacheDir() {
  if (const char* d = std::getenv("EPWA_CACHE_DIR"); d && *d) return d;
  if (const char* d = std::getenv("XDG_CACHE_HOME"); d && *d) return std::string(d) + "/epwa";
  if (const char* d = std::getenv("HOME"); d && *d) return std::string(d) + "/.cache/epwa";
  return "/tmp/epwa-cache";
}

std::string ModelIdentity(const std::string& model_dir, const TensorStore& store) {
  Sha256 h;
  h.AddString(ReadHead(model_dir + "/config.json", 1 << 20));
  for (const std::string& file : store.files()) {
    struct stat st {};
    Require(::stat(file.c_str(), &st) == 0, "cannot stat " + file);
    h.AddString(fs::path(file).filename().string());
    h.AddU64(static_cast<uint64_t>(st.st_size));
    h.AddU64(static_cast<uint64_t>(st.st_mtim.tv_sec) * 1000000000ull + st.st_mtim.tv_nsec);
    h.AddU64(static_cast<uint64_t>(st.st_ino));
    // The change time is set by the kernel on every write and on every
    // utime() call, and cannot be set back from user space: a file edited in
    // place whose mtime was then restored (same size, inode and mtime) still
    // gets a new identity. A chmod also changes it, which costs one needless
    // rebuild; hashing the content instead would cost a full read of the
    // checkpoint (17 GB for Qwen3-30B-A3B at int4 sources) on every load.
    h.AddU64(static_cast<uint64_t>(st.st_ctim.tv_sec) * 1000000000ull + st.st_ctim.tv_nsec);
    // The safetensors header: 8-byte length, then the JSON.
    std::string head = ReadHead(file, 8);
    uint64_t n = 0;
    if (head.size() == 8) std::memcpy(&n, head.data(), 8);
    h.AddString(ReadHead(file, 8 + std::min<uint64_t>(n, 100ull << 20)));
  }
  return h.Hex();
}

std::string CacheFilePath(const std::string& cache_dir, const std::string& model_id,
                          QuantLevel level, const std::vector<TensorPlan>& plan) {
  bool any = false;
  for (const TensorPlan& t : plan) any |= IsQuantized(t.target);
  if (!any) return "";
  return cache_dir + "/" + model_id.substr(0, 32) + "/" + QuantLevelName(level) + "-" +
         PlanIdentity(level, plan).substr(0, 16) + ".epwq";
}

namespace {

// nlohmann converts a floating-point field to an integer with a plain cast,
// which is undefined behaviour when the value is out of the integer's range
// (the fuzzer found "format": 8.9e32), so every integer field of the header
// is read through these, which accept only integers in range.
struct NotAnInteger {};
int64_t Signed(const json& v) {
  if (v.is_number_unsigned()) {
    if (v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) throw NotAnInteger{};
    return static_cast<int64_t>(v.get<uint64_t>());
  }
  if (!v.is_number_integer()) throw NotAnInteger{};
  return v.get<int64_t>();
}
uint64_t Unsigned(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (!v.is_number_integer() || v.get<int64_t>() < 0) throw NotAnInteger{};
  return static_cast<uint64_t>(v.get<int64_t>());
}

}  // namespace

bool ParseWeightCache(const uint8_t* base, uint64_t size, const std::string& model_id,
                      const std::vector<CachedMatrix>& expected, std::vector<WeightView>* views,
                      std::string* why) {
  auto fail = [&](const std::string& reason) {
    *why = reason;
    return false;
  };
  if (size < 16 || std::memcmp(base, kMagic, 8) != 0) return fail("not an epwa cache file (bad magic)");
  uint64_t header_len = 0;
  std::memcpy(&header_len, base + 8, 8);
  if (header_len == 0 || header_len > kMaxHeaderBytes || header_len > size - 16)
    return fail("header length out of range (truncated?)");
  const json header = json::parse(base + 16, base + 16 + header_len, nullptr, false);
  if (!header.is_object()) return fail("header is not valid JSON");
  const uint64_t payload_start = AlignUp(16 + header_len);
  try {
    if (const int64_t format = Signed(header.at("format")); format != kFormat)
      return fail("written in cache format " + std::to_string(format) + ", this epwa reads format " +
                  std::to_string(kFormat));
    if (header.at("model_id").get<std::string>() != model_id) return fail("written for another model");
    const uint64_t payload_bytes = Unsigned(header.at("payload_bytes"));
    if (payload_start > size || size - payload_start != payload_bytes)
      return fail("file size " + std::to_string(size) + " does not match its header (truncated?)");
    const json& tensors = header.at("tensors");
    if (!tensors.is_array() || tensors.size() != expected.size())
      return fail("tensor count differs from the plan");
    // Check everything before the caller changes any view.
    std::vector<WeightView> out;
    uint64_t next_offset = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
      const CachedMatrix& t = expected[i];
      const json& j = tensors[i];
      if (j.at("name").get<std::string>() != t.name || j.at("dtype").get<std::string>() != DTypeName(t.dtype) ||
          Signed(j.at("rows")) != t.rows || Signed(j.at("cols")) != t.cols)
        return fail("tensor " + std::to_string(i) + " does not match the plan (" + t.name + ")");
      const WeightView shape = WeightView::WithScalesInRows(t.dtype, nullptr, t.rows, t.cols);
      const uint64_t data_off = Unsigned(j.at("data").at(0));
      const uint64_t data_len = Unsigned(j.at("data").at(1));
      // Written so that no sum can wrap around: every offset is first checked
      // against payload_bytes, which is at most the file size.
      if (data_len != shape.Bytes() || data_off % kAlign || data_off < next_offset || data_off > payload_bytes ||
          data_len > payload_bytes - data_off)
        return fail("tensor " + t.name + " has bad offsets or lengths");
      next_offset = data_off + data_len;
      const WeightView v = WeightView::WithScalesInRows(t.dtype, base + payload_start + data_off, t.rows, t.cols);
      out.push_back(v);
    }
    const uint64_t digest = XXH3_64bits(base + payload_start, payload_bytes);
    if (Hex64(digest) != header.at("xxh3").get<std::string>()) return fail("checksum mismatch (corrupt)");
    *views = std::move(out);
  } catch (const NotAnInteger&) {
    return fail("malformed header (a field that must be an integer is not one, or is out of range)");
  } catch (const json::exception& e) {
    return fail(std::string("malformed header (") + e.what() + ")");
  }
  return true;
}

bool LoadWeightCache(const std::string& path, const std::string& model_id,
                     const ModelConfig& config, ModelWeights& weights,
                     const std::vector<TensorPlan>& plan, std::string* why) {
  std::error_code ec;
  // Temporary files of cache writers killed by SIGKILL (which no handler can
  // catch) would otherwise stay forever, each as big as the cache itself.
  RemoveStaleTempFiles(fs::path(path).parent_path().string());
  if (!fs::exists(fs::symlink_status(path, ec))) {
    *why = "no cache file yet";
    return false;
  }
  std::shared_ptr<MappedFile> file;
  try {
    file = MappedFile::Open(path);
  } catch (const Error& e) {
    *why = e.what();
    return false;
  }
  std::vector<Entry> entries = CachedEntries(config, weights, plan);
  std::vector<CachedMatrix> expected;
  for (const Entry& e : entries)
    expected.push_back({e.plan->name, e.plan->target, e.plan->rows, e.plan->cols});
  std::vector<WeightView> views;
  if (!ParseWeightCache(file->data(), file->size(), model_id, expected, &views, why)) return false;
  for (size_t i = 0; i < entries.size(); ++i) {
    // The source stays mapped but unused; the cache is now what is read in place.
    weights.mapped_bytes += views[i].Bytes() + views[i].ScaleBytes() - entries[i].view->Bytes();
    *entries[i].view = views[i];
  }
  weights.cache_mapping = file;
  return true;
}

void WriteWeightCache(const std::string& path, const std::string& model_id,
                      const ModelConfig& config, ModelWeights& weights,
                      const std::vector<TensorPlan>& plan) {
  std::vector<std::pair<std::string, WeightView>> matrices;
  for (const Entry& e : CachedEntries(config, weights, plan)) {
    Require(e.view->dtype == e.plan->target, "internal: " + e.plan->name + " is not materialized");
    matrices.emplace_back(e.plan->name, *e.view);
  }
  WriteWeightCacheFile(path, model_id, matrices);
}

void WriteWeightCacheFile(const std::string& path, const std::string& model_id,
                          const std::vector<std::pair<std::string, WeightView>>& matrices) {
  struct Item {
    const std::string* name;
    const WeightView* view;
  };
  std::vector<Item> entries;
  for (const auto& [name, view] : matrices) entries.push_back({&name, &view});
  // Offsets first, then the checksum of exactly the bytes that will follow
  // the header, then the file.
  json tensors = json::array();
  uint64_t offset = 0;
  std::vector<uint64_t> offsets;
  for (const Item& e : entries) {
    const WeightView& v = *e.view;
    Require(IsQuantized(v.dtype), "internal: only Q8, Q4 and NF4 matrices are cached (" + *e.name + ")");
    const uint64_t bytes = QuantizedBytes(v.dtype, v.rows, v.cols);
    offsets.push_back(offset);
    tensors.push_back({{"name", *e.name},
                       {"dtype", DTypeName(v.dtype)},
                       {"rows", v.rows},
                       {"cols", v.cols},
                       {"data", {offset, bytes}}});
    offset = AlignUp(offset + bytes);
  }
  const uint64_t payload_bytes = offset;
  static const uint8_t zeros[kAlign] = {};
  // Visits the payload in file order: (pointer, length) pieces. Each matrix
  // is written with every row's scales after its codes, whichever layout the
  // view has in memory.
  auto visit = [&](const auto& emit) {
    uint64_t at = 0;
    for (size_t i = 0; i < entries.size(); ++i) {
      const WeightView& v = *entries[i].view;
      emit(zeros, offsets[i] - at);
      if (v.scales_in_rows) {
        emit(v.data, v.Bytes());
      } else {
        for (int64_t r = 0; r < v.rows; ++r) {
          emit(v.Row(r), v.RowBytes());
          emit(v.F16ScaleRow(r), v.ScaleRowBytes());
        }
      }
      at = offsets[i] + QuantizedBytes(v.dtype, v.rows, v.cols);
    }
    emit(zeros, payload_bytes - at);
  };
  XXH3_state_t* state = XXH3_createState();
  Require(state != nullptr, "out of memory");
  XXH3_64bits_reset(state);
  visit([&](const void* p, uint64_t n) {
    if (n) XXH3_64bits_update(state, p, n);
  });
  const uint64_t digest = XXH3_64bits_digest(state);
  XXH3_freeState(state);

  const std::string header = json{{"format", kFormat},
                                  {"model_id", model_id},
                                  {"plan_id", fs::path(path).stem().string()},
                                  {"payload_bytes", payload_bytes},
                                  {"xxh3", Hex64(digest)},
                                  {"tensors", tensors}}
                                 .dump();
  fs::create_directories(fs::path(path).parent_path());
  AtomicFile out(path);
  out.Write(kMagic, 8);
  const uint64_t header_len = header.size();
  out.Write(&header_len, 8);
  out.Write(header.data(), header.size());
  out.Write(zeros, AlignUp(16 + header_len) - (16 + header_len));
  visit([&](const void* p, uint64_t n) {
    if (n) out.Write(p, n);
  });
  out.Commit();
}

}  // namespace epwa
