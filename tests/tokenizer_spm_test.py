#!/usr/bin/python3
"""The bundled model's tokenizer.json, run by epwa, against the SentencePiece library running
tokenizer.model (the file it was trained as) on every paragraph of the held-out corpus.

  tokenizer_spm_test.py path/to/epwa

Exits 77 (CTest's skip code) with a reason when the sentencepiece module or the model is absent.
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "tiny-moe")
HELDOUT = os.path.join(ROOT, "data", "heldout", "jargon.txt")


def skip(why):
    print(f"SKIPPED: {why}")
    sys.exit(77)


def run_jsonl(epwa, items):
    """One epwa process for all items: strings are encoded, id lists decoded."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "in.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for it in items:
                f.write(json.dumps(it, ensure_ascii=False) + "\n")
        r = subprocess.run([epwa, "tokenize", "--tokenizer", os.path.join(MODEL, "tokenizer.json"),
                            "--jsonl", path], capture_output=True, text=True, encoding="utf-8")
    if r.returncode != 0:
        sys.exit(f"FAIL: epwa tokenize exited {r.returncode}: {r.stderr.strip()}")
    out = [json.loads(line) for line in r.stdout.splitlines()]
    if len(out) != len(items):
        sys.exit(f"FAIL: {len(items)} inputs but {len(out)} outputs")
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    epwa = sys.argv[1]
    try:
        import sentencepiece
    except ImportError:
        skip("python3-sentencepiece is not installed (apt-get install python3-sentencepiece)")
    if not os.path.exists(os.path.join(MODEL, "tokenizer.model")):
        skip(f"{MODEL}/tokenizer.model is absent")
    sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(MODEL, "tokenizer.model"))
    text = open(HELDOUT, encoding="utf-8").read()
    paras = [p.strip("\n") for p in text.split("\n\n") if p.strip()]
    # Edge cases the corpus lacks: whitespace runs, tabs, digits, characters outside the
    # vocabulary (byte fallback), a lone space.
    paras += ["two  spaces", "tabs\tand\nnewlines\n\n", "    indented:\n        return x",
              "1234567890 3.14159", "emoji \U0001F600 and \u6f22\u5b57 \u2713", "trailing   ",
              "a", " ", "\u00e9t\u00e9 na\u00efve caf\u00e9"]
    want = [sp.encode(p) for p in paras]
    got = run_jsonl(epwa, paras)
    decoded = run_jsonl(epwa, want)
    bad_ids = [i for i, (w, g) in enumerate(zip(want, got)) if w != g]
    bad_sp_roundtrip = [i for i, (p, w) in enumerate(zip(paras, want)) if sp.decode(w) != p]
    bad_epwa_roundtrip = [i for i, (p, d) in enumerate(zip(paras, decoded)) if d != p]
    n_tokens = sum(len(w) for w in want)
    print(f"{len(paras)} texts, {len(text):,} chars, {n_tokens:,} SentencePiece tokens "
          f"({len(text) / max(n_tokens, 1):.2f} chars/token)")
    print(f"ids identical (SentencePiece vs epwa tokenizer.json): {len(paras) - len(bad_ids)}/{len(paras)}")
    print(f"SentencePiece decode(encode(x)) == x: {len(paras) - len(bad_sp_roundtrip)}/{len(paras)}")
    print(f"epwa decode(ids) == x: {len(paras) - len(bad_epwa_roundtrip)}/{len(paras)}")
    for i in bad_ids[:3]:
        print(f"  mismatch on {paras[i][:80]!r}: sentencepiece {want[i][:20]} epwa {got[i][:20]}")
    for i in bad_epwa_roundtrip[:3]:
        print(f"  epwa decode differs on {paras[i][:80]!r}: {decoded[i][:80]!r}")
    if bad_ids or bad_sp_roundtrip or bad_epwa_roundtrip:
        sys.exit("FAIL")
    print("OK")


if __name__ == "__main__":
    main()
