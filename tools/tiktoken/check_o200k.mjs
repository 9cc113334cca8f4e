#!/usr/bin/env node
// Checks that epwa's tokenizer, loading a tokenizer.json made by
// tools/tiktoken_to_hf.mjs, encodes exactly as tiktoken's o200k_base does,
// with js-tiktoken (pinned in this folder's package-lock.json) as the
// reference, and that decoding the ids gives the text back.
//
//   node tools/tiktoken/check_o200k.mjs --epwa build/epwa --tokenizer tokenizer.json \
//        [--texts tests/data/tokenizers/o200k_texts.json] [--paragraphs-from FILE]... \
//        [--fuzz N] [--seed S] [--show N]
//
// Exit status 0 when every text matches, 1 on any mismatch, 2 on bad usage.
//
// Two references. js-tiktoken runs tiktoken's pattern as a JavaScript regex,
// which is not quite the pattern tiktoken (Rust) and Hugging Face
// (Oniguruma) run: JavaScript's \s also takes U+FEFF and leaves out U+0085,
// where theirs is the White_Space property, and js-tiktoken spells the
// case-insensitive contractions as ASCII variants, where (?i:'s) also takes
// "'ſ" (U+017F folds to s). So every text is also encoded by js-tiktoken's
// own encoder with those two points put right in its pattern (the "aligned"
// reference). Where the two agree, epwa must give those ids. Where they
// differ, the text must say so ("js_tiktoken_differs" in the texts file,
// which fuzz texts never do), and epwa must give the aligned ids, since
// gpt-oss is run by tiktoken and Hugging Face, not by js-tiktoken.
//
// Besides the ids, epwa's pre-token count for each ordinary text is held
// against the aligned regex's match count (see splitOnlyTokenizer), because
// byte-level BPE hides most split differences. The regex's Unicode tables are
// Node's (ICU): Unicode 15.0 on Debian 12's Node 18, 17.0 on Node 20.20,
// while epwa, like Hugging Face's Oniguruma, classes characters as Unicode
// 16.0 does. Characters first assigned after 15.0 therefore split
// differently by design; the committed texts and the fuzz alphabet keep to
// older ones.
//
// The decode check decodes the reference ids, which equal epwa's own
// wherever the encode check passes, so it is decode(encode(x)) == x.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Tiktoken } from 'js-tiktoken/lite';
import o200kBase from 'js-tiktoken/ranks/o200k_base';
import { decodeRanks, jsTiktokenPatternOf, o200kPattern } from '../tiktoken_to_hf.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '..', '..');

function usage(message) {
  if (message) process.stderr.write(`error: ${message}\n`);
  process.stderr.write(
    'usage: node tools/tiktoken/check_o200k.mjs --epwa BIN --tokenizer tokenizer.json ' +
      '[--texts FILE] [--paragraphs-from FILE]... [--fuzz N] [--seed S] [--show N]\n',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const args = {
    texts: path.join(repoRoot, 'tests/data/tokenizers/o200k_texts.json'),
    paragraphsFrom: [],
    fuzz: 0,
    seed: 1,
    show: 20,
  };
  const valued = new Set(['--epwa', '--tokenizer', '--texts', '--paragraphs-from', '--fuzz', '--seed', '--show']);
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i];
    if (a === '-h' || a === '--help') usage();
    if (!valued.has(a)) usage(`unknown argument ${a}`);
    if (i + 1 >= argv.length) usage(`${a} needs a value`);
    const v = argv[++i];
    if (a === '--epwa') args.epwa = v;
    else if (a === '--tokenizer') args.tokenizer = v;
    else if (a === '--texts') args.texts = v;
    else if (a === '--paragraphs-from') args.paragraphsFrom.push(v);
    else {
      const n = Number(v);
      if (!Number.isSafeInteger(n) || n < 0) usage(`${a} needs a non-negative integer`);
      args[a.slice(2)] = n;
    }
  }
  if (!args.epwa || !args.tokenizer) usage('--epwa and --tokenizer are required');
  return args;
}

