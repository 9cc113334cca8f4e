// NumPy .npy reading and writing for float32 arrays.
//
// Format (https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html):
// the magic "\x93NUMPY", a major and minor version byte, a little-endian
// header length (2 bytes in version 1.0, 4 in 2.0 and 3.0), then a Python
// dict literal with 'descr', 'fortran_order' and 'shape', padded with spaces
// and ending in '\n' so that the data starts on a 64-byte boundary.

#include "io/npy.h"

#include <bit>
#include <cstring>
#include <string_view>

#include "base/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace epwa {
namespace {

static_assert(std::endian::native == std::endian::little,
              "npy I/O writes host floats as '<f4' and assumes a little-endian host");

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
constexpr size_t kAlign = 64;

std::string ShapeTuple(const std::vector<int64_t>& shape) {
  // Python's repr of a tuple: "()", "(5,)", "(2, 3)".
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

// A reader for the one Python literal numpy writes as the header: a dict
// whose keys are strings and whose values are strings, booleans or tuples of
// integers.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& path) : text_(text), path_(path) {}

  void Parse(std::string* descr, bool* fortran_order, std::vector<int64_t>* shape) {
    bool have_descr = false, have_order = false, have_shape = false;
    Expect('{');
    while (true) {
      SkipSpace();
      if (Peek() == '}') break;
      const std::string key = ParseString();
      Expect(':');
      SkipSpace();
      if (key == "descr") {
        *descr = ParseString();
        have_descr = true;
      } else if (key == "fortran_order") {
        *fortran_order = ParseBool();
        have_order = true;
      } else if (key == "shape") {
        *shape = ParseTuple();
        have_shape = true;
      } else {
        Fail("has an unexpected key '" + key + "'");
      }
      SkipSpace();
      if (Peek() == ',') {
        ++pos_;
        continue;
      }
      if (Peek() != '}') Fail("has a malformed header dict");
    }
    ++pos_;
    if (!have_descr || !have_order || !have_shape) {
      Fail("has a header without 'descr', 'fortran_order' and 'shape'");
    }
  }

 private:
  [[noreturn]] void Fail(const std::string& what) const {
    throw Error(path_ + " " + what + " (header: " + std::string(text_) + ")");
  }
  char Peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  void SkipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t')) ++pos_;
  }
  void Expect(char c) {
    SkipSpace();
    if (Peek() != c) Fail(std::string("has a malformed header dict (expected '") + c + "')");
    ++pos_;
  }
  std::string ParseString() {
    SkipSpace();
    const char quote = Peek();
    if (quote != '\'' && quote != '"') Fail("has a malformed header dict (expected a string)");
    const size_t end = text_.find(quote, pos_ + 1);
    if (end == std::string_view::npos) Fail("has an unterminated string in its header");
    std::string s(text_.substr(pos_ + 1, end - pos_ - 1));
    pos_ = end + 1;
    return s;
  }
  bool ParseBool() {
    if (text_.substr(pos_, 4) == "True") {
      pos_ += 4;
      return true;
    }
    if (text_.substr(pos_, 5) == "False") {
      pos_ += 5;
      return false;
    }
    Fail("has a 'fortran_order' that is neither True nor False");
  }
  std::vector<int64_t> ParseTuple() {
    std::vector<int64_t> dims;
    Expect('(');
    while (true) {
      SkipSpace();
      if (Peek() == ')') break;
      if (Peek() < '0' || Peek() > '9') Fail("has a 'shape' that is not a tuple of integers");
      int64_t d = 0;
      while (Peek() >= '0' && Peek() <= '9') {
        if (__builtin_mul_overflow(d, 10, &d) || __builtin_add_overflow(d, Peek() - '0', &d)) {
          Fail("has a dimension too large for 64 bits");
        }
        ++pos_;
      }
      // numpy writes Python ints; very old files may carry an "L" suffix.
      if (Peek() == 'L') ++pos_;
      dims.push_back(d);
      SkipSpace();
      if (Peek() == ',') {
        ++pos_;
        continue;
      }
      if (Peek() != ')') Fail("has a 'shape' that is not a tuple of integers");
    }
    ++pos_;
    return dims;
  }

  std::string_view text_;
  const std::string& path_;
  size_t pos_ = 0;
};

}  // namespace

