// Writes float32 arrays as NumPy .npy (format version 1.0), atomically.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace epwa {

void WriteNpyF32(const std::string& path, const float* data, const std::vector<int64_t>& shape);
// Reads a little-endian float32 C-order .npy file (for tests and tools).
std::vector<float> ReadNpyF32(const std::string& path, std::vector<int64_t>* shape);
// The same from `size` bytes in memory; `path` names them in messages. Throws
// epwa::Error for anything that is not a valid float32 .npy.
std::vector<float> ParseNpyF32(const uint8_t* bytes, size_t size, const std::string& path,
                               std::vector<int64_t>* shape);

}  // namespace epwa
