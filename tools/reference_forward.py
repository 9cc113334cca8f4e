#!/usr/bin/python3
"""Independent NumPy reference forward pass for Hugging Face decoder-only models.

Supported architectures (config.json "architectures"[0]): LlamaForCausalLM,
MistralForCausalLM, MixtralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM,
Qwen3MoeForCausalLM, OlmoeForCausalLM, Qwen2MoeForCausalLM, GraniteMoeForCausalLM,
GptOssForCausalLM, DeepseekV2ForCausalLM, DeepseekV3ForCausalLM and PhimoeForCausalLM
(also spelled PhiMoEForCausalLM), read from a Hugging Face model folder (config.json
plus model.safetensors, or sharded safetensors with model.safetensors.index.json).
Tensors may be F32, F16, BF16, F64, F8_E4M3 (DeepSeek-V3's FP8 with 128x128
weight_scale_inv blocks) or U8 (gpt-oss's MXFP4 expert blocks and scales).

All arithmetic is done in float64 so that this script is a tight reference; the
logits are written as float32 [T, V]. The code was written from the Hugging Face
transformers modeling files named in the comments ("T:" = src/transformers/ in
huggingface/transformers, main branch) and /work/shared/guide/architectures.md,
never from the engine it checks.

Conventions chosen here (they follow Hugging Face transformers unless stated):
  * Sliding window: a query at position i attends to keys j with
    i - sliding_window < j <= i (T: masking_utils.py, kv_idx > q_idx - sliding_window).
    Mistral/Mixtral/PhiMoE apply it on every layer when sliding_window is an int.
    Qwen2 and Qwen3 apply it only when use_sliding_window is true, and then only on
    the layers that config.layer_types marks "sliding_attention" or, without
    layer_types, on layers i >= max_window_layers (default 28). Qwen3-MoE applies it
    on every layer when use_sliding_window is true. Qwen2-MoE with
    use_sliding_window true is rejected (its layer rule differs between
    transformers versions). gpt-oss applies it on the layers that layer_types marks
    "sliding_attention" (even layers without layer_types). OLMoE, GraniteMoE and
    DeepSeek never use a window.
  * Routing: ties are broken in favour of the lower expert index (a stable sort);
    torch.topk does not promise any order.
      - Mixtral: softmax over all router logits, top-k, renormalise the k weights.
      - Qwen2-MoE, Qwen3-MoE, OLMoE: softmax, top-k, renormalise only if
        norm_topk_prob (T: models/qwen2_moe/modular_qwen2_moe.py Qwen2MoeTopKRouter,
        models/olmoe/modular_olmoe.py OlmoeSparseMoeBlock.route_tokens_to_experts).
      - GraniteMoE and gpt-oss: top-k of the raw logits, then a softmax over those k
        (T: models/jetmoe/modeling_jetmoe.py JetMoeTopKGating,
        models/gpt_oss/modular_gpt_oss.py GptOssTopKRouter).
      - DeepSeek-V2: softmax, top-k (greedy) or top-k within the topk_group groups
        with the largest max (group_limited_greedy), weights times
        routed_scaling_factor (divided by their sum + 1e-20 instead when
        norm_topk_prob, as DeepSeek's original code does).
      - DeepSeek-V3: sigmoid; selection on sigmoid + e_score_correction_bias within
        the topk_group groups with the largest top-2 sums; weights are the unbiased
        sigmoids, divided by their sum + 1e-20 if norm_topk_prob, times
        routed_scaling_factor. Experts of dropped groups get -inf (HF uses 0.0, which
        only differs when a kept biased score is negative).
      - PhiMoE: sparsemixer (inference branch) with eps = router_jitter_noise, two
        experts, weights not renormalised.
  * Routing record (--routing-out), per MoE layer and position: "experts" in the
    order chosen, "weights" the multipliers applied to those experts' outputs, and
    "router_logits" the router's linear output before any softmax or sigmoid: x.Wg^T
    for every family (DeepSeek-V3 without e_score_correction_bias), except gpt-oss,
    whose router is a linear with bias: x.Wr^T + br. Shared experts (Qwen2-MoE,
    DeepSeek) are not part of the record.
  * gpt-oss attention adds one sink logit per head as an extra softmax column that
    is then dropped; its experts are MXFP4 (low nibble first, E8M0 scales) with
    interleaved gate/up rows, a clamped SwiGLU (alpha 1.702, limit swiglu_limit) and
    biases; it uses YaRN with truncate false by default.
  * DeepSeek attention is MLA in HF's naive form (full per-head keys and values, no
    absorption), RoPE on the qk_rope_head_dim slice only, rotating adjacent pairs.
    The softmax scale is qk_head_dim^-0.5 * m^2, m = 0.1 * mscale_all_dim *
    ln(factor) + 1 when the RoPE is scaled and mscale_all_dim is set, for V2 as for
    V3 (the original DeepSeek code; HF's V2 omitted m^2 until PR #47435). The latent
    norms use eps 1e-6. FP8 weights are dequantized (activations stay float64).
  * PhiMoE uses LayerNorm (with bias, eps = rms_norm_eps), q/k/v/o and lm_head biases
    and longrope: long factors once the call's S exceeds
    original_max_position_embeddings, cos/sin times long_mscale or short_mscale.
  * Rotary inverse frequencies are computed in float64 (HF computes them in
    float32), which is the more exact value.
  * KV cache: with --prefill P, positions [0, P) are one forward call and every
    later position is its own call attending to the cached, already rotated keys.
    Only dynamic NTK and longrope RoPE make this differ from one call over all tokens.

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
             "GraniteMoeForCausalLM", "GptOssForCausalLM", "DeepseekV2ForCausalLM",
             "DeepseekV3ForCausalLM", "PhimoeForCausalLM")

# Other spellings of a supported class name. Phi-3.5-MoE's config.json says
# "PhiMoEForCausalLM"; the transformers class is PhimoeForCausalLM.
ARCH_ALIASES = {"PhiMoEForCausalLM": "PhimoeForCausalLM"}

DEEPSEEK = ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM")

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
    # The families below also give rms_norm_eps a default (the older ones require it).
    # T: models/gpt_oss/configuration_gpt_oss.py (default_theta = 150000)
    "GptOssForCausalLM": {"max_position_embeddings": 131072, "rope_theta": 150000.0, "rms_norm_eps": 1e-5},
    # T: models/deepseek_v2/modular_deepseek_v2.py DeepseekV2Config (LlamaConfig defaults)
    "DeepseekV2ForCausalLM": {"max_position_embeddings": 2048, "rope_theta": 10000.0, "rms_norm_eps": 1e-6},
    # T: models/deepseek_v3/configuration_deepseek_v3.py
    "DeepseekV3ForCausalLM": {"max_position_embeddings": 4096, "rope_theta": 10000.0, "rms_norm_eps": 1e-6},
    # T: models/phimoe/configuration_phimoe.py
    "PhimoeForCausalLM": {"max_position_embeddings": 4096 * 32, "rope_theta": 1000000.0,
                          "rms_norm_eps": 1e-5},
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


def _e4m3fn_table():
    """The float64 value of each of the 256 float8 e4m3fn bytes.

    e4m3fn: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits; exponent 0 holds
    the subnormals m * 2^-9; there are no infinities, and only S.1111.111 is NaN, so
    the largest finite value is 1.75 * 2^8 = 448.
    """
    table = np.empty(256, dtype=np.float64)
    for b in range(256):
        sign = -1.0 if b & 0x80 else 1.0
        exponent, mantissa = (b >> 3) & 0xF, b & 0x7
        if exponent == 0xF and mantissa == 0x7:
            table[b] = np.nan
        elif exponent == 0:
            table[b] = sign * math.ldexp(mantissa, -9)
        else:
            table[b] = sign * math.ldexp(8 + mantissa, exponent - 7 - 3)
    return table


E4M3FN = _e4m3fn_table()

# FP4 E2M1 values by nibble (T: integrations/mxfp4.py FP4_VALUES): the high bit is
# the sign, then 2 exponent bits and 1 mantissa bit.
FP4_E2M1 = np.array([+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
                     -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=np.float64)


def decode_mxfp4(blocks, scales):
    """Dequantizes MXFP4 weights: blocks [..., G, 16] uint8 and scales [..., G] uint8.

    Each byte holds two FP4 E2M1 values, the low nibble first: byte k of group g gives
    elements 32g + 2k (low nibble) and 32g + 2k + 1 (high nibble). The group's scale
    byte s is an E8M0 exponent, 2^(s - 127). The result is [..., 32G]; for gpt-oss
    expert weights [E, R, G, 16] that is W[e] = [R, 32G] = [out, in]
    (T: integrations/mxfp4.py convert_moe_packed_tensors, before its final transpose).
    HF computes 2^(s - 127) with ldexp for every byte, 255 included (which the OCP
    spec calls NaN); so does this.
    """
    blocks = np.asarray(blocks)
    scales = np.asarray(scales)
    if blocks.dtype != np.uint8 or scales.dtype != np.uint8:
        raise ValueError("MXFP4 blocks and scales must be uint8")
    if blocks.ndim < 2 or blocks.shape[-1] != 16:
        raise ValueError(f"MXFP4 blocks must be [..., groups, 16], got {list(blocks.shape)}")
    if blocks.shape[:-1] != scales.shape:
        raise ValueError(f"MXFP4 blocks {list(blocks.shape)} and scales {list(scales.shape)} do not match: "
                         "scales must be the blocks' shape without the last axis")
    values = np.empty(blocks.shape[:-1] + (32,), dtype=np.float64)
    values[..., 0::2] = FP4_E2M1[blocks & 0x0F]
    values[..., 1::2] = FP4_E2M1[blocks >> 4]
    values = np.ldexp(values, scales.astype(np.int64)[..., None] - 127)
    return values.reshape(blocks.shape[:-2] + (blocks.shape[-2] * 32,))


def dequantize_fp8_blocks(weight, scale_inv, block):
    """W[i, j] * scale_inv[i // block[0], j // block[1]] for a 2-D FP8 weight.

    scale_inv must be [ceil(out / block[0]), ceil(in / block[1])] (T:
    integrations/finegrained_fp8.py; DeepSeek-V3's README_WEIGHTS).
    """
    if weight.ndim != 2:
        raise ValueError(f"block-quantized FP8 weights must be 2-D, got {list(weight.shape)}")
    rows, cols = weight.shape
    expect = [-(-rows // block[0]), -(-cols // block[1])]
    if list(scale_inv.shape) != expect:
        raise ValueError(f"weight_scale_inv has shape {list(scale_inv.shape)}, expected {expect} for a "
                         f"{[rows, cols]} weight in {block[0]}x{block[1]} blocks")
    full = np.repeat(np.repeat(scale_inv, block[0], axis=0), block[1], axis=1)[:rows, :cols]
    return weight * full


def decode_tensor(raw, dtype):
    """Converts a little-endian byte buffer of the given safetensors dtype to float64."""
    if dtype == "F8_E4M3":
        return E4M3FN[np.frombuffer(raw, dtype=np.uint8)]
    if dtype == "U8":
        raise ValueError("U8 tensors are raw bytes (MXFP4 blocks or scales); read them with Weights.raw")
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
    """Lazily loads tensors by name, converting each one to float64 on request.

    quant is the "quant" entry of a parsed config (see parse_quantization); without
    it, FP8 weights are dequantized with 128x128 blocks when they have a
    weight_scale_inv and read as plain values otherwise. layers, when given, hides
    every model.layers.{i}.* tensor with i >= layers (DeepSeek-V3's multi-token
    prediction layer, which HF skips: T: models/deepseek_v3/modular_deepseek_v3.py
    DeepseekV3Model._keys_to_ignore_on_load_unexpected).
    """

    def __init__(self, model_dir, quant=None, layers=None):
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
                if layers is not None and tensor.startswith("model.layers."):
                    index_text = tensor.split(".")[2]
                    if index_text.isdigit() and int(index_text) >= layers:
                        continue
                self.where[tensor] = (path, base, info)
        quant = quant or {}
        self.fp8_block = tuple(quant.get("fp8_block", (128, 128)))
        # With quantization_config.quant_method "fp8", every FP8 weight must carry a
        # weight_scale_inv; a missing one is an error rather than a scale of 1.
        self.fp8_needs_scale = quant.get("method") == "fp8"

    def has(self, name):
        return name in self.where

    def _read(self, name, shape):
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
        return raw, info

    def get(self, name, shape=None):
        """Returns the tensor as float64; when shape is given, a different shape is an error.

        The shape check turns a config field that disagrees with the checkpoint (for
        example moe_intermediate_size or a per-head q_norm) into a clear failure
        instead of a silently broadcast result. An FP8 (F8_E4M3) "X.weight" with a
        sibling "X.weight_scale_inv" is returned dequantized block by block.
        """
        raw, info = self._read(name, shape)
        value = decode_tensor(raw, info["dtype"]).reshape(info["shape"])
        scale_name = name + "_scale_inv"
        if name.endswith(".weight") and scale_name in self.where:
            if info["dtype"] != "F8_E4M3":
                raise ValueError(f"tensor {name} has a weight_scale_inv but is {info['dtype']}, not F8_E4M3")
            value = dequantize_fp8_blocks(value, self.get(scale_name), self.fp8_block)
        elif info["dtype"] == "F8_E4M3" and self.fp8_needs_scale:
            raise ValueError(f"FP8 tensor {name} has no {scale_name}, which quantization_config "
                             "quant_method fp8 requires")
        return value

    def raw(self, name, shape=None):
        """Returns a U8 tensor as a uint8 array (MXFP4 blocks and scales)."""
        data, info = self._read(name, shape)
        if info["dtype"] != "U8":
            raise ValueError(f"tensor {name} is {info['dtype']}, expected U8")
        return np.frombuffer(data, dtype=np.uint8).reshape(info["shape"])

    def get_mxfp4(self, prefix, shape):
        """Decodes prefix_blocks and prefix_scales into float64 weights of the given shape.

        shape is [E, R, C] (expert, out, in); the blocks must be [E, R, C/32, 16] and the
        scales [E, R, C/32].
        """
        blocks, scales = self.raw(prefix + "_blocks"), self.raw(prefix + "_scales")
        E, R, C = shape
        if C % 32:
            raise ValueError(f"{prefix}: the input width {C} is not a multiple of the MXFP4 block of 32")
        if list(blocks.shape) != [E, R, C // 32, 16]:
            raise ValueError(f"tensor {prefix}_blocks has shape {list(blocks.shape)}, "
                             f"expected {[E, R, C // 32, 16]}")
        if list(scales.shape) != [E, R, C // 32]:
            raise ValueError(f"tensor {prefix}_scales has shape {list(scales.shape)}, expected "
                             f"{[E, R, C // 32]} to match {prefix}_blocks {list(blocks.shape)}")
        return decode_mxfp4(blocks, scales)


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
# longrope is accepted only for the families listed here (T: modeling_rope_utils.py
# _validate_longrope_rope_parameters; short_mscale and long_mscale are PhiMoE's own
# keys, T: models/phimoe/configuration_phimoe.py).
LONGROPE_KEYS = {"factor", "attention_factor", "short_factor", "long_factor", "short_mscale", "long_mscale",
                 "original_max_position_embeddings"}
LONGROPE_ARCHS = ("PhimoeForCausalLM",)

# gpt-oss without any RoPE field gets YaRN (T: models/gpt_oss/configuration_gpt_oss.py
# GptOssConfig.__post_init__).
GPT_OSS_DEFAULT_ROPE = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                        "truncate": False, "original_max_position_embeddings": 4096}


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
    type_keys = dict(ROPE_TYPE_KEYS)
    if arch in LONGROPE_ARCHS:
        type_keys["longrope"] = LONGROPE_KEYS
    if rtype not in type_keys:
        raise ValueError(f"{field}.rope_type {rtype!r} is not supported by the reference for {arch} "
                         f"(supported: {sorted(type_keys)})")
    unknown = sorted(set(d) - ROPE_COMMON_KEYS - type_keys[rtype])
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
    elif rtype == "longrope":
        # T: modeling_rope_utils.py _compute_longrope_parameters: factor defaults to
        # max_position_embeddings / original_max_position_embeddings, and the default
        # attention factor is sqrt(1 + ln(factor) / ln(original)) (1 when factor <= 1).
        # PhiMoE's short_mscale / long_mscale, when given, replace that factor on the
        # matching side (T: models/phimoe/modular_phimoe.py PhimoeRotaryEmbedding.forward).
        short, long_ = d.get("short_factor"), d.get("long_factor")
        for key, factors in (("short_factor", short), ("long_factor", long_)):
            if not isinstance(factors, list) or len(factors) != head_dim // 2:
                raise ValueError(f"{field}.{key} must be a list of head_dim/2 = {head_dim // 2} numbers")
        factor = d.get("factor")
        factor = float(factor) if factor is not None else max_pos / float(orig)
        attention_factor = d.get("attention_factor")
        if attention_factor is None:
            attention_factor = 1.0 if factor <= 1.0 else \
                math.sqrt(1 + math.log(factor) / math.log(float(orig)))
        rope.update(factor=factor, original_max_pos=float(orig), attention_factor=float(attention_factor),
                    short_factor=[float(v) for v in short], long_factor=[float(v) for v in long_],
                    short_mscale=d.get("short_mscale"), long_mscale=d.get("long_mscale"))
    return rope


def load_config(model_dir):
    """Reads config.json and returns a plain dict with every field the forward pass uses."""
    with open(os.path.join(model_dir, "config.json")) as f:
        raw = json.load(f)
    return parse_config(raw)


def parse_config(raw):
    """Turns a raw config.json dict into the fields the forward pass uses."""
    arch = raw["architectures"][0]
    arch = ARCH_ALIASES.get(arch, arch)
    if arch not in SUPPORTED:
        raise ValueError(f"unsupported architecture {arch}")
    if raw.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {raw['hidden_act']!r} is not supported (only silu)")
    heads = raw["num_attention_heads"]
    layers = raw["num_hidden_layers"]
    hidden = raw["hidden_size"]
    # Qwen3Config declares head_dim = 128 as its default and GptOssConfig 64; DeepSeek
    # sets head_dim to qk_rope_head_dim, the rotary width (T:
    # models/deepseek_v3/configuration_deepseek_v3.py); every other family falls
    # back to hidden_size // num_attention_heads (T: models/llama/modeling_llama.py
    # LlamaAttention, models/qwen3/configuration_qwen3.py).
    if arch == "Qwen3ForCausalLM":
        head_dim = raw.get("head_dim") or 128
    elif arch == "GptOssForCausalLM":
        head_dim = raw.get("head_dim") or 64
    elif arch in DEEPSEEK:
        head_dim = raw.get("qk_rope_head_dim", 64)
    else:
        head_dim = raw.get("head_dim") or hidden // heads
    if arch == "GptOssForCausalLM" and not (raw.get("rope_scaling") or raw.get("rope_parameters")):
        raw = dict(raw, rope_parameters=dict(GPT_OSS_DEFAULT_ROPE))
    eps = raw.get("rms_norm_eps", FAMILY_DEFAULTS[arch].get("rms_norm_eps"))
    if eps is None:
        raise ValueError("rms_norm_eps is required")
    kv_heads = raw.get("num_key_value_heads") or heads
    if arch in ("GptOssForCausalLM", "PhimoeForCausalLM") and "num_key_value_heads" not in raw:
        kv_heads = 8  # GptOssConfig and PhimoeConfig default to 8 key/value heads
    granite = arch == "GraniteMoeForCausalLM"
    cfg = {
        "arch": arch,
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "eps": eps,
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
    # Fields of the newer families; the older families use RMSNorm, no sinks, no MLA
    # and an lm_head without bias.
    cfg.update(norm="rms", sinks=False, mla=None, lm_head_bias=False,
               quant=parse_quantization(raw, arch))
    if arch in NEW_FAMILIES:
        return parse_new_family(raw, cfg)

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
    return finish_moe_fields(cfg)


def finish_moe_fields(cfg):
    """Copies the MoE spec's expert count and top-k to the old single-value fields
    (kept for callers that read them) and checks them and the head counts."""
    moe = cfg["moe"]
    cfg["experts"] = moe["experts"] if moe else None
    cfg["top_k"] = moe["top_k"] if moe else None
    if moe and any(cfg["moe_layers"]) and not 1 <= moe["top_k"] <= moe["experts"]:
        raise ValueError("num_experts_per_tok must be between 1 and the number of experts")
    if cfg["heads"] % cfg["kv_heads"] != 0:
        raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
    return cfg


NEW_FAMILIES = ("GptOssForCausalLM",) + DEEPSEEK + ("PhimoeForCausalLM",)


def parse_quantization(raw, arch):
    """Reads quantization_config: {"method": None | "fp8" | "mxfp4", "fp8_block": (128, 128)}.

    fp8 must use e4m3 weights in 128x128 blocks with a weight_scale_inv per weight
    (DeepSeek-V3's format, T: integrations/finegrained_fp8.py); the reference
    dequantizes the weights and keeps activations in float64. mxfp4 is gpt-oss's
    expert format (T: integrations/mxfp4.py); its modules_to_not_convert are the
    tensors that are not stored as blocks and scales, which the loader sees anyway.
    """
    q = raw.get("quantization_config")
    if not q:
        return {"method": None, "fp8_block": (128, 128)}
    method = q.get("quant_method")
    if method == "fp8":
        block = q.get("weight_block_size")
        if block is None or list(block) != [128, 128]:
            raise ValueError(f"quantization_config.weight_block_size {block} is not supported "
                             "(only [128, 128])")
        if q.get("fmt", "e4m3") != "e4m3":
            raise ValueError(f"quantization_config.fmt {q.get('fmt')!r} is not supported (only e4m3)")
        return {"method": "fp8", "fp8_block": (128, 128)}
    if method == "mxfp4" and arch == "GptOssForCausalLM":
        return {"method": "mxfp4", "fp8_block": (128, 128)}
    raise ValueError(f"quantization_config.quant_method {method!r} is not supported for {arch}")


def parse_new_family(raw, cfg):
    """The attention, layer and MoE fields of gpt-oss, DeepSeek-V2/V3 and PhiMoE."""
    arch, heads = cfg["arch"], cfg["heads"]
    cfg["mlp_bias"] = False
    cfg["qk_norm"] = None
    cfg["clip_qkv"] = None
    if arch == "GptOssForCausalLM":
        parse_gpt_oss(raw, cfg)
    elif arch in DEEPSEEK:
        parse_deepseek(raw, cfg)
    else:
        parse_phimoe(raw, cfg)
    return finish_moe_fields(cfg)


def parse_gpt_oss(raw, cfg):
    """gpt-oss (T: models/gpt_oss/modular_gpt_oss.py, configuration_gpt_oss.py)."""
    layers = cfg["layers"]
    # GptOssAttention: q, k, v and o all carry a bias when attention_bias (default true),
    # and each query head has a learned sink logit (self_attn.sinks).
    cfg["qkv_bias"] = cfg["o_bias"] = bool(raw.get("attention_bias", True))
    cfg["sinks"] = True
    # Layer i uses a window of sliding_window keys iff layer_types[i] is
    # "sliding_attention"; without layer_types, even layers slide (GptOssConfig).
    window = raw.get("sliding_window", 128)
    types = raw.get("layer_types")
    if types is None:
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    if len(types) != layers:
        raise ValueError(f"layer_types has {len(types)} entries but num_hidden_layers is {layers}")
    windows = []
    for i, kind in enumerate(types):
        if kind == "sliding_attention":
            if not window:
                raise ValueError(f"layer_types[{i}] is sliding_attention but sliding_window is {window!r}")
            windows.append(int(window))
        elif kind == "full_attention":
            windows.append(None)
        else:
            raise ValueError(f"layer_types[{i}] {kind!r} is not supported "
                             "(only sliding_attention and full_attention)")
    cfg["windows"] = windows
    # num_experts_per_tok is also spelled experts_per_token in the released configs.
    k1, k2 = raw.get("num_experts_per_tok"), raw.get("experts_per_token")
    if k1 is not None and k2 is not None and k1 != k2:
        raise ValueError(f"num_experts_per_tok {k1} and experts_per_token {k2} disagree")
    top_k = k1 if k1 is not None else (k2 if k2 is not None else 4)
    # GptOssExperts hard-codes alpha = 1.702; a config that asks for another gain is
    # refused rather than ignored. The clamp is read from swiglu_limit (HF's module
    # also hard-codes 7.0, the value of every released config).
    alpha = raw.get("swiglu_alpha", 1.702)
    if float(alpha) != 1.702:
        raise ValueError(f"swiglu_alpha {alpha} is not supported (gpt-oss uses 1.702)")
    cfg["moe"] = {"style": "gpt_oss", "experts": raw.get("num_local_experts", raw.get("num_experts", 128)),
                  "top_k": top_k, "moe_width": raw.get("intermediate_size", 2880),
                  "alpha": 1.702, "limit": float(raw.get("swiglu_limit", 7.0)), "shared": False}
    cfg["moe_layers"] = [True] * layers


def parse_deepseek(raw, cfg):
    """DeepSeek-V2/V3: MLA attention and DeepSeekMoE (T: models/deepseek_v2/modular_deepseek_v2.py,
    models/deepseek_v3/modular_deepseek_v3.py and their configuration files)."""
    v3 = cfg["arch"] == "DeepseekV3ForCausalLM"
    layers, heads = cfg["layers"], cfg["heads"]
    kv = raw.get("num_key_value_heads")
    if kv is not None and kv != heads:
        raise ValueError(f"num_key_value_heads {kv} must equal num_attention_heads {heads} for MLA")
    cfg["kv_heads"] = heads
    bias = bool(raw.get("attention_bias", False))
    # Only q_a_proj, kv_a_proj_with_mqa and o_proj can carry a bias (attention_bias).
    cfg["qkv_bias"] = cfg["o_bias"] = bias
    dn, dr, dv = raw.get("qk_nope_head_dim", 128), raw.get("qk_rope_head_dim", 64), raw.get("v_head_dim", 128)
    if dr % 2:
        raise ValueError(f"qk_rope_head_dim {dr} must be even")
    # The softmax scale is qk_head_dim^-0.5 * m^2 with m = 0.1 * mscale_all_dim *
    # ln(factor) + 1 when the RoPE is scaled and mscale_all_dim is set
    # (T: models/deepseek_v3/modular_deepseek_v3.py DeepseekV3Attention.__init__).
    # HF's DeepseekV2Attention omits m^2 (until PR #47435, per the guide); the original
    # DeepSeek-V2 code applies it, and so does this reference, for V2 as for V3.
    rope = cfg["rope"]
    scale = (dn + dr) ** (-0.5)
    mscale_all_dim = rope.get("mscale_all_dim")
    if rope["type"] != "default" and mscale_all_dim:
        m = yarn_get_mscale(rope["factor"], float(mscale_all_dim))
        scale = scale * m * m
    cfg["mla"] = {"q_lora_rank": raw.get("q_lora_rank", 1536), "kv_lora_rank": raw.get("kv_lora_rank", 512),
                  "nope": dn, "rope": dr, "v": dv, "scale": scale, "bias": bias,
                  # V3 rotates adjacent pairs unless rope_interleave is false; V2 always does.
                  "interleave": bool(raw.get("rope_interleave", True)) if v3 else True}
    cfg["windows"] = [None] * layers
    cfg["dense_width"] = raw.get("intermediate_size", 18432 if v3 else 11008)

    E = raw.get("n_routed_experts", 256 if v3 else 64)
    first_dense = raw.get("first_k_dense_replace", 3 if v3 else 0)
    # HF ignores moe_layer_freq (layer i is sparse iff i >= first_k_dense_replace); the
    # original code also required i % moe_layer_freq == 0, so only 1 is accepted.
    if raw.get("moe_layer_freq", 1) != 1:
        raise ValueError(f"moe_layer_freq {raw['moe_layer_freq']} is not supported (only 1)")
    cfg["moe_layers"] = [bool(E) and i >= first_dense for i in range(layers)]
    top_k = raw.get("num_experts_per_tok", 8 if v3 else None)
    if any(cfg["moe_layers"]) and top_k is None:
        raise ValueError("num_experts_per_tok is required for DeepSeek MoE layers")
    scoring = raw.get("scoring_func", "sigmoid" if v3 else "softmax")
    if scoring != ("sigmoid" if v3 else "softmax"):
        raise ValueError(f"scoring_func {scoring!r} is not supported for {cfg['arch']} "
                         f"(only {'sigmoid' if v3 else 'softmax'})")
    method = raw.get("topk_method", "noaux_tc" if v3 else "greedy")
    allowed = ("noaux_tc",) if v3 else ("greedy", "group_limited_greedy")
    if method not in allowed:
        raise ValueError(f"topk_method {method!r} is not supported for {cfg['arch']} (only {list(allowed)})")
    n_group, topk_group = raw.get("n_group", 8 if v3 else None), raw.get("topk_group", 4 if v3 else None)
    grouped = v3 or method == "group_limited_greedy"
    if grouped and any(cfg["moe_layers"]):
        if not n_group or E % n_group:
            raise ValueError(f"n_group {n_group} must divide n_routed_experts {E}")
        if not topk_group or not 1 <= topk_group <= n_group:
            raise ValueError(f"topk_group {topk_group} must be between 1 and n_group {n_group}")
        if v3 and E // n_group < 2:
            raise ValueError("DeepSeek-V3 routing needs at least 2 experts per group (it sums the top 2)")
        if top_k > topk_group * (E // n_group):
            raise ValueError(f"num_experts_per_tok {top_k} exceeds the {topk_group * (E // n_group)} experts "
                             "of the kept groups")
    n_shared = raw.get("n_shared_experts", 1 if v3 else 2)
    width = raw.get("moe_intermediate_size", 2048 if v3 else 1407)
    cfg["moe"] = {"style": "deepseek_v3" if v3 else "deepseek_v2", "experts": E, "top_k": top_k,
                  "moe_width": width, "method": method, "n_group": n_group, "topk_group": topk_group,
                  "norm_topk": bool(raw.get("norm_topk_prob", v3)),
                  "scaling": float(raw.get("routed_scaling_factor", 2.5 if v3 else 1.0)),
                  "shared": bool(n_shared), "shared_width": width * (n_shared or 0)}


def parse_phimoe(raw, cfg):
    """Phi-3.5-MoE (T: models/phimoe/modular_phimoe.py, configuration_phimoe.py)."""
    layers = cfg["layers"]
    cfg["norm"] = "layer"  # nn.LayerNorm with bias everywhere, eps = rms_norm_eps
    cfg["qkv_bias"] = cfg["o_bias"] = bool(raw.get("attention_bias", False))
    cfg["lm_head_bias"] = bool(raw.get("lm_head_bias", False))
    # PhimoeModel (a MixtralModel) builds a sliding-window mask for every layer when
    # config.sliding_window is set.
    cfg["windows"] = [raw.get("sliding_window")] * layers
    top_k = raw.get("num_experts_per_tok", 2)
    if top_k != 2:
        raise ValueError(f"num_experts_per_tok {top_k} is not supported: "
                         "PhiMoE's sparsemixer picks 2 experts")
    cfg["moe"] = {"style": "phimoe", "experts": raw.get("num_local_experts", 16), "top_k": 2,
                  "moe_width": raw.get("intermediate_size", 6400),
                  "jitter_eps": float(raw.get("router_jitter_noise", 0.01)), "shared": False}
    cfg["moe_layers"] = [True] * layers


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
    and longrope depend on it. The formulas are those of the _compute_*_parameters functions in
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
    if kind == "longrope":
        # The long factors apply once the call's S = max(position) + 1 exceeds the
        # original context, else the short ones: inv[i] = 1 / (ext[i] * theta^(2i/d))
        # (_compute_longrope_parameters). PhiMoE's short/long mscale replace the
        # attention factor on the same side (PhimoeRotaryEmbedding.forward).
        long_ = seq_len is not None and seq_len > rope["original_max_pos"]
        ext = np.asarray(rope["long_factor"] if long_ else rope["short_factor"], dtype=np.float64)
        inv = 1.0 / (ext * theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
        mscale = rope["long_mscale"] if long_ else rope["short_mscale"]
        return inv, float(rope["attention_factor"] if mscale is None else mscale)
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


def apply_rope_interleaved(x, cos, sin):
    """GPT-J style RoPE: rotates the adjacent pairs (x[2i], x[2i+1]) of x [..., T, d].

    cos and sin are the usual tables [T, d] in the layout cat(freqs, freqs); pair i
    turns by the angle of frequency i. This is DeepSeek's rotation
    (T: models/deepseek_v2/modular_deepseek_v2.py apply_rotary_emb multiplies the
    complex pairs by freqs_cis; models/deepseek_v3/modular_deepseek_v3.py
    apply_rotary_pos_emb_interleave de-interleaves and uses rotate_half, which gives
    the same pairs in another order, so the same dot products). The result keeps the
    interleaved layout.
    """
    half = x.shape[-1] // 2
    c, s = cos[..., :half], sin[..., :half]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty(np.broadcast_shapes(x.shape, cos.shape), dtype=np.float64)
    out[..., 0::2] = even * c - odd * s
    out[..., 1::2] = odd * c + even * s
    return out


# ----------------------------------------------------------------------------
# Building blocks.
# ----------------------------------------------------------------------------

def rms_norm(x, weight, eps):
    """Scales each row of x by 1/sqrt(mean(x^2) + eps), then by the weight."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def layer_norm(x, weight, bias, eps):
    """nn.LayerNorm: (x - mean) / sqrt(var + eps) * weight + bias, var the biased variance."""
    centered = x - np.mean(x, axis=-1, keepdims=True)
    return centered / np.sqrt(np.mean(centered * centered, axis=-1, keepdims=True) + eps) * weight + bias


def block_norm(x, W, prefix, cfg):
    """The norm stored under prefix: RMSNorm (prefix.weight) or, for PhiMoE, LayerNorm
    (prefix.weight and prefix.bias)."""
    if cfg.get("norm", "rms") == "layer":
        D = cfg["hidden"]
        return layer_norm(x, W.get(prefix + ".weight", [D]), W.get(prefix + ".bias", [D]), cfg["eps"])
    return rms_norm(x, W.get(prefix + ".weight"), cfg["eps"])


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


def stable_sigmoid(x):
    """1 / (1 + exp(-x)) without overflow for large negative x (used by the newer families)."""
    x = np.asarray(x, dtype=np.float64)
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


def sink_softmax(scores, sinks):
    """gpt-oss attention weights: a softmax over each row of scores [H, Tq, Tk] with
    head h's sink logit as one more column, which is then dropped, so a row sums to
    less than 1 (T: models/gpt_oss/modular_gpt_oss.py eager_attention_forward). Equal
    to exp(s_j) / (sum_k exp(s_k) + exp(sink_h))."""
    H, Tq, _ = scores.shape
    column = np.broadcast_to(np.asarray(sinks, dtype=np.float64)[:, None, None], (H, Tq, 1))
    return softmax(np.concatenate([scores, column], axis=-1))[..., :-1]


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


def round_to_cache(x, kind):
    """x as a KV cache of element type `kind` stores it: "f32" rounds to float32, "f16"
    to IEEE half after saturating at +-65504 (epwa's rule: no infinities), "bf16" to
    bfloat16 by round-to-nearest-even on the float32 bits. Returns float64."""
    x32 = np.asarray(x, dtype=np.float32)
    if kind == "f32":
        return x32.astype(np.float64)
    if kind == "f16":
        return np.clip(x32, -65504.0, 65504.0).astype(np.float16).astype(np.float64)
    if kind == "bf16":
        bits = x32.view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return rounded.astype(np.uint32).view(np.float32).astype(np.float64)
    raise ValueError(f"unknown KV cache type {kind!r} (f32, f16 or bf16)")


def extend_cache(cache, k, v):
    """Appends this call's keys and values [heads, T, d] to the layer's cache (when one is
    kept) and returns all of them with the number of earlier positions."""
    past = 0
    if cache is not None:
        if cache.get("k") is not None:
            past = cache["k"].shape[1]
            k = np.concatenate([cache["k"], k], axis=1)
            v = np.concatenate([cache["v"], v], axis=1)
        cache["k"], cache["v"] = k, v
    return k, v, past


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
    if cfg.get("kv_cache", "f32") != "f32":
        # A 16-bit KV cache rounds what it stores: the rotated keys and the values.
        k, v = round_to_cache(k, cfg["kv_cache"]), round_to_cache(v, cfg["kv_cache"])
    k, v, past = extend_cache(cache, k, v)
    # Query head h reads KV head h // group; np.repeat lays the heads out that way.
    group = H // KV
    k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
    scores = q @ k.transpose(0, 2, 1)
    # The usual scale is head_dim^-0.5 (written as a division to keep the results of
    # the original reference bit for bit); Granite replaces it by attention_multiplier.
    scale = cfg.get("attention_scale")
    scores = scores / np.sqrt(hd) if scale is None else scores * scale
    scores = np.where(attention_mask(T, window, past), scores, -np.inf)
    if cfg.get("sinks"):
        out = sink_softmax(scores, W.get(prefix + ".sinks", [H])) @ v
    else:
        out = softmax(scores) @ v  # [H, T, hd]
    out = out.transpose(1, 0, 2).reshape(T, H * hd)
    return linear(out, W, prefix + ".o_proj", cfg["o_bias"])


# The latent norms of MLA (q_a_layernorm, kv_a_layernorm) are built without an eps
# argument, so they use the RMSNorm default 1e-6, not rms_norm_eps
# (T: models/deepseek_v3/modular_deepseek_v3.py DeepseekV3Attention.__init__,
# models/llama/modeling_llama.py LlamaRMSNorm).
MLA_LATENT_EPS = 1e-6


def mla_attention(x, W, prefix, cfg, cos, sin, window=None, cache=None):
    """DeepSeek multi-head latent attention of x [T, D], in HF's naive form.

    q = q_proj(x), or q_b_proj(RMSNorm(q_a_proj(x))) with q_lora_rank; per head it
    splits into q_nope (dn) and q_pe (dr). kv_a_proj_with_mqa(x) gives the latent c
    (kv_lora_rank) and one k_pe (dr) shared by every head; kv_b_proj(RMSNorm(c)) gives
    per head k_nope (dn rows) then v (dv rows). Only q_pe and k_pe rotate. Keys are
    [k_nope | k_pe], queries [q_nope | q_pe]; the scale is cfg["mla"]["scale"]. The
    cache holds those full keys and values (T: models/deepseek_v3/modular_deepseek_v3.py
    DeepseekV3Attention.forward).
    """
    m = cfg["mla"]
    T, D, H = x.shape[0], cfg["hidden"], cfg["heads"]
    dn, dr, dv, r, rq = m["nope"], m["rope"], m["v"], m["kv_lora_rank"], m["q_lora_rank"]
    dq = dn + dr
    if rq is None:
        q = x @ W.get(prefix + ".q_proj.weight", [H * dq, D]).T
    else:
        qa = x @ W.get(prefix + ".q_a_proj.weight", [rq, D]).T
        if m["bias"]:
            qa = qa + W.get(prefix + ".q_a_proj.bias", [rq])
        qa = rms_norm(qa, W.get(prefix + ".q_a_layernorm.weight", [rq]), MLA_LATENT_EPS)
        q = qa @ W.get(prefix + ".q_b_proj.weight", [H * dq, rq]).T
    q = q.reshape(T, H, dq).transpose(1, 0, 2)  # [H, T, dq]
    ckv = x @ W.get(prefix + ".kv_a_proj_with_mqa.weight", [r + dr, D]).T
    if m["bias"]:
        ckv = ckv + W.get(prefix + ".kv_a_proj_with_mqa.bias", [r + dr])
    c, k_pe = ckv[:, :r], ckv[:, r:]
    c = rms_norm(c, W.get(prefix + ".kv_a_layernorm.weight", [r]), MLA_LATENT_EPS)
    kind = cfg.get("kv_cache", "f32")
    if kind != "f32":
        # A 16-bit cache of the compressed form rounds the normalised latent (and,
        # below, the rotated shared key) that the keys and values are made from.
        c = round_to_cache(c, kind)
    kv = c @ W.get(prefix + ".kv_b_proj.weight", [H * (dn + dv), r]).T
    kv = kv.reshape(T, H, dn + dv).transpose(1, 0, 2)  # [H, T, dn + dv]
    rotate = apply_rope_interleaved if m["interleave"] else apply_rope
    q_pe = rotate(q[..., dn:], cos, sin)
    k_pe = rotate(k_pe[None], cos, sin)  # [1, T, dr], shared by the heads
    if kind != "f32":
        k_pe = round_to_cache(k_pe, kind)
    q = np.concatenate([q[..., :dn], q_pe], axis=-1)
    k = np.concatenate([kv[..., :dn], np.broadcast_to(k_pe, (H, T, dr))], axis=-1)
    v = kv[..., dn:]
    k, v, past = extend_cache(cache, k, v)
    scores = (q @ k.transpose(0, 2, 1)) * m["scale"]
    scores = np.where(attention_mask(T, window, past), scores, -np.inf)
    out = (softmax(scores) @ v).transpose(1, 0, 2).reshape(T, H * dv)
    y = out @ W.get(prefix + ".o_proj.weight", [D, H * dv]).T
    if m["bias"]:
        y = y + W.get(prefix + ".o_proj.bias", [D])
    return y


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


def route_sparsemixer(router_logits, jitter_eps):
    """PhiMoE's sparsemixer, inference branch: returns ([i1, i2], [w1, w2]).

    i1 = argmax s. Expert j stays a candidate iff (m - s_j) / max(|s_j|, m) <= 2 eps,
    with m = s[i1]; w1 is the softmax over the candidates, taken at i1. Then s[i1] is
    set to -inf, i2 and m2 are the new argmax and max, the same test runs against m2
    (on the original s_j), and w2 is the softmax over the second candidates at i2.
    The weights are not renormalised, so each is 1 when no other expert is within
    about 2 eps of its max (T: models/phimoe/modular_phimoe.py sparsemixer). Ties go
    to the lower index (np.argmax returns the first maximum).
    """
    s = np.asarray(router_logits, dtype=np.float64)

    def pick(scores):
        i = int(np.argmax(scores))
        top = scores[i]
        with np.errstate(divide="ignore", invalid="ignore"):
            far = (top - s) / np.maximum(np.abs(s), top) > 2 * jitter_eps
        return i, float(softmax(np.where(far, -np.inf, scores))[i])

    i1, w1 = pick(s)
    rest = s.copy()
    rest[i1] = -np.inf
    i2, w2 = pick(rest)
    return np.array([i1, i2]), np.array([w1, w2])


def route_deepseek_v2(router_logits, spec):
    """DeepSeek-V2 routing for one token: returns (expert ids, weights).

    p = softmax(logits). greedy: the top-k of p. group_limited_greedy: each of the
    n_group groups of consecutive experts scores its max p, the topk_group best groups
    are kept and every other expert's p becomes 0, then the top-k. The weights are the
    chosen p times routed_scaling_factor (T: models/deepseek_v2/modular_deepseek_v2.py
    DeepseekV2Moe.route_tokens_to_experts); if norm_topk_prob and k > 1 they are
    instead divided by their sum + 1e-20, as in DeepSeek's original MoEGate (HF ignores
    norm_topk_prob for V2; every release has it false). Ties go to the lower index.
    """
    p = softmax(np.asarray(router_logits, dtype=np.float64))
    if spec["method"] == "group_limited_greedy":
        groups = p.reshape(spec["n_group"], -1)
        kept = np.argsort(-groups.max(axis=1), kind="stable")[:spec["topk_group"]]
        keep = np.zeros(spec["n_group"], dtype=bool)
        keep[kept] = True
        p = np.where(np.repeat(keep, groups.shape[1]), p, 0.0)
    experts = np.argsort(-p, kind="stable")[:spec["top_k"]]
    weights = p[experts]
    if spec["top_k"] > 1 and spec["norm_topk"]:
        weights = weights / (np.sum(weights) + 1e-20)
    else:
        weights = weights * spec["scaling"]
    return experts, weights


def route_deepseek_v3(router_logits, correction_bias, spec):
    """DeepSeek-V3 routing for one token: returns (expert ids, weights).

    s = sigmoid(logits); the selection uses b = s + e_score_correction_bias. Each of
    the n_group groups scores the sum of its two largest b, the topk_group best groups
    are kept, and the top-k of b over the kept experts are chosen. The weights are the
    UNBIASED s of the chosen experts, divided by their sum + 1e-20 if norm_topk_prob,
    times routed_scaling_factor (T: models/deepseek_v3/modular_deepseek_v3.py
    DeepseekV3MoE.route_tokens_to_experts). The experts of dropped groups get -inf
    here, as in DeepSeek's own inference code and vLLM; HF fills them with 0.0, which
    only differs when a kept expert's b is negative. Ties go to the lower index.
    """
    s = stable_sigmoid(np.asarray(router_logits, dtype=np.float64))
    b = s + np.asarray(correction_bias, dtype=np.float64)
    groups = b.reshape(spec["n_group"], -1)
    top2 = np.sort(groups, axis=1)[:, -2:]
    group_scores = top2[:, 1] + top2[:, 0]
    kept = np.argsort(-group_scores, kind="stable")[:spec["topk_group"]]
    keep = np.zeros(spec["n_group"], dtype=bool)
    keep[kept] = True
    choice = np.where(np.repeat(keep, groups.shape[1]), b, -np.inf)
    experts = np.argsort(-choice, kind="stable")[:spec["top_k"]]
    weights = s[experts]
    if spec["norm_topk"]:
        weights = weights / (np.sum(weights) + 1e-20)
    return experts, weights * spec["scaling"]


def gpt_oss_experts_fn(W, base, cfg):
    """The expert function e, x -> o_e(x) of a gpt-oss layer (T: models/gpt_oss/modular_gpt_oss.py
    GptOssExperts). gate_up rows interleave gate (even) and up (odd); the gate is
    clamped from above only, up on both sides; h = (up + 1) * gate * sigmoid(alpha *
    gate); both projections add their per-expert bias."""
    spec = cfg["moe"]
    E, D, I = spec["experts"], cfg["hidden"], spec["moe_width"]
    w_gu = W.get_mxfp4(base + ".experts.gate_up_proj", [E, 2 * I, D])
    b_gu = W.get(base + ".experts.gate_up_proj_bias", [E, 2 * I])
    w_dn = W.get_mxfp4(base + ".experts.down_proj", [E, D, I])
    b_dn = W.get(base + ".experts.down_proj_bias", [E, D])
    alpha, limit = spec["alpha"], spec["limit"]

    def expert(e, xt):
        gu = xt @ w_gu[e].T + b_gu[e]
        gate = np.minimum(gu[..., 0::2], limit)
        up = np.clip(gu[..., 1::2], -limit, limit)
        h = (up + 1) * (gate * stable_sigmoid(alpha * gate))
        return h @ w_dn[e].T + b_dn[e]
    return expert


def swiglu_fn(W, prefix, names, width, D):
    """x -> down(silu(gate(x)) * up(x)) for the three linears prefix.{names}, shape-checked."""
    g = W.get(f"{prefix}.{names[0]}.weight", [width, D])
    u = W.get(f"{prefix}.{names[1]}.weight", [width, D])
    d = W.get(f"{prefix}.{names[2]}.weight", [D, width])
    return lambda xt: (silu(xt @ g.T) * (xt @ u.T)) @ d.T


def moe_new_family(x, W, layer_prefix, cfg):
    """The MoE blocks of gpt-oss, DeepSeek-V2/V3 and PhiMoE for x [T, D].

    router_logits in the record: gpt-oss x.Wr^T + br (with the router bias); DeepSeek
    and PhiMoE the raw x.Wg^T (before softmax or sigmoid, without the correction
    bias). weights are the multipliers of the expert outputs (DeepSeek's include
    routed_scaling_factor). Shared experts are not part of the record.
    """
    spec = cfg["moe"]
    style, E, D = spec["style"], spec["experts"], cfg["hidden"]
    if style == "gpt_oss":
        base = layer_prefix + ".mlp"
        # GptOssTopKRouter: linear with bias, top-k of the logits, softmax over those k.
        logits = x @ W.get(base + ".router.weight", [E, D]).T + W.get(base + ".router.bias", [E])
        expert = gpt_oss_experts_fn(W, base, cfg)

        def route_one(t):
            return route_topk_softmax(logits[t], spec["top_k"])
    elif style in ("deepseek_v2", "deepseek_v3"):
        base = layer_prefix + ".mlp"
        logits = x @ W.get(base + ".gate.weight", [E, D]).T
        cache = {}

        def expert(e, xt):
            if e not in cache:
                cache[e] = swiglu_fn(W, f"{base}.experts.{e}", ("gate_proj", "up_proj", "down_proj"),
                                     spec["moe_width"], D)
            return cache[e](xt)
        if style == "deepseek_v3":
            bias = W.get(base + ".gate.e_score_correction_bias", [E])

            def route_one(t):
                return route_deepseek_v3(logits[t], bias, spec)
        else:
            def route_one(t):
                return route_deepseek_v2(logits[t], spec)
    elif style == "phimoe":
        base = layer_prefix + ".block_sparse_moe"
        logits = x @ W.get(base + ".gate.weight", [E, D]).T
        cache = {}

        def expert(e, xt):
            if e not in cache:
                cache[e] = swiglu_fn(W, f"{base}.experts.{e}", ("w1", "w3", "w2"), spec["moe_width"], D)
            return cache[e](xt)

        def route_one(t):
            return route_sparsemixer(logits[t], spec["jitter_eps"])
    else:
        raise ValueError(f"unknown MoE style {style}")
    out = np.zeros_like(x)
    positions = []
    for t in range(x.shape[0]):
        experts, weights = route_one(t)
        for e, w in zip(experts, weights):
            out[t] += w * expert(int(e), x[t:t + 1])[0]
        positions.append({"router_logits": logits[t].tolist(),
                          "experts": [int(e) for e in experts],
                          "weights": [float(w) for w in weights]})
    if spec["shared"]:
        # DeepSeek's shared experts: one SwiGLU MLP of moe_intermediate_size *
        # n_shared_experts, added unweighted to every token.
        shared = swiglu_fn(W, base + ".shared_experts", ("gate_proj", "up_proj", "down_proj"),
                           spec["shared_width"], D)
        out = out + shared(x)
    return out, positions


def moe(x, W, layer_prefix, cfg):
    """Sparse mixture of experts of x [T, D] for layer_prefix (model.layers.i).

    Returns the output and the per-token routing records.
    """
    spec = cfg["moe"]
    style, E, D = spec["style"], spec["experts"], cfg["hidden"]
    if style in ("gpt_oss", "deepseek_v2", "deepseek_v3", "phimoe"):
        return moe_new_family(x, W, layer_prefix, cfg)
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


def forward(model_dir, ids, prefill=None, kv_cache="f32"):
    """Runs the causal forward pass over ids (positions 0..T-1).

    With prefill None (or >= T) all tokens go through one forward call. Otherwise
    positions [0, prefill) are one call and each later position is its own call that
    attends to the cached keys and values, like HF generation with a DynamicCache.
    Each call computes its RoPE tables for S = its last position + 1; only dynamic
    NTK and longrope depend on S (T: modeling_rope_utils.py dynamic_rope_update
    recomputes the frequencies when S grows past max_position_embeddings and returns
    to the original ones below it; S only grows here, so the frequencies of a call are
    those of its own S; longrope switches to its long factors once S exceeds
    original_max_position_embeddings), and cached keys keep the rotation they were
    given. (HF's PhiMoE generate() instead drops the cache once when it crosses that
    length and recomputes everything with the long factors; this reference does not.)

    Returns (logits float64 [T, V], routing list with one entry per MoE layer).
    """
    cfg = load_config(model_dir)
    cfg["kv_cache"] = kv_cache
    # Tensors of layers >= num_hidden_layers (DeepSeek-V3's MTP layer) are not read.
    W = Weights(model_dir, quant=cfg["quant"], layers=cfg["layers"])
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or len(ids) == 0 or ids.min() < 0 or ids.max() >= cfg["vocab"]:
        raise ValueError("ids must be a non-empty list of token ids below vocab_size")
    embed = W.get("model.embed_tokens.weight")
    # A tied model reuses the embedding matrix as the output projection.
    if not cfg["tied"] and not W.has("lm_head.weight"):
        raise ValueError("lm_head.weight is missing and tie_word_embeddings is false")
    head = embed if cfg["tied"] else W.get("lm_head.weight")
    # PhiMoE's lm_head has a bias when lm_head_bias (T: models/phimoe/modular_phimoe.py).
    head_bias = W.get("lm_head.bias", [cfg["vocab"]]) if cfg["lm_head_bias"] else None
    attend = mla_attention if cfg["mla"] else attention
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
            h = block_norm(x, W, p + ".input_layernorm", cfg)
            x = x + attend(h, W, p + ".self_attn", cfg, cos, sin, cfg["windows"][i], caches[i]) * rm
            h = block_norm(x, W, p + ".post_attention_layernorm", cfg)
            if cfg["moe_layers"][i]:
                y, positions = moe(h, W, p, cfg)
                routing[i].extend(positions)
            elif cfg["mla"]:
                # DeepSeek's dense layers (i < first_k_dense_replace): intermediate_size.
                y = swiglu_fn(W, p + ".mlp", ("gate_proj", "up_proj", "down_proj"), cfg["dense_width"],
                              cfg["hidden"])(h)
            else:
                y = swiglu(h, W, p + ".mlp.gate_proj", p + ".mlp.up_proj", p + ".mlp.down_proj",
                           cfg["mlp_bias"])
            x = x + y * rm
        x = block_norm(x, W, "model.norm", cfg)
        out = x @ head.T / cfg["logits_scaling"]
        logits.append(out if head_bias is None else out + head_bias)
    return np.concatenate(logits, axis=0), [{"layer": i, "positions": routing[i]} for i in sorted(routing)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--ids", required=True, help="comma-separated token ids, e.g. 1,2,3")
    ap.add_argument("--prefill", type=int, default=None,
                    help="compute positions [0, P) in one forward call and each later position "
                         "in its own call with a KV cache (default: all tokens in one call)")
    ap.add_argument("--kv-cache", default="f32", choices=["f32", "f16", "bf16"],
                    help="round the cached keys and values as a KV cache of this element type "
                         "stores them (epwa --kv-cache; default f32: no rounding)")
    ap.add_argument("--logits-out", help="write float32 logits [T, V] with numpy.save")
    ap.add_argument("--routing-out", help="write the MoE routing as JSON")
    args = ap.parse_args(argv)
    ids = [int(s) for s in args.ids.split(",") if s.strip()]
    logits, routing = forward(args.model_dir, ids, prefill=args.prefill, kv_cache=args.kv_cache)
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
