// epwa tokenize: the model tokenizer's ids for a text, or the text for ids.
#include <cstdio>

#include "base/error.h"
#include "cli.h"

namespace epwa::cli {

Runner RegisterTokenize(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize", "encode text to ids or decode ids to text");
  struct Flags {
    std::string model_dir, tokenizer_path, text, file, decode;
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
  text->excludes(file)->excludes(dec);
  file->excludes(dec);
  cmd->add_flag("--special", f->special, "encode with the tokenizer's special tokens (e.g. BOS)");
  cmd->add_flag("--skip-special", f->skip_special, "leave special tokens out when decoding");
  cmd->add_flag("--json", f->json, "print {\"ids\": [...], \"tokens\": [...]}");

  return [f, text, file, dec]() {
    Require(text->count() + file->count() + dec->count() == 1,
            "tokenize needs one of --text, --file or --decode");
    std::string path = f->tokenizer_path;
    if (path.empty()) {
      Require(!f->model_dir.empty(), "tokenize needs -m MODEL_DIR or --tokenizer tokenizer.json");
      path = f->model_dir + "/tokenizer.json";
    }
    auto tok = Tokenizer::FromFile(path);
    std::vector<int32_t> ids;
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
    const std::string input = file->count() ? ReadTextFile(f->file) : f->text;
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
