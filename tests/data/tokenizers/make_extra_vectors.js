// Regenerates {mistral,olmoe,qwen3,granite,mixtral}/extra_vectors.jsonl with
// the reference Hugging Face tokenizers library (Rust, via the npm package
// @anush008/tokenizers, which bundles tokenizers 0.22):
//
//   cd /tmp && npm install @anush008/tokenizers
//   NODE_PATH=/tmp/node_modules node tests/data/tokenizers/make_extra_vectors.js ../shared
//
// Encode lines: {"text", "add_special_tokens", "ids", "decoded",
// "decoded_skip_special", "tokens"} where ids = encode(text,
// add_special_tokens), tokens are the vocabulary strings of the ids and
// decoded / decoded_skip_special = decode(ids, false / true).
// Decode-only lines (no "text"): {"ids", "decoded", "decoded_skip_special"}.
const { Tokenizer } = require('@anush008/tokenizers');
const fs = require('fs');
const path = require('path');

const shared = process.argv[2] || '../shared';
const outDir = __dirname;

// The original list; new texts go into moreTexts below so that the lines
// made from these keep their order in the older files.
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

// Added with the Qwen3, Granite and Mixtral files.
const moreTexts = [
  // Combining marks that NFC composes, reorders or (for exclusions and
  // singletons) changes in other ways.
  'n\u0303o a\u0323\u0302 a\u0302\u0323 o\u0308\u0304', '\u1E9B\u0323 vs \u017F\u0323\u0307',
  '\u1112\u1161\u11AB\u1100\u1173\u11AF (jamo) vs 한글', '\uF900\uF901 \u2126hm \u212Aelvin \u00C5',
  '\u0915\u093C \u0958 (nukta, composition exclusion)', 'q\u0307\u0323 x\u0301\u0301 \u0301leading mark',
  '\u304B\u3099 \u304C \u30CF\u309A (kana voicing marks)', 'e\u0301\u0327 \u0229\u0301',
  '\u0627\u0653 \u0622 \u0648\u0654 \u0624 (Arabic madda, hamza)', 'Ελλάδα \u03B1\u0301 \u1F71',
  // CJK and other scripts beyond the basic plane.
  '这是一个很长的中文句子，用来测试分词器是否正确处理汉字。', '東京都渋谷区神南１丁目', 'ｆｕｌｌｗｉｄｔｈ　ＡＢＣ１２３！',
  '𠀀𠀁𠀂 𪜀 𫝀 (CJK extension B-D)', '〜「引用」『二重』【括弧】・…', '가나다라마바사 아자차카타파하',
  'Tiếng Việt có dấu: người, được, những', 'ქართული ენა', 'Հայերեն', 'ᐃᓄᒃᑎᑐᑦ', '\u{11F04}\u{11F05} \u{1E4D0}\u{1E4D1}',
  // Emoji beyond the earlier ones.
  '👩🏽‍💻 🏳️‍🌈 #️⃣ 1️⃣ ©️', '🫠🪿🫎 newer emoji', '😀'.repeat(12), 'a😀b😀c 😀 d',
  // Digit runs, in several scripts.
  '1234567890', '1 12 123 1234 12345 123456', 'x1y22z333w4444', '３．１４１５', '٣٤٥ ۴۵۶ ১২৩ ๑๒๓',
  'Ⅷ ⅷ ↉ ⅓ ²³¹', '10,000,000,000', '0.000001 1e100 1E-5', 'v1.2.3-beta+4', '$1,299.99 50% #123 €5',
  'ISBN 978-3-16-148410-0', '1'.repeat(40), 'year 2025, page 42, line 7',
  // Whitespace runs and newlines in every combination the Qwen regex treats
  // differently (\s*[\r\n]+, \s+(?!\S), \s+).
  '\r', '\r\r\n\n', 'a\n\n\n\nb', 'abc   \n  def', ' \t\n', '\t \t', '  \n  \n  ', 'x\u2003y\u2002z',
  '\u0085nel', '\u000b\u000c', 'a \u00a0 b', 'end   ', '\n\nparagraph\n\n', 'word\n', ' word', '  word',
  '\u3000\u3000全角', 'lines\r\n\r\n', ' '.repeat(100), '\n'.repeat(30), '\t'.repeat(9) + 'x',
  'a \n b \r\n c', '\n \n', 'x\n\ty', ' !', '  !!', ' \n!', '! \n', '.\n\n', ':\r\n',
  // Contractions, in every case and with other apostrophes.
  "DON'T I'M YOU'LL WE'D THEY'VE IT'S", "don’t it’s (curly)", "'s 's 'S 'sS", "rock'n'roll o'clock",
  "''quoted''", "it's' I'm'll", "Let's y'all'd've", " 'll 'LL 'Re 'rE", "'", "''", "l'amour d'accord",
  // Code.
  'for i in range(10):\n    print(i)\n', '    indented\n        more\n', 'x+=1;y-=2;z*=3',
  '```python\nimport os\n```', 'fn main() -> Result<(), Box<dyn Error>> {}',
  '#!/bin/bash\necho "$HOME" | grep -E "^/h"', '/* comment */ // line', 'a_b-c.d/e\\f',
  '{"json": true, "n": [1,2]}', '\t\tif (x) {\n\t\t\treturn;\n\t\t}', '    def __init__(self):',
  '$var @attr %mod ^xor &ref _under', '...word --flag ==eq', 'a.b.c', '____init____',
  // Special tokens of Qwen3 (some special, some not) inside text.
  '<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n',
  '<think>\n\n</think>\n\n', '<tool_call>\n{"name": "f"}\n</tool_call>', ' <|im_end|> ', '<|im_start|><|im_end|>',
  '<|im_start|', 'im_start|>', '<|IM_START|>', '<|endoftext|>tail', '<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>',
  '<|vision_start|><|image_pad|><|vision_end|>', '<|box_start|>(1,2)<|box_end|>', 'x<think>y</think>z',
  '<tool_response>ok</tool_response>', '<|im_start|>\u00e9<|im_end|>',
  // Special tokens of Granite.
  '<|start_of_role|>user<|end_of_role|>Hello<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>',
  '<fim_prefix>x<fim_suffix>y<fim_middle>', '<filename>main.py\n<gh_stars>10', '<|end_of_text|>',
  '<jupyter_start><jupyter_code>print(1)<jupyter_output>1', '<|tool_call|>[{"name":"f"}]', ' <|end_of_text|> ',
  '<reponame>x', '<|end_of_text|><|end_of_text|>',
  // Mistral/Mixtral instruction format.
  '[INST] What is 2+2? [/INST] 4</s>[INST] Thanks [/INST]', '<s>[INST] Hi [/INST]', ' <s> ', '  </s>  ',
  // Control, private-use and unassigned characters (Granite's vocabulary
  // lacks the byte 0xF1, so U+50000 loses a byte there).
  '\u0001\u0002\u001f', '\uE000\uF8FF private', '\u{10FFFF}\uFFFF nonchars', '\u{E0001}\u{E0041} tags',
  '\u{50000} plane 5', '\u{F0000} plane 15',
  // Characters that Unicode gave letters, digits or normalization data after
  // the versions of epwa's libraries (PCRE2: 14.0, utf8proc: 15.0) or of the
  // reference's normalizer (9.0): Kawi, Garay, Tulu-Tigalari, CJK extensions
  // H and I, U+180E (no longer whitespace), and marks NFC must not reorder.
  'abc\u{11F04}def \u{11F50}<fim 9\u{11F50}9', 'x\u{31350}y \u{2EBF0}z \u{31350}\u{31351}\u{2EBF0}',
  '\u{10D4A}\u{10D50}\u{10D70} \u{10D40}\u{10D41}1', 'a\u180Eb a \u180E b \u180E', '\u{11380}\u{113B8} \u{113C9}x',
  'a\u07FD\u0301 a\u0316\u0301 a\u07FD\u0323\u07FD\u0301', '\u{11935}\u{11930} \u{11938}', '\u{105D2}\u0307 \u{105C9}',
  '\u{16D67}\u{16D67} \u{1611E}\u{1611E}', 'e\u1ABF\u0301 e\u0301\u1ABF', '\u{1E030}\u{1E031} \u{1FBF1}\u{1FBF2}',
  // Long words and repetitions.
  'a'.repeat(100), 'ab'.repeat(60), 'Donaudampfschifffahrtsgesellschaftskapitän',
  'The the THE tHe', 'hello' + ' hello'.repeat(20),
  // A multi-line mixed paragraph.
  'Dear team,\n\nThe Q3 numbers (up 12.5%!) look great — 👏. Next steps:\n  1. Ship v2.0\n  2. 中文 docs\n\nThanks,\nA.',
];

