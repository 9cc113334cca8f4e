#!/usr/bin/python3
"""Writes models/tiny-qwen3-moe/README.md (the model card) from the exported folder: config.json,
metrics.json, training_curve.csv, three_way_check.json, tokenizer_verify.json and
source_packages.txt, plus samples and an evaluation run by epwa itself.

  tools/train/model_card_qwen3.py [--model models/tiny-qwen3-moe] [--epwa build/epwa]
"""
import argparse
import csv
import json
import os
import subprocess


def epwa_json(epwa, *args):
    out = subprocess.run([epwa, *args, "--json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/tiny-qwen3-moe")
    ap.add_argument("--epwa", default="build/epwa")
    ap.add_argument("--heldout", default="data/heldout/jargon.txt")
    a = ap.parse_args()
    m = a.model
    cfg = json.load(open(os.path.join(m, "config.json")))
    met = json.load(open(os.path.join(m, "metrics.json")))
    check = json.load(open(os.path.join(m, "three_way_check.json")))
    tokv = json.load(open(os.path.join(m, "tokenizer_verify.json")))
    curve = list(csv.DictReader(open(os.path.join(m, "training_curve.csv"))))
    packages = [l.split() for l in open(os.path.join(m, "source_packages.txt")) if l.strip()]
    name = os.path.basename(os.path.normpath(m))
    E, k = cfg["num_experts"], cfg["num_experts_per_tok"]
    lines = []
    w = lines.append

    w(f"# {name}: epwa's second bundled model, with many experts")
    w("")
    w("A small Mixture-of-Experts language model trained from scratch by this repository's pipeline "
      "on a 2-core CPU, from English text in Debian packages, in the Hugging Face Qwen3-MoE layout "
      f"with {E} experts per layer and top-{k} routing and a byte-level BPE tokenizer. It exists so that "
      "the watermark, the quantizer and the Qwen3-MoE code meet a trained router with many experts (the "
      "MoE models people run have 32 to 128), beside `tiny-moe`'s 8. It is not a useful assistant: "
      "expect fluent-looking, often meaningless text.")
    w("")
    w("## Architecture")
    w("")
    w("| | |")
    w("|---|---|")
    w(f"| layout | `{cfg['architectures'][0]}` (per-head q/k RMSNorm before RoPE, `norm_topk_prob` "
      f"{str(cfg['norm_topk_prob']).lower()}, every layer MoE) |")
    w(f"| layers | {cfg['num_hidden_layers']} |")
    w(f"| d_model | {cfg['hidden_size']} |")
    w(f"| attention | {cfg['num_attention_heads']} query heads, {cfg['num_key_value_heads']} KV heads, "
      f"head_dim {cfg['head_dim']}, RoPE theta {cfg['rope_theta']:g} |")
    w(f"| MoE | {E} experts per layer, top-{k} (softmax, top-k, renormalised), SwiGLU experts of d_ff "
      f"{cfg['moe_intermediate_size']} |")
    w(f"| vocabulary | {cfg['vocab_size']} (byte-level BPE, Qwen pre-tokenizer regex, NFC) |")
    w(f"| context | {cfg['max_position_embeddings']} tokens |")
    w(f"| parameters | {met['params_total']:,} total, {met['params_active']:,} active per token |")
    w(f"| file | `model.safetensors`, bf16, {met['safetensors_bytes']:,} bytes |")
    w("")
    w("## Training data and licences")
    w("")
    w("The same Debian packages and the same held-out text as `tiny-moe` (see its card for the "
      "licences): " + ", ".join(f"`{p[0]}` {p[1]}" for p in packages) + ". `jargon-text` is held out "
      "(never trained on): `data/heldout/jargon.txt`.")
    w("")
    w(f"Training text: {met['train_tokens_available']:,} tokens of this tokenizer.")
    w("")
    w("## Tokenizer")
    w("")
    w("Byte-level BPE trained by the project's own code (`tools/train/bytelevel_bpe.py`) on the training "
      "text; `tokenizer.json` in the GPT-2/Qwen byte-level style. Checked against the reference Hugging "
      "Face `tokenizers` library (`tools/train/verify_bytelevel_tokenizer.py`):")
    w("")
    w("| texts | count | ids epwa = HF | decode epwa = HF |")
    w("|---|---:|---:|---:|")
    for kind, v in tokv["by_kind"].items():
        w(f"| {kind} | {v['texts']} | {v['ids_identical_epwa_hf']} | {v['decode_identical_epwa_hf']} |")
    w("")
    w("(`tests/data/tokenizers/tiny-qwen3-moe/heldout_vectors.jsonl` keeps every 8th held-out paragraph "
      "as encoded by the reference library; the tokenizer test checks it in CI.)")
    w("")
    w("## Training")
    w("")
    main_steps = met.get("main_run_steps", met["steps"])
    w(f"- {met['steps']:,} steps of {met['batch']} x {met['seq_len']} tokens = {met['tokens']:,} tokens, "
      f"{met['train_minutes']:.0f} minutes on 2 CPU cores ({met['tokens_per_s']:.0f} tokens/s), torch "
      f"{met['torch_version']} from Debian; main run {main_steps:,} steps.")
    w(f"- AdamW, peak learning rate {met['peak_lr']}, {met['warmup']} warm-up steps then cosine decay; "
      f"seed {met['seed']}.")
    w(f"- Load-balancing loss (the Switch/Qwen-MoE form, per layer) with coefficient {met['aux_coef']}; "
      f"the floor is 1/(2E) = {met['expert_share_floor']:.2%} of top-1 choices per expert and layer on "
      "held-out text.")
    for b in met.get("balance_phases", []):
        if b.get("top1_coef", 0) > 0 and b.get("top1_kind", "hard") == "hard":
            what = (f"Top-1 round: {b['steps']} steps, top-1 term at coefficient {b['top1_coef']} over windows "
                    f"of {b.get('top1_window', met['seq_len'])} tokens, Switch term at {b['aux_coef']}")
        else:
            what = f"Balance round: {b['steps']} steps at coefficient {b['aux_coef']}"
        w(f"- {what} (peak lr {b['peak_lr']}): "
          f"rarest expert {b['min_expert_share_before']:.2%} -> {b['min_expert_share_after']:.2%}, held-out "
          f"perplexity {b['heldout_ppl_before']:.1f} -> {b['heldout_ppl_after']:.1f}.")
    w("- Training curve (every step): `training_curve.csv`. Every 10% of the run:")
    w("")
    w("| step | tokens | train loss | balance loss |")
    w("|---:|---:|---:|---:|")
    n = len(curve)
    for i in range(1, 11):
        r = curve[min(n - 1, i * n // 10 - 1)]
        w(f"| {r['step']} | {int(r['tokens']):,} | {float(r['train_loss']):.3f} | {float(r['aux_loss']):.3f} |")
    w("")
    w("## Evaluation")
    w("")
    w("| text | tokens | loss (nats/token) | perplexity |")
    w("|---|---:|---:|---:|")
    w(f"| validation (held-back training distribution), torch | {met['val_tokens']:,} | {met['val_loss']:.3f} | "
      f"{met['val_ppl']:.1f} |")
    w(f"| held-out Jargon File, torch | {met['heldout_tokens']:,} | {met['heldout_loss']:.3f} | "
      f"{met['heldout_ppl']:.1f} |")
    q = epwa_json(a.epwa, "eval", "quant", "-m", m, "--text", a.heldout, "--window", "512",
                  "--max-tokens", "65536", "--levels", "fp16")
    w(f"| held-out Jargon File, `epwa eval quant` (float32) | 65,536 | | "
      f"{q['levels'][0]['reference_perplexity']:.1f} |")
    w("")
    w("(Perplexities of `tiny-moe` and this model are not comparable: the vocabularies differ.)")
    w("")
    w("Three-way check on a sentence of held-out text (torch, `epwa score`, `tools/reference_forward.py`; "
      "`tools/train/compare_qwen3_moe.py`): max |epwa - reference| "
      f"{check['max_abs_epwa_vs_reference']:.2g}, |torch - reference| {check['max_abs_torch_vs_reference']:.2g} "
      f"over {check['logits_shape'][0]} x {check['logits_shape'][1]} logits; "
      f"{check['expert_sets_compared'] - check['expert_sets_differing_epwa_reference']}/"
      f"{check['expert_sets_compared']} chosen expert sets identical; top-1 token agreement "
      f"{check['argmax_agree_epwa_reference']:.0%}.")
    w("")
    w("### Expert usage on held-out text")
    w("")
    usage = met["expert_top1_usage_heldout"]
    w(f"Share of top-1 router choices per expert and layer (torch, held-out text); the floor is "
      f"{met['expert_share_floor']:.2%}. Per layer: the smallest and largest share, and how many "
      "experts are under the floor.")
    w("")
    w("| layer | min | max | experts under the floor |")
    w("|---|---:|---:|---:|")
    for li, row in enumerate(usage):
        under = sum(1 for x in row if x < met["expert_share_floor"])
        w(f"| {li} | {min(row):.2%} | {max(row):.2%} | {under} |")
    w("")
    why = ("The Switch loss spreads the top-k *selection* (its value is at its balanced minimum of "
           f"{k}), but it does not constrain which expert ranks first: after the main run and three Switch "
           "balance rounds the rarest expert takes 0.04% of the first choices on the held-out text.")
    tried = ("What closed the gap, as continuations of this model (the pipeline's `TOP1_ROUNDS` "
             "reproduces them): Switch's own top-1 form, E * sum_e f_e * P_e with f_e the share of *first* "
             "choices (a weight, not differentiated) and P_e the mean router probability, computed per window "
             "of tokens (`--top1-kind hard --top1-window W`). Its gradient lowers, on every token of a window, "
             "the logits of the experts that window ranks first too often. Per 512-token sequence (200 steps "
             "at coefficient 1, then 300 at 4) the validation split balanced (every expert 2.6-3.9% of first "
             "choices) but the held-out text did not (rarest 0.26%), because the router had given an expert "
             "to a kind of token the held-out text lacks: layer 1's expert 27 ranked first on line-ending "
             "tokens ('\\n', '.\\n', ' |\\n'), 3.5% of the training text, and the held-out paragraphs have no "
             "line breaks. Over 32-token windows, most of which hold no line break, every expert must also "
             "take ordinary tokens: 300 steps at coefficient 4 lifted the rarest held-out share to 0.97%, "
             "300 more at 8 to 1.53% (perplexity 305), and a last 150 steps at 8 over 16-token windows with "
             "a lower peak learning rate (1e-4) to the shares in the table above. The price is held-out "
             "perplexity: about 280 before the top-1 rounds, the figure in the evaluation table after. "
             "Tried and not kept: 200 further steps at 8 over 32-token windows moved the rarest share back "
             "to 1.21% (the shares fluctuate around the floor at peak lr 3e-4); the window term from the "
             "first step of training (1,100 steps at coefficient 4 over 32-token windows) reached only "
             "0.09% at perplexity 552; a soft stand-in (the mean of a sharpened softmax per sequence, "
             "`TOP1_COEF`) flattened the soft shares but not the hard ones, at perplexity 346.")
    if met["min_expert_share"] < met["expert_share_floor"]:
        w(f"**The floor is not met.** {why} {tried}")
    else:
        w(f"Every expert of every layer is above the floor. {why} {tried}")
    w("")
    w("The watermark keys on the top-1 expert, so rare first choices mean fewer than 32 green lists in use.")
    w("")
    w("## Samples")
    w("")
    w(f"`build/epwa run -m models/{name} -p PROMPT -n 48 --seed S` (sampling defaults from "
      "`generation_config.json`):")
    w("")
    for prompt in ("The", "To install the package,", "A hacker is", "In Python, a list"):
        for seed in (1, 2):
            r = epwa_json(a.epwa, "run", "-m", m, "-p", prompt, "-n", "48", "--seed", str(seed))
            text = (prompt + r["text"]).replace("\n", " ↵ ")
            w(f"- seed {seed}: {text}")
    w("")
    w("## Reproduce")
    w("")
    w("```")
    w("apt-get install sentencepiece python3-torch libopenblas0-pthread python3-regex nodejs npm")
    w("cmake --build build")
    w(f"STEPS={main_steps} tools/train/train_qwen3_moe_all.sh   # text, tokenizer, training, export, checks")
    w("tools/train/model_card_qwen3.py                   # this file")
    w("```")
    w("")
    w("Training is seeded; bit-exact weights also need the same torch/OpenBLAS build and thread count.")
    open(os.path.join(m, "README.md"), "w").write("\n".join(lines) + "\n")
    print(f"wrote {m}/README.md")


if __name__ == "__main__":
    main()
