// Regenerates {mistral,olmoe}/extra_vectors.jsonl with the reference Hugging
// Face tokenizers library (Rust, via the npm package @anush008/tokenizers):
//
//   cd /tmp && npm install @anush008/tokenizers
//   NODE_PATH=/tmp/node_modules node tests/data/tokenizers/make_extra_vectors.js ../shared
//
// Encode lines: {"text", "add_special_tokens", "ids", "decoded",
// "decoded_skip_special"} where ids = encode(text, add_special_tokens) and
// decoded / decoded_skip_special = decode(ids, false / true).
// Decode-only lines (no "text"): {"ids", "decoded", "decoded_skip_special"}.
const { Tokenizer } = require('@anush008/tokenizers');
const fs = require('fs');
const path = require('path');

const shared = process.argv[2] || '../shared';
const outDir = __dirname;

const texts = [
  // Accents, precomposed and with combining marks (NFC matters for OLMoE).
  'café crème brûlée', 'cafe\u0301 cre\u0300me bru\u0302le\u0301e', 'A\u030A vs \u00C5 vs \u212B',
  'Ångström naïveté coöperate', 'ǅemal İstanbul ΣΊΣΥΦΟΣ ς', 'Straße ẞ ﬁ ﬂ ﬃ',
  // CJK, Korean, Thai, Arabic, Hebrew, Devanagari, Cyrillic.
  '日本語のテキストです。', '中文测试，标点符号！', '한국어 문장입니다', 'ภาษาไทยไม่มีช่องว่าง',
  'مرحبا بالعالم', 'שלום עולם', 'नमस्ते दुनिया', 'Привет, мир!', '混合 mixed テキスト text 123',
  // Emoji, including ZWJ sequences, skin tones and flags.
  '😀😃😄', 'family: 👨‍👩‍👧‍👦', 'thumbs 👍🏽 up', 'flags 🇫🇷🇯🇵', 'emoji mid😀word', '🦀🐍☕',
  // Numbers and math.
  '0', '42', '007', '3.14159265358979', '-1e+10', '1,234,567.89', '½ ¾ ² ³ ① Ⅻ', '١٢٣ ٤٥٦', '2024-01-31T12:34:56Z',
  // Code.
  'int main() { return 0; }', 'def f(x):\n\treturn x ** 2\n', 'if (a && b || !c) { x->y[i] = *p; }',
  'const s = `template ${value}`;', '<div class="a">Hello</div>', 'SELECT * FROM t WHERE id = 1;',
  '#include <vector>\nstd::vector<int> v{1, 2, 3};', 'https://example.com/path?q=1&r=2#frag',
  // Whitespace runs.
  ' ', '  ', '   ', '    ', '     x', 'x     ', 'a \t b', '\t\t\t', '\n', '\r\n', '\n\n\n', ' \n \n ',
  'line1\nline2\r\nline3', 'tab\there', '\u00a0nbsp\u00a0', 'ideographic\u3000space', 'a\u2028b\u2029c',
  '                         25 spaces', 'x' + ' '.repeat(40) + 'y',
  // Special tokens inside text.
  '<s>', '</s>', '<unk>', '<s>Hello</s>', 'Hello <s> world </s> end', '<s><s></s></s>', '<s> leading',
  'trailing </s>', '<|endoftext|>', 'text<|endoftext|>more', '<|endoftext|><|endoftext|>', '<|padding|>x',
  '<s', 's>', '</s', '<|endoftext|', 'a<unk>b',
  // Contractions and casing.
  "I'm you're he's we've they'd she'll can't", "IT'S DON'T", 'ALL CAPS SENTENCE', 'camelCaseIdentifier snake_case_name',
  // Byte-ish and odd characters.
  '\u0000nul', '\u007f del', 'zero\u200bwidth', 'bom\ufeffhere', 'replacement \ufffd char', '▁already▁metaspace',
  'ĠĊ byte-level lookalikes', '<0x41> literal byte token text',
  // A longer mixed paragraph.
  'The quick brown fox — naïvely — jumped over 13 lazy dogs (and 2 cats!) at 09:45; ' +
      'then it said: "こんにちは" and left. 🎉\n\tEnd of paragraph.',
];

// Decode-only id sequences: invalid UTF-8 from byte tokens, specials, mixes.
const decodeOnly = {
  mistral: [[1], [2], [0], [1, 22557, 2], [28705], [28705, 28705], [259, 259], [200], [200, 200],
            [231, 135, 181], [231, 135], [244, 162, 148], [1, 200, 2], [13, 13], [22557, 1, 1526]],
  olmoe: [[0], [1], [0, 12092, 0], [158], [158, 158], [4467], [50254], [50276, 12092], [209, 209],
          [187, 187], [12092, 1, 1533]],
};

async function main() {
  for (const name of ['mistral', 'olmoe']) {
    const tok = Tokenizer.fromFile(path.join(shared, 'data', 'tokenizers', name, 'tokenizer.json'));
    const lines = [];
    for (const text of texts) {
      for (const add of [false, true]) {
        // add_special_tokens only changes Mistral (BOS), so OLMoE gets one line.
        if (add && name !== 'mistral') continue;
        const ids = Array.from((await tok.encode(text, null, { addSpecialTokens: add })).getIds());
        lines.push(JSON.stringify({
          text, add_special_tokens: add, ids,
          decoded: await tok.decode(ids, false),
          decoded_skip_special: await tok.decode(ids, true),
        }));
      }
    }
    for (const ids of decodeOnly[name]) {
      lines.push(JSON.stringify({
        ids, decoded: await tok.decode(ids, false), decoded_skip_special: await tok.decode(ids, true),
      }));
    }
    fs.mkdirSync(path.join(outDir, name), { recursive: true });
    fs.writeFileSync(path.join(outDir, name, 'extra_vectors.jsonl'), lines.join('\n') + '\n');
    console.log(`${name}: ${lines.length} vectors`);
  }
}
main();