void WriteNpyF32(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  uint64_t numel = 1;
  for (int64_t d : shape) {
    Require(d >= 0,
            "writing " + path + ": shape " + ShapeTuple(shape) + " has a negative dimension");
    Require(!__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel) &&
                numel <= (uint64_t{1} << 61),
            "writing " + path + ": shape " + ShapeTuple(shape) + " is too large");
  }
  Require(numel == 0 || data != nullptr, "writing " + path + ": no data given");

  std::string header =
      "{'descr': '<f4', 'fortran_order': False, 'shape': " + ShapeTuple(shape) + ", }";
  // Pad with spaces so that magic (6) + version (2) + length (2) + header,
  // including its final '\n', is a multiple of 64, as numpy does.
  const size_t unpadded = kMagicLen + 4 + header.size() + 1;
  header.append((kAlign - unpadded % kAlign) % kAlign, ' ');
  header += '\n';
  Require(header.size() <= 0xffff, "writing " + path + ": shape " + ShapeTuple(shape) +
                                       " has too many dimensions for an .npy header");

  AtomicFile out(path);
  out.Write(kMagic, kMagicLen);
  const uint8_t version_and_len[4] = {1, 0, static_cast<uint8_t>(header.size() & 0xff),
                                      static_cast<uint8_t>(header.size() >> 8)};
  out.Write(version_and_len, sizeof version_and_len);
  out.Write(header.data(), header.size());
  if (numel > 0) out.Write(data, numel * sizeof(float));
  out.Commit();
}

std::vector<float> ReadNpyF32(const std::string& path, std::vector<int64_t>* shape) {
  const std::shared_ptr<MappedFile> file = MappedFile::Open(path);
  return ParseNpyF32(file->data(), file->size(), path, shape);
}

std::vector<float> ParseNpyF32(const uint8_t* bytes, size_t size, const std::string& path,
                               std::vector<int64_t>* shape) {

  Require(size >= kMagicLen + 4 && std::memcmp(bytes, kMagic, kMagicLen) == 0,
          path + " is not a NumPy .npy file (it does not start with \\x93NUMPY)");
  const uint8_t major = bytes[6];
  size_t header_len = 0;
  size_t header_start = 0;
  if (major == 1) {
    header_len = bytes[8] | (size_t{bytes[9]} << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    Require(size >= 12, path + " is truncated inside its .npy header");
    header_len =
        bytes[8] | (size_t{bytes[9]} << 8) | (size_t{bytes[10]} << 16) | (size_t{bytes[11]} << 24);
    header_start = 12;
  } else {
    throw Error(path + " uses .npy format version " + std::to_string(major) +
                ", which epwa does not read (1.0 to 3.0 are supported)");
  }
  Require(header_len <= size - header_start, path + " is truncated inside its .npy header");

  std::string_view header(reinterpret_cast<const char*>(bytes + header_start), header_len);
  while (!header.empty() &&
         (header.back() == '\n' || header.back() == ' ' || header.back() == '\0')) {
    header.remove_suffix(1);
  }
  std::string descr;
  bool fortran_order = false;
  std::vector<int64_t> dims;
  HeaderParser(header, path).Parse(&descr, &fortran_order, &dims);

  Require(descr == "<f4", path + " holds dtype '" + descr +
                              "', but only little-endian float32 ('<f4') is supported");
  Require(!fortran_order || dims.size() <= 1,
          path + " is stored in Fortran (column-major) order, which is not supported");

  uint64_t numel = 1;
  for (int64_t d : dims) {
    Require(!__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel) &&
                numel <= (uint64_t{1} << 61),
            path + " has shape " + ShapeTuple(dims) + ", which is too large");
  }
  const size_t data_start = header_start + header_len;
  const uint64_t data_bytes = size - data_start;
  Require(data_bytes == numel * sizeof(float),
          path + " has " + std::to_string(data_bytes) + " bytes of data but shape " +
              ShapeTuple(dims) + " x float32 needs " + std::to_string(numel * sizeof(float)));

  std::vector<float> values(numel);
  if (numel > 0) std::memcpy(values.data(), bytes + data_start, numel * sizeof(float));
  if (shape != nullptr) *shape = std::move(dims);
  return values;
}

}  // namespace epwa
