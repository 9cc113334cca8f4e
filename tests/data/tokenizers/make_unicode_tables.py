#!/usr/bin/python3
"""Regenerates src/tokenizer/unicode_tables.inc.

The reference Hugging Face tokenizers library does not use one Unicode
version throughout, and none of its versions is that of the libraries epwa
uses (PCRE2 10.42 has Unicode 14.0 tables, utf8proc 2.8 has 15.0):

  * its regexes (Split, the ByteLevel pattern, Replace) run on
    Oniguruma, with Unicode 16.0 tables;
  * Digits, WhitespaceSplit, Strip and Lowercase use Rust's char methods
    (is_numeric, is_whitespace, to_lowercase), with the Unicode tables of the
    Rust release it was built with (17.0);
  * the Whitespace pre-tokenizer's pattern runs on Rust's regex crate, whose
    \w differs from Oniguruma's (superscript digits, joiners);
  * Punctuation uses the unicode_categories crate, whose tables are older;
  * the NFC, NFD, NFKC and NFKD normalizers use unicode-normalization-alignments,
    whose tables are those of Unicode 9.0.

This script measures each of these on every code point by running the
reference itself (the npm package @anush008/tokenizers, which bundles
tokenizers 0.22) on small probe tokenizers, and writes the differences from
Unicode 14.0 (which is what PCRE2 10.42 and Python 3.11's unicodedata hold)
as C++ tables. Run it with Python 3.11 (whose unicodedata is Unicode 14.0)
and a Node whose ICU has Unicode 17.0 or later (Node 20.20 does), for the
general categories of code points that PCRE2 does not know:

  cd /tmp && npm install @anush008/tokenizers
  NODE_PATH=/tmp/node_modules /usr/bin/python3 tests/data/tokenizers/make_unicode_tables.py
"""
import json
import os
import subprocess
import sys
import tempfile
import unicodedata

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
OUT = os.path.join(REPO, 'src', 'tokenizer', 'unicode_tables.inc')

if unicodedata.unidata_version != '14.0.0':
    sys.exit('This script needs Python with Unicode 14.0.0 data (PCRE2 10.42), not ' + unicodedata.unidata_version)

GCS = ['Lu', 'Ll', 'Lt', 'Lm', 'Lo', 'Mn', 'Mc', 'Me', 'Nd', 'Nl', 'No', 'Pc', 'Pd', 'Ps', 'Pe', 'Pi', 'Pf',
       'Po', 'Sm', 'Sc', 'Sk', 'So', 'Zs', 'Zl', 'Zp', 'Cc', 'Cf', 'Co', 'Cn']

# Code points to classify: everything but surrogates and the unassigned planes
# 4 to 13 (which every version leaves unassigned).
CODE_POINTS = [c for c in range(0x110000) if not (0xD800 <= c <= 0xDFFF) and not (0x40000 <= c < 0xE0000)]

