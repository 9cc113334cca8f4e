#include "tokenizer/text_stream.h"

#include <algorithm>

namespace epwa {

TextStream::TextStream(const Tokenizer& tok, std::span<const int32_t> prompt) : tok_(tok) {
  const size_t keep = std::min<size_t>(prompt.size(), 4);
  ids_.assign(prompt.end() - keep, prompt.end());
  prefix_ = Decoded();
}

// Special tokens (BOS, EOS) are control symbols, not text to show.
std::string TextStream::Decoded() const { return tok_.Decode(ids_, /*skip_special_tokens=*/true); }

std::string TextStream::Text() const {
  const std::string full = Decoded();
  if (full.compare(0, prefix_.size(), prefix_) != 0) return full;
  return full.substr(prefix_.size());
}

std::string TextStream::Push(int32_t token) {
  ids_.push_back(token);
  const std::string full = Decoded();
  if (full.compare(0, prefix_.size(), prefix_) != 0) return "";
  const std::string text = full.substr(prefix_.size());
  // Hold back a trailing replacement character: the next byte token may
  // complete it.
  static const std::string kReplacement = "\xEF\xBF\xBD";
  size_t end = text.size();
  if (end >= 3 && text.compare(end - 3, 3, kReplacement) == 0) end -= 3;
  if (end <= printed_) return "";
  std::string delta = text.substr(printed_, end - printed_);
  printed_ = end;
  return delta;
}

std::string TextStream::Flush() {
  const std::string full = Decoded();
  if (full.size() < prefix_.size() + printed_) return "";
  std::string rest = full.substr(prefix_.size() + printed_);
  printed_ += rest.size();
  return rest;
}

}  // namespace epwa
