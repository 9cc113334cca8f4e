#!/usr/bin/python3
"""Independent NumPy reference forward pass for Hugging Face decoder-only models.

Supported architectures: LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM
and Qwen2ForCausalLM, read from a Hugging Face model folder (config.json plus
model.safetensors or sharded safetensors with model.safetensors.index.json).

All arithmetic is done in float64 so that this script is a tight reference; the
logits are written as float32 [T, V].

Conventions chosen here (they follow Hugging Face transformers):
  * Sliding window: a query at position i attends to keys j with
    i - sliding_window < j <= i (HF masking_utils: kv_idx > q_idx - sliding_window).
    Mistral/Mixtral apply it on every layer when sliding_window is an int.
    Qwen2 applies it only when use_sliding_window is true, and then only on the
    layers that config.layer_types marks "sliding_attention" or, without
    layer_types, on layers i >= max_window_layers (default 28).
  * Mixtral routing: softmax over all router logits, top-k by probability, then
    the k weights are renormalized to sum to 1. Ties are broken in favour of the
    lower expert index (a stable sort); torch.topk does not promise any order.
  * Rotary inverse frequencies are computed in float64 (HF computes them in
    float32), which is the more exact value.

Usage:
  python3 tools/reference_forward.py MODEL_DIR --ids 1,2,3 \
      --logits-out out.npy --routing-out routing.json
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "Qwen2ForCausalLM")


# ----------------------------------------------------------------------------
# Weights: a minimal safetensors reader.
# ----------------------------------------------------------------------------

def read_safetensors_header(path):
    """Returns (header dict without __metadata__, byte offset of the data section)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
    header.pop("__metadata__", None)
    return header, 8 + n


def decode_tensor(raw, dtype):
    """Converts a little-endian byte buffer of the given safetensors dtype to float64."""
    if dtype == "F32":
        return np.frombuffer(raw, dtype="<f4").astype(np.float64)
    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float64)
    if dtype == "F64":
        return np.frombuffer(raw, dtype="<f8").astype(np.float64)
    if dtype == "BF16":
        # A bfloat16 is the upper half of a float32, so shift it into place.
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).astype(np.float64)
    raise ValueError(f"unsupported safetensors dtype {dtype}")


