#!/usr/bin/env node
// Converts tiktoken's o200k_base ranks, as shipped in the npm package
// js-tiktoken, plus the special tokens of a gpt-oss model folder into a
// Hugging Face tokenizer.json (byte-level BPE), the file gpt-oss ships as
// tokenizer.json but that is not available offline.
//
//   npm ci --prefix tools/tiktoken     (once; pins js-tiktoken)
//   node tools/tiktoken_to_hf.mjs --specials-from MODEL_DIR --out tokenizer.json [--force]
//
// The merges are derived the way the Hugging Face tiktoken converter derives
// them: tiktoken has only ranks, so for the token of rank r the merge is the
// last step of byte-level BPE on its own bytes using the ranks below r; that
// step always joins exactly two parts, and ordering the merges by r makes the
// Hugging Face BPE model take the same merges in the same order as tiktoken.

import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// js-tiktoken is installed under tools/tiktoken (its package.json and lock
// pin the version), not at the repository root, so it is resolved from there.
const here = path.dirname(fileURLToPath(import.meta.url));
const tiktokenDir = path.join(here, 'tiktoken');

// The o200k pattern as tiktoken (Python and Rust) and the Hugging Face
// converter write it. js-tiktoken spells each contraction's case variants
// out because JavaScript regexes of its era lack inline (?i:...) groups; the
// converter checks below that its pattern is this one with that rewrite, so
// that a future change of the data is noticed rather than silently copied.
const contractions = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"];
const o200kPattern = [
  `[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:${contractions.join('|')})?`,
  `[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:${contractions.join('|')})?`,
  '\\p{N}{1,3}',
  ' ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*',
  '\\s*[\\r\\n]+',
  '\\s+(?!\\S)',
  '\\s+',
].join('|');

// Every ASCII case variant of each contraction, in the order js-tiktoken
// lists them ('re, 'rE, 'Re, 'RE: the first letter varies slowest).
function asciiCaseVariants(word) {
  let variants = [''];
  for (const ch of word) {
    const options = ch.toLowerCase() === ch.toUpperCase() ? [ch] : [ch.toLowerCase(), ch.toUpperCase()];
    variants = variants.flatMap((prefix) => options.map((o) => prefix + o));
  }
  return variants;
}

export function jsTiktokenPatternOf(pattern) {
  const expanded = `(${contractions.flatMap(asciiCaseVariants).join('|')})`;
  return pattern.split(`(?i:${contractions.join('|')})`).join(expanded);
}

export { o200kPattern };

function usage(message) {
  if (message) process.stderr.write(`error: ${message}\n`);
  process.stderr.write('usage: node tools/tiktoken_to_hf.mjs --specials-from MODEL_DIR --out tokenizer.json [--force]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const args = { force: false };
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i];
    if (a === '--force') args.force = true;
    else if (a === '--specials-from' || a === '--out') {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      args[a === '--out' ? 'out' : 'specialsFrom'] = argv[++i];
    } else if (a === '-h' || a === '--help') usage();
    else usage(`unknown argument ${a}`);
  }
  if (!args.specialsFrom || !args.out) usage('--specials-from and --out are required');
  return args;
}

// Loads js-tiktoken's o200k_base data object ({pat_str, special_tokens,
// bpe_ranks}). It is loaded through the package's own export so that the
// pinned version decides the data, and through createRequire so that the
// lookup starts in tools/tiktoken wherever the script is run from.
export async function loadO200kBase() {
  const require = createRequire(path.join(tiktokenDir, 'package.json'));
  let resolved;
  try {
    resolved = require.resolve('js-tiktoken/ranks/o200k_base');
  } catch {
    throw new Error(`js-tiktoken is not installed; run: npm ci --prefix ${tiktokenDir}`);
  }
  // The CommonJS build resolves here; its default export is the data.
  const module = require(resolved);
  return module.default ?? module;
}

