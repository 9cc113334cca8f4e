// epwa tokenize: the model tokenizer's ids for a text, or the text for ids.
#include <cstdio>

#include "base/error.h"
#include "base/file_read.h"
#include "cli.h"
#include "tokenizer/utf8.h"

namespace epwa::cli {
namespace {

// Batch mode, one process for many texts (tests compare whole corpora against
// other tokenizers this way). Every non-blank line gets its own output line,
// so that one malformed line costs only its own result: a bad line prints
// {"error": "FILE:LINE: ..."} in its place, the good lines print their
// results as usual, and the command then fails (exit 1) naming how many
// lines failed.
int TokenizeJsonLines(const Tokenizer& tok, const std::string& path, bool special,
                      bool skip_special) {
  const std::string input = ReadRegularFile(path, kMaxTextInputBytes, "the --jsonl file");
  std::string out;
  size_t line_no = 0;
  size_t lines = 0;
  size_t failed = 0;
  std::string first_error;
  for (size_t pos = 0; pos < input.size();) {
    size_t end = input.find('\n', pos);
    if (end == std::string::npos) end = input.size();
    const std::string line = input.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    ++lines;
    const std::string where = path + ":" + std::to_string(line_no);
    try {
      // nlohmann refuses invalid UTF-8 as malformed JSON; say what it is.
      Require(tokenizer_internal::IsValidUtf8(line), where + ": the line is not valid UTF-8");
      json item = json::parse(line, nullptr, /*allow_exceptions=*/false);
      Require(!item.is_discarded(), where + ": the line is not valid JSON");
      if (item.is_string()) {
        out += json(tok.Encode(item.get<std::string>(), special)).dump() + "\n";
      } else if (item.is_array()) {
        std::vector<int32_t> ids;
        for (const json& v : item) {
          Require(v.is_number_integer() && v.get<int64_t>() >= 0 &&
                      v.get<int64_t>() < tok.VocabSize(),
                  where + ": ids must be integers in [0, " + std::to_string(tok.VocabSize()) + ")");
          ids.push_back(v.get<int32_t>());
        }
        out += json(tok.Decode(ids, skip_special)).dump(-1, ' ', false,
                                                         json::error_handler_t::replace) +
               "\n";
      } else {
        throw Error(where +
                    ": expected a JSON string (to encode) or an array of ids (to decode)");
      }
    } catch (const Error& e) {
      std::string message = e.what();
      // Errors from the tokenizer name the tokenizer file; add the line.
      if (message.rfind(where, 0) != 0) message = where + ": " + message;
      out += json{{"error", message}}.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
      if (failed++ == 0) first_error = message;
    }
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  if (failed > 0) {
    std::fflush(stdout);
    throw Error(std::to_string(failed) + " of " + std::to_string(lines) + " lines of " + path +
                " failed (their output lines are {\"error\": ...} objects); the first: " +
                first_error);
  }
  return 0;
}

}  // namespace

Runner RegisterTokenize(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize", "encode text to ids or decode ids to text");
  struct Flags {
    std::string model_dir, tokenizer_path, text, file, decode, jsonl;
    bool special = false, skip_special = false, json = false;
  };
  auto f = std::make_shared<Flags>();
  auto* m = cmd->add_option("-m,--model", f->model_dir, "model folder holding tokenizer.json")
                ->envname("EPW_MODEL_PATH");
  auto* tk = cmd->add_option("--tokenizer", f->tokenizer_path, "a tokenizer.json file");
  tk->excludes(m);
  auto* text = cmd->add_option("--text", f->text, "text to encode");
  auto* file = cmd->add_option("--file", f->file, "file whose text to encode");
  auto* dec = cmd->add_option("--decode", f->decode, "ids to decode, e.g. 1,2,3");
  auto* jsonl = cmd->add_option(
      "--jsonl", f->jsonl,
      "batch mode: each line of the file is a JSON string (printed back as its ids, a JSON "
      "array) or a JSON array of ids (printed back as its text, a JSON string); a line that "
      "fails prints {\"error\": \"FILE:LINE: ...\"} instead, the other lines still print "
      "their results, and the command then exits 1");
  text->excludes(file)->excludes(dec)->excludes(jsonl);
  file->excludes(dec)->excludes(jsonl);
  dec->excludes(jsonl);
  cmd->add_flag("--special", f->special, "encode with the tokenizer's special tokens (e.g. BOS)");
  cmd->add_flag("--skip-special", f->skip_special, "leave special tokens out when decoding");
  cmd->add_flag("--json", f->json, "print {\"ids\": [...], \"tokens\": [...]}");

  return [f, text, file, dec, jsonl]() {
    Require(text->count() + file->count() + dec->count() + jsonl->count() == 1,
            "tokenize needs one of --text, --file, --decode or --jsonl");
    std::string path = f->tokenizer_path;
    if (path.empty()) {
      Require(!f->model_dir.empty(), "tokenize needs -m MODEL_DIR or --tokenizer tokenizer.json");
      path = f->model_dir + "/tokenizer.json";
    }
    auto tok = Tokenizer::FromFile(path);
    std::vector<int32_t> ids;
    if (jsonl->count()) return TokenizeJsonLines(*tok, f->jsonl, f->special, f->skip_special);
    if (dec->count()) {
      ids = ParseIdList(f->decode, "--decode");
      for (int32_t id : ids)
        Require(id < tok->VocabSize(), "token id " + std::to_string(id) +
                                           " is outside the tokenizer's vocabulary of " +
                                           std::to_string(tok->VocabSize()));
      std::string out = tok->Decode(ids, /*skip_special_tokens=*/f->skip_special);
      if (f->json) {
        PrintJson(json{{"ids", ids}, {"text", out}});
      } else {
        std::fwrite(out.data(), 1, out.size(), stdout);
        std::printf("\n");
      }
      return 0;
    }
    // A regular file only, of bounded size: a folder, FIFO or /dev/urandom is
    // refused instead of read forever.
    const std::string input =
        file->count() ? ReadRegularFile(f->file, kMaxTextInputBytes, "the --file text") : f->text;
    ids = tok->Encode(input, f->special);
    std::vector<std::string> pieces;
    for (int32_t id : ids) pieces.push_back(tok->IdToPiece(id));
    if (f->json) {
      PrintJson(json{{"ids", ids}, {"tokens", pieces}});
    } else {
      std::string line;
      for (size_t k = 0; k < ids.size(); ++k) line += (k ? "," : "") + std::to_string(ids[k]);
      std::printf("%s\n", line.c_str());
    }
    return 0;
  };
}

}  // namespace epwa::cli
