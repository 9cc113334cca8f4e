#!/usr/bin/python3
"""Byte-level BPE tokenizer in the GPT-2 / Qwen style: training, encoding and the Hugging Face
tokenizer.json / tokenizer_config.json it is exported as.

  bytelevel_bpe.py --docs WORK/train_docs.json --out DIR [--vocab 6144]

Writes DIR/tokenizer.json and DIR/tokenizer_config.json. The tokenizer.json has the layout of
Qwen2/Qwen3's own file: NFC normalizer; pre-tokenizer Sequence[Split(Qwen regex, Isolated),
ByteLevel(add_prefix_space false, use_regex false)]; BPE model over the GPT-2 byte-to-unicode
alphabet without unk/byte fallback; ByteLevel post-processor and decoder; the special tokens
<|endoftext|>, <|im_start|>, <|im_end|> as added tokens after the learned vocabulary.

Training (written here, not taken from a library) follows the usual BPE algorithm, as the HF
`tokenizers` BpeTrainer does it: the documents are NFC-normalised and cut into pre-tokens with
the Qwen regex, every pre-token becomes a sequence of its UTF-8 bytes, and the most frequent
adjacent pair (counted over all pre-tokens with their multiplicity) is merged repeatedly until
the vocabulary is full. Ties between equally frequent pairs go to the pair whose (left id,
right id) is smallest, so that training is deterministic. Pair counts are kept up to date
incrementally: only the words that contain the merged pair are revisited.

The module also holds a plain encoder (`ByteLevelBPE`) that applies the merges by rank, as HF's
BPE model does, with a per-pre-token cache; train_qwen3_moe.py uses it to turn the training
text into ids, and verify_bytelevel_tokenizer.py checks it against HF `tokenizers` and epwa.
"""
import argparse
import heapq
import json
import os
import sys
import time
import unicodedata
from collections import defaultdict

import regex

