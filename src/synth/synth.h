// `epwa synth`: writes a Hugging Face model folder with the shape of a real
// (or a small test) model and seeded random weights.
//
// Random weights give meaningless text but honest speed, memory and load
// figures, and small seeded models are the fixtures the independent
// reference forward pass is checked on. Every value is a pure function of
// (seed, tensor name, element index), so the output is identical on every
// machine and can be produced in any order, in parallel, and streamed to
// disk without ever holding the model in memory.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "tensor/dtype.h"

namespace epwa {

struct SynthOptions {
  std::string preset;
  // Instead of a preset: a real config.json, whose shape and fields are kept
  // (with num_hidden_layers cut to `layers` when that is set).
  std::string config_path;
  std::string out_dir;
  int64_t layers = 0;  // 0 = the preset's own layer count
  DType dtype = DType::kBF16;
  uint64_t seed = 1;
  bool force = false;  // replace an existing folder
  uint64_t shard_bytes = 5ull << 30;  // about 5 GB per shard, like real checkpoints
};

std::vector<std::string> SynthPresetNames();
// Throws epwa::Error listing the presets for an unknown name.
ModelConfig SynthPreset(const std::string& name);

// The value of element `index` of tensor `name` before dtype rounding:
// uniform in [-sqrt(3), sqrt(3)) (unit variance), from SplitMix64 keyed by
// SynthTensorKey(seed, name) (FNV-1a of the name mixed with the seed).
uint64_t SynthTensorKey(uint64_t seed, const std::string& name);
float SynthUnitValue(uint64_t tensor_key, uint64_t index);

// Writes the folder (config.json, generation_config.json, tokenizer.json,
// tokenizer_config.json, model.safetensors or shards + index). The folder
// appears complete or not at all. Returns the bytes of tensor data written.
uint64_t WriteSynthModel(const SynthOptions& options);

}  // namespace epwa