// GPT-2's printable stand-ins for the 256 byte values.
function byteLevelChars() {
  const bs = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  const map = new Array(256);
  for (let i = 0; i < bs.length; i++) map[bs[i]] = String.fromCodePoint(cs[i]);
  return map;
}

// The ids of the byte-level tokens of `bytes`: decoding them alone or in
// pieces exercises the invalid-UTF-8 path of the ByteLevel decoder.
function byteIds(file, bytes) {
  const vocab = JSON.parse(fs.readFileSync(file, 'utf8')).model.vocab;
  const chars = byteLevelChars();
  return bytes.map((b) => vocab[chars[b]]);
}

const sentencePieceDecodeOnly = [
  [1], [2], [0], [1, 22557, 2], [28705], [28705, 28705], [259, 259], [200], [200, 200],
  [231, 135, 181], [231, 135], [244, 162, 148], [1, 200, 2], [13, 13], [22557, 1, 1526]];

const families = {
  mistral: {
    folder: ['tokenizers', 'mistral'], add: [false, true], moreTexts: false,
    decodeOnly: () => sentencePieceDecodeOnly,
  },
  // add_special_tokens changes nothing for OLMoE, so it gets one line a text.
  olmoe: {
    folder: ['tokenizers', 'olmoe'], add: [false], moreTexts: false,
    decodeOnly: () => [[0], [1], [0, 12092, 0], [158], [158, 158], [4467], [50254], [50276, 12092], [209, 209],
                       [187, 187], [12092, 1, 1533]],
  },
  qwen3: {
    folder: ['tokenizers', 'qwen3'], add: [false, true], moreTexts: true,
    decodeOnly: (file) => {
      // "你" is E4 BD A0 and "😀" F0 9F 98 80.
      const [e4, bd, a0, f0, x9f, x98, x80] = byteIds(file, [0xE4, 0xBD, 0xA0, 0xF0, 0x9F, 0x98, 0x80]);
      return [[151643], [151644], [151667, 151668], [151644, 872, 198, 151645], [151643, 9707, 151643],
              [e4], [e4, bd], [e4, bd, a0], [bd, a0], [f0, x9f, x98], [f0, x9f, x98, x80], [x80, x80],
              [e4, 151643, bd, a0], [220, 220], [198], [256, 271], [9707, 151667, 1879]];
    },
  },
  granite: {
    folder: ['tokenizers', 'granite'], add: [false, true], moreTexts: true,
    decodeOnly: (file) => {
      const [e4, bd, a0, f0, x9f, x98, x80] = byteIds(file, [0xE4, 0xBD, 0xA0, 0xF0, 0x9F, 0x98, 0x80]);
      return [[0], [49152], [49152, 8279, 49153], [0, 8279, 0], [e4], [e4, bd], [e4, bd, a0], [bd, a0],
              [f0, x9f, x98], [f0, x9f, x98, x80], [x80, x80], [e4, 0, bd, a0], [225, 225], [203], [261, 478],
              [1, 2, 3]];
    },
  },
  mixtral: {
    folder: ['models', 'mixtral-8x7b-instruct-v0.1'], add: [false, true], moreTexts: true,
    decodeOnly: () => sentencePieceDecodeOnly,
  },
};

async function main() {
  for (const [name, family] of Object.entries(families)) {
    const file = path.join(shared, 'data', ...family.folder, 'tokenizer.json');
    const tok = Tokenizer.fromFile(file);
    const lines = [];
    const all = family.moreTexts ? texts.concat(moreTexts) : texts;
    for (const text of all) {
      for (const add of family.add) {
        const encoding = await tok.encode(text, null, { addSpecialTokens: add });
        const ids = Array.from(encoding.getIds());
        const line = {
          text, add_special_tokens: add, ids,
          decoded: await tok.decode(ids, false),
          decoded_skip_special: await tok.decode(ids, true),
        };
        // The older files predate the token strings; they stay as they were.
        if (family.moreTexts) line.tokens = Array.from(encoding.getTokens());
        lines.push(JSON.stringify(line));
      }
    }
    for (const ids of family.decodeOnly(file)) {
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