// Decodes js-tiktoken's compressed "bpe_ranks" string into an array of token
// byte strings indexed by rank. The string is lines of
// "<name> <first rank> <base64 token> <base64 token> ...", each token taking
// the next rank; the name field is not used by js-tiktoken either. Byte
// strings are kept as latin1 JavaScript strings (one char per byte), which
// makes them cheap Map keys.
export function decodeRanks(bpeRanks) {
  const tokens = [];
  for (const line of bpeRanks.split('\n')) {
    if (line === '') continue;
    const fields = line.split(' ');
    const first = Number.parseInt(fields[1], 10);
    if (!Number.isInteger(first) || first < 0) throw new Error(`bad rank offset in bpe_ranks line "${line.slice(0, 40)}"`);
    for (let i = 2; i < fields.length; ++i) {
      const rank = first + i - 2;
      if (tokens[rank] !== undefined) throw new Error(`rank ${rank} appears twice in bpe_ranks`);
      tokens[rank] = Buffer.from(fields[i], 'base64').toString('latin1');
    }
  }
  // Hugging Face's vocabulary needs every id to name one token, so holes or
  // duplicate byte strings would make a file that cannot round-trip.
  const seen = new Map();
  for (let rank = 0; rank < tokens.length; ++rank) {
    const t = tokens[rank];
    if (t === undefined) throw new Error(`rank ${rank} is missing from bpe_ranks`);
    if (t.length === 0) throw new Error(`rank ${rank} is empty`);
    if (seen.has(t)) throw new Error(`ranks ${seen.get(t)} and ${rank} have the same bytes`);
    seen.set(t, rank);
  }
  return { tokens, rankOf: seen };
}

// GPT-2's reversible map from bytes to printable characters: printable
// Latin-1 bytes stand for themselves and the others (controls, space, DEL,
// NBSP, soft hyphen) take code points from U+0100 up, in byte order. The
// Hugging Face ByteLevel pre-tokenizer and decoder use this alphabet.
export function byteToUnicode() {
  const table = new Array(256);
  let next = 256;
  for (let b = 0; b < 256; ++b) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = String.fromCodePoint(printable ? b : next++);
  }
  return table;
}

// Byte-level BPE of `bytes` as tiktoken does it (always join the adjacent
// pair whose concatenation has the lowest rank, leftmost on ties), using
// only ranks below `maxRank`. Returns the parts.
function bpeBelow(bytes, rankOf, maxRank) {
  const parts = Array.from(bytes);
  for (;;) {
    let best = -1;
    let bestRank = maxRank;
    for (let i = 0; i + 1 < parts.length; ++i) {
      const rank = rankOf.get(parts[i] + parts[i + 1]);
      if (rank !== undefined && rank < bestRank) {
        bestRank = rank;
        best = i;
      }
    }
    if (best < 0) return parts;
    parts.splice(best, 2, parts[best] + parts[best + 1]);
  }
}

// One merge per multi-byte token, in rank order. A token whose bytes do not
// end in exactly two parts could not be produced by any merge sequence, so
// the conversion stops rather than write a vocabulary entry the model can
// only reach by the whole-word shortcut.
export function deriveMerges(tokens, rankOf) {
  const merges = [];
  for (let rank = 0; rank < tokens.length; ++rank) {
    const t = tokens[rank];
    if (t.length < 2) continue;
    const parts = bpeBelow(t, rankOf, rank);
    if (parts.length !== 2) {
      throw new Error(`rank ${rank} splits into ${parts.length} parts with the ranks below it, not 2`);
    }
    merges.push(parts);
  }
  return merges;
}

// The special tokens of the model folder: every entry of tokenizer_config.json's
// added_tokens_decoder, checked against special_tokens_map.json (each named
// token must be one of them) and against js-tiktoken's own specials (same
// text, same id).
function loadSpecials(dir, tiktokenSpecials, vocabSize) {
  const configPath = path.join(dir, 'tokenizer_config.json');
  const config = JSON.parse(fs.readFileSync(configPath, 'utf8'));
  const decoder = config.added_tokens_decoder;
  if (!decoder || typeof decoder !== 'object') throw new Error(`${configPath} has no added_tokens_decoder`);
  const specials = Object.entries(decoder).map(([id, t]) => ({
    id: Number(id),
    content: t.content,
    single_word: Boolean(t.single_word),
    lstrip: Boolean(t.lstrip),
    rstrip: Boolean(t.rstrip),
    normalized: Boolean(t.normalized),
    special: t.special !== false,
  }));
  specials.sort((a, b) => a.id - b.id);
  const byContent = new Map();
  for (const s of specials) {
    if (!Number.isInteger(s.id) || s.id < 0) throw new Error(`${configPath}: bad id ${s.id}`);
    if (typeof s.content !== 'string' || s.content === '') throw new Error(`${configPath}: id ${s.id} has no content`);
    // An added token on a BPE rank would give one id two meanings.
    if (s.id < vocabSize) throw new Error(`${configPath}: special ${s.content} has id ${s.id}, a BPE rank`);
    if (byContent.has(s.content)) throw new Error(`${configPath}: ${s.content} appears twice`);
    byContent.set(s.content, s.id);
  }
  const mapPath = path.join(dir, 'special_tokens_map.json');
  if (fs.existsSync(mapPath)) {
    const map = JSON.parse(fs.readFileSync(mapPath, 'utf8'));
    for (const [role, value] of Object.entries(map)) {
      const list = Array.isArray(value) ? value : [value];
      for (const v of list) {
        const content = typeof v === 'string' ? v : v?.content;
        if (!byContent.has(content)) throw new Error(`${mapPath}: ${role} ${content} is not in added_tokens_decoder`);
      }
    }
  }
  for (const [content, id] of Object.entries(tiktokenSpecials)) {
    if (byContent.has(content) && byContent.get(content) !== id) {
      throw new Error(`${content} is ${id} in o200k_base but ${byContent.get(content)} in ${configPath}`);
    }
  }
  return specials;
}