# The JavaScript half: node supplies Unicode 17.0 properties and runs the
# reference on probe tokenizers. Every probe is a byte-level BPE without
# merges whose pre-tokenizer marks each split with a leading "Ġ" (byte 0x20),
# so that the ids show where the reference split the text; normalizer probes
# decode back to the normalized text.
NODE_SCRIPT = r'''
const { Tokenizer } = require('@anush008/tokenizers');
const fs = require('fs');
const job = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));

function byteLevelChars() {
  const bs = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); n++; }
  const vocab = {};
  for (let i = 0; i < bs.length; i++) vocab[String.fromCodePoint(cs[i])] = bs[i];
  return vocab;
}
const plain = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };
const marked = { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: false };
function probe(normalizer, preTokenizer) {
  const json = {
    version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer,
    pre_tokenizer: preTokenizer, post_processor: null, decoder: plain,
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null,
             end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab: byteLevelChars(), merges: [] },
  };
  const file = job.tmp + '/probe.json';
  fs.writeFileSync(file, JSON.stringify(json));
  return Tokenizer.fromFile(file);
}
async function encodeAll(tok, texts) {
  const out = [];
  for (let i = 0; i < texts.length; i += 4000) {
    const encs = await tok.encodeBatch(texts.slice(i, i + 4000), { addSpecialTokens: false });
    for (const e of encs) out.push(Array.from(e.getIds()));
  }
  return out;
}
// True for each code point that a pre-tokenizer splits off "\u0001c\u0001"
// as a piece of its own (three pieces instead of one).
async function splitsOff(preTokenizer, cps) {
  const tok = probe(null, { type: 'Sequence', pretokenizers: [preTokenizer, marked] });
  const ids = await encodeAll(tok, cps.map(c => '\u0001' + String.fromCodePoint(c) + '\u0001'));
  return ids.map(list => list.filter(x => x === 32).length === 3);
}
async function normalized(type, texts) {
  const tok = probe({ type }, plain);
  return (await encodeAll(tok, texts)).map(ids => Buffer.from(ids).toString('utf8'));
}
function split(regex) { return { type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false }; }

(async () => {
  const result = {};
  const all = job.code_points;
  // Unicode 17.0 general category and White_Space, from node's ICU.
  const gcRegexes = job.gcs.map(g => new RegExp('^\\p{gc=' + g + '}$', 'u'));
  result.node_gc = all.map(c => {
    const s = String.fromCodePoint(c);
    const i = gcRegexes.findIndex(r => r.test(s));
    return job.gcs[i] + (/^\p{White_Space}$/u.test(s) ? '+ws' : '');
  });
  // The reference regex engine's category of each candidate.
  const candidates = job.candidates;
  result.ref_gc = candidates.map(() => []);
  for (const g of job.gcs) {
    if (g === 'Cc') continue;  // The probe's own delimiters are Cc.
    (await splitsOff(split('\\p{' + g + '}'), candidates)).forEach((hit, i) => { if (hit) result.ref_gc[i].push(g); });
  }
  (await splitsOff(split('\\s'), candidates)).forEach((hit, i) => { if (hit) result.ref_gc[i].push('ws'); });
  // Rust's is_numeric (Digits), unicode_categories' punctuation
  // (Punctuation), Rust's is_whitespace (WhitespaceSplit) and the \w of the
  // Whitespace pattern (which runs on Rust's regex crate, not Oniguruma), on
  // every code point. Whitespace keeps "\u0001c\u0001" whole unless c is a
  // word character (three pieces) or whitespace (two).
  const digits = await splitsOff({ type: 'Digits', individual_digits: true }, all);
  result.numeric = all.filter((c, i) => digits[i]);
  const punct = await splitsOff({ type: 'Punctuation', behavior: 'Isolated' }, all);
  result.punctuation = all.filter((c, i) => punct[i]);
  const word = await splitsOff({ type: 'Whitespace' }, all);
  result.word = all.filter((c, i) => word[i]);
  // WhitespaceSplit removes whitespace, so a whitespace character leaves two
  // pieces instead of one.
  const wsTok = probe(null, { type: 'Sequence', pretokenizers: [{ type: 'WhitespaceSplit' }, marked] });
  const wsIds = await encodeAll(wsTok, all.map(c => 'a' + String.fromCodePoint(c) + 'a'));
  result.whitespace = all.filter((c, i) => wsIds[i].filter(x => x === 32).length === 2);
  // Rust's to_lowercase.
  const lower = await normalized('Lowercase', all.map(c => String.fromCodePoint(c)));
  result.lowercase = {};
  all.forEach((c, i) => { if (lower[i] !== String.fromCodePoint(c)) result.lowercase[c] = lower[i]; });
  // Normalization: decompositions and a nonzero canonical combining class
  // (a character with one reorders with U+0316 (220) or U+0301 (230)),
  // per the reference and per node.
  const texts = [];
  for (const c of all) { const s = String.fromCodePoint(c); texts.push(s, s + '\u0316', '\u0301' + s); }
  const refNfd = await normalized('NFD', texts);
  const refNfkd = await normalized('NFKD', all.map(c => String.fromCodePoint(c)));
  result.norm = [];
  all.forEach((c, i) => {
    const s = String.fromCodePoint(c);
    const props = (d, kd, t1, t2) => [d !== s, kd !== s, d === s && (t1.startsWith('\u0316') || t2.endsWith('\u0301'))];
    const node = props(s.normalize('NFD'), s.normalize('NFKD'), (s + '\u0316').normalize('NFD'), ('\u0301' + s).normalize('NFD'));
    const ref = props(refNfd[3 * i], refNfkd[i], refNfd[3 * i + 1], refNfd[3 * i + 2]);
    if (node.some(x => x) || ref.some(x => x)) result.norm.push([c, node, ref, s.normalize('NFD')]);
  });
  fs.writeFileSync(job.out, JSON.stringify(result));
})();
'''


