#!/usr/bin/python3
"""Independent IRSH (EPW-A router hash, version 1) of an MoE model folder with a single
model.safetensors: hashlib + NumPy, reading the file by hand (no epwa code). Used to make the test
vectors in tests/router_hash_test.cc.

IRSH v1 (docs/watermark.md) covers the MoE layers only, in model order: the header counts them,
and each router is hashed under its model layer index. Which layers are MoE and where the router
lives follow the Hugging Face modeling code of each family (written here from transformers, not
from epwa).

  tools/irsh_reference.py models/tiny-moe
"""
import hashlib
import json
import struct
import sys

import numpy as np


def moe_layers_and_router(config):
    """The MoE layer indices and the per-layer router tensor name of a config."""
    arch = config["architectures"][0]
    layers = config["num_hidden_layers"]
    if arch == "MixtralForCausalLM":
        return list(range(layers)), "block_sparse_moe.gate.weight"
    if arch == "GraniteMoeForCausalLM":
        return list(range(layers)), "block_sparse_moe.router.layer.weight"
    if arch == "OlmoeForCausalLM":
        return list(range(layers)), "mlp.gate.weight"
    if arch in ("Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"):
        # Qwen2MoeDecoderLayer: sparse iff not in mlp_only_layers, num_experts > 0 and
        # (layer + 1) % decoder_sparse_step == 0.
        step = config.get("decoder_sparse_step", 1)
        dense = set(config.get("mlp_only_layers") or [])
        return [l for l in range(layers) if l not in dense and (l + 1) % step == 0], "mlp.gate.weight"
    raise SystemExit(f"{arch} has no MoE routers")


def main():
    folder = sys.argv[1]
    data = open(f"{folder}/model.safetensors", "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    config = json.load(open(f"{folder}/config.json"))
    moe_layers, router = moe_layers_and_router(config)
    m = hashlib.sha256()
    m.update(b"EPW-A IRSH v1" + b"\0" * 3)
    m.update(struct.pack("<I", len(moe_layers)))
    for l in moe_layers:
        t = header[f"model.layers.{l}.{router}"]
        b, e = t["data_offsets"]
        raw = data[base + b:base + e]
        if t["dtype"] == "BF16":
            f = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view("<f4")
        elif t["dtype"] == "F16":
            f = np.frombuffer(raw, dtype="<f2").astype("<f4")
        else:
            f = np.frombuffer(raw, dtype="<f4")
        m.update(struct.pack("<III", l, *t["shape"]))
        m.update(f.astype("<f4").tobytes())
    print(m.hexdigest())


if __name__ == "__main__":
    main()
