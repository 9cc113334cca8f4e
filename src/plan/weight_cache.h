// An on-disk cache of quantized weights, so that the second load of a model
// at an int level costs about as much as reading the cache file.
//
// One file per (model, plan): <cache dir>/<model id>/<level>-<plan id>.epwq.
// The model id is a SHA-256 over config.json and, for every safetensors shard,
// its name, size, modification and change times, inode and header (no weight
// is read);
// the plan id a SHA-256 over the planned format of every matrix. Files are
// written atomically (temp file + rename), validated completely on read
// (magic, header, every tensor's name, format, shape, offsets and length,
// file size, and an XXH3-64 checksum of the whole payload) and are safe to
// delete at any time. A file that fails validation is reported, removed and
// rebuilt, never used.
//
// Layout (little-endian):
//   bytes 0-7    magic "EPWAQC1\n"
//   bytes 8-15   u64 header length H
//   bytes 16..   H bytes of JSON: {"format":2, "model_id", "plan_id",
//                "payload_bytes", "xxh3" (16 hex digits), "tensors": [{"name",
//                "dtype", "rows", "cols", "data": [offset, bytes]}...]}
//   zero padding to a multiple of 64, then the payload: each tensor at a
//   64-byte aligned offset (relative to the payload start) in header order,
//   zero padding between them. A tensor is its rows in order, each row's
//   codes followed by its fp16 scales (WeightView::WithScalesInRows), so the
//   mapped file is used in place in the layout the kernels read.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/config.h"
#include "model/weights.h"
#include "plan/memory_plan.h"

namespace epwa {

// $EPWA_CACHE_DIR, else $XDG_CACHE_HOME/epwa, else $HOME/.cache/epwa.
std::string DefaultCacheDir();

// Hex SHA-256 identity of a model folder from its metadata (see above).
std::string ModelIdentity(const std::string& model_dir, const TensorStore& store);

// The cache file for `plan` (only matrices planned in a quantized format are
// cached); empty when the plan quantizes nothing.
std::string CacheFilePath(const std::string& cache_dir, const std::string& model_id,
                          QuantLevel level, const std::vector<TensorPlan>& plan);

// Maps `path` and points every quantized matrix of `plan` at it. Returns false
// with the reason in *why when the file is absent or fails validation (then
// nothing in `weights` has changed). The mapping is kept alive by `weights`.
bool LoadWeightCache(const std::string& path, const std::string& model_id,
                     const ModelConfig& config, ModelWeights& weights,
                     const std::vector<TensorPlan>& plan, std::string* why);

// One matrix a cache file must hold, in file order.
struct CachedMatrix {
  std::string name;
  DType dtype;
  int64_t rows, cols;
};

// Validates a whole cache file held in memory (`base`, `size` bytes) against
// `model_id` and the matrices it must hold, and returns a view of each into
// `base` (nothing is copied). Returns false with the reason in *why on any
// defect; never reads outside [base, base + size). The part of
// LoadWeightCache that interprets untrusted bytes, and what the fuzzer runs.
bool ParseWeightCache(const uint8_t* base, uint64_t size, const std::string& model_id,
                      const std::vector<CachedMatrix>& expected, std::vector<WeightView>* views,
                      std::string* why);

// Writes `matrices` (quantized views) as a cache file at `path`, atomically.
void WriteWeightCacheFile(const std::string& path, const std::string& model_id,
                          const std::vector<std::pair<std::string, WeightView>>& matrices);

// Writes the quantized matrices of `weights` (already materialized to `plan`)
// to `path` atomically. Throws epwa::Error on failure (e.g. a full disk); the
// caller decides whether that matters.
void WriteWeightCache(const std::string& path, const std::string& model_id,
                      const ModelConfig& config, ModelWeights& weights,
                      const std::vector<TensorPlan>& plan);

}  // namespace epwa