// The JavaScript regex that behaves like tiktoken's pattern under Rust's and
// Oniguruma's rules on the two points named at the top: \s as the
// White_Space property, and each contraction letter as the class of every
// code point that matches it case-insensitively under Unicode case folding.
function alignedPattern() {
  const foldClass = (letter) => {
    const matcher = new RegExp(`^${letter}$`, 'iu');
    let cls = '';
    for (let cp = 0; cp <= 0x1ffff; ++cp) {
      if (cp >= 0xd800 && cp <= 0xdfff) continue;
      const ch = String.fromCodePoint(cp);
      if (matcher.test(ch)) cls += ch;
    }
    return `[${cls}]`;
  };
  const contractions = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"];
  const group = `(?:${contractions.map((c) => "'" + [...c.slice(1)].map(foldClass).join('')).join('|')})`;
  return o200kPattern
    .split(`(?i:${contractions.join('|')})`)
    .join(group)
    .replaceAll('\\s', '\\p{White_Space}')
    .replaceAll('\\S', '\\P{White_Space}');
}

// The special tokens the tokenizer.json declares (gpt-oss's harmony tokens),
// so that texts marked "special" are encoded by js-tiktoken with them allowed,
// as a chat template's output would be.
function addedTokensOf(tokenizerPath) {
  const json = JSON.parse(fs.readFileSync(tokenizerPath, 'utf8'));
  const specials = {};
  for (const t of json.added_tokens ?? []) specials[t.content] = t.id;
  return specials;
}

// A small seeded PRNG (SplitMix32-style) so that fuzz texts are the same on
// every run and a failure can be reproduced from its seed.
function prng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return ((z ^ (z >>> 16)) >>> 0) / 4294967296;
  };
}

// Fuzz texts: random runs over characters chosen to hit every branch of the
// o200k pattern (case classes Lu/Ll/Lt/Lm/Lo, marks, digits of several
// scripts, letter-like numbers, punctuation, apostrophes, every kind of
// whitespace and line break). All were assigned long before Unicode 14, so
// the Unicode versions of Node, PCRE2 and the reference agree on them; the
// two characters the references disagree on (U+FEFF, U+0085) and "ſ" are
// left out because a fuzz text cannot say it expects the difference.
const fuzzAlphabet = [
  ...'aeinostAEINOSTxyzXYZ', 'ǅ', 'ǈ', 'ʰ', 'ˆ', 'ー', '々', 'ß', 'İ', 'ı', 'é', 'ñ', 'Ω', 'ω', 'Ж', 'ж',
  '中', '文', 'あ', 'カ', '한', 'ا', 'ب', 'א', 'क', 'ि', '्', 'ก', 'ั', '\u0301', '\u0308', '\u20dd', '\u0903',
  ...'0123456789', '٣', '७', '１', 'Ⅻ', '½', '²', '①',
  ...".,;:!?-_/\\\"'`()[]{}<>@#$%^&*+=|~", '’', '‘', '“', '—', '…', '€', '©', '😀', '👍', '🏽', '\u200d', '\ufe0f',
  ' ', ' ', ' ', ' ', '\t', '\n', '\n', '\r', '\r\n', '\u000b', '\u000c', '\u00a0', '\u2028', '\u2029', '\u3000', '\u2009',
];
// Whole words sometimes, so that long merges and contractions get exercised.
const fuzzWords = [
  ' the', ' The', ' THE', "n't", "'s", "'S", "'re", "'LL", "'Ve", "'M", "'d", ' don', ' DON', 'ing', ' 2024', ' 123456789',
  '    ', '\n\n', '\r\n\r\n', ' \n', 'function', ' return', '();', '    return', ' 日本語', ' русский', ' العربية',
];

function fuzzTexts(count, seed) {
  const rand = prng(seed);
  const texts = [];
  for (let i = 0; i < count; ++i) {
    const length = 1 + Math.floor(rand() * 60);
    let s = '';
    for (let k = 0; k < length; ++k) {
      const pool = rand() < 0.25 ? fuzzWords : fuzzAlphabet;
      s += pool[Math.floor(rand() * pool.length)];
    }
    texts.push({ name: `fuzz seed ${seed} #${i}`, text: s });
  }
  return texts;
}

// Paragraphs of a plain-text file (blank-line separated), each one text,
// plus the whole file as one more text so that long inputs are covered too.
function paragraphTexts(file) {
  const content = fs.readFileSync(file, 'utf8');
  const parts = content.split(/\n[ \t]*\n/).filter((p) => p.trim() !== '');
  const base = path.basename(file);
  return [
    ...parts.map((p, i) => ({ name: `${base} paragraph ${i + 1}`, text: p })),
    { name: `${base} (whole file)`, text: content },
  ];
}

