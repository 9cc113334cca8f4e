#include "tokenizer/json_document.h"

#include <cstdint>

#include "base/error.h"

namespace epwa::tokenizer_internal {
namespace {

using Json = nlohmann::json;

// SAX handler that builds a DOM like nlohmann's own json_sax_dom_parser, but
// diverts model.vocab and model.merges into TokenizerJsonDocument's vectors.
// Returning false from any callback stops the parse; `error_` then says why.
class TokenizerSax {
 public:
  TokenizerSax(TokenizerJsonDocument* doc, const std::string& origin)
      : doc_(doc), origin_(origin) {}

  const std::string& error() const { return error_; }

  bool null() { return Scalar(Json(nullptr)); }
  bool boolean(bool value) { return Scalar(Json(value)); }
  bool number_integer(Json::number_integer_t value) {
    if (mode_ == Mode::kVocab) return VocabId(value);
    return Scalar(Json(value));
  }
  bool number_unsigned(Json::number_unsigned_t value) {
    if (mode_ == Mode::kVocab) {
      return VocabId(value > static_cast<uint64_t>(INT64_MAX) ? -1 : static_cast<int64_t>(value));
    }
    return Scalar(Json(value));
  }
  bool number_float(Json::number_float_t value, const Json::string_t& /*text*/) {
    return Scalar(Json(value));
  }
  bool binary(Json::binary_t& /*value*/) { return Fail("binary values are not JSON"); }

  bool string(Json::string_t& value) {
    switch (mode_) {
      case Mode::kDom:
        return Scalar(Json(std::move(value)));
      case Mode::kVocab:
        return Fail("field 'model.vocab' maps \"" + vocab_key_ + "\" to a string instead of an id");
      case Mode::kMerges: {
        // The legacy form "a b": the pair is split at the first space, as the
        // reference does.
        const size_t space = value.find(' ');
        if (space == std::string::npos) {
          return Fail("field 'model.merges[" + std::to_string(doc_->merges.size()) + "]' (\"" +
                      value + "\") is not two tokens separated by a space");
        }
        doc_->merges.emplace_back(value.substr(0, space), value.substr(space + 1));
        return true;
      }
      case Mode::kMergePair:
        pair_parts_.push_back(std::move(value));
        return true;
    }
    return true;
  }

  bool start_object(std::size_t /*size*/) {
    if (mode_ != Mode::kDom) return WrongShape();
    if (IsModelMember("vocab")) {
      *slot_ = Json::object();
      doc_->has_vocab = true;
      mode_ = Mode::kVocab;
      return true;
    }
    Json* value = Place(Json::object());
    stack_.push_back(value);
    keys_.emplace_back();
    return true;
  }

  bool key(Json::string_t& name) {
    if (mode_ == Mode::kVocab) {
      vocab_key_ = std::move(name);
      return true;
    }
    keys_.back() = name;
    slot_ = &(*stack_.back())[name];
    return true;
  }

  bool end_object() {
    if (mode_ == Mode::kVocab) {
      mode_ = Mode::kDom;
      return true;
    }
    stack_.pop_back();
    keys_.pop_back();
    return true;
  }

  bool start_array(std::size_t /*size*/) {
    if (mode_ == Mode::kMerges) {
      mode_ = Mode::kMergePair;
      pair_parts_.clear();
      return true;
    }
    if (mode_ != Mode::kDom) return WrongShape();
    if (IsModelMember("merges")) {
      *slot_ = Json::array();
      doc_->has_merges = true;
      mode_ = Mode::kMerges;
      return true;
    }
    Json* value = Place(Json::array());
    stack_.push_back(value);
    keys_.emplace_back();
    return true;
  }

  bool end_array() {
    if (mode_ == Mode::kMergePair) {
      if (pair_parts_.size() != 2) {
        return Fail("field 'model.merges[" + std::to_string(doc_->merges.size()) +
                    "]' is not a pair of two token strings");
      }
      doc_->merges.emplace_back(std::move(pair_parts_[0]), std::move(pair_parts_[1]));
      mode_ = Mode::kMerges;
      return true;
    }
    if (mode_ == Mode::kMerges) {
      mode_ = Mode::kDom;
      return true;
    }
    stack_.pop_back();
    keys_.pop_back();
    return true;
  }

  bool parse_error(std::size_t position, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& ex) {
    // nlohmann's message starts with an "[json.exception...]" tag that means
    // nothing to a user; keep the human part.
    std::string message = ex.what();
    const size_t tag_end = message.find("] ");
    if (tag_end != std::string::npos) message = message.substr(tag_end + 2);
    error_ = origin_ + " is not valid JSON (byte " + std::to_string(position) + ": " + message + ").";
    return false;
  }

 private:
  enum class Mode { kDom, kVocab, kMerges, kMergePair };

  // True when the container about to start is the member `name` of the
  // top-level "model" object.
  bool IsModelMember(const char* name) const {
    return stack_.size() == 2 && keys_[0] == "model" && stack_[1]->is_object() && keys_[1] == name;
  }

  Json* Place(Json&& value) {
    if (stack_.empty()) {
      doc_->root = std::move(value);
      return &doc_->root;
    }
    if (stack_.back()->is_array()) {
      stack_.back()->push_back(std::move(value));
      return &stack_.back()->back();
    }
    *slot_ = std::move(value);
    return slot_;
  }

  bool Scalar(Json&& value) {
    if (mode_ != Mode::kDom) return WrongShape();
    Place(std::move(value));
    return true;
  }

  bool VocabId(int64_t id) {
    doc_->vocab.emplace_back(std::move(vocab_key_), id);
    vocab_key_.clear();
    return true;
  }

  bool WrongShape() {
    if (mode_ == Mode::kVocab) {
      return Fail("field 'model.vocab' maps \"" + vocab_key_ + "\" to something other than an id");
    }
    return Fail("field 'model.merges[" + std::to_string(doc_->merges.size()) +
                "]' is neither a \"a b\" string nor a pair of two token strings");
  }

  bool Fail(const std::string& problem) {
    error_ = origin_ + ": " + problem + ".";
    return false;
  }

  TokenizerJsonDocument* doc_;
  std::string origin_;
  std::string error_;
  std::vector<Json*> stack_;
  // The most recent key of each open object (empty for arrays).
  std::vector<std::string> keys_;
  Json* slot_ = nullptr;
  Mode mode_ = Mode::kDom;
  std::string vocab_key_;
  std::vector<std::string> pair_parts_;
};

}  // namespace

TokenizerJsonDocument ParseTokenizerJson(std::string_view json, const std::string& origin) {
  TokenizerJsonDocument doc;
  TokenizerSax sax(&doc, origin);
  const bool ok = Json::sax_parse(json.begin(), json.end(), &sax, Json::input_format_t::json,
                                  /*strict=*/true);
  if (!ok) {
    throw Error(sax.error().empty() ? origin + " is not valid JSON." : sax.error());
  }
  return doc;
}

}  // namespace epwa::tokenizer_internal