# Qwen2/Qwen3's pre-tokenizer pattern, as it appears in their tokenizer.json.
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def bytes_to_unicode():
    """GPT-2's map from the 256 byte values to printable characters: printable Latin-1 bytes
    map to themselves, the others (controls, space, soft hyphen...) to U+0100 onwards.
    Returns the list of characters in GPT-2's order (printable bytes first) and the map."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
          + list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return bs, {b: chr(c) for b, c in zip(bs, cs)}


BYTE_ORDER, BYTE_CHAR = bytes_to_unicode()


def pre_tokenize(text, pattern=None):
    """NFC, then the Qwen regex's matches (Split "Isolated" keeps every piece of the text: the
    pattern's last alternatives cover any leftover whitespace, and every other character is
    matched by one of the earlier ones)."""
    pattern = pattern or regex.compile(QWEN_PATTERN)
    return pattern.findall(unicodedata.normalize("NFC", text))


def to_byte_chars(piece):
    return "".join(BYTE_CHAR[b] for b in piece.encode("utf-8"))


# ----------------------------------------------------------------------------- training

def count_words(docs):
    pattern = regex.compile(QWEN_PATTERN)
    counts = defaultdict(int)
    for d in docs:
        for p in pre_tokenize(d, pattern):
            counts[p] += 1
    return counts


def train(docs, vocab_size, log=print):
    """Returns (tokens, merges): tokens is the learned vocabulary in id order (byte-level
    strings), merges the list of (left, right) string pairs in rank order."""
    t0 = time.time()
    counts = count_words(docs)
    log(f"bpe: {len(counts):,} distinct pre-tokens ({time.time() - t0:.1f}s)")
    tokens = [BYTE_CHAR[b] for b in BYTE_ORDER]
    tid = {t: i for i, t in enumerate(tokens)}
    byte_id = {b: tid[BYTE_CHAR[b]] for b in range(256)}
    # Words in a fixed order (by first appearance) so that training is deterministic.
    words = [[byte_id[b] for b in w.encode("utf-8")] for w in counts]
    freq = list(counts.values())
    pair_count = defaultdict(int)
    where = defaultdict(set)
    for wi, w in enumerate(words):
        f = freq[wi]
        for a, b in zip(w, w[1:]):
            pair_count[(a, b)] += f
            where[(a, b)].add(wi)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    merges, merge_set = [], set()
    target = vocab_size - len(SPECIALS)
    while len(tokens) < target and heap:
        negc, pair = heapq.heappop(heap)
        c = pair_count.get(pair, 0)
        if c <= 0:
            continue
        if -negc != c:
            # Stale entry: the count changed since it was pushed; push the current one.
            heapq.heappush(heap, (-c, pair))
            continue
        a, b = pair
        merged = tokens[a] + tokens[b]
        new = tid.get(merged)
        if new is None:
            new = len(tokens)
            tokens.append(merged)
            tid[merged] = new
        # A pair can come back once a later merge re-creates one of its tokens' strings;
        # the tokenizer.json lists each pair once (HF would keep only one rank anyway).
        if (tokens[a], tokens[b]) not in merge_set:
            merge_set.add((tokens[a], tokens[b]))
            merges.append((tokens[a], tokens[b]))
        changed = set()
        for wi in sorted(where.pop(pair, ())):
            w, f = words[wi], freq[wi]
            # Remove the word's old pairs, merge left to right, add its new pairs.
            for p in zip(w, w[1:]):
                pair_count[p] -= f
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            for p in zip(w, w[1:]):
                if p != pair:
                    where[p].discard(wi)
            words[wi] = out
            for p in zip(out, out[1:]):
                pair_count[p] += f
                where[p].add(wi)
                changed.add(p)
        pair_count.pop(pair, None)
        for p in changed:
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
        if len(merges) % 1000 == 0:
            log(f"bpe: {len(merges)} merges, vocab {len(tokens)} ({time.time() - t0:.1f}s)")
    log(f"bpe: done, {len(merges)} merges, vocab {len(tokens)} + {len(SPECIALS)} special "
        f"({time.time() - t0:.1f}s)")
    return tokens, merges


# ----------------------------------------------------------------------------- export

def tokenizer_json(tokens, merges):
    n = len(tokens)
    bl = {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": n + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True} for i, s in enumerate(SPECIALS)],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN_PATTERN}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", **bl}]},
        "post_processor": {"type": "ByteLevel", **bl},
        "decoder": {"type": "ByteLevel", **bl},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": [[a, b] for a, b in merges],
        },
    }


def tokenizer_config(n_regular, max_len):
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(n_regular + i): {"content": s, "lstrip": False, "normalized": False,
                                 "rstrip": False, "single_word": False, "special": True}
            for i, s in enumerate(SPECIALS)},
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        # Qwen's ChatML template, without tool calls or thinking blocks (this is a base model).
        "chat_template": (
            "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + "
            "message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}"
            "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"),
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": max_len,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


# ----------------------------------------------------------------------------- encoding

class ByteLevelBPE:
    """Encoder for a tokenizer.json written by tokenizer_json(): special tokens are split out
    of the text first (HF does the same for added tokens), each remaining span is
    pre-tokenized and every pre-token is BPE-encoded by merge rank (lowest rank first, the
    leftmost occurrence on ties), as HF's BPE model does."""

    def __init__(self, path):
        tj = json.load(open(path, encoding="utf-8"))
        m = tj["model"]
        self.vocab = m["vocab"]
        self.inv = {i: t for t, i in self.vocab.items()}
        self.ranks = {}
        for r, mg in enumerate(m["merges"]):
            pair = tuple(mg) if isinstance(mg, list) else tuple(mg.split(" ", 1))
            self.ranks.setdefault(pair, r)
        self.special = {a["content"]: a["id"] for a in tj["added_tokens"]}
        for a in tj["added_tokens"]:
            self.inv[a["id"]] = a["content"]
        self.special_re = regex.compile("|".join(regex.escape(s) for s in
                                                 sorted(self.special, key=len, reverse=True)))
        self.pattern = regex.compile(QWEN_PATTERN)
        self.byte_of = {c: b for b, c in BYTE_CHAR.items()}
        self.cache = {}

    def _bpe(self, piece):
        syms = list(to_byte_chars(piece))
        while len(syms) > 1:
            best, bi = None, -1
            for i in range(len(syms) - 1):
                r = self.ranks.get((syms[i], syms[i + 1]))
                if r is not None and (best is None or r < best):
                    best, bi = r, i
            if best is None:
                break
            # Merge every non-overlapping occurrence of that pair, left to right (the same
            # result as HF's one-at-a-time merging: equal-rank merges are of the same pair).
            a, b = syms[bi], syms[bi + 1]
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            syms = out
        return [self.vocab[s] for s in syms]

    def encode_plain(self, text):
        """ids of text without looking for special tokens in it."""
        ids = []
        for p in self.pattern.findall(unicodedata.normalize("NFC", text)):
            got = self.cache.get(p)
            if got is None:
                got = self._bpe(p)
                if len(self.cache) < 2_000_000:
                    self.cache[p] = got
            ids.extend(got)
        return ids

    def encode(self, text):
        ids, pos = [], 0
        for m in self.special_re.finditer(text):
            ids.extend(self.encode_plain(text[pos:m.start()]))
            ids.append(self.special[m.group(0)])
            pos = m.end()
        ids.extend(self.encode_plain(text[pos:]))
        return ids

    def decode(self, ids):
        out = bytearray()
        for i in ids:
            t = self.inv[i]
            if t in self.special:
                out += t.encode("utf-8")
            else:
                out += bytes(self.byte_of[c] for c in t)
        return out.decode("utf-8", errors="replace")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", required=True, help="train_docs.json (list of documents)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab", type=int, default=6144, help="total size, special tokens included")
    ap.add_argument("--max-len", type=int, default=512)
    a = ap.parse_args()
    docs = json.load(open(a.docs, encoding="utf-8"))
    tokens, merges = train(docs, a.vocab, log=lambda s: print(s, flush=True))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_json(tokens, merges), f, ensure_ascii=False, indent=1)
    with open(os.path.join(a.out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config(len(tokens), a.max_len), f, indent=2, ensure_ascii=False)
    print(f"tokenizer: {len(tokens)} tokens + {len(SPECIALS)} special, {len(merges)} merges "
          f"-> {a.out}")
    if len(tokens) + len(SPECIALS) != a.vocab:
        sys.exit(f"vocabulary has {len(tokens) + len(SPECIALS)} entries, not {a.vocab}")


if __name__ == "__main__":
    main()
