#include "tokenizer/text_stream.h"

#include <algorithm>

namespace epwa {

TextStream::TextStream(const Tokenizer& tok, std::span<const int32_t> prompt) : tok_(tok) {
  const size_t keep = std::min<size_t>(prompt.size(), kContextTokens);
  ids_.assign(prompt.end() - keep, prompt.end());
  prefix_ = Decoded();
  window_released_ = prefix_;
}

// Special tokens (BOS, EOS) are control symbols, not text to show.
std::string TextStream::Decoded() const { return tok_.Decode(ids_, /*skip_special_tokens=*/true); }

std::string TextStream::DecodedWindow() const {
  return tok_.Decode(std::span<const int32_t>(ids_).subspan(window_begin_), /*skip_special_tokens=*/true);
}

std::string TextStream::Text() const {
  const std::string full = Decoded();
  if (full.compare(0, prefix_.size(), prefix_) != 0) return full;
  return full.substr(prefix_.size());
}

std::string TextStream::Push(int32_t token) {
  ids_.push_back(token);
  const std::string text = DecodedWindow();
  // A new token that changes the text already released (a decoder merging
  // across the boundary) releases nothing until the text settles.
  if (text.compare(0, window_released_.size(), window_released_) != 0) return "";
  // Hold back trailing replacement characters: the next byte token may
  // complete them. All of them, since byte-fallback decoders give one per
  // byte of an unfinished character (two after the first two bytes of a
  // three-byte character), which the old single-character hold-back
  // released half-formed.
  static const std::string kReplacement = "\xEF\xBF\xBD";
  size_t end = text.size();
  while (end >= window_released_.size() + 3 && text.compare(end - 3, 3, kReplacement) == 0) end -= 3;
  const bool held_back = end < text.size();
  if (end <= window_released_.size()) return "";
  std::string delta = text.substr(window_released_.size(), end - window_released_.size());
  if (held_back) {
    window_released_ = text.substr(0, end);
  } else {
    // Everything is released: the window restarts from the last few tokens,
    // whose text is the context for the next ones. It must not start inside
    // a character: a byte-fallback decoder turns a whole run of byte tokens
    // into replacement characters when the run is not valid UTF-8, so a run
    // cut at its start would stay broken after the character completes.
    // The context starts where its own text is the end of the released text
    // (a cut character's is not), stepping back a token at a time; at worst
    // it stays where it was, whose text is all of `text`.
    const size_t old_begin = window_begin_;
    window_begin_ = std::max(old_begin, ids_.size() - std::min(ids_.size(), kContextTokens));
    for (;;) {
      window_released_ = DecodedWindow();
      const bool suffix = window_released_.size() <= text.size() &&
                          text.compare(text.size() - window_released_.size(), std::string::npos, window_released_) == 0;
      if (suffix || window_begin_ == old_begin) break;
      --window_begin_;
    }
  }
  return delta;
}

std::string TextStream::Flush() {
  const std::string text = DecodedWindow();
  if (text.size() < window_released_.size()) return "";
  std::string rest = text.substr(window_released_.size());
  window_released_ = text;
  return rest;
}

}  // namespace epwa
