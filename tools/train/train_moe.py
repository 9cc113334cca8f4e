#!/usr/bin/python3
"""Train a small Mixtral-architecture MoE language model on the CPU and export it as a
Hugging Face MixtralForCausalLM folder (config.json, bf16 model.safetensors, tokenizer files).

  train_moe.py --work /tmp/epwa-train --tok DIR_WITH_TOKENIZER --out MODEL_DIR
               [--minutes 95] [--quick] [--seed 1234] [--steps N]

The model is written plainly in torch and follows HF Mixtral exactly:
  RMSNorm (x * rsqrt(mean(x^2) + eps) * w, computed in fp32), rotary embedding in the
  rotate-half convention, grouped-query attention (kv head h // n_rep serves query head h),
  MoE block: router Linear -> softmax in fp32 -> top-2 -> renormalise -> SwiGLU experts
  w2(silu(w1 x) * w3 x). The Switch/Mixtral load-balancing loss (HF load_balancing_loss_func)
  is added with coefficient --aux-coef.

The schedule is linear warmup + cosine decay over a fixed number of steps. With --minutes
(default) the step count is fixed after timing the first steps, so that training ends within
the budget; pass --steps to reproduce a run exactly.
"""
import argparse
import csv
import json
import math
import os
import random
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import sentencepiece as spm


# ----------------------------------------------------------------------------- model

class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.nh, self.nkv = c["num_attention_heads"], c["num_key_value_heads"]
        self.hd = c["hidden_size"] // self.nh
        d = c["hidden_size"]
        self.q_proj = nn.Linear(d, self.nh * self.hd, bias=False)
        self.k_proj = nn.Linear(d, self.nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(d, self.nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hd, d, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd) + mask
        att = att.softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, self.nh * self.hd)
        return self.o_proj(y)


class Expert(nn.Module):
    def __init__(self, d, ff):
        super().__init__()
        self.w1 = nn.Linear(d, ff, bias=False)   # gate
        self.w2 = nn.Linear(ff, d, bias=False)   # down
        self.w3 = nn.Linear(d, ff, bias=False)   # up

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.E, self.k = c["num_local_experts"], c["num_experts_per_tok"]
        self.gate = nn.Linear(c["hidden_size"], self.E, bias=False)
        self.experts = nn.ModuleList(Expert(c["hidden_size"], c["intermediate_size"])
                                     for _ in range(self.E))

    def forward(self, x):
        B, T, D = x.shape
        h = x.reshape(-1, D)
        logits = self.gate(h)
        probs = logits.float().softmax(-1)
        w, sel = probs.topk(self.k, dim=-1)
        w = (w / w.sum(-1, keepdim=True)).to(h.dtype)
        out = torch.zeros_like(h)
        for e in range(self.E):
            tok, slot = (sel == e).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            y = self.experts[e](h[tok]) * w[tok, slot].unsqueeze(-1)
            out.index_add_(0, tok, y)
        # HF load_balancing_loss_func for one layer: E * sum_e f_e * P_e with
        # f_e = share of the k assignments that go to e, P_e = mean router probability.
        f = F.one_hot(sel, self.E).float().mean(0)            # [k, E]
        aux = self.E * (f * probs.mean(0).unsqueeze(0)).sum()
        return out.view(B, T, D), aux, sel


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.block_sparse_moe = SparseMoE(c)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        y, aux, top1 = self.block_sparse_moe(self.post_attention_layernorm(x))
        return x + y, aux, top1