function loadTexts(args) {
  const doc = JSON.parse(fs.readFileSync(args.texts, 'utf8'));
  const texts = doc.texts.map((t, i) => ({ name: t.name ?? `text ${i + 1}`, ...t }));
  for (const f of args.paragraphsFrom) texts.push(...paragraphTexts(f));
  texts.push(...fuzzTexts(args.fuzz, args.seed));
  return texts;
}

// Runs epwa's batch mode once over `lines` (values to write as JSON lines:
// strings to encode, id arrays to decode) and returns its parsed answers, one
// per line.
function runEpwa(epwa, tokenizer, lines, dir) {
  const input = path.join(dir, 'input.jsonl');
  fs.writeFileSync(input, lines.map((l) => JSON.stringify(l)).join('\n') + '\n');
  const r = spawnSync(epwa, ['tokenize', '--tokenizer', tokenizer, '--jsonl', input], {
    encoding: 'utf8',
    maxBuffer: 1 << 30,
  });
  if (r.error) throw new Error(`cannot run ${epwa}: ${r.error.message}`);
  const out = r.stdout.split('\n').filter((l) => l !== '');
  if (out.length !== lines.length) {
    throw new Error(`${epwa} printed ${out.length} lines for ${lines.length} (exit ${r.status}): ${r.stderr.trim()}`);
  }
  return out.map((l) => JSON.parse(l));
}

// A tokenizer.json with only the o200k Split and a BPE model that knows no
// token but a fused [UNK]: epwa then gives one id per pre-token, so its
// pre-token count can be held against the reference regex's match count.
// Byte-level BPE hides most split differences (a character no token contains
// gives the same byte tokens wherever the split falls), so this sees what
// the id comparison cannot.
function splitOnlyTokenizer() {
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: { type: 'Split', pattern: { Regex: o200kPattern }, behavior: 'Isolated', invert: false },
    post_processor: null,
    decoder: null,
    model: {
      type: 'BPE', dropout: null, unk_token: '[UNK]', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: true, byte_fallback: false, vocab: { '[UNK]': 0 }, merges: [],
    },
  };
}

function sameIds(a, b) {
  return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((x, i) => x === b[i]);
}

