// Hugging Face tokenizer.json, both families used by MoE models:
//  * SentencePiece-style BPE with byte fallback (Llama, Mistral, Mixtral):
//    Metaspace pre-tokenizer or Prepend+Replace normalizers, "<0xNN>" byte
//    tokens, decoders Replace/ByteFallback/Fuse/Strip or Metaspace.
//  * Byte-level BPE with regex pre-tokenization (GPT-2, GPT-NeoX/OLMoE, Qwen,
//    Granite, DeepSeek): ByteLevel pre-tokenizer/decoder, Split with a regex,
//    NFC.
// Added tokens (special or not) are matched on the raw text before the
// normalizer and BPE, as the reference library does. Character classes,
// normalization and case follow the reference's own Unicode data, which
// differs from that of PCRE2 and utf8proc (see unicode_data.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace epwa {

class Tokenizer {
 public:
  // Throws epwa::Error naming the file and the offending field for malformed
  // JSON, unsupported model types or components. FromFile reads only a
  // regular file of at most kMaxTokenizerFileBytes (a folder, FIFO or device
  // is refused as such); FromJson loads from memory (`origin` names the
  // source in messages).
  static std::unique_ptr<Tokenizer> FromFile(const std::string& path);
  static std::unique_ptr<Tokenizer> FromJson(std::string_view json, const std::string& origin);
  ~Tokenizer();

  // add_special_tokens applies the post_processor (e.g. BOS for Mistral).
  // The regexes of all stages together may spend a budget proportional to
  // the text's length and no stage may grow the text past 64 bytes per input
  // byte (plus 1 MiB); beyond either, Encode throws epwa::Error naming the
  // file and the pattern or stage, instead of running for hours.
  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens = false) const;
  // As the reference decode(ids, skip_special_tokens). Invalid UTF-8 from byte
  // tokens becomes U+FFFD, as in the reference. Throws on out-of-range ids.
  std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // Number of ids (max id + 1 over the vocabulary and added tokens).
  int32_t VocabSize() const;
  // An upper bound on the number of input bytes that one token can stand for
  // (the longest vocabulary entry or added token, counted in the input bytes
  // it spells: one per character of a ByteLevel alphabet, scaled up where a
  // normalizer can shrink text). A text of more than n * MaxTokenBytes()
  // bytes therefore always encodes to more than n tokens, which lets a
  // caller refuse an input that can never fit a context before encoding it.
  // SIZE_MAX when no bound exists: a stage deletes text (Strip, Replace with
  // a regex or a shorter content, splits that remove delimiters), added
  // tokens strip whitespace, or unknown characters are fused or dropped.
  size_t MaxTokenBytes() const;
  // The vocabulary string of an id ("▁Hello", "<0x0A>", "Ġworld"); throws if out of range.
  const std::string& IdToPiece(int32_t id) const;
  std::optional<int32_t> PieceToId(std::string_view piece) const;
  bool IsSpecial(int32_t id) const;

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Trains a small SentencePiece-style BPE (Metaspace "▁", prepend_scheme first,
// byte_fallback, tokens <unk>=0, <s>=1, </s>=2, then the 256 "<0xNN>" byte
// tokens, then merged pieces) on `text` and returns the tokenizer.json text,
// with exactly vocab_size tokens (padded with "<reserved_N>" pieces if the
// text runs out of merges). It exists so that epwa's seeded random test
// models get a real, loadable tokenizer without any downloaded files.
//
// Deterministic: the most frequent pair is merged first, ties broken by the
// lexicographic order of (left piece, right piece). Pairs seen only once are
// not merged. decode(encode(text)) == text holds for any UTF-8 text except
// for the reference's own quirks: a leading space is dropped (" a" encodes
// like "a") and a literal "▁" decodes as a space. Throws epwa::Error when
// vocab_size is below 260 (the special and byte tokens plus "▁").
std::string TrainByteFallbackBpeJson(std::string_view text, int32_t vocab_size);

// A Mistral-like tokenizer_config.json to go with TrainByteFallbackBpeJson:
// bos "<s>", eos "</s>", unk "<unk>", add_bos_token true, add_eos_token false.
std::string TokenizerConfigJson();

}  // namespace epwa
