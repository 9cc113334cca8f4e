#!/usr/bin/python3
"""Check a byte-level BPE tokenizer.json three ways: epwa (`epwa tokenize --jsonl`), the
reference Hugging Face `tokenizers` library (tools/train/hf_tokenize.js under node) and the
Python encoder of bytelevel_bpe.py (which turned the training text into ids).

  verify_bytelevel_tokenizer.py --tokenizer DIR/tokenizer.json --heldout data/heldout/jargon.txt
      [--train-docs WORK/train_docs.json] [--epwa build/epwa] [--node-path /tmp/tokjs/node_modules]
      [--stats-out DIR/tokenizer_verify.json]

Texts: every held-out paragraph, a seeded sample of training documents (first 3000 characters:
they carry newlines, indentation, code and rare characters) and hand-written edge cases.
Required for success: epwa ids == HF ids on every text, and epwa's decode of those ids == HF's
decode (which is the NFC form of the text). The Python encoder's agreement is reported too and
also required, since the model was trained on its ids.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import unicodedata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bytelevel_bpe import ByteLevelBPE  # noqa: E402

EDGE = [
    "Hello world", " leading space", "two  spaces", "tabs\tand\nnewlines\n\n",
    "    indented code:\n        return x", "1234567890 3.14159", "emoji \U0001F600 and \u6f22\u5b57 \u2713",
    "trailing   ", "a", " ", "\u00e9t\u00e9 na\u00efve caf\u00e9", "cafe\u0301 (combining accent, NFC)",
    "I'm you're HE'S we'VE they'd she'll", "line1\r\nline2\rline3", "\n\n\n", "x\u00a0y\u3000z",
    "<|endoftext|>", "text<|endoftext|>more<|im_start|>user\nhi<|im_end|>", "<|endoftext",
    "\u0000nul \u007f del \ufeff bom", "ĠĊ byte-level lookalikes",
]


def run_epwa(epwa, tok, lines, tmp, name):
    path = os.path.join(tmp, name)
    with open(path, "w", encoding="utf-8") as f:
        for l in lines:
            f.write(json.dumps(l, ensure_ascii=False) + "\n")
    r = subprocess.run([epwa, "tokenize", "--tokenizer", tok, "--jsonl", path],
                       capture_output=True, text=True)
    out = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    if len(out) != len(lines):
        sys.exit(f"epwa tokenize --jsonl gave {len(out)} lines for {len(lines)} (rc {r.returncode}): "
                 f"{r.stderr.strip()[:300]}")
    return out


def run_hf(node_path, tok, texts, tmp):
    inp, outp = os.path.join(tmp, "hf_in.jsonl"), os.path.join(tmp, "hf_out.jsonl")
    with open(inp, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps(t, ensure_ascii=False) + "\n")
    env = dict(os.environ, NODE_PATH=node_path)
    js = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_tokenize.js")
    subprocess.run(["node", js, tok, inp, outp], check=True, env=env)
    return [json.loads(l) for l in open(outp, encoding="utf-8") if l.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--train-docs")
    ap.add_argument("--train-sample", type=int, default=300)
    ap.add_argument("--epwa", default="build/epwa")
    ap.add_argument("--node-path", default=os.environ.get("NODE_PATH", "/tmp/tokjs/node_modules"))
    ap.add_argument("--stats-out")
    a = ap.parse_args()

    paras = [p.strip("\n") for p in open(a.heldout, encoding="utf-8").read().split("\n\n") if p.strip()]
    texts = [("heldout", p) for p in paras]
    if a.train_docs:
        docs = json.load(open(a.train_docs, encoding="utf-8"))
        rng = random.Random(0)
        texts += [("train", d[:3000]) for d in rng.sample(docs, min(a.train_sample, len(docs)))]
    texts += [("edge", t) for t in EDGE]
    plain = [t for _, t in texts]

    py = ByteLevelBPE(a.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        hf = run_hf(a.node_path, a.tokenizer, plain, tmp)
        ep = run_epwa(a.epwa, a.tokenizer, plain, tmp, "enc.jsonl")
        ep_dec = run_epwa(a.epwa, a.tokenizer, [h["ids"] for h in hf], tmp, "dec.jsonl")

    stats, bad = {}, []
    for (kind, t), h, e, ed in zip(texts, hf, ep, ep_dec):
        s = stats.setdefault(kind, {"texts": 0, "ids_identical_epwa_hf": 0,
                                    "ids_identical_python_hf": 0, "decode_identical_epwa_hf": 0,
                                    "hf_decode_is_nfc_text": 0, "tokens": 0})
        s["texts"] += 1
        s["tokens"] += len(h["ids"])
        ok_e = isinstance(e, list) and e == h["ids"]
        ok_p = py.encode(t) == h["ids"]
        ok_d = ed == h["decoded"]
        s["ids_identical_epwa_hf"] += ok_e
        s["ids_identical_python_hf"] += ok_p
        s["decode_identical_epwa_hf"] += ok_d
        s["hf_decode_is_nfc_text"] += h["decoded"] == unicodedata.normalize("NFC", t)
        if not (ok_e and ok_p and ok_d) and len(bad) < 8:
            bad.append({"kind": kind, "text": t[:120], "hf": h["ids"][:30],
                        "epwa": e[:30] if isinstance(e, list) else e, "python": py.encode(t)[:30],
                        "epwa_decode": ed[:80] if isinstance(ed, str) else ed})
    for kind, s in stats.items():
        print(f"verify {kind}: {s['texts']} texts ({s['tokens']:,} tokens): ids epwa == HF "
              f"{s['ids_identical_epwa_hf']}/{s['texts']}, python == HF "
              f"{s['ids_identical_python_hf']}/{s['texts']}, decode epwa == HF "
              f"{s['decode_identical_epwa_hf']}/{s['texts']}, HF decode == NFC(text) "
              f"{s['hf_decode_is_nfc_text']}/{s['texts']}")
    for b in bad:
        print("MISMATCH", json.dumps(b, ensure_ascii=False))
    ok = all(s["ids_identical_epwa_hf"] == s["texts"] == s["ids_identical_python_hf"]
             == s["decode_identical_epwa_hf"] for s in stats.values())
    result = {"tokenizer": os.path.basename(a.tokenizer), "reference": "HF tokenizers 0.22 "
              "(npm @anush008/tokenizers) via tools/train/hf_tokenize.js", "epwa": a.epwa,
              "ok": ok, "by_kind": stats}
    if a.stats_out:
        json.dump(result, open(a.stats_out, "w"), indent=2)
    print("tokenizer verification " + ("OK" if ok else "FAILED"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