def utf8_length(c):
    return 1 if c < 0x80 else 2 if c < 0x800 else 3 if c < 0x10000 else 4


def ranges_of(code_points):
    ranges = []
    for c in sorted(code_points):
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return ranges


def is_pcre2_space(c):
    # PCRE2's \s with UCP: the Z categories, \t to \r, and the code points
    # of its \h and \v lists (U+0085 and U+180E among them).
    return unicodedata.category(chr(c)) in ('Zs', 'Zl', 'Zp') or 9 <= c <= 13 or c in (0x85, 0x180E)


def main():
    baseline = {c: unicodedata.category(chr(c)) for c in CODE_POINTS}
    with tempfile.TemporaryDirectory() as tmp:
        # A first pass for node's categories picks the candidates whose
        # category may differ; the reference is then asked about those only.
        job = {'tmp': tmp, 'gcs': GCS, 'code_points': CODE_POINTS, 'candidates': [], 'out': tmp + '/out.json'}
        script = os.path.join(tmp, 'probe.js')
        with open(script, 'w') as f:
            f.write(NODE_SCRIPT)
        node_gc = {}
        candidates = []
        # Node's categories come from its ICU; a quick run without the
        # reference parts would need a second script, so the node half runs
        # twice: once for the candidates, once for everything.
        quick = NODE_SCRIPT.split('// The reference regex engine')[0] + \
            '  fs.writeFileSync(job.out, JSON.stringify(result));\n})();\n'
        with open(os.path.join(tmp, 'quick.js'), 'w') as f:
            f.write(quick)
        with open(os.path.join(tmp, 'job.json'), 'w') as f:
            json.dump(job, f)
        subprocess.run(['node', os.path.join(tmp, 'quick.js'), os.path.join(tmp, 'job.json')], check=True)
        with open(job['out']) as f:
            quick_result = json.load(f)
        for c, g in zip(CODE_POINTS, quick_result['node_gc']):
            node_gc[c] = g
            if g.split('+')[0] != baseline[c] or ('+ws' in g) != is_pcre2_space(c):
                candidates.append(c)
        job['candidates'] = candidates
        with open(os.path.join(tmp, 'job.json'), 'w') as f:
            json.dump(job, f)
        subprocess.run(['node', script, os.path.join(tmp, 'job.json')], check=True)
        with open(job['out']) as f:
            result = json.load(f)

    # Regex stand-ins: every code point whose category or \s membership in
    # the reference's regexes differs from PCRE2's.
    reference = {}
    for c, props in zip(candidates, result['ref_gc']):
        categories = [p for p in props if p != 'ws']
        if len(categories) > 1:
            sys.exit('code point %X is in several categories: %s' % (c, props))
        reference[c] = (categories[0] if categories else 'Cn', 'ws' in props)
    differing = sorted(c for c in reference if reference[c] != (baseline[c], is_pcre2_space(c)))
    stand_in_for = {}
    for c in CODE_POINTS:
        if c < 0x80 or c in reference or is_pcre2_space(c):
            continue
        stand_in_for.setdefault((baseline[c], utf8_length(c)), c)
    stand_ins = []
    for c in differing:
        category, space = reference[c]
        if space:
            sys.exit('code point %X became whitespace; a stand-in cannot express that' % c)
        stand_in = stand_in_for[(category, utf8_length(c))]
        if stand_ins and stand_ins[-1][1] == c - 1 and stand_ins[-1][2] == stand_in:
            stand_ins[-1][1] = c
        else:
            stand_ins.append([c, c, stand_in, category])

    # Normalization: code points with normalization data in Unicode 17.0 that
    # the reference lacks, and the parts of the compositions they take part in.
    inert = set()
    for c, node_props, ref_props, nfd in result['norm']:
        if node_props != ref_props:
            if any(ref_props):
                sys.exit('code point %X has other normalization data in the reference' % c)
            inert.add(c)
    for c, node_props, ref_props, nfd in result['norm']:
        if c in inert and node_props[0]:
            # A new composite's parts stay apart in the reference. Parts that
            # the reference knows (U+0307 in Todhri) are left out: splitting
            # at the new base already keeps them from composing.
            for part in nfd:
                p = ord(part)
                if not any(q[0] == p and any(q[2]) for q in result['norm']):
                    inert.add(p)

    lowercase = {int(c): s for c, s in result['lowercase'].items()}
    lower_overrides = []
    for c in sorted(lowercase):
        if lowercase[c] != chr(c).lower():
            if len(lowercase[c]) != 1:
                sys.exit('code point %X lowercases to several characters' % c)
            lower_overrides.append((c, ord(lowercase[c])))
    for c in CODE_POINTS:
        if c not in lowercase and chr(c).lower() != chr(c) and c != 0x130:
            lower_overrides.append((c, c))
    lower_overrides.sort()

    def table(name, kind, rows, comment):
        lines = ['// ' + line for line in comment] + ['constexpr %s %s[] = {' % (kind, name)]
        lines += ['    ' + row for row in rows]
        lines.append('};')
        return '\n'.join(lines) + '\n'

    def range_rows(code_points):
        return ['{0x%05X, 0x%05X},' % (a, b) for a, b in ranges_of(code_points)]

    with open(OUT, 'w') as f:
        f.write('// Generated by tests/data/tokenizers/make_unicode_tables.py from the reference\n'
                '// Hugging Face tokenizers library (0.22, via @anush008/tokenizers 0.6.0); do not\n'
                '// edit. See that script for how each table is measured.\n\n')
        f.write(table('kRegexStandIns', 'StandInRange',
                      ['{0x%05X, 0x%05X, 0x%05X},  // %s' % tuple(r) for r in stand_ins],
                      ['Code points that the reference\'s regexes (Oniguruma, Unicode 16.0) class',
                       'differently from PCRE2 10.42 (Unicode 14.0): first, last, and a stand-in of',
                       'the same UTF-8 length that PCRE2 puts in the reference\'s category.']))
        f.write('\n')
        f.write(table('kNormalizationInert', 'CodePointRange', range_rows(inert),
                      ['Code points with normalization data (a decomposition, a combining class or',
                       'a part in a composition) in Unicode versions after the reference\'s 9.0,',
                       'which the reference therefore leaves alone.']))
        f.write('\n')
        f.write(table('kLowercaseOverrides', 'LowercaseOverride',
                      ['{0x%05X, 0x%05X},' % r for r in lower_overrides],
                      ['Code points whose lowercase in the reference (Rust\'s char::to_lowercase)',
                       'differs from Unicode 14.0\'s: the code point and its lowercase.']))
        f.write('\n')
        f.write(table('kNumeric', 'CodePointRange', range_rows(result['numeric']),
                      ['Rust\'s char::is_numeric in the reference (Digits).']))
        f.write('\n')
        f.write(table('kPunctuation', 'CodePointRange', range_rows(result['punctuation']),
                      ['The reference\'s punctuation test (Punctuation): ASCII punctuation and',
                       'the unicode_categories crate\'s punctuation.']))
        f.write('\n')
        f.write(table('kWhitespace', 'CodePointRange', range_rows(result['whitespace']),
                      ['Rust\'s char::is_whitespace in the reference (WhitespaceSplit).']))
        f.write('\n')
        f.write(table('kWordCharacters', 'CodePointRange', range_rows(result['word']),
                      ['\\w of the Rust regex crate in the reference (the Whitespace pre-tokenizer\'s',
                       'pattern): alphabetic, marks, decimal digits, connector punctuation, joiners.']))
    print('wrote', OUT, len(stand_ins), 'stand-in ranges,', len(ranges_of(inert)), 'inert ranges,',
          len(lower_overrides), 'lowercase overrides')


if __name__ == '__main__':
    main()