// Writes through a temporary file in the same folder and renames it, so that
// a reader never sees half a file and an interrupted run leaves none.
function writeAtomically(file, text, force) {
  if (!force && fs.existsSync(file)) throw new Error(`${file} exists; pass --force to overwrite it`);
  const tmp = path.join(path.dirname(path.resolve(file)), `.${path.basename(file)}.${process.pid}.tmp`);
  try {
    fs.writeFileSync(tmp, text, { flag: 'wx' });
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

export function buildTokenizerJson(data, specials) {
  const { tokens, rankOf } = decodeRanks(data.bpe_ranks);
  const merges = deriveMerges(tokens, rankOf);
  const alphabet = byteToUnicode();
  const toPiece = (bytes) => {
    let s = '';
    for (let i = 0; i < bytes.length; ++i) s += alphabet[bytes.charCodeAt(i)];
    return s;
  };
  // A Map, not an object: objects put integer-like keys such as "42" first,
  // and the file should list the vocabulary in id order as the reference does.
  const vocab = new Map();
  for (let rank = 0; rank < tokens.length; ++rank) vocab.set(toPiece(tokens[rank]), rank);
  // Field order and defaults follow what the Hugging Face library itself
  // serializes, so the file reads like one the reference wrote.
  const json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: specials.map((s) => ({
      id: s.id,
      content: s.content,
      single_word: s.single_word,
      lstrip: s.lstrip,
      rstrip: s.rstrip,
      normalized: s.normalized,
      special: s.special,
    })),
    normalizer: null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: o200kPattern }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    // The converter's post-processor only adjusts offsets; it adds no ids.
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: merges.map(([l, r]) => [toPiece(l), toPiece(r)]),
    },
  };
  return { json, vocabSize: tokens.length, mergeCount: merges.length };
}

// JSON text of the tokenizer with the vocabulary Map written in its own
// order; JSON.stringify would turn a Map into {}.
export function serialize(json) {
  return JSON.stringify(json, (key, value) =>
    value instanceof Map ? '\u0000VOCAB\u0000' : value,
  ).replace(JSON.stringify('\u0000VOCAB\u0000'), () => {
    const entries = [];
    for (const [piece, id] of json.model.vocab) entries.push(`${JSON.stringify(piece)}:${id}`);
    return `{${entries.join(',')}}`;
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const started = process.hrtime.bigint();
  const data = await loadO200kBase();
  if (data.pat_str !== jsTiktokenPatternOf(o200kPattern)) {
    throw new Error("js-tiktoken's o200k_base pattern is not the o200k pattern this converter knows; check it by hand");
  }
  const vocabSize = decodeRanks(data.bpe_ranks).tokens.length;
  const specials = loadSpecials(args.specialsFrom, data.special_tokens, vocabSize);
  const { json, mergeCount } = buildTokenizerJson(data, specials);
  const text = serialize(json);
  writeAtomically(args.out, text, args.force);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  process.stdout.write(
    `wrote ${args.out}: ${vocabSize} BPE tokens, ${mergeCount} merges, ${specials.length} special tokens ` +
      `(ids ${specials[0]?.id}..${specials.at(-1)?.id}), ${Buffer.byteLength(text)} bytes, ${seconds.toFixed(1)} s\n`,
  );
}

// Runs only as a script, so that check_o200k.mjs can import the helpers.
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    process.stderr.write(`error: ${e.message}\n`);
    process.exit(1);
  });
}