class Mixtral(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        hd = c["hidden_size"] // c["num_attention_heads"]
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        self.register_buffer("inv_freq", inv.float(), persistent=False)

    def forward(self, ids):
        B, T = ids.shape
        pos = torch.arange(T, dtype=torch.float32)
        fr = torch.outer(pos, self.inv_freq)
        emb = torch.cat((fr, fr), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        mask = torch.full((T, T), float("-inf")).triu(1)
        x = self.embed_tokens(ids)
        auxs, top1s = [], []
        for layer in self.layers:
            x, aux, top1 = layer(x, cos, sin, mask)
            auxs.append(aux)
            top1s.append(top1)
        return self.lm_head(self.norm(x)), torch.stack(auxs).mean(), top1s


def init_weights(model, c):
    std = 0.02
    out_std = std / math.sqrt(2 * c["num_hidden_layers"])
    for name, p in model.named_parameters():
        if p.dim() == 1:
            continue
        s = out_std if name.endswith(("o_proj.weight", "w2.weight")) else std
        nn.init.normal_(p, mean=0.0, std=s)


# ----------------------------------------------------------------------------- data

def load_tokens(work, sp, seed):
    cache = os.path.join(work, "train_tokens.npy")
    docs = json.load(open(os.path.join(work, "train_docs.json"), encoding="utf-8"))
    rng = random.Random(seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    n_val = max(1, len(docs) // 100)
    val_docs = [docs[i] for i in order[:n_val]]
    train_docs = [docs[i] for i in order[n_val:]]

    def stream(ds):
        out = []
        for ids in sp.encode(ds):
            out.append(1)
            out.extend(ids)
            out.append(2)
        return np.array(out, dtype=np.uint16)

    return stream(train_docs), stream(val_docs)


def heldout_tokens(path, sp):
    paras = [p for p in open(path, encoding="utf-8").read().split("\n\n") if p.strip()]
    out = []
    for ids in sp.encode(paras):
        out.append(1)
        out.extend(ids)
    return np.array(out, dtype=np.uint16)


@torch.no_grad()
def evaluate(model, toks, seq, max_tokens, batch=8):
    """Mean NLL over non-overlapping windows of seq tokens, and top-1 expert counts."""
    model.eval()
    n = min(len(toks) - 1, max_tokens) // seq * seq
    x = torch.from_numpy(toks[:n].astype(np.int64)).view(-1, seq)
    y = torch.from_numpy(toks[1:n + 1].astype(np.int64)).view(-1, seq)
    E = model.c["num_local_experts"]
    counts = torch.zeros(model.c["num_hidden_layers"], E, dtype=torch.long)
    nll, cnt = 0.0, 0
    for i in range(0, x.shape[0], batch):
        logits, _, top1s = model(x[i:i + batch])
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[i:i + batch].reshape(-1),
                               reduction="sum").item()
        cnt += y[i:i + batch].numel()
        for l, t in enumerate(top1s):
            counts[l] += torch.bincount(t[:, 0], minlength=E)
    model.train()
    return nll / max(cnt, 1), cnt, counts


# ----------------------------------------------------------------------------- export

def bf16_bytes(t):
    return t.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()


def export_tensors(model):
    sd = model.state_dict()
    names = ["model.embed_tokens.weight"]
    src = {"model.embed_tokens.weight": sd["embed_tokens.weight"]}
    for l in range(model.c["num_hidden_layers"]):
        p = f"layers.{l}."
        for n in ["input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                  "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                  "post_attention_layernorm.weight", "block_sparse_moe.gate.weight"]:
            names.append("model." + p + n)
            src["model." + p + n] = sd[p + n]
        for e in range(model.c["num_local_experts"]):
            for w in ("w1", "w2", "w3"):
                n = f"block_sparse_moe.experts.{e}.{w}.weight"
                names.append("model." + p + n)
                src["model." + p + n] = sd[p + n]
    names += ["model.norm.weight", "lm_head.weight"]
    src["model.norm.weight"] = sd["norm.weight"]
    src["lm_head.weight"] = sd["lm_head.weight"]
    return names, src


def write_safetensors(path, names, src):
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for n in names:
        b = bf16_bytes(src[n])
        header[n] = {"dtype": "BF16", "shape": list(src[n].shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    return 8 + len(h) + off


def load_exported(model, path):
    """Inverse of export_tensors + write_safetensors: bf16 weights of an exported folder into
    `model` (for the balance phase, which continues from the main run's export)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    names, src = export_tensors(model)
    # export_tensors names a state-dict key k as "model." + k (lm_head as itself).
    sd_key = {hf: hf[len("model."):] if hf.startswith("model.") else hf for hf in names}
    with torch.no_grad():
        for hf in names:
            info = header[hf]
            b, e = info["data_offsets"]
            raw = np.frombuffer(data[b:e], dtype=np.int16).copy()
            t = torch.from_numpy(raw).view(torch.bfloat16).float().view(info["shape"])
            model.state_dict()[sd_key[hf]].copy_(t)


def hf_config(c):
    return {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "vocab_size": c["vocab_size"],
        "hidden_size": c["hidden_size"],
        "intermediate_size": c["intermediate_size"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_attention_heads": c["num_attention_heads"],
        "num_key_value_heads": c["num_key_value_heads"],
        "head_dim": c["hidden_size"] // c["num_attention_heads"],
        "hidden_act": "silu",
        "max_position_embeddings": c["max_position_embeddings"],
        "initializer_range": 0.02,
        "rms_norm_eps": c["rms_norm_eps"],
        "rope_theta": c["rope_theta"],
        "sliding_window": None,
        "attention_dropout": 0.0,
        "num_local_experts": c["num_local_experts"],
        "num_experts_per_tok": c["num_experts_per_tok"],
        "output_router_logits": False,
        "router_aux_loss_coef": c["router_aux_loss_coef"],
        "router_jitter_noise": 0.0,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.46.0",
    }


def count_params(c):
    d, V, L, E, ff = (c["hidden_size"], c["vocab_size"], c["num_hidden_layers"],
                      c["num_local_experts"], c["intermediate_size"])
    hd = d // c["num_attention_heads"]
    attn = d * hd * (2 * c["num_attention_heads"] + 2 * c["num_key_value_heads"])
    expert = 3 * d * ff
    per_layer_shared = attn + 2 * d + E * d
    total = 2 * V * d + d + L * (per_layer_shared + E * expert)
    active = 2 * V * d + d + L * (per_layer_shared + c["num_experts_per_tok"] * expert)
    return total, active


# ----------------------------------------------------------------------------- main

def lr_at(step, total, warmup, peak, floor):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * t))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/epwa-train")
    ap.add_argument("--tok", required=True, help="folder with tokenizer.model/.json/_config.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--heldout", default=os.path.join(os.path.dirname(__file__), "../../data/heldout/jargon.txt"))
    ap.add_argument("--minutes", type=float, default=95.0)
    ap.add_argument("--steps", type=int, default=0, help="fixed step count (overrides --minutes)")
    ap.add_argument("--quick", action="store_true", help="3-minute smoke run, short evaluation")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--init", default="", help="continue from this exported folder (balance phase): "
                    "appends to its training curve and adds to its metrics")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--aux-coef", type=float, default=0.05)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--d-ff", type=int, default=384)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--eval-tokens", type=int, default=0, help="held-out tokens to score (0: all)")
    ap.add_argument("--check-ids", default="1,415,2936,9,760,1194,2870,3,17,44,1000,2000,4095,5,6,7")
    a = ap.parse_args()
    if a.quick:
        a.minutes = min(a.minutes, 3.0)
        a.warmup = min(a.warmup, 30)
        a.eval_tokens = a.eval_tokens or 32768

    torch.set_num_threads(2)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    random.seed(a.seed)

    c = dict(vocab_size=4096, hidden_size=a.d_model, intermediate_size=a.d_ff,
             num_hidden_layers=a.layers, num_attention_heads=a.heads,
             num_key_value_heads=a.kv_heads, max_position_embeddings=a.seq,
             rms_norm_eps=1e-5, rope_theta=10000.0, num_local_experts=a.experts,
             num_experts_per_tok=2, router_aux_loss_coef=a.aux_coef)
    total_p, active_p = count_params(c)
    print(f"params total {total_p:,} active {active_p:,}; bf16 {2 * total_p:,} bytes", flush=True)
    if 2 * total_p > 25_000_000:
        sys.exit("model too large for the 25 MB budget")

    sp = spm.SentencePieceProcessor(model_file=os.path.join(a.tok, "tokenizer.model"))
    assert sp.get_piece_size() == c["vocab_size"]
    t0 = time.time()
    train, val = load_tokens(a.work, sp, a.seed)
    held = heldout_tokens(a.heldout, sp)
    print(f"tokens: train {len(train):,} val {len(val):,} held-out {len(held):,} "
          f"({time.time() - t0:.1f}s)", flush=True)

    model = Mixtral(c)
    init_weights(model, c)
    base = None
    if a.init:
        load_exported(model, os.path.join(a.init, "model.safetensors"))
        base = json.load(open(os.path.join(a.init, "metrics.json")))
        base_curve = open(os.path.join(a.init, "training_curve.csv")).read()
        print(f"continuing from {a.init} ({base['steps']} steps) with aux coefficient {a.aux_coef}",
              flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    # The balance phase keeps the main run's data split (same seed) but draws
    # other batches.
    gen = np.random.default_rng(a.seed + (1 if a.init else 0))
    seq, B = a.seq, a.batch
    os.makedirs(a.out, exist_ok=True)
    curve_path = os.path.join(a.out, "training_curve.csv")
    curve = open(curve_path, "w", newline="")
    wr = csv.writer(curve)
    if base is None:
        wr.writerow(["step", "tokens", "train_loss", "aux_loss", "lr", "elapsed_s"])
        step0, tokens0, el0 = 0, 0, 0.0
    else:
        curve.write(base_curve)
        last = base_curve.strip().splitlines()[-1].split(",")
        step0, tokens0, el0 = int(last[0]), int(last[1]), float(last[5])

    budget = a.minutes * 60.0
    total_steps = a.steps if a.steps else 10 ** 9
    step, tokens, start = 0, 0, time.time()
    smooth = None
    while step < total_steps:
        lr = lr_at(step, total_steps if total_steps < 10 ** 9 else 10 ** 9, a.warmup, a.lr, a.lr * 0.1)
        for g in opt.param_groups:
            g["lr"] = lr
        offs = gen.integers(0, len(train) - seq - 1, size=B)
        batch = np.stack([train[o:o + seq + 1] for o in offs]).astype(np.int64)
        x, y = torch.from_numpy(batch[:, :-1]), torch.from_numpy(batch[:, 1:])
        logits, aux, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        (loss + a.aux_coef * aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens += B * seq
        el = time.time() - start
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        wr.writerow([step0 + step, tokens0 + tokens, f"{loss.item():.4f}", f"{aux.item():.4f}",
                     f"{lr:.6g}", f"{el0 + el:.1f}"])
        if not a.steps and step == 20:
            # fix the schedule: steps that fit the budget (the first steps are representative)
            total_steps = max(step + 1, int(budget / (el / step)))
            print(f"step time {el / step:.2f}s -> {total_steps} steps in {a.minutes} min", flush=True)
        if step % 50 == 0 or step == total_steps:
            curve.flush()
            print(f"step {step}/{total_steps} tokens {tokens:,} loss {loss.item():.3f} "
                  f"(avg {smooth:.3f}) aux {aux.item():.3f} lr {lr:.2e} {el:.0f}s "
                  f"{tokens / el:.0f} tok/s", flush=True)
    curve.close()
    train_s = time.time() - start

    # round to bf16 (what is exported) before evaluating, so the numbers describe the file
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    ev_tokens = a.eval_tokens or 10 ** 12
    v_nll, v_n, _ = evaluate(model, val, seq, ev_tokens)
    h_nll, h_n, counts = evaluate(model, held, seq, ev_tokens)
    usage = (counts.float() / counts.sum(1, keepdim=True)).tolist()
    min_usage = min(min(r) for r in usage)
    print(f"val (training distribution) loss {v_nll:.4f} ppl {math.exp(v_nll):.2f} on {v_n:,} tokens")
    print(f"held-out jargon loss {h_nll:.4f} ppl {math.exp(h_nll):.2f} on {h_n:,} tokens")
    for l, r in enumerate(usage):
        print(f"layer {l} top-1 usage: " + " ".join(f"{u * 100:5.1f}%" for u in r))
    print(f"min expert share {min_usage * 100:.2f}% ({'OK' if min_usage >= 0.03 else 'BELOW 3%'})")

    names, src = export_tensors(model)
    nbytes = write_safetensors(os.path.join(a.out, "model.safetensors"), names, src)
    hc = hf_config(c)
    json.dump(hc, open(os.path.join(a.out, "config.json"), "w"), indent=2)
    json.dump({"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
               "do_sample": True, "temperature": 0.8, "top_p": 0.95, "top_k": 40,
               "transformers_version": "4.46.0"},
              open(os.path.join(a.out, "generation_config.json"), "w"), indent=2)
    for f in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(a.tok, f), "rb") as s, open(os.path.join(a.out, f), "wb") as d:
            d.write(s.read())

    # logits of the (bf16-rounded) torch model on fixed ids: compare with the exported file
    ids = [int(t) for t in a.check_ids.split(",")]
    model.eval()
    with torch.no_grad():
        lg, _, top1s = model(torch.tensor([ids]))
    np.save(os.path.join(a.work, "torch_check_logits.npy"), lg[0].float().numpy())
    json.dump({"ids": ids, "experts": [t.tolist() for t in top1s]},
              open(os.path.join(a.work, "torch_check.json"), "w"))

    metrics = {
        "params_total": total_p, "params_active": active_p,
        "safetensors_bytes": nbytes, "steps": step, "tokens": tokens,
        "train_minutes": round(train_s / 60, 2), "tokens_per_s": round(tokens / train_s, 1),
        "seed": a.seed, "batch": B, "seq_len": seq, "peak_lr": a.lr, "warmup": a.warmup,
        "aux_coef": a.aux_coef, "quick": a.quick,
        "train_tokens_available": int(len(train)),
        "final_train_loss_avg": round(smooth, 4),
        "val_loss": round(v_nll, 4), "val_ppl": round(math.exp(v_nll), 3), "val_tokens": v_n,
        "heldout": "data/heldout/jargon.txt (jargon-text)",
        "heldout_loss": round(h_nll, 4), "heldout_ppl": round(math.exp(h_nll), 3),
        "heldout_tokens": h_n,
        "expert_top1_usage_heldout": [[round(u, 4) for u in r] for r in usage],
        "min_expert_share": round(min_usage, 4),
        "torch_version": torch.__version__,
    }
    if base is not None:
        # The model is the main run plus this phase: totals cover both.
        metrics["balance_phase"] = {"steps": step, "tokens": tokens, "aux_coef": a.aux_coef,
                                    "batch_seed": a.seed + 1, "init": a.init,
                                    "peak_lr": a.lr, "warmup": a.warmup,
                                    "train_minutes": round(train_s / 60, 2)}
        for k in ("seed", "batch", "seq_len", "peak_lr", "warmup", "aux_coef"):
            metrics[k] = base[k]
        metrics["main_run_steps"] = base["steps"]
        metrics["steps"] = base["steps"] + step
        metrics["tokens"] = base["tokens"] + tokens
        metrics["train_minutes"] = round(base["train_minutes"] + train_s / 60, 2)
        metrics["tokens_per_s"] = round(metrics["tokens"] / (metrics["train_minutes"] * 60), 1)
    json.dump(metrics, open(os.path.join(a.out, "metrics.json"), "w"), indent=2)
    print(f"exported {a.out}: model.safetensors {nbytes:,} bytes, {step} steps, {tokens:,} tokens, "
          f"{tokens / train_s:.0f} tok/s")


if __name__ == "__main__":
    main()
