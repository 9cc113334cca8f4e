#!/usr/bin/python3
"""Independent NumPy reference forward pass for Hugging Face decoder-only models.

Supported architectures (config.json "architectures"[0]): LlamaForCausalLM,
MistralForCausalLM, MixtralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM,
Qwen3MoeForCausalLM, OlmoeForCausalLM, Qwen2MoeForCausalLM and GraniteMoeForCausalLM,
read from a Hugging Face model folder (config.json plus model.safetensors, or sharded
safetensors with model.safetensors.index.json).

All arithmetic is done in float64 so that this script is a tight reference; the
logits are written as float32 [T, V]. The code was written from the Hugging Face
transformers modeling files named in the comments ("T:" = src/transformers/ in
huggingface/transformers, main branch), never from the engine it checks.

Conventions chosen here (they follow Hugging Face transformers):
  * Sliding window: a query at position i attends to keys j with
    i - sliding_window < j <= i (T: masking_utils.py, kv_idx > q_idx - sliding_window).
    Mistral/Mixtral apply it on every layer when sliding_window is an int.
    Qwen2 and Qwen3 apply it only when use_sliding_window is true, and then only on
    the layers that config.layer_types marks "sliding_attention" or, without
    layer_types, on layers i >= max_window_layers (default 28). Qwen3-MoE applies it
    on every layer when use_sliding_window is true. Qwen2-MoE with
    use_sliding_window true is rejected (its layer rule differs between
    transformers versions). OLMoE and GraniteMoE never use a window.
  * Routing: ties are broken in favour of the lower expert index (a stable sort);
    torch.topk does not promise any order.
      - Mixtral: softmax over all router logits, top-k, renormalise the k weights.
      - Qwen2-MoE, Qwen3-MoE, OLMoE: softmax, top-k, renormalise only if
        norm_topk_prob (T: models/qwen2_moe/modular_qwen2_moe.py Qwen2MoeTopKRouter,
        models/olmoe/modular_olmoe.py OlmoeSparseMoeBlock.route_tokens_to_experts).
      - GraniteMoE: top-k of the raw logits, then a softmax over those k
        (T: models/jetmoe/modeling_jetmoe.py JetMoeTopKGating).
  * Rotary inverse frequencies are computed in float64 (HF computes them in
    float32), which is the more exact value.
  * KV cache: with --prefill P, positions [0, P) are one forward call and every
    later position is its own call attending to the cached, already rotated keys.
    Only dynamic NTK RoPE makes this differ from one call over all tokens.

Usage:
  python3 tools/reference_forward.py MODEL_DIR --ids 1,2,3 [--prefill P] \
      --logits-out out.npy --routing-out routing.json
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np

SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "Qwen2ForCausalLM",
             "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "OlmoeForCausalLM", "Qwen2MoeForCausalLM",
             "GraniteMoeForCausalLM")

# Defaults that each family's configuration_*.py uses when config.json leaves the field
# out. Only max_position_embeddings (for dynamic and yarn RoPE) and rope_theta are
# looked up here; real checkpoints normally spell both out.
FAMILY_DEFAULTS = {
    # T: models/llama/configuration_llama.py
    "LlamaForCausalLM": {"max_position_embeddings": 2048, "rope_theta": 10000.0},
    # T: models/mistral/configuration_mistral.py
    "MistralForCausalLM": {"max_position_embeddings": 4096 * 32, "rope_theta": 10000.0},
    # T: models/mixtral/configuration_mixtral.py (default_theta = 1e6)
    "MixtralForCausalLM": {"max_position_embeddings": 4096 * 32, "rope_theta": 1000000.0},
    # T: models/qwen2/configuration_qwen2.py
    "Qwen2ForCausalLM": {"max_position_embeddings": 32768, "rope_theta": 10000.0},
    # T: models/qwen3/configuration_qwen3.py
    "Qwen3ForCausalLM": {"max_position_embeddings": 32768, "rope_theta": 10000.0},
    # T: models/qwen3_moe/configuration_qwen3_moe.py
    "Qwen3MoeForCausalLM": {"max_position_embeddings": 32768, "rope_theta": 10000.0},
    # T: models/olmoe/configuration_olmoe.py
    "OlmoeForCausalLM": {"max_position_embeddings": 4096, "rope_theta": 10000.0},
    # T: models/qwen2_moe/configuration_qwen2_moe.py
    "Qwen2MoeForCausalLM": {"max_position_embeddings": 32768, "rope_theta": 10000.0},
    # T: models/granitemoe/configuration_granitemoe.py
    "GraniteMoeForCausalLM": {"max_position_embeddings": 2048, "rope_theta": 10000.0},
}


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

    def get(self, name, shape=None):
        """Returns the tensor as float64; when shape is given, a different shape is an error.

        The shape check turns a config field that disagrees with the checkpoint (for
        example moe_intermediate_size or a per-head q_norm) into a clear failure
        instead of a silently broadcast result.
        """
        if name not in self.where:
            raise ValueError(f"tensor {name} is missing from the checkpoint")
        path, base, info = self.where[name]
        begin, end = info["data_offsets"]
        with open(path, "rb") as f:
            f.seek(base + begin)
            raw = f.read(end - begin)
        if len(raw) != end - begin:
            raise ValueError(f"truncated tensor {name} in {path}")
        if shape is not None and list(info["shape"]) != list(shape):
            raise ValueError(f"tensor {name} has shape {info['shape']}, expected {list(shape)}")
        return decode_tensor(raw, info["dtype"]).reshape(info["shape"])


# ----------------------------------------------------------------------------
# Configuration.
# ----------------------------------------------------------------------------

# The keys each RoPE type understands, besides the common ones. They are the
# required and optional keys of the _validate_*_rope_parameters functions in
# T: modeling_rope_utils.py (RotaryEmbeddingConfigMixin). A key outside these sets
# is rejected: this reference would rather stop than ignore a field it does not model.
ROPE_COMMON_KEYS = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}
ROPE_TYPE_KEYS = {
    "default": set(),
    "linear": {"factor"},
    "dynamic": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "yarn": {"factor", "attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
             "original_max_position_embeddings", "truncate"},
}


def parse_rope(raw, arch, head_dim):
    """Returns the RoPE description {type, dim, theta, max_pos, ...} of a raw config dict.

    The v4 field is rope_scaling ({"type" or "rope_type", ...} with a top-level
    rope_theta); v5 writes rope_parameters ({"rope_type", "rope_theta", ...}). As in
    T: modeling_rope_utils.py RotaryEmbeddingConfigMixin.convert_rope_params_to_dict,
    a non-empty rope_scaling wins over rope_parameters, a rope_theta inside the dict
    wins over the top-level one, and "type" is an alias of "rope_type".
    """
    scaling, params = raw.get("rope_scaling"), raw.get("rope_parameters")
    field = "rope_scaling" if scaling else "rope_parameters"
    d = dict(scaling or params or {})
    if any(isinstance(v, dict) for v in d.values()):
        raise ValueError(f"{field}: per-layer-type RoPE parameters are not supported")
    if "rope_type" in d and "type" in d and d["rope_type"] != d["type"]:
        raise ValueError(f"{field}: rope_type {d['rope_type']!r} and type {d['type']!r} disagree")
    rtype = d.get("rope_type", d.get("type", "default"))
    if rtype not in ROPE_TYPE_KEYS:
        raise ValueError(f"{field}.rope_type {rtype!r} is not supported by the reference "
                         f"(supported: {sorted(ROPE_TYPE_KEYS)})")
    unknown = sorted(set(d) - ROPE_COMMON_KEYS - ROPE_TYPE_KEYS[rtype])
    if unknown:
        raise ValueError(f"{field} field(s) {unknown} are not supported for rope_type {rtype!r}")
    # None of these families rotates only part of the head; a partial rotary factor
    # would change which dimensions rotate, so it is refused rather than ignored.
    partial = d.get("partial_rotary_factor", raw.get("partial_rotary_factor"))
    if partial is not None and float(partial) != 1.0:
        raise ValueError(f"partial_rotary_factor {partial} is not supported by the reference")
    theta = d.get("rope_theta")
    if theta is None:
        theta = raw.get("rope_theta")
    if theta is None:
        theta = FAMILY_DEFAULTS[arch]["rope_theta"]
    max_pos = raw.get("max_position_embeddings") or FAMILY_DEFAULTS[arch]["max_position_embeddings"]
    rope = {"type": rtype, "dim": head_dim, "theta": float(theta), "max_pos": int(max_pos)}

    def need(key):
        if d.get(key) is None:
            raise ValueError(f"{field}.{key} is required for rope_type {rtype!r}")
        return float(d[key])

    # llama3 and yarn need the pre-extension context length. A top-level
    # original_max_position_embeddings takes priority over the one in the dict, and
    # max_position_embeddings is the fallback (T: modeling_rope_utils.py
    # RotaryEmbeddingConfigMixin.standardize_rope_params).
    orig = raw.get("original_max_position_embeddings")
    if orig is None:
        orig = d.get("original_max_position_embeddings")
    if orig is None:
        orig = max_pos
    if rtype in ("linear", "dynamic"):
        rope["factor"] = need("factor")
    elif rtype == "llama3":
        rope.update(factor=need("factor"), low_freq_factor=need("low_freq_factor"),
                    high_freq_factor=need("high_freq_factor"), original_max_pos=float(orig))
    elif rtype == "yarn":
        # Current transformers uses factor as given; only a missing factor is derived
        # as max_position_embeddings / original_max_position_embeddings
        # (T: modeling_rope_utils.py _compute_yarn_parameters). Older releases (before
        # PR #40320, per /work/shared/guide/architectures.md section 8) overrode it with
        # that ratio whenever original_max_position_embeddings was set; this does not.
        factor = d.get("factor")
        rope.update(factor=float(factor) if factor is not None else max_pos / float(orig),
                    original_max_pos=float(orig),
                    attention_factor=d.get("attention_factor"),
                    beta_fast=d.get("beta_fast"), beta_slow=d.get("beta_slow"),
                    mscale=d.get("mscale"), mscale_all_dim=d.get("mscale_all_dim"),
                    truncate=bool(d.get("truncate", True)))
    return rope


def load_config(model_dir):
    """Reads config.json and returns a plain dict with every field the forward pass uses."""
    with open(os.path.join(model_dir, "config.json")) as f:
        raw = json.load(f)
    return parse_config(raw)


def parse_config(raw):
    """Turns a raw config.json dict into the fields the forward pass uses."""
    arch = raw["architectures"][0]
    if arch not in SUPPORTED:
        raise ValueError(f"unsupported architecture {arch}")
    if raw.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {raw['hidden_act']!r} is not supported (only silu)")
    heads = raw["num_attention_heads"]
    layers = raw["num_hidden_layers"]
    hidden = raw["hidden_size"]
    # Qwen3Config declares head_dim = 128 as its default; every other family falls
    # back to hidden_size // num_attention_heads (T: models/llama/modeling_llama.py
    # LlamaAttention, models/qwen3/configuration_qwen3.py).
    if arch == "Qwen3ForCausalLM":
        head_dim = raw.get("head_dim") or 128
    else:
        head_dim = raw.get("head_dim") or hidden // heads
    granite = arch == "GraniteMoeForCausalLM"
    cfg = {
        "arch": arch,
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "kv_heads": raw.get("num_key_value_heads") or heads,
        "head_dim": head_dim,
        "eps": raw["rms_norm_eps"],
        "tied": raw.get("tie_word_embeddings", False),
        "vocab": raw["vocab_size"],
        "rope": parse_rope(raw, arch, head_dim),
        # Granite's four scalars (T: models/granitemoe/modular_granitemoe.py): the
        # embeddings are multiplied by embedding_multiplier, both residual branches by
        # residual_multiplier, attention uses attention_multiplier as its softmax
        # scale, and the logits are divided by logits_scaling. Other families use 1
        # (and the usual head_dim^-0.5 scale, marked by None).
        "embedding_multiplier": float(raw.get("embedding_multiplier", 1.0)) if granite else 1.0,
        "residual_multiplier": float(raw.get("residual_multiplier", 1.0)) if granite else 1.0,
        "attention_scale": float(raw.get("attention_multiplier", 1.0)) if granite else None,
        "logits_scaling": float(raw.get("logits_scaling", 1.0)) if granite else 1.0,
    }
    # The theta of the RoPE description is also exposed at the top level for callers
    # that only need default RoPE tables.
    cfg["theta"] = cfg["rope"]["theta"]

    # Which projections carry a bias depends on the architecture.
    if arch == "Qwen2ForCausalLM":
        cfg["qkv_bias"], cfg["o_bias"] = True, False
    elif arch == "Qwen2MoeForCausalLM":
        # Qwen2MoeAttention: q/k/v bias from qkv_bias (default true), o_proj never.
        cfg["qkv_bias"], cfg["o_bias"] = bool(raw.get("qkv_bias", True)), False
    elif arch in ("LlamaForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "OlmoeForCausalLM",
                  "GraniteMoeForCausalLM"):
        # All of these reuse LlamaAttention, whose attention_bias covers q, k, v and o.
        cfg["qkv_bias"] = cfg["o_bias"] = bool(raw.get("attention_bias", False))
    else:
        cfg["qkv_bias"] = cfg["o_bias"] = False
    cfg["mlp_bias"] = arch == "LlamaForCausalLM" and bool(raw.get("mlp_bias", False))

    # q/k normalisation: Qwen3(-MoE) normalises each head over head_dim with one
    # shared [head_dim] weight (T: models/qwen3/modular_qwen3.py Qwen3Attention);
    # OLMoE normalises the whole q and k projections (T: models/olmoe/modular_olmoe.py
    # OlmoeAttention), then clamps q, k, v to +-clip_qkv when that is set.
    cfg["qk_norm"] = {"Qwen3ForCausalLM": "head", "Qwen3MoeForCausalLM": "head",
                      "OlmoeForCausalLM": "full"}.get(arch)
    cfg["clip_qkv"] = raw.get("clip_qkv") if arch == "OlmoeForCausalLM" else None

    # The sliding window per layer (None means full causal attention).
    window = raw.get("sliding_window")
    if arch in ("MistralForCausalLM", "MixtralForCausalLM"):
        cfg["windows"] = [window] * layers
    elif (arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM") and raw.get("use_sliding_window", False)
          and window is not None):
        types = raw.get("layer_types") or [
            "sliding_attention" if i >= raw.get("max_window_layers", 28) else "full_attention"
            for i in range(layers)]
        cfg["windows"] = [window if t == "sliding_attention" else None for t in types]
    elif arch == "Qwen3MoeForCausalLM" and raw.get("use_sliding_window", False) and window is not None:
        # Qwen3MoeAttention takes config.sliding_window for every layer.
        cfg["windows"] = [window] * layers
    elif arch == "Qwen2MoeForCausalLM" and raw.get("use_sliding_window", False):
        raise ValueError("use_sliding_window is not supported for Qwen2MoeForCausalLM by the reference")
    else:
        cfg["windows"] = [None] * layers

    # Mixture of experts: which layers are sparse, and how they route.
    if arch == "MixtralForCausalLM":
        moe = {"style": "mixtral", "experts": raw.get("num_local_experts", 8),
               "top_k": raw.get("num_experts_per_tok", 2), "norm_topk": True, "shared": False}
        cfg["moe_layers"] = [bool(moe["experts"])] * layers
    elif arch in ("Qwen3MoeForCausalLM", "Qwen2MoeForCausalLM"):
        qwen3 = arch == "Qwen3MoeForCausalLM"
        experts = raw.get("num_experts", raw.get("num_local_experts", 128 if qwen3 else 60))
        moe = {"style": "qwen", "experts": experts,
               "top_k": raw.get("num_experts_per_tok", 8 if qwen3 else 4),
               "norm_topk": bool(raw.get("norm_topk_prob", False)),
               "shared": not qwen3,
               "moe_width": raw.get("moe_intermediate_size", 768 if qwen3 else 1408),
               "shared_width": raw.get("shared_expert_intermediate_size", 5632)}
        cfg["moe_layers"] = moe_layer_schedule(layers, experts, raw.get("decoder_sparse_step", 1),
                                               raw.get("mlp_only_layers"))
    elif arch == "OlmoeForCausalLM":
        # OlmoeDecoderLayer is always sparse; each expert is intermediate_size wide.
        moe = {"style": "qwen", "experts": raw.get("num_experts", raw.get("num_local_experts", 64)),
               "top_k": raw.get("num_experts_per_tok", 8),
               "norm_topk": bool(raw.get("norm_topk_prob", False)), "shared": False,
               "moe_width": raw.get("intermediate_size")}
        cfg["moe_layers"] = [True] * layers
    elif granite:
        moe = {"style": "granite", "experts": raw.get("num_local_experts", 8),
               "top_k": raw.get("num_experts_per_tok", 2), "shared": False,
               "moe_width": raw.get("intermediate_size")}
        cfg["moe_layers"] = [True] * layers
    else:
        moe = None
        cfg["moe_layers"] = [False] * layers
    cfg["moe"] = moe
    # The old single-value fields, kept for callers that read them.
    cfg["experts"] = moe["experts"] if moe else None
    cfg["top_k"] = moe["top_k"] if moe else None
    if moe and any(cfg["moe_layers"]) and not 1 <= moe["top_k"] <= moe["experts"]:
        raise ValueError("num_experts_per_tok must be between 1 and the number of experts")
    if heads % cfg["kv_heads"] != 0:
        raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
    return cfg


def moe_layer_schedule(num_layers, num_experts, decoder_sparse_step=1, mlp_only_layers=()):
    """Returns [bool] per layer: True where a Qwen2-MoE/Qwen3-MoE layer is sparse.

    Qwen2MoeDecoderLayer (reused by Qwen3-MoE) builds a sparse block for layer i iff
    i is not in mlp_only_layers, there are experts, and (i + 1) % decoder_sparse_step
    is 0; every other layer gets a dense MLP of intermediate_size
    (T: models/qwen2_moe/modular_qwen2_moe.py Qwen2MoeDecoderLayer.__init__).
    """
    only = set(mlp_only_layers or [])
    return [i not in only and num_experts > 0 and (i + 1) % decoder_sparse_step == 0
            for i in range(num_layers)]


# ----------------------------------------------------------------------------
# Rotary position embeddings.
# ----------------------------------------------------------------------------

def default_inv_freq(dim, theta):
    """theta^(-2i/dim) for i < dim/2 (T: modeling_rope_utils.py _compute_default_rope_parameters)."""
    return 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)


def yarn_get_mscale(scale, mscale=1.0):
    """YaRN's magnitude correction 0.1*mscale*ln(scale) + 1, or 1 when scale <= 1."""
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def yarn_correction_range(beta_fast, beta_slow, dim, theta, original_max_pos, truncate):
    """Returns (low, high): the pair indices where YaRN's ramp starts and ends.

    The pair index whose wavelength fits r full rotations into the original context is
    dim*ln(orig/(2*pi*r)) / (2*ln(theta)). Fast rotations (beta_fast) give the low end
    and slow ones (beta_slow) the high end; truncate rounds them outward to integers
    (T: modeling_rope_utils.py _compute_yarn_parameters, find_correction_range).
    """
    def pair_index(rotations):
        return dim * math.log(original_max_pos / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = pair_index(beta_fast), pair_index(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)


def rope_inv_freq(rope, seq_len=None):
    """Returns (inv_freq [dim/2], attention_factor) of a RoPE description.

    seq_len is max(position_ids) + 1 of the current forward call; only dynamic NTK
    depends on it. The formulas are those of the _compute_*_parameters functions in
    T: modeling_rope_utils.py.
    """
    dim, theta, kind = rope["dim"], rope["theta"], rope["type"]
    base = default_inv_freq(dim, theta)
    if kind == "default":
        return base, 1.0
    if kind == "linear":
        # Dividing the frequencies by factor equals dividing the positions by it.
        return base / rope["factor"], 1.0
    if kind == "dynamic":
        # NTK-aware scaling grows theta once the sequence passes the trained length M:
        # theta' = theta * (factor*S/M - (factor-1))^(dim/(dim-2)) with S = max(S, M),
        # so S <= M gives theta back (_compute_dynamic_ntk_parameters).
        M = rope["max_pos"]
        S = M if seq_len is None else max(seq_len, M)
        f = rope["factor"]
        scaled = theta * ((f * S / M) - (f - 1)) ** (dim / (dim - 2))
        return default_inv_freq(dim, scaled), 1.0
    if kind == "llama3":
        # Llama 3.1: wavelengths longer than orig/low_freq_factor are slowed down by
        # factor, shorter than orig/high_freq_factor are kept, and the band between
        # blends the two linearly in orig/wavelength (_compute_llama3_parameters).
        f, lo, hi, orig = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"], \
            rope["original_max_pos"]
        wavelen = 2 * math.pi / base
        inv = np.where(wavelen > orig / lo, base / f, base)
        smooth = (orig / wavelen - lo) / (hi - lo)
        blended = (1 - smooth) * inv / f + smooth * inv
        medium = ~(wavelen < orig / hi) & ~(wavelen > orig / lo)
        return np.where(medium, blended, inv), 1.0
    if kind == "yarn":
        # YaRN: pairs below the ramp keep their frequency, pairs above are divided by
        # factor, and the ramp between mixes the two linearly. cos and sin are then
        # multiplied by the attention factor (_compute_yarn_parameters).
        f = rope["factor"]
        att = rope["attention_factor"]
        if att is None:
            if rope["mscale"] and rope["mscale_all_dim"]:
                att = yarn_get_mscale(f, rope["mscale"]) / yarn_get_mscale(f, rope["mscale_all_dim"])
            else:
                att = yarn_get_mscale(f)
        # HF writes `x or default`, so a 0 or null beta also means the default.
        beta_fast = rope["beta_fast"] or 32
        beta_slow = rope["beta_slow"] or 1
        low, high = yarn_correction_range(beta_fast, beta_slow, dim, theta, rope["original_max_pos"],
                                          rope["truncate"])
        if low == high:
            high += 0.001  # HF's guard against a zero-width ramp.
        ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
        extrapolation = 1.0 - ramp
        inv = (base / f) * (1.0 - extrapolation) + base * extrapolation
        return inv, float(att)
    raise ValueError(f"rope_type {kind!r} is not supported")


def cos_sin_tables(positions, inv_freq, attention_factor=1.0):
    """Returns cos and sin tables [T, head_dim] in the HF layout cat(freqs, freqs).

    Both tables are multiplied by the attention factor, as the rotary embedding
    modules do (T: models/llama/modeling_llama.py LlamaRotaryEmbedding.forward).
    """
    freqs = np.outer(np.asarray(positions, dtype=np.float64), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb) * attention_factor, np.sin(emb) * attention_factor


def rope_cos_sin(positions, head_dim, theta):
    """Default-RoPE cos and sin tables [T, head_dim]."""
    return cos_sin_tables(positions, default_inv_freq(head_dim, theta))


def rotate_half(x):
    """Maps the last axis [a, b] (two halves) to [-b, a]."""
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x, cos, sin):
    """Rotates x [heads, T, head_dim] with tables [T, head_dim]."""
    return x * cos + rotate_half(x) * sin