// Describes where two id lists part: the index of the first differing id,
// the byte offset in the text where that token starts, and a few ids and
// token texts on each side.
function describeMismatch(text, ref, got, bytesOf) {
  if (!Array.isArray(got)) return `  epwa failed: ${JSON.stringify(got)}`;
  let i = 0;
  while (i < ref.length && i < got.length && ref[i] === got[i]) ++i;
  let offset = 0;
  for (let k = 0; k < i; ++k) offset += bytesOf(ref[k]).length;
  const bytes = Buffer.from(text, 'utf8');
  const show = (ids) =>
    ids
      .slice(i, i + 6)
      .map((id) => `${id}:${JSON.stringify(Buffer.from(bytesOf(id), 'latin1').toString('utf8'))}`)
      .join(' ');
  return (
    `  first difference at token ${i} (byte ${offset}: ${JSON.stringify(bytes.subarray(offset, offset + 24).toString('utf8'))})\n` +
    `  tiktoken: ${show(ref)}${ref.length > i + 6 ? ' ...' : ''} (${ref.length} ids)\n` +
    `  epwa:     ${show(got)}${got.length > i + 6 ? ' ...' : ''} (${got.length} ids)`
  );
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const started = Date.now();
  if (o200kBase.pat_str !== jsTiktokenPatternOf(o200kPattern)) {
    throw new Error("js-tiktoken's o200k_base pattern changed; the aligned reference needs a look");
  }
  const specials = addedTokensOf(args.tokenizer);
  const jsRef = new Tiktoken(o200kBase, specials);
  const alignedPat = alignedPattern();
  const aligned = new Tiktoken({ ...o200kBase, pat_str: alignedPat }, specials);
  const { tokens } = decodeRanks(o200kBase.bpe_ranks);
  const specialBytes = new Map(Object.entries(specials).map(([c, id]) => [id, Buffer.from(c, 'utf8').toString('latin1')]));
  const bytesOf = (id) => tokens[id] ?? specialBytes.get(id) ?? '';

  const texts = loadTexts(args);
  const specialNames = Object.keys(specials);
  const refIds = [];
  const problems = [];
  let jsDiffers = 0;
  for (const t of texts) {
    // Ordinary text is encoded with every special token treated as text; a
    // text that holds one must say it means it (as a chat transcript does),
    // since epwa, like Hugging Face, always matches added tokens.
    const holds = specialNames.find((s) => t.text.includes(s));
    if (holds && !t.special) problems.push(`${t.name}: holds ${holds} but is not marked "special"`);
    const allowed = t.special ? 'all' : [];
    const js = jsRef.encode(t.text, allowed, []);
    const al = aligned.encode(t.text, allowed, []);
    if (!sameIds(js, al)) {
      ++jsDiffers;
      if (!t.js_tiktoken_differs) {
        problems.push(`${t.name}: js-tiktoken's JavaScript regex and tiktoken's rules split this text differently, and the text does not say so`);
      }
    } else if (t.js_tiktoken_differs) {
      problems.push(`${t.name}: marked js_tiktoken_differs, but both references agree`);
    }
    if (jsRef.decode(al) !== t.text) problems.push(`${t.name}: js-tiktoken does not decode its own ids back to the text`);
    refIds.push(al);
  }

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'check-o200k-'));
  let answers;
  let pieceCounts;
  // Texts with special tokens are left out of the split check: the
  // split-only tokenizer has no added tokens to cut them out first.
  const plain = texts.map((t, k) => k).filter((k) => !texts[k].special);
  try {
    answers = runEpwa(args.epwa, args.tokenizer, [...texts.map((t) => t.text), ...refIds], dir);
    const splitTokenizer = path.join(dir, 'split.json');
    fs.writeFileSync(splitTokenizer, JSON.stringify(splitOnlyTokenizer()));
    pieceCounts = runEpwa(args.epwa, splitTokenizer, plain.map((k) => texts[k].text), dir);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const epwa = { ids: answers.slice(0, texts.length), decoded: answers.slice(texts.length) };
  let mismatches = 0;
  let roundTrips = 0;
  let splits = 0;
  let tokensCompared = 0;
  const report = [];
  for (let k = 0; k < texts.length; ++k) {
    const t = texts[k];
    tokensCompared += refIds[k].length;
    if (!sameIds(refIds[k], epwa.ids[k])) {
      ++mismatches;
      if (report.length < args.show) {
        report.push(`MISMATCH ${t.name}\n${describeMismatch(t.text, refIds[k], epwa.ids[k], bytesOf)}`);
      }
    }
    if (epwa.decoded[k] !== t.text) {
      ++roundTrips;
      if (report.length < args.show) {
        report.push(`DECODE ${t.name}: epwa decodes the ids to ${JSON.stringify(epwa.decoded[k]).slice(0, 200)}`);
      }
    }
  }
  const pieceRegex = new RegExp(alignedPat, 'gu');
  plain.forEach((k, j) => {
    const pieces = [...texts[k].text.matchAll(pieceRegex)].map((m) => m[0]);
    const got = pieceCounts[j];
    if (!Array.isArray(got) || got.length !== pieces.length) {
      ++splits;
      if (report.length < args.show) {
        report.push(
          `SPLIT ${texts[k].name}: tiktoken's pattern cuts ${pieces.length} pieces, epwa ` +
            `${Array.isArray(got) ? got.length : JSON.stringify(got)}; the reference's first pieces: ` +
            JSON.stringify(pieces.slice(0, 12)),
        );
      }
    }
  });
  for (const line of report) process.stdout.write(`${line}\n`);
  for (const p of problems) process.stdout.write(`PROBLEM ${p}\n`);
  const bytes = texts.reduce((n, t) => n + Buffer.byteLength(t.text), 0);
  process.stdout.write(
    `${texts.length} texts (${bytes} bytes, ${tokensCompared} tokens): ${mismatches} encode mismatches, ` +
      `${roundTrips} decode mismatches, ${splits} pre-token count mismatches, ${problems.length} problems; ` +
      `${jsDiffers} texts where js-tiktoken's regex differs from tiktoken's (checked against the aligned reference); ` +
      `${((Date.now() - started) / 1000).toFixed(1)} s\n`,
  );
  return mismatches + roundTrips + splits + problems.length === 0 ? 0 : 1;
}

try {
  process.exitCode = main();
} catch (e) {
  process.stderr.write(`error: ${e.message}\n`);
  process.exitCode = 2;
}
