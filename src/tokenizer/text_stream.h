// Incremental detokenization for streaming output.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace epwa {

// Streams the text of generated tokens. SentencePiece decoders drop the
// leading space of the first token and byte-fallback or byte-level tokens may
// end in the middle of a UTF-8 character, so the text is always decoded with
// a few prompt tokens in front and only complete characters are released.
class TextStream {
 public:
  TextStream(const Tokenizer& tok, std::span<const int32_t> prompt);
  // Returns the newly completed text after appending `token`.
  std::string Push(int32_t token);
  // Everything not yet returned, including a trailing incomplete character
  // (as U+FFFD): the end of the stream.
  std::string Flush();
  // All text of the generated tokens so far (complete or not).
  std::string Text() const;

 private:
  std::string Decoded() const;

  const Tokenizer& tok_;
  std::vector<int32_t> ids_;
  std::string prefix_;
  size_t printed_ = 0;
};

}  // namespace epwa
