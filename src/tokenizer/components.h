// The pipeline stages of a Hugging Face tokenizer.json other than the model:
// normalizers, pre-tokenizers, decoders and post-processors. Each is built
// from its JSON node; unsupported types are refused with an epwa::Error that
// names the file and the field.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace epwa::tokenizer_internal {

// Where a JSON node came from, for error messages: the file and the dotted
// path of the field, e.g. "pre_tokenizer.pretokenizers[1]".
struct JsonPlace {
  const std::string& origin;
  std::string path;

  JsonPlace Child(const std::string& key) const { return {origin, path + "." + key}; }
  JsonPlace Index(size_t i) const { return {origin, path + "[" + std::to_string(i) + "]"}; }
  [[noreturn]] void Fail(const std::string& problem) const;
};

// Accessors that check presence and type and fail with the field's path.
const nlohmann::json& RequireMember(const nlohmann::json& node, const char* key, const JsonPlace& place);
std::string RequireString(const nlohmann::json& node, const char* key, const JsonPlace& place);
std::string OptionalString(const nlohmann::json& node, const char* key, const JsonPlace& place,
                           const std::string& fallback);
bool OptionalBool(const nlohmann::json& node, const char* key, const JsonPlace& place, bool fallback);
int64_t RequireInt(const nlohmann::json& node, const char* key, const JsonPlace& place);

// One piece of text moving through the pre-tokenizers. `at_origin` is true
// when the piece starts at offset 0 of the original input, which is what
// Metaspace's prepend_scheme "first" tests.
struct TextSplit {
  std::string text;
  bool at_origin = false;
};

// What a pipeline stage does to the number of input bytes that one token can
// stand for (Tokenizer::MaxTokenBytes). Stages that can only grow the text or
// split it leave it alone.
struct Coverage {
  // True when the stage can delete or compress input without limit (Strip,
  // a Replace with a regex or with a shorter content, splits that remove
  // their delimiters): then no bound exists.
  bool unbounded = false;
  // Each normalized byte stands for at most this many input bytes.
  size_t shrink = 1;
  // True when a ByteLevel pre-tokenizer maps every input byte to one
  // character of the byte alphabet.
  bool byte_level = false;
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void Normalize(std::string* text) const = 0;
  virtual void DescribeCoverage(Coverage* coverage) const = 0;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `splits` with their finer splits; empty pieces are dropped.
  virtual void PreTokenize(std::vector<TextSplit>* splits) const = 0;
  virtual void DescribeCoverage(Coverage* coverage) const = 0;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Transforms the token strings, as the reference's decode_chain does; the
  // final text is the concatenation of what is left.
  virtual void DecodeChain(std::vector<std::string>* tokens) const = 0;
};

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Called only when add_special_tokens is true.
  virtual void AddSpecialTokens(std::vector<int32_t>* ids) const = 0;
};

// Whether a token id exists (in the vocabulary or among the added tokens).
using IdCheck = std::function<bool(int32_t)>;

// Factories. A null node yields nullptr (the stage is absent). Sequence
// components may nest at most 32 levels deep and a stage may hold at most
// 256 components; deeper or larger stages are refused with an epwa::Error
// naming the file, the stage and the limit. The post-processor's special-token
// ids must pass `id_exists` (when it is set).
std::unique_ptr<Normalizer> MakeNormalizer(const nlohmann::json& node, const JsonPlace& place);
std::unique_ptr<PreTokenizer> MakePreTokenizer(const nlohmann::json& node, const JsonPlace& place);
std::unique_ptr<Decoder> MakeDecoder(const nlohmann::json& node, const JsonPlace& place);
std::unique_ptr<PostProcessor> MakePostProcessor(const nlohmann::json& node, const JsonPlace& place,
                                                 const IdCheck& id_exists = nullptr);

}  // namespace epwa::tokenizer_internal