# ----------------------------------------------------------------------------
# Building blocks.
# ----------------------------------------------------------------------------

def rms_norm(x, weight, eps):
    """Scales each row of x by 1/sqrt(mean(x^2) + eps), then by the weight."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def qk_norm(x, weight, eps, mode, head_dim):
    """RMS-normalises a q or k projection x [T, n*head_dim].

    mode "head" normalises each head's head_dim slice with one [head_dim] weight
    shared by all heads (Qwen3); mode "full" normalises the whole projection with an
    [n*head_dim] weight (OLMoE).
    """
    T, width = x.shape
    if mode == "head":
        return rms_norm(x.reshape(T, width // head_dim, head_dim), weight, eps).reshape(T, width)
    if mode == "full":
        return rms_norm(x, weight, eps)
    raise ValueError(f"unknown q/k norm mode {mode}")


def softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def silu(x):
    return x / (1.0 + np.exp(-x))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def linear(x, W, prefix, bias=False):
    """Applies the nn.Linear stored under prefix (weight [out, in], optional bias)."""
    y = x @ W.get(prefix + ".weight").T
    return y + W.get(prefix + ".bias") if bias else y


def attention_mask(T, window, past=0):
    """Returns a boolean [T, past + T] matrix: True where query i may attend to key j.

    Query i sits at absolute position past + i; keys are the positions 0 .. past+T-1
    (the cached ones first).
    """
    i = past + np.arange(T)[:, None]
    j = np.arange(past + T)[None, :]
    allowed = j <= i
    if window is not None:
        allowed &= j > i - window
    return allowed


def attention(x, W, prefix, cfg, cos, sin, window, cache=None):
    """Multi-head (grouped-query) causal self-attention of x [T, D].

    cos and sin are the tables of x's positions. With a cache (a dict with "k" and
    "v", None or [KV, n, head_dim]), x follows the n cached positions: its keys and
    values are appended, already rotated, and its queries attend to all of them, as
    with HF's DynamicCache (T: cache_utils.py).
    """
    T = x.shape[0]
    H, KV, hd = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
    q = linear(x, W, prefix + ".q_proj", cfg["qkv_bias"])
    k = linear(x, W, prefix + ".k_proj", cfg["qkv_bias"])
    v = linear(x, W, prefix + ".v_proj", cfg["qkv_bias"])
    mode = cfg.get("qk_norm")
    if mode:
        # The norms act before RoPE. Their weights are [head_dim] (per head) or the
        # whole projection width (OLMoE); the shape check catches a mix-up.
        q = qk_norm(q, W.get(prefix + ".q_norm.weight", [hd] if mode == "head" else [H * hd]),
                    cfg["eps"], mode, hd)
        k = qk_norm(k, W.get(prefix + ".k_norm.weight", [hd] if mode == "head" else [KV * hd]),
                    cfg["eps"], mode, hd)
    if cfg.get("clip_qkv") is not None:
        c = cfg["clip_qkv"]
        q, k, v = np.clip(q, -c, c), np.clip(k, -c, c), np.clip(v, -c, c)
    q = q.reshape(T, H, hd).transpose(1, 0, 2)
    k = k.reshape(T, KV, hd).transpose(1, 0, 2)
    v = v.reshape(T, KV, hd).transpose(1, 0, 2)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    past = 0
    if cache is not None:
        if cache.get("k") is not None:
            past = cache["k"].shape[1]
            k = np.concatenate([cache["k"], k], axis=1)
            v = np.concatenate([cache["v"], v], axis=1)
        cache["k"], cache["v"] = k, v
    # Query head h reads KV head h // group; np.repeat lays the heads out that way.
    group = H // KV
    k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
    scores = q @ k.transpose(0, 2, 1)
    # The usual scale is head_dim^-0.5 (written as a division to keep the results of
    # the original reference bit for bit); Granite replaces it by attention_multiplier.
    scale = cfg.get("attention_scale")
    scores = scores / np.sqrt(hd) if scale is None else scores * scale
    scores = np.where(attention_mask(T, window, past), scores, -np.inf)
    out = softmax(scores) @ v  # [H, T, hd]
    out = out.transpose(1, 0, 2).reshape(T, H * hd)
    return linear(out, W, prefix + ".o_proj", cfg["o_bias"])


def swiglu(x, W, gate, up, down, bias=False):
    """down(silu(gate(x)) * up(x)) for the linears stored under the three prefixes."""
    return linear(silu(linear(x, W, gate, bias)) * linear(x, W, up, bias), W, down, bias)


def route(router_logits, top_k, normalize=True):
    """Softmax-then-top-k routing for one token: returns (expert ids, weights).

    The weights are the softmax probabilities of the chosen experts, renormalised to
    sum to 1 when normalize is true (Mixtral always; Qwen-MoE and OLMoE iff
    norm_topk_prob). The experts come in descending probability order; equal
    probabilities are ordered by ascending expert index because the sort is stable.
    """
    probs = softmax(np.asarray(router_logits, dtype=np.float64))
    experts = np.argsort(-probs, kind="stable")[:top_k]
    weights = probs[experts]
    if normalize:
        weights = weights / np.sum(weights)
    return experts, weights


def route_topk_softmax(router_logits, top_k):
    """Granite routing for one token: top-k of the raw logits, then softmax over those k.

    Ties go to the lower expert index (stable sort).
    """
    logits = np.asarray(router_logits, dtype=np.float64)
    experts = np.argsort(-logits, kind="stable")[:top_k]
    return experts, softmax(logits[experts])


def moe(x, W, layer_prefix, cfg):
    """Sparse mixture of experts of x [T, D] for layer_prefix (model.layers.i).

    Returns the output and the per-token routing records.
    """
    spec = cfg["moe"]
    style, E, D = spec["style"], spec["experts"], cfg["hidden"]
    if style == "mixtral":
        base = layer_prefix + ".block_sparse_moe"
        logits = x @ W.get(base + ".gate.weight", [E, D]).T  # [T, E]

        def expert(e, xt):
            p = f"{base}.experts.{e}"
            return swiglu(xt, W, p + ".w1", p + ".w3", p + ".w2")
    elif style == "qwen":
        base = layer_prefix + ".mlp"
        logits = x @ W.get(base + ".gate.weight", [E, D]).T
        Ie = spec["moe_width"]

        def expert(e, xt):
            p = f"{base}.experts.{e}"
            # Expert widths come from moe_intermediate_size (Qwen) or
            # intermediate_size (OLMoE); the shapes are checked against them.
            g = xt @ W.get(p + ".gate_proj.weight", [Ie, D]).T
            u = xt @ W.get(p + ".up_proj.weight", [Ie, D]).T
            return (silu(g) * u) @ W.get(p + ".down_proj.weight", [D, Ie]).T
    elif style == "granite":
        base = layer_prefix + ".block_sparse_moe"
        logits = x @ W.get(base + ".router.layer.weight", [E, D]).T
        Ie = spec["moe_width"]
        # Fused experts (T: models/jetmoe/modeling_jetmoe.py JetMoeParallelExperts):
        # input_linear[e] is [2I, D] with the gate rows first, then the up rows
        # (GraniteMoeMoE.forward chunks the output in two); output_linear[e] is [D, I].
        w_in = W.get(base + ".input_linear.weight", [E, 2 * Ie, D])
        w_out = W.get(base + ".output_linear.weight", [E, D, Ie])

        def expert(e, xt):
            a = xt @ w_in[e].T
            return (silu(a[:, :Ie]) * a[:, Ie:]) @ w_out[e].T
    else:
        raise ValueError(f"unknown MoE style {style}")
    out = np.zeros_like(x)
    positions = []
    for t in range(x.shape[0]):
        if style == "granite":
            experts, weights = route_topk_softmax(logits[t], spec["top_k"])
        else:
            experts, weights = route(logits[t], spec["top_k"], spec["norm_topk"])
        for e, w in zip(experts, weights):
            out[t] += w * expert(int(e), x[t:t + 1])[0]
        positions.append({"router_logits": logits[t].tolist(),
                          "experts": [int(e) for e in experts],
                          "weights": weights.tolist()})
    if spec["shared"]:
        # Qwen2-MoE adds a dense shared expert, scaled per token by
        # sigmoid(x . shared_expert_gate) (T: models/qwen2_moe/modular_qwen2_moe.py
        # Qwen2MoeSparseMoeBlock.forward). It is not part of the routing record.
        S = spec["shared_width"]
        p = base + ".shared_expert"
        g = x @ W.get(p + ".gate_proj.weight", [S, D]).T
        u = x @ W.get(p + ".up_proj.weight", [S, D]).T
        shared = (silu(g) * u) @ W.get(p + ".down_proj.weight", [D, S]).T
        out = out + sigmoid(x @ W.get(base + ".shared_expert_gate.weight", [1, D]).T) * shared
    return out, positions


# ----------------------------------------------------------------------------
# The model.
# ----------------------------------------------------------------------------

def forward_chunks(T, prefill):
    """The [start, end) position ranges of the forward calls for T tokens."""
    if prefill is None or prefill >= T:
        return [(0, T)]
    if prefill < 1:
        raise ValueError("--prefill must be at least 1")
    return [(0, prefill)] + [(t, t + 1) for t in range(prefill, T)]


def forward(model_dir, ids, prefill=None):
    """Runs the causal forward pass over ids (positions 0..T-1).

    With prefill None (or >= T) all tokens go through one forward call. Otherwise
    positions [0, prefill) are one call and each later position is its own call that
    attends to the cached keys and values, like HF generation with a DynamicCache.
    Each call computes its RoPE tables for S = its last position + 1; only dynamic
    NTK depends on S (T: modeling_rope_utils.py dynamic_rope_update recomputes the
    frequencies when S grows past max_position_embeddings and returns to the
    original ones below it; S only grows here, so the frequencies of a call are
    those of its own S), and cached keys keep the rotation they were given.

    Returns (logits float64 [T, V], routing list with one entry per MoE layer).
    """
    cfg = load_config(model_dir)
    W = Weights(model_dir)
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or len(ids) == 0 or ids.min() < 0 or ids.max() >= cfg["vocab"]:
        raise ValueError("ids must be a non-empty list of token ids below vocab_size")
    embed = W.get("model.embed_tokens.weight")
    # A tied model reuses the embedding matrix as the output projection.
    if not cfg["tied"] and not W.has("lm_head.weight"):
        raise ValueError("lm_head.weight is missing and tie_word_embeddings is false")
    head = embed if cfg["tied"] else W.get("lm_head.weight")
    caches = [{"k": None, "v": None} for _ in range(cfg["layers"])]
    routing = {i: [] for i in range(cfg["layers"]) if cfg["moe_layers"][i]}
    rm = cfg["residual_multiplier"]
    logits = []
    for start, end in forward_chunks(len(ids), prefill):
        inv_freq, att = rope_inv_freq(cfg["rope"], seq_len=end)
        cos, sin = cos_sin_tables(np.arange(start, end), inv_freq, att)
        x = embed[ids[start:end]] * cfg["embedding_multiplier"]
        for i in range(cfg["layers"]):
            p = f"model.layers.{i}"
            h = rms_norm(x, W.get(p + ".input_layernorm.weight"), cfg["eps"])
            x = x + attention(h, W, p + ".self_attn", cfg, cos, sin, cfg["windows"][i], caches[i]) * rm
            h = rms_norm(x, W.get(p + ".post_attention_layernorm.weight"), cfg["eps"])
            if cfg["moe_layers"][i]:
                y, positions = moe(h, W, p, cfg)
                routing[i].extend(positions)
            else:
                y = swiglu(h, W, p + ".mlp.gate_proj", p + ".mlp.up_proj", p + ".mlp.down_proj",
                           cfg["mlp_bias"])
            x = x + y * rm
        x = rms_norm(x, W.get("model.norm.weight"), cfg["eps"])
        logits.append(x @ head.T / cfg["logits_scaling"])
    return np.concatenate(logits, axis=0), [{"layer": i, "positions": routing[i]} for i in sorted(routing)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--ids", required=True, help="comma-separated token ids, e.g. 1,2,3")
    ap.add_argument("--prefill", type=int, default=None,
                    help="compute positions [0, P) in one forward call and each later position "
                         "in its own call with a KV cache (default: all tokens in one call)")
    ap.add_argument("--logits-out", help="write float32 logits [T, V] with numpy.save")
    ap.add_argument("--routing-out", help="write the MoE routing as JSON")
    args = ap.parse_args(argv)
    ids = [int(s) for s in args.ids.split(",") if s.strip()]
    logits, routing = forward(args.model_dir, ids, prefill=args.prefill)
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
