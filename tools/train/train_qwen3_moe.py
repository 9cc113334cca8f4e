#!/usr/bin/python3
"""Train a small Qwen3-MoE language model on the CPU and export it as a Hugging Face
Qwen3MoeForCausalLM folder (config.json, bf16 model.safetensors, byte-level BPE tokenizer).

  train_qwen3_moe.py --work /tmp/epwa-train --tok DIR_WITH_TOKENIZER_JSON --out MODEL_DIR
                     [--minutes 56] [--quick] [--seed 1234] [--steps N] [--init DIR]

The model is written plainly in torch from the HF Qwen3-MoE semantics (see
/work/shared/guide/architectures.md section 1 and tools/reference_forward.py), and its module
names are the HF tensor names, so the state dict is the checkpoint:
  RMSNorm: w * (x32 * rsqrt(mean(x32^2) + eps)).to(dtype); attention: q/k/v/o projections with
  an explicit head_dim, q_norm / k_norm = RMSNorm over each head's head_dim (one [head_dim]
  weight shared by the heads) applied BEFORE the rotary embedding, rotate-half (NeoX) RoPE with
  theta 1e6, grouped-query attention (kv head h // n_rep serves query head h), scale
  head_dim^-0.5; sparse MoE block: router Linear -> softmax in fp32 -> top-k -> renormalise
  (norm_topk_prob) -> SwiGLU experts down(silu(gate x) * up x), accumulated in ascending expert
  order. The load-balancing loss is transformers' load_balancing_loss_func (Switch form,
  E * sum over the k slots and experts of f_{k,e} * P_e), applied to each layer's router and
  averaged over layers, so that every layer is pushed to balance (the HF function pools the
  layers, which balances their sum but not each one).

The schedule is linear warmup + cosine decay over a fixed number of steps. With --minutes the
step count is fixed after timing the first steps; pass --steps to reproduce a run exactly.
With --init the run continues from an exported folder (the balance phase).
"""
import argparse
import csv
import hashlib
import json
import math
import os
import random
import re
import struct
import sys
import time

# OpenMP threads that spin while waiting for each other lose most of their time when another
# process shares the 2 cores (measured here next to a 2-job compiler: 18 s per step spinning,
# about 3 s waiting passively, 2.7 s with one thread). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bytelevel_bpe import ByteLevelBPE  # noqa: E402


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


class Qwen3MoeAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, self.hd = c["hidden_size"], c["head_dim"]
        self.nh, self.nkv = c["num_attention_heads"], c["num_key_value_heads"]
        self.q_proj = nn.Linear(d, self.nh * self.hd, bias=False)
        self.k_proj = nn.Linear(d, self.nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(d, self.nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hd, d, bias=False)
        self.q_norm = RMSNorm(self.hd, c["rms_norm_eps"])
        self.k_norm = RMSNorm(self.hd, c["rms_norm_eps"])

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        # The per-head norms act on [B, T, heads, head_dim] before the heads move to dim 1
        # and before RoPE, as in HF's Qwen3Attention.
        q = self.q_norm(self.q_proj(x).view(B, T, self.nh, self.hd)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, self.nkv, self.hd)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-1, -2)) * (self.hd ** -0.5) + mask
        att = att.float().softmax(-1).to(q.dtype)
        y = (att @ v).transpose(1, 2).reshape(B, T, self.nh * self.hd)
        return self.o_proj(y)


