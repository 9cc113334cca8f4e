// Reference encoder/decoder for verify_bytelevel_tokenizer.py: the Hugging Face `tokenizers`
// library (Rust, through the npm package @anush008/tokenizers, which bundles tokenizers 0.22).
//
//   NODE_PATH=/tmp/tokjs/node_modules node tools/train/hf_tokenize.js TOKENIZER_JSON IN.jsonl OUT.jsonl
//
// Each input line is a JSON string (text). Each output line is
// {"ids": encode(text, addSpecialTokens=false), "decoded": decode(ids, skipSpecial=false)}.
// Install once with: mkdir -p /tmp/tokjs && cd /tmp/tokjs && npm install @anush008/tokenizers
const { Tokenizer } = require('@anush008/tokenizers');
const fs = require('fs');

async function main() {
  const [tokPath, inPath, outPath] = process.argv.slice(2);
  const tok = Tokenizer.fromFile(tokPath);
  const lines = fs.readFileSync(inPath, 'utf8').split('\n').filter((l) => l.length > 0);
  const out = [];
  for (const line of lines) {
    const text = JSON.parse(line);
    const enc = await tok.encode(text, null, { addSpecialTokens: false });
    const ids = Array.from(enc.getIds());
    out.push(JSON.stringify({ ids, decoded: await tok.decode(ids, false) }));
  }
  fs.writeFileSync(outPath, out.join('\n') + '\n');
}

main().catch((e) => { console.error(e); process.exit(1); });
