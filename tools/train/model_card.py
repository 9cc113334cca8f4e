#!/usr/bin/python3
"""Writes models/tiny-moe/README.md (the model card) from the exported folder: metrics.json and
training_curve.csv from training, plus measurements made with epwa itself (parameter counts,
held-out perplexity, fixed-seed samples).

  tools/train/model_card.py [--model models/tiny-moe] [--epwa build/epwa]
"""
import argparse
import csv
import json
import os
import subprocess
import sys

PROMPTS = ["The", "To install the package,", "A hacker is", "In Python, a list"]
SEEDS = [1, 2]


def epwa_json(epwa, *args):
    r = subprocess.run([epwa, *args, "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"epwa {' '.join(args)} failed: {r.stderr.strip()}")
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/tiny-moe")
    ap.add_argument("--epwa", default="build/epwa")
    ap.add_argument("--heldout", default="data/heldout/jargon.txt")
    a = ap.parse_args()
    m = json.load(open(os.path.join(a.model, "metrics.json")))
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    info = epwa_json(a.epwa, "info", "-m", a.model)
    tokv = json.load(open(os.path.join(a.model, "tokenizer_verify.json")))
    sources = [l.split() for l in open(os.path.join(a.model, "source_packages.txt")) if l.strip()]
    curve = list(csv.DictReader(open(os.path.join(a.model, "training_curve.csv"))))
    ev = epwa_json(a.epwa, "eval", "quant", "-m", a.model, "--text", a.heldout, "--levels",
                   "fp16", "--window", str(cfg["max_position_embeddings"]), "--max-tokens", "65536")
    samples = []
    for p in PROMPTS:
        for s in SEEDS:
            r = epwa_json(a.epwa, "run", "-m", a.model, "-p", p, "-n", "48", "--seed", str(s))
            samples.append((p, s, r["text"]))

    L, E = cfg["num_hidden_layers"], cfg["num_local_experts"]
    usage = m["expert_top1_usage_heldout"]
    lines = []
    w = lines.append
    w("# tiny-moe: epwa's bundled Mixture-of-Experts model")
    w("")
    w("A small language model trained from scratch on this repository's pipeline, on a 2-core CPU,")
    w("from English text in Debian packages. It exists so that epwa's main job, tests and watermark")
    w("measurements run on a model with real language statistics and a router that really learned")
    w("to route. It is not a useful assistant: expect fluent-looking, often meaningless text in the")
    w("style of Python documentation, Debian manuals and fortune cookies.")
    w("")
    w("## Architecture")
    w("")
    w(f"Hugging Face `MixtralForCausalLM` layout (the same loader serves a real Mixtral):")
    w("")
    w("| | |")
    w("|---|---|")
    w(f"| layers | {L} |")
    w(f"| d_model | {cfg['hidden_size']} |")
    w(f"| attention | {cfg['num_attention_heads']} query heads, {cfg['num_key_value_heads']} KV heads (grouped-query), head_dim {cfg['hidden_size'] // cfg['num_attention_heads']}, RoPE theta {cfg['rope_theta']:g} |")
    w(f"| MoE | {E} experts per layer, top-{cfg['num_experts_per_tok']} routing (softmax, renormalised), SwiGLU experts of d_ff {cfg['intermediate_size']} |")
    w(f"| vocabulary | {cfg['vocab_size']} (SentencePiece BPE with byte fallback) |")
    w(f"| context | {cfg['max_position_embeddings']} tokens |")
    w(f"| embeddings | untied lm_head |" if not cfg.get("tie_word_embeddings") else "| embeddings | tied |")
    w(f"| parameters | {info['parameters']:,} total, {info['active_parameters_per_token']:,} active per token |")
    w(f"| file | `model.safetensors`, bf16, {os.path.getsize(os.path.join(a.model, 'model.safetensors')):,} bytes |")
    w("")
    w("## Training data and licences")
    w("")
    w("All text comes from Debian 12 packages fetched with `apt-get download` (no other network):")
    w("")
    w("| package | version | role | licence of the text |")
    w("|---|---|---|---|")
    lic = {"python3.11-doc": "PSF License Agreement (Python documentation)",
           "fortunes": "BSD (fortune-mod); fortune files of mixed origin, distributed by Debian",
           "fortunes-min": "BSD (fortune-mod)",
           "debian-reference-en": "GPL-2+ (Osamu Aoki)",
           "jargon-text": "public domain"}
    for s in sources:
        role = "held out (never trained on)" if s[0] == "jargon-text" else "training"
        w(f"| `{s[0]}` | {s[1]} | {role} | {lic.get(s[0], 'see the package copyright file')} |")
    w("")
    w(f"Training text: {m['train_tokens_available']:,} tokens. Held-out text: `data/heldout/jargon.txt`")
    w("(The Jargon File 4.4.7; see `data/heldout/README.md`). The weights are derived from the")
    w("training texts above; keep their notices when redistributing.")
    w("")
    w("## Training")
    w("")
    w(f"- {m['steps']:,} steps of {m['batch']} x {m['seq_len']} tokens = {m['tokens']:,} tokens "
      f"({m['tokens'] / m['train_tokens_available']:.2f} epochs), {m['train_minutes']:.0f} minutes on 2 CPU cores "
      f"({m['tokens_per_s']:.0f} tokens/s), torch {m.get('torch_version', '?')} from Debian.")
    w(f"- AdamW, peak learning rate {m['peak_lr']}, {m['warmup']} warm-up steps then cosine decay; seed {m['seed']}.")
    w(f"- Load-balancing loss (Switch/Mixtral form) with coefficient {m['aux_coef']}, so the router does not collapse.")
    if "balance_phase" in m:
        b = m["balance_phase"]
        w(f"- Then a **balance phase**: {b['steps']} more steps ({b['tokens']:,} tokens, {b['train_minutes']:.1f} min) "
          f"from the main run's export, with the balancing coefficient raised to {b['aux_coef']} (peak lr "
          f"{b['peak_lr']}, {b['warmup']} warm-up steps, cosine decay, other batches). The main run "
          f"({m['main_run_steps']} steps) left the last layer's rarest expert at 2.8% of top-1 choices, under "
          "the 3% floor; the numbers below are of the final model.")
    w("- Training curve (every step): `training_curve.csv`. Every 10% of the run:")
    w("")
    w("| step | tokens | train loss | balance loss |")
    w("|---:|---:|---:|---:|")
    n = len(curve)
    for i in sorted({max(0, int(n * k / 10) - 1) for k in range(1, 11)}):
        r = curve[i]
        w(f"| {r['step']} | {int(r['tokens']):,} | {float(r['train_loss']):.3f} | {float(r['aux_loss']):.3f} |")
    w("")
    w("## Evaluation")
    w("")
    ref_ppl = ev["levels"][0]["reference_perplexity"]
    w(f"| text | tokens | loss (nats/token) | perplexity |")
    w("|---|---:|---:|---:|")
    w(f"| validation (held-back part of the training distribution), torch | {m['val_tokens']:,} | {m['val_loss']:.3f} | {m['val_ppl']:.1f} |")
    w(f"| held-out Jargon File, torch | {m['heldout_tokens']:,} | {m['heldout_loss']:.3f} | {m['heldout_ppl']:.1f} |")
    w(f"| held-out Jargon File, `epwa eval quant` (float32) | {ev['text_tokens']:,} | | {ref_ppl:.1f} |")
    w(f"| uniform guess over the vocabulary | | {__import__('math').log(cfg['vocab_size']):.3f} | {cfg['vocab_size']} |")
    w("")
    w("(The two held-out rows measure different spans: torch scored the whole file in windows without")
    w("BOS; `epwa eval quant` the first 65,536 tokens in windows that start with BOS. The engine itself")
    w("matches the NumPy reference to 1e-5 in the logits, see `tests/model_reference_test.cc`.)")
    w("")
    w(f"Tokenizer: SentencePiece and epwa's `tokenizer.json` give identical ids on "
      f"{tokv['heldout']['ids_identical']}/{tokv['heldout']['texts']} held-out paragraphs and "
      f"{tokv['train']['ids_identical']}/{tokv['train']['texts']} "
      "training documents; decode(encode(x)) == x on all of them (`tokenizer_verify.json`; checked again by "
      "the test `tokenizer_sentencepiece`).")
    w("")
    w("### Expert usage on held-out text")
    w("")
    w("Share of top-1 router choices per expert and layer (torch, held-out text). The floor is 3%.")
    w("")
    w("| layer | " + " | ".join(f"e{e}" for e in range(E)) + " | min |")
    w("|---|" + "---:|" * (E + 1))
    for l in range(L):
        w(f"| {l} | " + " | ".join(f"{100 * x:.1f}%" for x in usage[l]) + f" | **{100 * min(usage[l]):.1f}%** |")
    w("")
    w("## Samples")
    w("")
    gen = json.load(open(os.path.join(a.model, "generation_config.json")))
    w(f"`build/epwa run -m models/tiny-moe -p PROMPT -n 48 --seed S` (sampling defaults from "
      f"`generation_config.json`: temperature {gen.get('temperature')}, top_p {gen.get('top_p')}, "
      f"top_k {gen.get('top_k', 'off')}, repetition penalty {gen.get('repetition_penalty', 1.0)}):")
    w("")
    for p, s, t in samples:
        text = (p + t).replace("\n", " \u21b5 ")
        w(f"- seed {s}: {text}")
    w("")
    w("## Reproduce")
    w("")
    w("```")
    w("apt-get install sentencepiece python3-sentencepiece python3-torch libopenblas0-pthread")
    w("cmake --build build                         # epwa itself (make test does it too)")
    w(f"STEPS={m.get('main_run_steps', m['steps'])} tools/train/train_all.sh     # text, tokenizer, training (+ balance phase), export, checks")
    w("tools/train/model_card.py                   # this file")
    w("```")
    w("")
    w(f"`STEPS={m.get('main_run_steps', m['steps'])}` fixes the main run's schedule (the default is a time budget). Training")
    w("is seeded; bit-exact weights also need the same torch/OpenBLAS build and thread count.")
    w("")
    out = os.path.join(a.model, "README.md")
    with open(out + ".tmp", "w") as f:
        f.write("\n".join(lines))
    os.replace(out + ".tmp", out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
