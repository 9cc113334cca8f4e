#!/usr/bin/python3
"""Independent IRSH (EPW-A router hash, versions 1 and 2) of an MoE model folder with a single
model.safetensors: hashlib + NumPy, reading the file by hand (no epwa code). Used to make the test
vectors in tests/router_hash_test.cc.

IRSH v1 (docs/watermark.md) covers the MoE layers only, in model order: the header counts them,
and each router is hashed under its model layer index. Which layers are MoE and where the router
lives follow the Hugging Face modeling code of each family (written here from transformers, not
from epwa).

Version 2 is used by families whose expert selection also depends on a router bias
(gpt-oss: mlp.router.bias, added to the logits before the top-k in transformers'
GptOssTopKRouter): the tag "EPW-A IRSH v2", and after each layer's router weights a u32 of
flags (bit 0: a router bias follows) and the bias as float32.

  tools/irsh_reference.py models/tiny-moe
"""
import hashlib
import json
import struct
import sys

import numpy as np


def moe_layers_and_router(config):
    """The MoE layer indices, the per-layer router tensor name and the router bias name
    (None when the family has none) of a config."""
    arch = config["architectures"][0]
    layers = config["num_hidden_layers"]
    if arch == "GptOssForCausalLM":
        # GptOssDecoderLayer: every layer is MoE; GptOssTopKRouter is a Linear with bias.
        return list(range(layers)), "mlp.router.weight", "mlp.router.bias"
    if arch in ("PhimoeForCausalLM", "PhiMoEForCausalLM"):
        return list(range(layers)), "block_sparse_moe.gate.weight", None
    if arch in ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM"):
        # DeepseekV2/V3DecoderLayer: MoE from first_k_dense_replace on. V3's gate selects
        # by sigmoid + e_score_correction_bias, so the bias is hashed (IRSH v2, flag bit 1).
        first = config.get("first_k_dense_replace", 0)
        bias = "mlp.gate.e_score_correction_bias" if arch == "DeepseekV3ForCausalLM" else None
        return list(range(first, layers)), "mlp.gate.weight", bias
    if arch == "MixtralForCausalLM":
        return list(range(layers)), "block_sparse_moe.gate.weight", None
    if arch == "GraniteMoeForCausalLM":
        return list(range(layers)), "block_sparse_moe.router.layer.weight", None
    if arch == "OlmoeForCausalLM":
        return list(range(layers)), "mlp.gate.weight", None
    if arch in ("Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"):
        # Qwen2MoeDecoderLayer: sparse iff not in mlp_only_layers, num_experts > 0 and
        # (layer + 1) % decoder_sparse_step == 0.
        step = config.get("decoder_sparse_step", 1)
        dense = set(config.get("mlp_only_layers") or [])
        return [l for l in range(layers) if l not in dense and (l + 1) % step == 0], "mlp.gate.weight", None
    raise SystemExit(f"{arch} has no MoE routers")


def as_f32(raw, dtype):
    if dtype == "BF16":
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view("<f4")
    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").astype("<f4")
    if dtype == "F32":
        return np.frombuffer(raw, dtype="<f4")
    raise SystemExit(f"unexpected dtype {dtype}")


def main():
    folder = sys.argv[1]
    data = open(f"{folder}/model.safetensors", "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    config = json.load(open(f"{folder}/config.json"))
    moe_layers, router, bias = moe_layers_and_router(config)

    def tensor(name):
        t = header[name]
        b, e = t["data_offsets"]
        return as_f32(data[base + b:base + e], t["dtype"]), t["shape"]

    m = hashlib.sha256()
    m.update((b"EPW-A IRSH v2" if bias else b"EPW-A IRSH v1") + b"\0" * 3)
    m.update(struct.pack("<I", len(moe_layers)))
    for l in moe_layers:
        f, shape = tensor(f"model.layers.{l}.{router}")
        m.update(struct.pack("<III", l, *shape))
        m.update(f.astype("<f4").tobytes())
        if bias:
            b, _ = tensor(f"model.layers.{l}.{bias}")
            m.update(struct.pack("<I", 2 if "correction" in bias else 1))
            m.update(b.astype("<f4").tobytes())
    print(m.hexdigest())


if __name__ == "__main__":
    main()
