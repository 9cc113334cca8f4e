#!/usr/bin/python3
"""Independent IRSH (EPW-A router hash, version 1) of a Mixtral-layout model folder with a single
model.safetensors: hashlib + NumPy, reading the file by hand (no epwa code). Used to make the test
vector in tests/router_hash_test.cc.

  tools/irsh_reference.py models/tiny-moe
"""
import hashlib
import json
import struct
import sys

import numpy as np


def main():
    folder = sys.argv[1]
    data = open(f"{folder}/model.safetensors", "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    layers = json.load(open(f"{folder}/config.json"))["num_hidden_layers"]
    m = hashlib.sha256()
    m.update(b"EPW-A IRSH v1" + b"\0" * 3)
    m.update(struct.pack("<I", layers))
    for l in range(layers):
        t = header[f"model.layers.{l}.block_sparse_moe.gate.weight"]
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