class Qwen3MoeMLP(nn.Module):
    """One SwiGLU expert."""

    def __init__(self, d, ff):
        super().__init__()
        self.gate_proj = nn.Linear(d, ff, bias=False)
        self.up_proj = nn.Linear(d, ff, bias=False)
        self.down_proj = nn.Linear(ff, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# Temperature of the soft top-1 share used by the top-1 balance term (router logits divided by
# it before the softmax); small enough that the softmax is close to the argmax, large enough
# that the gradient reaches experts a little below the top.
TOP1_TEMPERATURE = 0.25
TOP1_KIND = "soft"
TOP1_WINDOW = 0


class Qwen3MoeSparseMoeBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.E, self.k = c["num_experts"], c["num_experts_per_tok"]
        self.norm_topk_prob = c["norm_topk_prob"]
        self.gate = nn.Linear(c["hidden_size"], self.E, bias=False)
        self.experts = nn.ModuleList(Qwen3MoeMLP(c["hidden_size"], c["moe_intermediate_size"])
                                     for _ in range(self.E))

    def forward(self, x):
        B, T, D = x.shape
        h = x.reshape(-1, D)
        router_logits = self.gate(h).float()
        probs = router_logits.softmax(-1)
        w, sel = probs.topk(self.k, dim=-1)
        if self.norm_topk_prob:
            w = w / w.sum(-1, keepdim=True)
        w = w.to(h.dtype)
        # Dispatch: sort the (token, slot) assignments by expert once, then run each expert
        # on its contiguous run; a stable sort keeps tokens in order within an expert.
        flat = sel.reshape(-1)
        order = torch.sort(flat, stable=True).indices
        counts = torch.bincount(flat, minlength=self.E).tolist()
        tok = order // self.k
        wts = w.reshape(-1)[order].unsqueeze(-1)
        ys = []
        for e, (t_e, w_e) in enumerate(zip(tok.split(counts), wts.split(counts))):
            if t_e.numel():
                ys.append(self.experts[e](h[t_e]) * w_e)
        out = torch.zeros_like(h).index_add_(0, tok, torch.cat(ys))
        # transformers' load_balancing_loss_func for this layer: f[k, e] = share of tokens
        # whose slot k went to expert e, P[e] = mean router probability; E * sum(f * P).
        # At perfect balance it equals k.
        f = F.one_hot(sel, self.E).float().mean(0)
        aux = self.E * (f * probs.mean(0).unsqueeze(0)).sum()
        # The Switch term balances which experts are *selected* (any of the k slots) over the
        # whole batch. That is not enough for the top-1 choice on text unlike the training
        # mix: with 32 small experts the router learns topic experts, and a held-out text of
        # one kind (the Jargon File) then sends most first choices to a few of them while the
        # training batches, a mix of kinds, stay balanced. The top-1 term therefore balances
        # each *sequence* (DeepSeek-V3's sequence-wise balance loss, applied to the first
        # choice): s_b,e is the mean over sequence b of a sharpened softmax (temperature
        # TOP1_TEMPERATURE), a differentiable stand-in for expert e's share of b's top-1
        # choices, and the term is E * mean_b sum_e s_b,e^2, which equals 1 when every
        # sequence spreads its first choices evenly and grows with their squared coefficient
        # of variation. Its gradient raises an under-used expert's logit where that expert is
        # close to the top.
        if TOP1_KIND == "soft":
            s = (router_logits / TOP1_TEMPERATURE).softmax(-1).view(B, T, self.E).mean(1)
            top1_aux = self.E * (s * s).sum(-1).mean()
        else:
            W = TOP1_WINDOW if TOP1_WINDOW and T % TOP1_WINDOW == 0 else T
            f1 = F.one_hot(sel[:, 0], self.E).float().view(-1, W, self.E).mean(1)
            top1_aux = self.E * (f1 * probs.view(-1, W, self.E).mean(1)).sum(-1).mean()
        return out.view(B, T, D), torch.stack((aux, top1_aux)), sel, probs


class Qwen3MoeDecoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.self_attn = Qwen3MoeAttention(c)
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.mlp = Qwen3MoeSparseMoeBlock(c)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        y, aux, sel, probs = self.mlp(self.post_attention_layernorm(x))
        return x + y, aux, sel, probs


class Qwen3MoeModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(Qwen3MoeDecoderLayer(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])


class Qwen3MoeForCausalLM(nn.Module):
    """Module names follow HF, so state_dict() keys are the checkpoint's tensor names."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.model = Qwen3MoeModel(c)
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        hd = c["head_dim"]
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        self.register_buffer("inv_freq", inv.float(), persistent=False)

    def forward(self, ids, want_probs=False):
        B, T = ids.shape
        pos = torch.arange(T, dtype=torch.float32)
        fr = torch.outer(pos, self.inv_freq)
        emb = torch.cat((fr, fr), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        mask = torch.full((T, T), float("-inf")).triu(1)
        x = self.model.embed_tokens(ids)
        auxs, sels, probs = [], [], []
        for layer in self.model.layers:
            x, aux, sel, p = layer(x, cos, sin, mask)
            auxs.append(aux)
            sels.append(sel)
            if want_probs:
                probs.append(p)
        logits = self.lm_head(self.model.norm(x))
        # aux: [2] = (Switch load-balancing loss, top-1 balance term), each averaged over layers.
        return logits, torch.stack(auxs).mean(0), sels, probs


def init_weights(model, c):
    std = 0.02
    out_std = std / math.sqrt(2 * c["num_hidden_layers"])
    for name, p in model.named_parameters():
        if p.dim() == 1:
            continue  # norm weights stay 1
        s = out_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std
        nn.init.normal_(p, mean=0.0, std=s)


# ----------------------------------------------------------------------------- data

def load_tokens(work, tok, tok_path, seed):
    """Training / validation streams: each document preceded by <|endoftext|> (the model's
    BOS and EOS), documents split 99:1 after a seeded shuffle, as train_moe.py does. The ids
    are cached in WORK keyed by the tokenizer file's hash."""
    h = hashlib.sha256(open(tok_path, "rb").read()).hexdigest()[:16]
    cache = os.path.join(work, f"qwen3_tokens_{h}_{seed}.npz")
    if os.path.exists(cache):
        z = np.load(cache)
        return z["train"], z["val"]
    docs = json.load(open(os.path.join(work, "train_docs.json"), encoding="utf-8"))
    rng = random.Random(seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    n_val = max(1, len(docs) // 100)
    eot = tok.special["<|endoftext|>"]

    def stream(idx):
        out = []
        for i in idx:
            out.append(eot)
            out.extend(tok.encode_plain(docs[i]))
        out.append(eot)
        return np.array(out, dtype=np.uint16)

    val, train = stream(order[:n_val]), stream(order[n_val:])
    np.savez(cache, train=train, val=val)
    return train, val


def heldout_paragraphs(path):
    return [p for p in open(path, encoding="utf-8").read().split("\n\n") if p.strip()]


def heldout_tokens(path, tok):
    eot = tok.special["<|endoftext|>"]
    out = []
    for p in heldout_paragraphs(path):
        out.append(eot)
        out.extend(tok.encode_plain(p))
    return np.array(out, dtype=np.uint16)


@torch.no_grad()
def evaluate(model, toks, seq, max_tokens, batch=8):
    """Mean NLL over non-overlapping windows of seq tokens, and top-1 expert counts."""
    model.eval()
    n = min(len(toks) - 1, max_tokens) // seq * seq
    x = torch.from_numpy(toks[:n].astype(np.int64)).view(-1, seq)
    y = torch.from_numpy(toks[1:n + 1].astype(np.int64)).view(-1, seq)
    E = model.c["num_experts"]
    counts = torch.zeros(model.c["num_hidden_layers"], E, dtype=torch.long)
    nll, cnt = 0.0, 0
    for i in range(0, x.shape[0], batch):
        logits, _, sels, _ = model(x[i:i + batch])
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[i:i + batch].reshape(-1),
                               reduction="sum").item()
        cnt += y[i:i + batch].numel()
        for l, s in enumerate(sels):
            counts[l] += torch.bincount(s[:, 0], minlength=E)
    model.train()
    return nll / max(cnt, 1), cnt, counts


# ----------------------------------------------------------------------------- export

def export_names(c):
    """Tensor order of the file: HF's usual order (embeddings, layer by layer, norm, head)."""
    names = ["model.embed_tokens.weight"]
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        names += [p + n for n in (
            "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
            "self_attn.v_proj.weight", "self_attn.o_proj.weight", "self_attn.q_norm.weight",
            "self_attn.k_norm.weight", "post_attention_layernorm.weight", "mlp.gate.weight")]
        for e in range(c["num_experts"]):
            names += [p + f"mlp.experts.{e}.{w}.weight" for w in ("gate_proj", "up_proj", "down_proj")]
    return names + ["model.norm.weight", "lm_head.weight"]


def bf16_bytes(t):
    return t.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()


def write_safetensors(path, model):
    sd = model.state_dict()
    names = export_names(model.c)
    assert sorted(names) == sorted(sd.keys()), "state dict and HF names differ"
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for n in names:
        b = bf16_bytes(sd[n])
        header[n] = {"dtype": "BF16", "shape": list(sd[n].shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(path + ".tmp", path)
    return 8 + len(h) + off


def load_exported(model, path):
    """bf16 weights of an exported folder into `model` (the balance phase continues from the
    main run's export)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    sd = model.state_dict()
    with torch.no_grad():
        for name in export_names(model.c):
            info = header[name]
            b, e = info["data_offsets"]
            raw = np.frombuffer(data[b:e], dtype=np.int16).copy()
            sd[name].copy_(torch.from_numpy(raw).view(torch.bfloat16).float().view(info["shape"]))


def hf_config(c, eot):
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "vocab_size": c["vocab_size"],
        "hidden_size": c["hidden_size"],
        # Width of a dense MLP layer; unused, since every layer is sparse (mlp_only_layers is
        # empty, decoder_sparse_step 1). Set to k * moe_intermediate_size as Qwen3-30B-A3B.
        "intermediate_size": c["num_experts_per_tok"] * c["moe_intermediate_size"],
        "moe_intermediate_size": c["moe_intermediate_size"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_attention_heads": c["num_attention_heads"],
        "num_key_value_heads": c["num_key_value_heads"],
        "head_dim": c["head_dim"],
        "hidden_act": "silu",
        "max_position_embeddings": c["max_position_embeddings"],
        "initializer_range": 0.02,
        "rms_norm_eps": c["rms_norm_eps"],
        "rope_theta": c["rope_theta"],
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": c["num_hidden_layers"],
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "num_experts": c["num_experts"],
        "num_experts_per_tok": c["num_experts_per_tok"],
        "norm_topk_prob": True,
        "output_router_logits": False,
        "router_aux_loss_coef": c["router_aux_loss_coef"],
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0",
    }


def count_params(c):
    d, V, L, E, I = (c["hidden_size"], c["vocab_size"], c["num_hidden_layers"],
                     c["num_experts"], c["moe_intermediate_size"])
    hd, nh, nkv = c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"]
    attn = d * hd * (2 * nh + 2 * nkv) + 2 * hd
    expert = 3 * d * I
    shared = attn + 2 * d + E * d
    total = 2 * V * d + d + L * (shared + E * expert)
    active = 2 * V * d + d + L * (shared + c["num_experts_per_tok"] * expert)
    return total, active


def check_ids(tok, heldout, max_tokens):
    """ids of a sentence of real text for the three-way check: the first sentence of the first
    held-out paragraph (at most max_tokens tokens), after <|endoftext|>."""
    para = heldout_paragraphs(heldout)[0].strip()
    m = re.search(r"[.!?](\s|$)", para)
    sent = para[:m.end()].strip() if m else para
    ids = [tok.special["<|endoftext|>"]] + tok.encode_plain(sent)
    return ids[:max_tokens], sent


# ----------------------------------------------------------------------------- main

def lr_at(step, total, warmup, peak, floor):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * t))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/epwa-train", help="folder with train_docs.json")
    ap.add_argument("--tok", required=True, help="folder with tokenizer.json / tokenizer_config.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--heldout", default=os.path.join(here, "../../data/heldout/jargon.txt"))
    ap.add_argument("--minutes", type=float, default=56.0)
    ap.add_argument("--steps", type=int, default=0, help="fixed step count (overrides --minutes)")
    ap.add_argument("--quick", action="store_true", help="3-minute smoke run, short evaluation")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--init", default="", help="continue from this exported folder (balance "
                    "phase): appends to its training curve and adds to its metrics")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--aux-coef", type=float, default=0.1)
    ap.add_argument("--top1-kind", choices=("soft", "hard"), default="soft")
    ap.add_argument("--top1-window", type=int, default=0, help="tokens per balance window (0: the sequence)")
    ap.add_argument("--top1-coef", type=float, default=0.0,
                    help="weight of the top-1 balance term (see Qwen3MoeSparseMoeBlock)")
    ap.add_argument("--vocab", type=int, default=6144)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--moe-ff", type=int, default=96)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--eval-tokens", type=int, default=0, help="held-out tokens to score (0: all)")
    ap.add_argument("--check-tokens", type=int, default=32, help="length of the three-way check")
    ap.add_argument("--check-out", default="", help="where torch_check*.{json,npy} go (default WORK)")
    a = ap.parse_args()
    global TOP1_KIND, TOP1_WINDOW
    TOP1_KIND = a.top1_kind
    TOP1_WINDOW = a.top1_window
    if a.quick:
        a.minutes = min(a.minutes, 3.0)
        a.warmup = min(a.warmup, 30)
        a.eval_tokens = a.eval_tokens or 32768
    check_dir = a.check_out or a.work

    torch.set_num_threads(2)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    random.seed(a.seed)

    c = dict(vocab_size=a.vocab, hidden_size=a.d_model, num_hidden_layers=a.layers,
             num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, head_dim=a.head_dim,
             max_position_embeddings=a.seq, rms_norm_eps=1e-6, rope_theta=1000000.0,
             num_experts=a.experts, num_experts_per_tok=a.top_k, moe_intermediate_size=a.moe_ff,
             norm_topk_prob=True, router_aux_loss_coef=a.aux_coef)
    total_p, active_p = count_params(c)
    print(f"params total {total_p:,} active {active_p:,}; bf16 {2 * total_p:,} bytes", flush=True)
    if 2 * total_p > 30_000_000:
        sys.exit("model too large for the 30 MB budget")

    tok_path = os.path.join(a.tok, "tokenizer.json")
    tok = ByteLevelBPE(tok_path)
    assert len(tok.inv) == c["vocab_size"], (len(tok.inv), c["vocab_size"])
    eot = tok.special["<|endoftext|>"]
    t0 = time.time()
    train, val = load_tokens(a.work, tok, tok_path, a.seed)
    held = heldout_tokens(a.heldout, tok)
    print(f"tokens: train {len(train):,} val {len(val):,} held-out {len(held):,} "
          f"({time.time() - t0:.1f}s)", flush=True)

    model = Qwen3MoeForCausalLM(c)
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
    # A balance round keeps the main run's data split (same seed) but draws other batches:
    # round r (counting from 1) draws with seed + r.
    batch_seed = a.seed + (1 + len(base.get("balance_phases", [])) if base is not None else 0)
    gen = np.random.default_rng(batch_seed)
    seq, B = a.seq, a.batch
    os.makedirs(a.out, exist_ok=True)
    curve_path = os.path.join(a.out, "training_curve.csv")
    curve = open(curve_path, "w", newline="")
    wr = csv.writer(curve)
    if base is None:
        wr.writerow(["step", "tokens", "train_loss", "aux_loss", "lr", "elapsed_s", "top1_aux"])
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
        lr = lr_at(step, total_steps, a.warmup, a.lr, a.lr * 0.1)
        for g in opt.param_groups:
            g["lr"] = lr
        offs = gen.integers(0, len(train) - seq - 1, size=B)
        batch = np.stack([train[o:o + seq + 1] for o in offs]).astype(np.int64)
        x, y = torch.from_numpy(batch[:, :-1]), torch.from_numpy(batch[:, 1:])
        logits, aux, _, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        (loss + a.aux_coef * aux[0] + a.top1_coef * aux[1]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens += B * seq
        el = time.time() - start
        smooth = loss.item() if smooth is None else 0.95 * smooth + 0.05 * loss.item()
        wr.writerow([step0 + step, tokens0 + tokens, f"{loss.item():.4f}", f"{aux[0].item():.4f}",
                     f"{lr:.6g}", f"{el0 + el:.1f}", f"{aux[1].item():.4f}"])
        if not a.steps and step == 20:
            # Fix the schedule: the steps that fit the budget at the first steps' pace.
            total_steps = max(step + 1, int(budget / (el / step)))
            print(f"step time {el / step:.2f}s -> {total_steps} steps in {a.minutes} min", flush=True)
        if step % 50 == 0 or step == total_steps or step == 20:
            curve.flush()
            print(f"step {step}/{total_steps} tokens {tokens:,} loss {loss.item():.3f} "
                  f"(avg {smooth:.3f}) aux {aux[0].item():.3f} top1 {aux[1].item():.3f} lr {lr:.2e} {el:.0f}s "
                  f"{tokens / el:.0f} tok/s", flush=True)
    curve.close()
    train_s = time.time() - start

    # Round to bf16 (what is exported) before evaluating, so the numbers describe the file.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    ev_tokens = a.eval_tokens or 10 ** 12
    t_ev = time.time()
    v_nll, v_n, v_counts = evaluate(model, val, seq, ev_tokens)
    h_nll, h_n, counts = evaluate(model, held, seq, ev_tokens)
    usage = (counts.float() / counts.sum(1, keepdim=True)).tolist()
    min_usage = min(min(r) for r in usage)
    # The same on the validation split: text held out from training but of the training mix,
    # which separates imbalance of the router from the shift to the Jargon File's style.
    v_usage = (v_counts.float() / v_counts.sum(1, keepdim=True)).tolist()
    floor = 1.0 / (2 * c["num_experts"])
    print(f"val (training distribution) loss {v_nll:.4f} ppl {math.exp(v_nll):.2f} on {v_n:,} tokens")
    print(f"held-out jargon loss {h_nll:.4f} ppl {math.exp(h_nll):.2f} on {h_n:,} tokens "
          f"(evaluation {time.time() - t_ev:.0f}s)")
    for l, r in enumerate(usage):
        print(f"layer {l} top-1 usage: " + " ".join(f"{u * 100:.1f}" for u in r) +
              f"  min {min(r) * 100:.2f}%")
    print(f"min expert share {min_usage * 100:.2f}% (floor 1/(2E) = {floor * 100:.2f}%: "
          f"{'OK' if min_usage >= floor else 'BELOW'})")

    nbytes = write_safetensors(os.path.join(a.out, "model.safetensors"), model)
    json.dump(hf_config(c, eot), open(os.path.join(a.out, "config.json"), "w"), indent=2)
    json.dump({"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot,
               "do_sample": True, "temperature": 0.8, "top_p": 0.95, "top_k": 40,
               "transformers_version": "4.51.0"},
              open(os.path.join(a.out, "generation_config.json"), "w"), indent=2)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(a.tok, f), "rb") as s, open(os.path.join(a.out, f), "wb") as d:
            d.write(s.read())

    # Logits and every selected expert of the (bf16-rounded) torch model on a sentence of
    # held-out text, for the three-way check against epwa and tools/reference_forward.py.
    # The router margin (k-th minus (k+1)-th probability) says how close a selection is to a
    # tie that float32 vs float64 arithmetic could flip.
    ids, sent = check_ids(tok, a.heldout, a.check_tokens)
    model.eval()
    with torch.no_grad():
        lg, _, sels, probs = model(torch.tensor([ids]), want_probs=True)
    margins = []
    for p in probs:
        s = p.sort(-1, descending=True).values
        margins.append((s[:, c["num_experts_per_tok"] - 1] - s[:, c["num_experts_per_tok"]]).min().item())
    os.makedirs(check_dir, exist_ok=True)
    np.save(os.path.join(check_dir, "torch_check_logits.npy"), lg[0].float().numpy())
    json.dump({"ids": ids, "text": sent, "experts": [s.tolist() for s in sels],
               "min_router_margin": min(margins)},
              open(os.path.join(check_dir, "torch_check.json"), "w"))

    metrics = {
        "architecture": "Qwen3MoeForCausalLM",
        "params_total": total_p, "params_active": active_p,
        "safetensors_bytes": nbytes, "steps": step, "tokens": tokens,
        "train_minutes": round(train_s / 60, 2), "tokens_per_s": round(tokens / train_s, 1),
        "seed": a.seed, "batch": B, "seq_len": seq, "peak_lr": a.lr, "warmup": a.warmup,
        "aux_coef": a.aux_coef, "top1_coef": a.top1_coef, "top1_temperature": TOP1_TEMPERATURE,
        "quick": a.quick,
        "train_tokens_available": int(len(train)),
        "final_train_loss_avg": round(smooth, 4),
        "val_loss": round(v_nll, 4), "val_ppl": round(math.exp(v_nll), 3), "val_tokens": v_n,
        "heldout": "data/heldout/jargon.txt (jargon-text)",
        "heldout_loss": round(h_nll, 4), "heldout_ppl": round(math.exp(h_nll), 3),
        "heldout_tokens": h_n,
        "expert_top1_usage_heldout": [[round(u, 4) for u in r] for r in usage],
        "min_expert_share": round(min_usage, 4),
        "expert_top1_usage_val": [[round(u, 4) for u in r] for r in v_usage],
        "min_expert_share_val": round(min(min(r) for r in v_usage), 4),
        "expert_share_floor": floor,
        "torch_version": torch.__version__,
    }
    if base is not None:
        # The model is the main run plus every balance phase so far: totals cover them all.
        phase = {"steps": step, "tokens": tokens, "aux_coef": a.aux_coef, "top1_coef": a.top1_coef,
                 "top1_kind": a.top1_kind, "top1_window": a.top1_window or seq,
                 "batch_seed": batch_seed, "peak_lr": a.lr, "warmup": a.warmup,
                 "train_minutes": round(train_s / 60, 2),
                 "min_expert_share_before": base["min_expert_share"],
                 "heldout_ppl_before": base["heldout_ppl"],
                 "min_expert_share_after": round(min_usage, 4),
                 "heldout_ppl_after": round(math.exp(h_nll), 3)}
        metrics["balance_phases"] = base.get("balance_phases", []) + [phase]
        for k in ("seed", "batch", "seq_len", "peak_lr", "warmup", "aux_coef", "quick"):
            metrics[k] = base[k]
        metrics["top1_coef"] = base.get("top1_coef", 0.0)
        metrics["main_run_steps"] = base.get("main_run_steps", base["steps"])
        metrics["steps"] = base["steps"] + step
        metrics["tokens"] = base["tokens"] + tokens
        metrics["train_minutes"] = round(base["train_minutes"] + train_s / 60, 2)
        metrics["tokens_per_s"] = round(metrics["tokens"] / (metrics["train_minutes"] * 60), 1)
    json.dump(metrics, open(os.path.join(a.out, "metrics.json"), "w"), indent=2)
    print(f"exported {a.out}: model.safetensors {nbytes:,} bytes, {step} steps, {tokens:,} tokens, "
          f"{tokens / train_s:.0f} tok/s")


if __name__ == "__main__":
    main()