class Weights:
    """Lazily loads tensors by name, converting each one to float64 on request."""

    def __init__(self, model_dir):
        index = os.path.join(model_dir, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        self.where = {}  # tensor name -> (file path, data offset, header entry)
        for name in files:
            path = os.path.join(model_dir, name)
            header, base = read_safetensors_header(path)
            for tensor, info in header.items():
                self.where[tensor] = (path, base, info)

    def has(self, name):
        return name in self.where

    def get(self, name):
        path, base, info = self.where[name]
        begin, end = info["data_offsets"]
        with open(path, "rb") as f:
            f.seek(base + begin)
            raw = f.read(end - begin)
        if len(raw) != end - begin:
            raise ValueError(f"truncated tensor {name} in {path}")
        return decode_tensor(raw, info["dtype"]).reshape(info["shape"])


# ----------------------------------------------------------------------------
# Configuration.
# ----------------------------------------------------------------------------

def load_config(model_dir):
    """Reads config.json and returns a plain dict with every field the forward pass uses."""
    with open(os.path.join(model_dir, "config.json")) as f:
        raw = json.load(f)
    arch = raw["architectures"][0]
    if arch not in SUPPORTED:
        raise ValueError(f"unsupported architecture {arch}")
    if raw.get("rope_scaling") is not None:
        raise ValueError("rope_scaling is not supported by the reference")
    heads = raw["num_attention_heads"]
    layers = raw["num_hidden_layers"]
    cfg = {
        "arch": arch,
        "hidden": raw["hidden_size"],
        "layers": layers,
        "heads": heads,
        "kv_heads": raw.get("num_key_value_heads") or heads,
        "head_dim": raw.get("head_dim") or raw["hidden_size"] // heads,
        "eps": raw["rms_norm_eps"],
        "theta": raw.get("rope_theta", 10000.0),
        "tied": raw.get("tie_word_embeddings", False),
        "vocab": raw["vocab_size"],
        "experts": raw.get("num_local_experts") if arch == "MixtralForCausalLM" else None,
        "top_k": raw.get("num_experts_per_tok") if arch == "MixtralForCausalLM" else None,
    }
    # Which projections carry a bias depends on the architecture.
    if arch == "Qwen2ForCausalLM":
        cfg["qkv_bias"], cfg["o_bias"] = True, False
    elif arch == "LlamaForCausalLM":
        cfg["qkv_bias"] = cfg["o_bias"] = bool(raw.get("attention_bias", False))
    else:
        cfg["qkv_bias"] = cfg["o_bias"] = False
    cfg["mlp_bias"] = arch == "LlamaForCausalLM" and bool(raw.get("mlp_bias", False))
    # The sliding window per layer (None means full causal attention).
    window = raw.get("sliding_window")
    if arch in ("MistralForCausalLM", "MixtralForCausalLM"):
        cfg["windows"] = [window] * layers
    elif arch == "Qwen2ForCausalLM" and raw.get("use_sliding_window", False) and window is not None:
        types = raw.get("layer_types") or [
            "sliding_attention" if i >= raw.get("max_window_layers", 28) else "full_attention"
            for i in range(layers)]
        cfg["windows"] = [window if t == "sliding_attention" else None for t in types]
    else:
        cfg["windows"] = [None] * layers
    if heads % cfg["kv_heads"] != 0:
        raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
    return cfg


# ----------------------------------------------------------------------------
# Building blocks.
# ----------------------------------------------------------------------------

def rms_norm(x, weight, eps):
    """Scales each row of x by 1/sqrt(mean(x^2) + eps), then by the weight."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope_cos_sin(positions, head_dim, theta):
    """Returns cos and sin tables [T, head_dim] in the HF layout cat(freqs, freqs)."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    freqs = np.outer(np.asarray(positions, dtype=np.float64), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb), np.sin(emb)


def rotate_half(x):
    """Maps the last axis [a, b] (two halves) to [-b, a]."""
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x, cos, sin):
    """Rotates x [heads, T, head_dim] with tables [T, head_dim]."""
    return x * cos + rotate_half(x) * sin


def softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def silu(x):
    return x / (1.0 + np.exp(-x))


def linear(x, W, prefix, bias=False):
    """Applies the nn.Linear stored under prefix (weight [out, in], optional bias)."""
    y = x @ W.get(prefix + ".weight").T
    return y + W.get(prefix + ".bias") if bias else y


def attention_mask(T, window):
    """Returns a boolean [T, T] matrix: True where query i may attend to key j."""
    i = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    allowed = j <= i
    if window is not None:
        allowed &= j > i - window
    return allowed


def attention(x, W, prefix, cfg, cos, sin, window):
    """Multi-head (grouped-query) causal self-attention of x [T, D]."""
    T = x.shape[0]
    H, KV, hd = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    q = linear(x, W, prefix + ".q_proj", cfg["qkv_bias"]).reshape(T, H, hd).transpose(1, 0, 2)
    k = linear(x, W, prefix + ".k_proj", cfg["qkv_bias"]).reshape(T, KV, hd).transpose(1, 0, 2)
    v = linear(x, W, prefix + ".v_proj", cfg["qkv_bias"]).reshape(T, KV, hd).transpose(1, 0, 2)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    # Query head h reads KV head h // group; np.repeat lays the heads out that way.
    group = H // KV
    k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
    scores = np.where(attention_mask(T, window), scores, -np.inf)
    out = softmax(scores) @ v  # [H, T, hd]
    out = out.transpose(1, 0, 2).reshape(T, H * hd)
    return linear(out, W, prefix + ".o_proj", cfg["o_bias"])


def swiglu(x, W, gate, up, down, bias=False):
    """down(silu(gate(x)) * up(x)) for the linears stored under the three prefixes."""
    return linear(silu(linear(x, W, gate, bias)) * linear(x, W, up, bias), W, down, bias)


