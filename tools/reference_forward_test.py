"""Unit tests for tools/reference_forward.py.

Run from the repository root with:
  python3 -m unittest tools/reference_forward_test.py
"""
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_forward as rf  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_forward.py")


# ----------------------------------------------------------------------------
# Helpers that write tiny Hugging Face model folders.
# ----------------------------------------------------------------------------

def to_bf16_exact(a):
    """Truncates float32 values to the nearest-below bfloat16 so both dtypes hold the same number."""
    bits = np.asarray(a, dtype=np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
    return bits.view(np.float32)


def write_safetensors(path, tensors, dtype):
    """Writes {name: float32 array} as a safetensors file with the given dtype."""
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        if dtype == "F32":
            raw = a.astype("<f4").tobytes()
        elif dtype == "F16":
            raw = a.astype("<f2").tobytes()
        elif dtype == "BF16":
            raw = (a.view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
            raise ValueError(dtype)
        header[name] = {"dtype": dtype, "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # The format pads the header to 8 bytes.
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def make_model(folder, arch="MixtralForCausalLM", dtype="F32", layers=2, D=16, H=4, KV=2,
               F=24, V=32, E=4, top_k=2, tied=False, sharded=False, seed=0, **extra):
    """Writes a random tiny model of the given architecture into folder and returns its tensors."""
    rng = np.random.default_rng(seed)

    def rand(*shape, scale=0.3):
        return to_bf16_exact(rng.standard_normal(shape) * scale)

    hd = D // H
    t = {"model.embed_tokens.weight": rand(V, D, scale=1.0),
         "model.norm.weight": to_bf16_exact(1.0 + rand(D, scale=0.1))}
    for i in range(layers):
        p = f"model.layers.{i}"
        t[p + ".input_layernorm.weight"] = to_bf16_exact(1.0 + rand(D, scale=0.1))
        t[p + ".post_attention_layernorm.weight"] = to_bf16_exact(1.0 + rand(D, scale=0.1))
        t[p + ".self_attn.q_proj.weight"] = rand(H * hd, D)
        t[p + ".self_attn.k_proj.weight"] = rand(KV * hd, D)
        t[p + ".self_attn.v_proj.weight"] = rand(KV * hd, D)
        t[p + ".self_attn.o_proj.weight"] = rand(D, H * hd)
        if arch == "Qwen2ForCausalLM":
            for n in ("q", "k", "v"):
                t[p + f".self_attn.{n}_proj.bias"] = rand(t[p + f".self_attn.{n}_proj.weight"].shape[0])
        if arch == "MixtralForCausalLM":
            t[p + ".block_sparse_moe.gate.weight"] = rand(E, D, scale=1.0)
            for e in range(E):
                q = f"{p}.block_sparse_moe.experts.{e}"
                t[q + ".w1.weight"], t[q + ".w3.weight"], t[q + ".w2.weight"] = \
                    rand(F, D), rand(F, D), rand(D, F)
        else:
            t[p + ".mlp.gate_proj.weight"], t[p + ".mlp.up_proj.weight"] = rand(F, D), rand(F, D)
            t[p + ".mlp.down_proj.weight"] = rand(D, F)
    if not tied:
        t["lm_head.weight"] = rand(V, D)
    cfg = {"architectures": [arch], "hidden_size": D, "intermediate_size": F,
           "num_hidden_layers": layers, "num_attention_heads": H, "num_key_value_heads": KV,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": tied,
           "vocab_size": V, "rope_scaling": None}
    if arch == "MixtralForCausalLM":
        cfg.update(num_local_experts=E, num_experts_per_tok=top_k)
    cfg.update(extra)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    if sharded:
        names = sorted(t)
        parts = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
                 "model-00002-of-00002.safetensors": names[len(names) // 2:]}
        weight_map = {}
        for fname, group in parts.items():
            write_safetensors(os.path.join(folder, fname), {n: t[n] for n in group}, dtype)
            weight_map.update({n: fname for n in group})
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    else:
        write_safetensors(os.path.join(folder, "model.safetensors"), t, dtype)
    return t


class Tmp(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def dir(self, name):
        return os.path.join(self.tmp, name)


# ----------------------------------------------------------------------------
# Component tests against hand-computed values.
# ----------------------------------------------------------------------------

class ComponentTest(unittest.TestCase):
    def test_rms_norm_known_vector(self):
        # mean([3^2, 4^2]) = 12.5, so the scale is 1/sqrt(12.5).
        out = rf.rms_norm(np.array([3.0, 4.0]), np.array([1.0, 2.0]), 0.0)
        np.testing.assert_allclose(out, [3 / math.sqrt(12.5), 8 / math.sqrt(12.5)], rtol=1e-15)
        # A constant vector of 2s has RMS 2, so the output is the weight itself.
        out = rf.rms_norm(np.full(4, 2.0), np.array([1.0, 2.0, 3.0, 4.0]), 0.0)
        np.testing.assert_allclose(out, [1, 2, 3, 4], rtol=1e-15)
        # eps enters under the square root: [1, 1] with eps 3 gives 1/2.
        np.testing.assert_allclose(rf.rms_norm(np.ones(2), np.ones(2), 3.0), [0.5, 0.5])

    def test_rotate_half(self):
        np.testing.assert_array_equal(rf.rotate_half(np.array([1.0, 2.0, 3.0, 4.0])), [-3, -4, 1, 2])

    def test_rope_tables_and_rotation(self):
        # head_dim 4, theta 100: inv_freq = [1, 1/10]; tables are cat(freqs, freqs).
        cos, sin = rf.rope_cos_sin([0, 2], 4, 100.0)
        np.testing.assert_allclose(cos[0], [1, 1, 1, 1])
        np.testing.assert_allclose(sin[1], np.sin([2, 0.2, 2, 0.2]), rtol=1e-15)
        # Position 0 is the identity; elsewhere pairs (x[i], x[i + half]) rotate by the angle.
        x = np.array([[[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]]])
        y = rf.apply_rope(x, cos, sin)
        np.testing.assert_allclose(y[0, 0], x[0, 0])
        a, b = 2.0, 0.2
        expect = [1 * math.cos(a) - 3 * math.sin(a), 2 * math.cos(b) - 4 * math.sin(b),
                  3 * math.cos(a) + 1 * math.sin(a), 4 * math.cos(b) + 2 * math.sin(b)]
        np.testing.assert_allclose(y[0, 1], expect, rtol=1e-14)

    def test_mask_conventions(self):
        full = rf.attention_mask(4, None)
        np.testing.assert_array_equal(full, np.tril(np.ones((4, 4), bool)))
        # W = 2: query i sees keys i-1 and i only (HF: kv_idx > q_idx - W).
        w2 = rf.attention_mask(4, 2)
        np.testing.assert_array_equal(w2, np.tril(np.ones((4, 4), bool)) & np.triu(np.ones((4, 4), bool), -1))

    def test_route_renormalizes_top_k(self):
        experts, weights = rf.route([1.0, 3.0, 2.0, 0.0], 2)
        self.assertEqual(list(experts), [1, 2])
        # softmax then renormalization over {3, 2} is a two-way softmax.
        e3, e2 = math.exp(3), math.exp(2)
        np.testing.assert_allclose(weights, [e3 / (e3 + e2), e2 / (e3 + e2)], rtol=1e-15)
        self.assertAlmostEqual(float(np.sum(weights)), 1.0, places=15)

    def test_route_ties_prefer_lower_index(self):
        experts, weights = rf.route([0.0, 5.0, 5.0, 5.0], 2)
        self.assertEqual(list(experts), [1, 2])
        np.testing.assert_allclose(weights, [0.5, 0.5])
        experts, _ = rf.route([1.0, 1.0, 1.0, 1.0], 3)
        self.assertEqual(list(experts), [0, 1, 2])


class SingleTokenAttentionTest(Tmp):
    def test_t1_attention_is_o_of_v(self):
        # With one token the softmax is 1, so attention = o_proj(v_proj(x) per query head).
        t = make_model(self.dir("m"), arch="LlamaForCausalLM", layers=1)
        cfg = rf.load_config(self.dir("m"))
        W = rf.Weights(self.dir("m"))
        x = np.random.default_rng(1).standard_normal((1, 16))
        cos, sin = rf.rope_cos_sin([0], cfg["head_dim"], cfg["theta"])
        out = rf.attention(x, W, "model.layers.0.self_attn", cfg, cos, sin, None)
        v = x @ t["model.layers.0.self_attn.v_proj.weight"].astype(np.float64).T  # [1, KV*hd]
        v_heads = v.reshape(2, 4)
        per_query_head = np.concatenate([v_heads[h // 2] for h in range(4)])  # GQA group 2
        expect = per_query_head @ t["model.layers.0.self_attn.o_proj.weight"].astype(np.float64).T
        np.testing.assert_allclose(out[0], expect, rtol=1e-12, atol=1e-14)

    def test_attention_matches_scalar_loops(self):
        # An explicit loop over heads, queries and keys checks the vectorized reshapes.
        t = make_model(self.dir("m"), arch="MistralForCausalLM", layers=1, sliding_window=3)
        cfg = rf.load_config(self.dir("m"))
        W = rf.Weights(self.dir("m"))
        T, H, KV, hd = 5, 4, 2, 4
        x = np.random.default_rng(2).standard_normal((T, 16))
        cos, sin = rf.rope_cos_sin(range(T), hd, cfg["theta"])
        out = rf.attention(x, W, "model.layers.0.self_attn", cfg, cos, sin, 3)
        w = {n: t[f"model.layers.0.self_attn.{n}_proj.weight"].astype(np.float64) for n in "qkvo"}
        q, k, v = x @ w["q"].T, x @ w["k"].T, x @ w["v"].T

        def rot(vec, pos):
            # Pair element i with element i + hd/2 and rotate it by pos * theta^(-2i/hd).
            r = vec.copy()
            for i in range(hd // 2):
                ang = pos * cfg["theta"] ** (-2.0 * i / hd)
                a, b = vec[i], vec[i + hd // 2]
                r[i], r[i + hd // 2] = a * math.cos(ang) - b * math.sin(ang), b * math.cos(ang) + a * math.sin(ang)
            return r

        expect = np.zeros((T, H * hd))
        for h in range(H):
            g = h // (H // KV)
            for i in range(T):
                qi = rot(q[i, h * hd:(h + 1) * hd], i)
                keys = [j for j in range(T) if j <= i and i - j < 3]
                s = [qi @ rot(k[j, g * hd:(g + 1) * hd], j) / math.sqrt(hd) for j in keys]
                p = np.exp(np.array(s) - max(s))
                p /= p.sum()
                expect[i, h * hd:(h + 1) * hd] = sum(pj * v[j, g * hd:(g + 1) * hd] for pj, j in zip(p, keys))
        np.testing.assert_allclose(out, expect @ w["o"].T, rtol=1e-12, atol=1e-13)


# ----------------------------------------------------------------------------
# Whole-model tests on tiny generated folders.
# ----------------------------------------------------------------------------

class ModelTest(Tmp):
    ids = [3, 1, 4, 1, 5, 9]

    def test_mixtral_f32_and_bf16_finite_and_equal(self):
        make_model(self.dir("f32"), dtype="F32")
        make_model(self.dir("bf16"), dtype="BF16")
        make_model(self.dir("shard"), dtype="BF16", sharded=True)
        a, ra = rf.forward(self.dir("f32"), self.ids)
        b, rb = rf.forward(self.dir("bf16"), self.ids)
        c, _ = rf.forward(self.dir("shard"), self.ids)
        self.assertEqual(a.shape, (len(self.ids), 32))
        self.assertTrue(np.all(np.isfinite(a)) and np.all(np.isfinite(b)))
        # The weights are exactly representable in bfloat16, so the results are identical.
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(b, c)
        self.assertEqual(ra, rb)
        self.assertEqual(len(ra), 2)
        for layer in ra:
            self.assertEqual(len(layer["positions"]), len(self.ids))
            for pos in layer["positions"]:
                self.assertEqual(len(pos["experts"]), 2)
                self.assertEqual(len(pos["router_logits"]), 4)
                self.assertAlmostEqual(sum(pos["weights"]), 1.0, places=12)

    def test_f16_loads(self):
        make_model(self.dir("f16"), dtype="F16", arch="MistralForCausalLM")
        logits, routing = rf.forward(self.dir("f16"), self.ids)
        self.assertTrue(np.all(np.isfinite(logits)))
        self.assertEqual(routing, [])

    def test_causal(self):
        make_model(self.dir("m"), dtype="BF16")
        a, _ = rf.forward(self.dir("m"), self.ids)
        for t in range(len(self.ids)):
            changed = self.ids[:t + 1] + [(i + 7) % 32 for i in self.ids[t + 1:]]
            b, _ = rf.forward(self.dir("m"), changed)
            np.testing.assert_array_equal(a[:t + 1], b[:t + 1])
            if t + 1 < len(self.ids):
                self.assertFalse(np.allclose(a[t + 1:], b[t + 1:]))

    def test_tied_uses_embed_tokens(self):
        t = make_model(self.dir("tied"), arch="LlamaForCausalLM", tied=True)
        self.assertNotIn("lm_head.weight", t)
        # The same weights with lm_head.weight = embed_tokens and no tying must agree exactly.
        t["lm_head.weight"] = t["model.embed_tokens.weight"]
        os.makedirs(self.dir("untied"))
        write_safetensors(os.path.join(self.dir("untied"), "model.safetensors"), t, "F32")
        with open(os.path.join(self.dir("tied"), "config.json")) as f:
            cfg = json.load(f)
        cfg["tie_word_embeddings"] = False
        with open(os.path.join(self.dir("untied"), "config.json"), "w") as f:
            json.dump(cfg, f)
        a, _ = rf.forward(self.dir("tied"), self.ids)
        b, _ = rf.forward(self.dir("untied"), self.ids)
        np.testing.assert_array_equal(a, b)

    def test_sliding_window_only_changes_positions_from_w(self):
        for arch in ("MistralForCausalLM", "MixtralForCausalLM"):
            make_model(self.dir(arch + "full"), arch=arch, sliding_window=None)
            make_model(self.dir(arch + "w2"), arch=arch, sliding_window=2)
            a, _ = rf.forward(self.dir(arch + "full"), self.ids)
            b, _ = rf.forward(self.dir(arch + "w2"), self.ids)
            np.testing.assert_array_equal(a[:2], b[:2])
            for t in range(2, len(self.ids)):
                self.assertFalse(np.allclose(a[t], b[t]), f"{arch} position {t}")

    def test_qwen2_window_follows_use_sliding_window(self):
        make_model(self.dir("off"), arch="Qwen2ForCausalLM", sliding_window=2, use_sliding_window=False)
        make_model(self.dir("ref"), arch="Qwen2ForCausalLM", sliding_window=None)
        make_model(self.dir("on"), arch="Qwen2ForCausalLM", sliding_window=2, use_sliding_window=True,
                   max_window_layers=1)
        self.assertEqual(rf.load_config(self.dir("on"))["windows"], [None, 2])
        off, _ = rf.forward(self.dir("off"), self.ids)
        ref, _ = rf.forward(self.dir("ref"), self.ids)
        on, _ = rf.forward(self.dir("on"), self.ids)
        np.testing.assert_array_equal(off, ref)
        np.testing.assert_array_equal(on[:2], ref[:2])
        self.assertFalse(np.allclose(on[2:], ref[2:]))

    def test_qwen2_uses_qkv_bias(self):
        t = make_model(self.dir("q"), arch="Qwen2ForCausalLM", layers=1)
        a, _ = rf.forward(self.dir("q"), self.ids)
        t["model.layers.0.self_attn.v_proj.bias"] = t["model.layers.0.self_attn.v_proj.bias"] + 1
        write_safetensors(os.path.join(self.dir("q"), "model.safetensors"), t, "F32")
        b, _ = rf.forward(self.dir("q"), self.ids)
        self.assertFalse(np.allclose(a, b))

    def test_llama_attention_bias(self):
        make_model(self.dir("plain"), arch="LlamaForCausalLM", layers=1)
        t = make_model(self.dir("bias"), arch="LlamaForCausalLM", layers=1, attention_bias=True)
        for n in ("q", "k", "v", "o"):
            rows = t[f"model.layers.0.self_attn.{n}_proj.weight"].shape[0]
            t[f"model.layers.0.self_attn.{n}_proj.bias"] = np.zeros(rows, np.float32)
        write_safetensors(os.path.join(self.dir("bias"), "model.safetensors"), t, "F32")
        a, _ = rf.forward(self.dir("plain"), self.ids)
        b, _ = rf.forward(self.dir("bias"), self.ids)
        np.testing.assert_array_equal(a, b)  # Zero biases change nothing but must be read.

    def test_rope_scaling_is_rejected(self):
        make_model(self.dir("m"), arch="LlamaForCausalLM", rope_scaling={"type": "linear", "factor": 2.0})
        with self.assertRaises(ValueError):
            rf.forward(self.dir("m"), self.ids)

    def test_cli(self):
        make_model(self.dir("m"), dtype="BF16")
        out, routing = self.dir("out.npy"), self.dir("routing.json")
        proc = subprocess.run([sys.executable, SCRIPT, self.dir("m"), "--ids", "1,2,3",
                               "--logits-out", out, "--routing-out", routing],
                              capture_output=True, text=True, check=True)
        self.assertIn("reference_forward:", proc.stdout)
        logits = np.load(out)
        self.assertEqual((logits.shape, logits.dtype), ((3, 32), np.float32))
        with open(routing) as f:
            r = json.load(f)
        self.assertEqual([layer["layer"] for layer in r["layers"]], [0, 1])
        self.assertEqual(len(r["layers"][0]["positions"]), 3)


if __name__ == "__main__":
    unittest.main()
