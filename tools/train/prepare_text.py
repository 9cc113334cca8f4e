#!/usr/bin/python3
"""Turn the extracted Debian packages (see fetch_text.sh) into training text and the
held-out corpus.

  prepare_text.py WORKDIR HELDOUT_DIR

WORKDIR/x/PKG/ holds each extracted package, WORKDIR/versions.txt the versions.
Writes:
  WORKDIR/train_docs.json  list of training documents (strings), in a fixed order
  WORKDIR/train.txt        the same documents, one text line per line (SentencePiece input)
  HELDOUT_DIR/jargon.txt   held-out paragraphs, one per blank-line-separated block
Everything is sorted and deterministic: the same packages give the same bytes.
"""
import glob
import gzip
import json
import os
import re
import sys


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def clean_doc(text):
    text = text.replace("\r\n", "\n").replace("\t", "    ").replace("\ufffd", "")
    text = re.sub(r"[ ]+\n", "\n", text)          # trailing spaces
    text = re.sub(r"\n{3,}", "\n\n", text)         # at most one blank line
    return text.strip("\n")


def python_docs(x):
    root = os.path.join(x, "python3.11-doc/usr/share/doc/python3.11/html/_sources")
    files = sorted(glob.glob(os.path.join(root, "**/*.rst.txt"), recursive=True))
    docs = []
    for f in files:
        t = clean_doc(read(f))
        # cut long manuals into chunks of whole sections (~8 KB) so shuffling mixes them
        parts, cur = [], []
        size = 0
        for para in t.split("\n\n"):
            cur.append(para)
            size += len(para)
            if size > 8000:
                parts.append("\n\n".join(cur)); cur, size = [], 0
        if cur:
            parts.append("\n\n".join(cur))
        docs.extend(p for p in parts if len(p) > 40)
    return docs


def fortunes(x):
    docs = []
    for pkg in ("fortunes", "fortunes-min"):
        root = os.path.join(x, pkg, "usr/share/games/fortunes")
        for f in sorted(glob.glob(os.path.join(root, "*.u8"))):
            name = os.path.basename(f)
            if name.startswith(("art", "ascii-art")):
                continue  # pictures, not language
            for q in read(f).split("\n%\n"):
                q = clean_doc(q)
                if len(q) > 20:
                    docs.append(q)
    return docs


def debian_reference(x):
    f = os.path.join(x, "debian-reference-en/usr/share/debian-reference/debian-reference.en.txt.gz")
    t = clean_doc(read(f))
    # chunks of ~8 KB at paragraph boundaries
    docs, cur, size = [], [], 0
    for para in t.split("\n\n"):
        cur.append(para); size += len(para)
        if size > 8000:
            docs.append("\n\n".join(cur)); cur, size = [], 0
    if cur:
        docs.append("\n\n".join(cur))
    return docs


def jargon_paragraphs(x):
    t = read(os.path.join(x, "jargon-text/usr/share/doc/jargon-text/jargon.txt.gz"))
    out = []
    for block in re.split(r"\n\s*\n", t):
        lines = [l.strip() for l in block.split("\n") if l.strip()]
        if not lines:
            continue
        p = " ".join(lines)
        p = re.sub(r"\{([^{}]*)\}", r"\1", p)      # {cross reference} markup -> text
        p = re.sub(r"\s+", " ", p).strip()
        if len(p) < 80 or len(p.split()) < 12:
            continue                                # headwords, TOC lines, short notes
        if re.search(r"[\u2500-\u257f]", p):
            continue                                # box drawing
        out.append(p)
    return out


def main():
    work, held = sys.argv[1], sys.argv[2]
    x = os.path.join(work, "x")
    docs = python_docs(x) + fortunes(x) + debian_reference(x)
    with open(os.path.join(work, "train_docs.json"), "w", encoding="utf-8") as f:
        json.dump(docs, f, ensure_ascii=False)
    with open(os.path.join(work, "train.txt"), "w", encoding="utf-8") as f:
        for d in docs:
            for line in d.split("\n"):
                if line.strip():
                    f.write(line + "\n")
    paras = jargon_paragraphs(x)
    os.makedirs(held, exist_ok=True)
    with open(os.path.join(held, "jargon.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(paras) + "\n")
    print(f"train: {len(docs)} documents, {sum(len(d) for d in docs)} chars; "
          f"held-out: {len(paras)} paragraphs, {sum(len(p) for p in paras)} chars")


if __name__ == "__main__":
    main()