def route(router_logits, top_k):
    """Mixtral routing for one token: returns (expert ids, renormalized weights).

    The experts come in descending probability order; equal probabilities are
    ordered by ascending expert index because the sort is stable.
    """
    probs = softmax(np.asarray(router_logits, dtype=np.float64))
    experts = np.argsort(-probs, kind="stable")[:top_k]
    weights = probs[experts] / np.sum(probs[experts])
    return experts, weights


def moe(x, W, prefix, cfg):
    """Sparse mixture of experts of x [T, D]; returns the output and per-token routing."""
    logits = x @ W.get(prefix + ".gate.weight").T  # [T, E]
    out = np.zeros_like(x)
    positions = []
    for t in range(x.shape[0]):
        experts, weights = route(logits[t], cfg["top_k"])
        for e, w in zip(experts, weights):
            p = f"{prefix}.experts.{e}"
            out[t] += w * swiglu(x[t:t + 1], W, p + ".w1", p + ".w3", p + ".w2")[0]
        positions.append({"router_logits": logits[t].tolist(),
                          "experts": [int(e) for e in experts],
                          "weights": weights.tolist()})
    return out, positions


# ----------------------------------------------------------------------------
# The model.
# ----------------------------------------------------------------------------

def forward(model_dir, ids):
    """Runs the full causal forward pass over ids (positions 0..T-1).

    Returns (logits float64 [T, V], routing list with one entry per MoE layer).
    """
    cfg = load_config(model_dir)
    W = Weights(model_dir)
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or len(ids) == 0 or ids.min() < 0 or ids.max() >= cfg["vocab"]:
        raise ValueError("ids must be a non-empty list of token ids below vocab_size")
    embed = W.get("model.embed_tokens.weight")
    x = embed[ids]
    cos, sin = rope_cos_sin(np.arange(len(ids)), cfg["head_dim"], cfg["theta"])
    routing = []
    for i in range(cfg["layers"]):
        p = f"model.layers.{i}"
        h = rms_norm(x, W.get(p + ".input_layernorm.weight"), cfg["eps"])
        x = x + attention(h, W, p + ".self_attn", cfg, cos, sin, cfg["windows"][i])
        h = rms_norm(x, W.get(p + ".post_attention_layernorm.weight"), cfg["eps"])
        if cfg["experts"]:
            y, positions = moe(h, W, p + ".block_sparse_moe", cfg)
            routing.append({"layer": i, "positions": positions})
        else:
            y = swiglu(h, W, p + ".mlp.gate_proj", p + ".mlp.up_proj", p + ".mlp.down_proj",
                       cfg["mlp_bias"])
        x = x + y
    x = rms_norm(x, W.get("model.norm.weight"), cfg["eps"])
    # A tied model reuses the embedding matrix as the output projection.
    if not cfg["tied"] and not W.has("lm_head.weight"):
        raise ValueError("lm_head.weight is missing and tie_word_embeddings is false")
    head = embed if cfg["tied"] else W.get("lm_head.weight")
    return x @ head.T, routing


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--ids", required=True, help="comma-separated token ids, e.g. 1,2,3")
    ap.add_argument("--logits-out", help="write float32 logits [T, V] with numpy.save")
    ap.add_argument("--routing-out", help="write the MoE routing as JSON")
    args = ap.parse_args(argv)
    ids = [int(s) for s in args.ids.split(",") if s.strip()]
    logits, routing = forward(args.model_dir, ids)
    logits32 = logits.astype(np.float32)
    if args.logits_out:
        np.save(args.logits_out, logits32)
    if args.routing_out:
        with open(args.routing_out, "w") as f:
            json.dump({"layers": routing}, f)
    last = logits32[-1]
    print(f"reference_forward: T={len(ids)} V={logits32.shape[1]} moe_layers={len(routing)} "
          f"argmax_last={int(np.argmax(last))} max_last={float(last.max()):.6g} "
          f"mean_abs={float(np.abs(logits32).mean()):.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
