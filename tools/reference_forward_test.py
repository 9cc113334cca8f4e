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


QWEN_MOE = ("Qwen3MoeForCausalLM", "Qwen2MoeForCausalLM")


def sparse_layers(arch, layers, E, extra):
    """The test's own statement of which layers of a tiny model are MoE layers."""
    if arch in QWEN_MOE:
        only = extra.get("mlp_only_layers") or []
        step = extra.get("decoder_sparse_step", 1)
        return [i not in only and E > 0 and (i + 1) % step == 0 for i in range(layers)]
    if arch in ("MixtralForCausalLM", "OlmoeForCausalLM", "GraniteMoeForCausalLM"):
        return [True] * layers
    return [False] * layers


def make_model(folder, arch="MixtralForCausalLM", dtype="F32", layers=2, D=16, H=4, KV=2,
               F=24, V=32, E=4, top_k=2, tied=False, sharded=False, seed=0, hd=None, FI=12, FS=20,
               **extra):
    """Writes a random tiny model of the given architecture into folder and returns its tensors.

    F is the dense MLP width (and the per-expert width of Mixtral, OLMoE and Granite), FI
    the Qwen-MoE expert width (moe_intermediate_size) and FS the Qwen2-MoE shared expert
    width. hd overrides head_dim (q_proj then has H*hd rows, not D). extra goes into
    config.json.
    """
    rng = np.random.default_rng(seed)

    def rand(*shape, scale=0.3):
        return to_bf16_exact(rng.standard_normal(shape) * scale)

    explicit_hd = hd is not None
    hd = hd or D // H
    sparse = sparse_layers(arch, layers, E, extra)
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
        if arch in ("Qwen2ForCausalLM", "Qwen2MoeForCausalLM"):
            for n in ("q", "k", "v"):
                t[p + f".self_attn.{n}_proj.bias"] = rand(t[p + f".self_attn.{n}_proj.weight"].shape[0])
        if arch == "MixtralForCausalLM":
            t[p + ".block_sparse_moe.gate.weight"] = rand(E, D, scale=1.0)
            for e in range(E):
                q = f"{p}.block_sparse_moe.experts.{e}"
                t[q + ".w1.weight"], t[q + ".w3.weight"], t[q + ".w2.weight"] = \
                    rand(F, D), rand(F, D), rand(D, F)
        elif arch == "GraniteMoeForCausalLM":
            t[p + ".block_sparse_moe.router.layer.weight"] = rand(E, D, scale=1.0)
            t[p + ".block_sparse_moe.input_linear.weight"] = rand(E, 2 * F, D)
            t[p + ".block_sparse_moe.output_linear.weight"] = rand(E, D, F)
        elif sparse[i]:
            width = F if arch == "OlmoeForCausalLM" else FI
            t[p + ".mlp.gate.weight"] = rand(E, D, scale=1.0)
            for e in range(E):
                q = f"{p}.mlp.experts.{e}"
                t[q + ".gate_proj.weight"], t[q + ".up_proj.weight"] = rand(width, D), rand(width, D)
                t[q + ".down_proj.weight"] = rand(D, width)
            if arch == "Qwen2MoeForCausalLM":
                q = f"{p}.mlp.shared_expert"
                t[q + ".gate_proj.weight"], t[q + ".up_proj.weight"] = rand(FS, D), rand(FS, D)
                t[q + ".down_proj.weight"] = rand(D, FS)
                t[p + ".mlp.shared_expert_gate.weight"] = rand(1, D, scale=1.0)
        else:
            t[p + ".mlp.gate_proj.weight"], t[p + ".mlp.up_proj.weight"] = rand(F, D), rand(F, D)
            t[p + ".mlp.down_proj.weight"] = rand(D, F)
        # Tensors of the newer families are drawn last so the older families' tensors
        # stay what they were.
        if arch in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM"):
            t[p + ".self_attn.q_norm.weight"] = to_bf16_exact(1.0 + rand(hd, scale=0.2))
            t[p + ".self_attn.k_norm.weight"] = to_bf16_exact(1.0 + rand(hd, scale=0.2))
        if arch == "OlmoeForCausalLM":
            t[p + ".self_attn.q_norm.weight"] = to_bf16_exact(1.0 + rand(H * hd, scale=0.2))
            t[p + ".self_attn.k_norm.weight"] = to_bf16_exact(1.0 + rand(KV * hd, scale=0.2))
        if extra.get("attention_bias") and arch not in ("LlamaForCausalLM",):
            for n in ("q", "k", "v", "o"):
                rows = t[p + f".self_attn.{n}_proj.weight"].shape[0]
                t[p + f".self_attn.{n}_proj.bias"] = rand(rows)
    if not tied:
        t["lm_head.weight"] = rand(V, D)
    cfg = {"architectures": [arch], "hidden_size": D, "intermediate_size": F,
           "num_hidden_layers": layers, "num_attention_heads": H, "num_key_value_heads": KV,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": tied,
           "vocab_size": V, "rope_scaling": None}
    if explicit_hd or arch == "Qwen3ForCausalLM":  # Qwen3Config would otherwise default to 128
        cfg["head_dim"] = hd
    if arch in ("MixtralForCausalLM", "GraniteMoeForCausalLM"):
        cfg.update(num_local_experts=E, num_experts_per_tok=top_k)
    if arch in QWEN_MOE + ("OlmoeForCausalLM",):
        cfg.update(num_experts=E, num_experts_per_tok=top_k)
    if arch in QWEN_MOE:
        cfg.update(moe_intermediate_size=FI)
    if arch == "Qwen2MoeForCausalLM":
        cfg.update(shared_expert_intermediate_size=FS)
    cfg.update(extra)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    write_folder_tensors(folder, t, dtype, sharded)
    return t


def write_folder_tensors(folder, t, dtype="F32", sharded=False):
    """Writes the tensors of a model folder, as one file or as two shards with an index."""
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


def edit_config(folder, **changes):
    """Rewrites fields of a folder's config.json."""
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(path, "w") as f:
        json.dump(cfg, f)


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

    def test_round_to_cache(self):
        # Hand-checked: 1 + 2^-11 is a half-way case between halves 1 and 1 + 2^-10
        # (even: 1); 1 + 3 * 2^-11 rounds up to the even 1 + 2^-9; 70000 saturates at
        # 65504 instead of becoming inf. bfloat16 keeps 8 significant bits: 1 + 2^-8 is
        # a tie that goes to 1, 1 + 3 * 2^-8 one that goes up to 1 + 2^-6.
        x = np.array([1 + 2 ** -11, 1 + 3 * 2 ** -11, 70000.0, -70000.0, 0.1])
        np.testing.assert_array_equal(rf.round_to_cache(x, "f16")[:4],
                                      [1.0, 1 + 2 ** -9, 65504.0, -65504.0])
        self.assertEqual(rf.round_to_cache(x, "f16")[4], float(np.float16(0.1)))
        y = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 3.0])
        np.testing.assert_array_equal(rf.round_to_cache(y, "bf16"), [1.0, 1 + 2 ** -6, -1.0, 3.0])
        np.testing.assert_array_equal(rf.round_to_cache(x, "f32"), x.astype(np.float32))
        with self.assertRaises(ValueError):
            rf.round_to_cache(x, "f8")

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

    def test_unsupported_rope_scaling_is_rejected(self):
        make_model(self.dir("m"), arch="LlamaForCausalLM",
                   rope_scaling={"type": "longrope", "short_factor": [1.0, 1.0], "long_factor": [1.0, 1.0]})
        with self.assertRaisesRegex(ValueError, "rope_type 'longrope'"):
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


# ----------------------------------------------------------------------------
# New building blocks: q/k norms, routers, the layer schedule.
# ----------------------------------------------------------------------------

class NewComponentTest(unittest.TestCase):
    def test_qk_norm_per_head_vs_whole_projection(self):
        x = np.array([[3.0, 4.0, 1.0, 1.0]])  # two heads of head_dim 2
        # Per head (Qwen3): [3, 4] has RMS sqrt(12.5) and [1, 1] has RMS 1; the one
        # [head_dim] weight [1, 2] applies to both heads.
        per_head = rf.qk_norm(x, np.array([1.0, 2.0]), 0.0, "head", 2)
        r = math.sqrt(12.5)
        np.testing.assert_allclose(per_head, [[3 / r, 8 / r, 1.0, 2.0]], rtol=1e-15)
        # Whole projection (OLMoE): mean of [9, 16, 1, 1] is 6.75, weight [1, 2, 3, 4].
        whole = rf.qk_norm(x, np.array([1.0, 2.0, 3.0, 4.0]), 0.0, "full", 2)
        r = math.sqrt(6.75)
        np.testing.assert_allclose(whole, [[3 / r, 8 / r, 3 / r, 4 / r]], rtol=1e-15)

    def test_route_without_renormalisation(self):
        # Probabilities 0.1, 0.3, 0.2, 0.4: top-2 is experts 3 and 1.
        logits = np.log([1.0, 3.0, 2.0, 4.0])
        experts, weights = rf.route(logits, 2, normalize=False)  # Qwen-MoE/OLMoE default
        self.assertEqual(list(experts), [3, 1])
        np.testing.assert_allclose(weights, [0.4, 0.3], rtol=1e-14)
        experts, weights = rf.route(logits, 2, normalize=True)  # norm_topk_prob / Mixtral
        self.assertEqual(list(experts), [3, 1])
        np.testing.assert_allclose(weights, [4 / 7, 3 / 7], rtol=1e-14)

    def test_granite_router_topk_then_softmax(self):
        experts, weights = rf.route_topk_softmax([1.0, 3.0, 2.0, 0.0], 2)
        self.assertEqual(list(experts), [1, 2])
        # softmax over the chosen logits [3, 2] only.
        np.testing.assert_allclose(weights, [math.e / (math.e + 1), 1 / (math.e + 1)], rtol=1e-15)
        experts, weights = rf.route_topk_softmax([0.0, 5.0, 5.0, 5.0], 2)
        self.assertEqual(list(experts), [1, 2])  # ties: lower id wins
        np.testing.assert_allclose(weights, [0.5, 0.5])

    def test_moe_layer_schedule(self):
        # Sparse iff i not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0.
        self.assertEqual(rf.moe_layer_schedule(6, 8, 2, [3]), [False, True, False, False, False, True])
        self.assertEqual(rf.moe_layer_schedule(4, 8, 1, [0, 2]), [False, True, False, True])
        self.assertEqual(rf.moe_layer_schedule(3, 8), [True, True, True])
        self.assertEqual(rf.moe_layer_schedule(3, 0), [False, False, False])
        self.assertEqual(rf.moe_layer_schedule(6, 8, 3, []), [False, False, True, False, False, True])


# ----------------------------------------------------------------------------
# RoPE scaling: inverse frequencies and attention factors on known values.
# ----------------------------------------------------------------------------

def raw_config(**fields):
    """A minimal Llama-style config.json dict with head_dim 4 (D 16, 4 heads)."""
    raw = {"architectures": ["LlamaForCausalLM"], "hidden_size": 16, "num_attention_heads": 4,
           "num_hidden_layers": 1, "rms_norm_eps": 1e-6, "vocab_size": 8, "rope_theta": 100.0}
    raw.update(fields)
    return raw


def rope_of(**fields):
    return rf.parse_config(raw_config(**fields))["rope"]


class RopeScalingTest(unittest.TestCase):
    def test_default_and_linear(self):
        inv, att = rf.rope_inv_freq(rope_of())
        np.testing.assert_allclose(inv, [1.0, 0.1], rtol=1e-15)  # 100^0, 100^(-1/2)
        self.assertEqual(att, 1.0)
        inv, att = rf.rope_inv_freq(rope_of(rope_scaling={"type": "linear", "factor": 4.0}))
        np.testing.assert_allclose(inv, [0.25, 0.025], rtol=1e-15)
        self.assertEqual(att, 1.0)

    def test_dynamic_ntk(self):
        rope = rope_of(rope_scaling={"type": "dynamic", "factor": 2.0}, max_position_embeddings=10)
        # S <= M keeps theta = 100.
        for S in (None, 1, 10):
            inv, att = rf.rope_inv_freq(rope, seq_len=S)
            np.testing.assert_array_equal(inv, [1.0, 0.1])
            self.assertEqual(att, 1.0)
        # S = 20: theta' = 100 * (2*20/10 - 1)^(4/2) = 900, so inv = [1, 1/30].
        np.testing.assert_allclose(rf.rope_inv_freq(rope, seq_len=20)[0], [1.0, 1 / 30], rtol=1e-14)
        # S = 15: theta' = 100 * (3 - 1)^2 = 400, so inv = [1, 1/20].
        np.testing.assert_allclose(rf.rope_inv_freq(rope, seq_len=15)[0], [1.0, 1 / 20], rtol=1e-14)

    def test_llama3_with_llama31_values(self):
        raw = raw_config(hidden_size=128 * 4, rope_theta=500000.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192})
        inv, att = rf.rope_inv_freq(rf.parse_config(raw)["rope"])
        base = 500000.0 ** (-np.arange(0, 128, 2) / 128)
        self.assertEqual(att, 1.0)
        # Wavelength 2*pi/base < 8192/4 for pairs 0..28: unchanged.
        np.testing.assert_allclose(inv[:29], base[:29], rtol=1e-15)
        # Wavelength > 8192/1 for pairs 35..63: divided by the factor 8.
        np.testing.assert_allclose(inv[35:], base[35:] / 8, rtol=1e-15)
        # Pair 32: base = 500000^-1/2, wavelength 2*pi*sqrt(500000) = 4442.88, between the
        # two; s = (8192/wavelength - 1)/3 = 0.2812826 and inv = (1 - s)*base/8 + s*base
        # = 0.00052484616.
        b = 1 / math.sqrt(500000.0)
        s = (8192 / (2 * math.pi * math.sqrt(500000.0)) - 1) / 3
        self.assertAlmostEqual(s, 0.2812826, places=7)
        self.assertAlmostEqual(inv[32], (1 - s) * b / 8 + s * b, delta=1e-18)
        self.assertAlmostEqual(inv[32], 0.00052484616, delta=1e-11)
        # The blended band lies strictly between the two limits.
        self.assertTrue(np.all((inv[29:35] < base[29:35]) & (inv[29:35] > base[29:35] / 8)))

    def test_yarn_gpt_oss_values(self):
        raw = raw_config(hidden_size=64 * 4, rope_theta=150000.0, max_position_embeddings=131072,
                         rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                                       "beta_slow": 1.0, "original_max_position_embeddings": 4096,
                                       "truncate": False})
        inv, att = rf.rope_inv_freq(rf.parse_config(raw)["rope"])
        self.assertAlmostEqual(att, 0.1 * math.log(32) + 1, places=14)
        self.assertAlmostEqual(att, 1.34657, places=5)
        low, high = rf.yarn_correction_range(32, 1, 64, 150000.0, 4096, False)
        self.assertAlmostEqual(low, 8.0928, places=4)
        self.assertAlmostEqual(high, 17.3980, places=4)
        base = 150000.0 ** (-np.arange(0, 64, 2) / 64)
        # Pairs up to 8 keep their frequency, pairs from 18 are divided by 32.
        np.testing.assert_allclose(inv[:9], base[:9], rtol=1e-15)
        np.testing.assert_allclose(inv[18:], base[18:] / 32, rtol=1e-15)
        # Pair 12 is on the ramp: (12 - low) / (high - low) of the way to base/32.
        r = (12 - low) / (high - low)
        self.assertAlmostEqual(inv[12] / base[12], r / 32 + (1 - r), places=14)

    def test_yarn_qwen3_style_uses_factor_as_given(self):
        # max_position_embeddings 40960 / 32768 = 1.25 would be the old, overridden factor.
        raw = raw_config(hidden_size=128 * 4, rope_theta=1e6, max_position_embeddings=40960,
                         rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                       "original_max_position_embeddings": 32768})
        rope = rf.parse_config(raw)["rope"]
        inv, att = rf.rope_inv_freq(rope)
        self.assertAlmostEqual(att, 0.1 * math.log(4) + 1, places=14)
        self.assertAlmostEqual(att, 1.1386, places=4)
        # truncate defaults to true: the ramp runs from floor(23.6) = 23 to ceil(39.65) = 40.
        self.assertEqual(rf.yarn_correction_range(32, 1, 128, 1e6, 32768, True), (23, 40))
        base = 1e6 ** (-np.arange(0, 128, 2) / 128)
        np.testing.assert_allclose(inv[:24], base[:24], rtol=1e-15)
        np.testing.assert_allclose(inv[40:], base[40:] / 4, rtol=1e-15)
        np.testing.assert_allclose(inv[30], base[30] * ((7 / 17) / 4 + 10 / 17), rtol=1e-14)

    def test_yarn_attention_factor_variants(self):
        def att(**extra):
            scaling = {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096}
            scaling.update(extra)
            return rf.rope_inv_freq(rope_of(rope_scaling=scaling, max_position_embeddings=163840))[1]
        # DeepSeek: mscale == mscale_all_dim gives 1.
        self.assertAlmostEqual(att(mscale=0.707, mscale_all_dim=0.707), 1.0, places=15)
        g = 0.1 * math.log(40)
        self.assertAlmostEqual(att(mscale=1.0, mscale_all_dim=0.5), (g + 1) / (0.5 * g + 1), places=14)
        self.assertAlmostEqual(att(), g + 1, places=14)
        self.assertEqual(att(attention_factor=0.75), 0.75)  # an explicit value wins
        # No factor: max_position_embeddings / original = 163840 / 4096 = 40.
        rope = rope_of(rope_scaling={"rope_type": "yarn", "original_max_position_embeddings": 4096},
                       max_position_embeddings=163840)
        self.assertEqual(rope["factor"], 40.0)

    def test_attention_factor_scales_cos_and_sin(self):
        cos, sin = rf.cos_sin_tables([0, 1], np.array([1.0, 0.5]), 2.0)
        np.testing.assert_allclose(cos[0], [2, 2, 2, 2])
        np.testing.assert_allclose(sin[1], 2 * np.sin([1.0, 0.5, 1.0, 0.5]), rtol=1e-15)

    def test_config_spellings(self):
        # "type" is an alias of "rope_type".
        self.assertEqual(rope_of(rope_scaling={"type": "linear", "factor": 2.0})["type"], "linear")
        # v5 rope_parameters carries rope_type and rope_theta; its theta wins over the top level.
        rope = rope_of(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0})
        self.assertEqual((rope["type"], rope["theta"], rope["factor"]), ("linear", 500.0, 2.0))
        self.assertEqual(rope_of(rope_parameters={"rope_type": "default"})["theta"], 100.0)
        # A non-empty rope_scaling wins over rope_parameters.
        rope = rope_of(rope_scaling={"type": "linear", "factor": 3.0},
                       rope_parameters={"rope_type": "dynamic", "factor": 2.0})
        self.assertEqual((rope["type"], rope["factor"]), ("linear", 3.0))
        # A top-level original_max_position_embeddings wins over the one in the dict.
        scaling = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64}
        self.assertEqual(rope_of(rope_scaling=scaling)["original_max_pos"], 64)
        rope = rope_of(rope_scaling=scaling, original_max_position_embeddings=32)
        self.assertEqual(rope["original_max_pos"], 32)
        # Mixtral's default theta is 1e6.
        raw = raw_config(architectures=["MixtralForCausalLM"])
        del raw["rope_theta"]
        self.assertEqual(rf.parse_config(raw)["rope"]["theta"], 1e6)

    def test_rejections_name_the_field(self):
        cases = [({"rope_scaling": {"type": "longrope", "factor": 2.0}}, "rope_type 'longrope'"),
                 ({"rope_parameters": {"rope_type": "ntk", "factor": 2.0}}, "rope_parameters.rope_type"),
                 ({"rope_scaling": {"type": "yarn", "factor": 2.0, "finetuned": True}}, "finetuned"),
                 ({"rope_scaling": {"type": "linear"}}, "rope_scaling.factor"),
                 ({"rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0}},
                  "high_freq_factor"),
                 ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
                 ({"rope_scaling": {"type": "linear", "rope_type": "dynamic", "factor": 2.0}}, "disagree")]
        for fields, message in cases:
            with self.assertRaisesRegex(ValueError, message, msg=str(fields)):
                rf.parse_config(raw_config(**fields))


# ----------------------------------------------------------------------------
# The new families on tiny folders.
# ----------------------------------------------------------------------------

def load(folder):
    return rf.load_config(folder), rf.Weights(folder)


def f64(t, name):
    return t[name].astype(np.float64)


def np_silu(x):
    return x / (1.0 + np.exp(-x))


class NewFamilyTest(Tmp):
    ids = [3, 1, 4, 1, 5, 9]

    def rewrite(self, folder, t):
        write_folder_tensors(folder, t)

    def test_qwen3_dense_explicit_head_dim_and_per_head_norm(self):
        # head_dim 8 with hidden 16 and 4 heads: q_proj has 32 rows.
        folder = self.dir("q3")
        t = make_model(folder, arch="Qwen3ForCausalLM", hd=8, tied=True, rms_norm_eps=1e-30)
        self.assertEqual(t["model.layers.0.self_attn.q_proj.weight"].shape, (32, 16))
        a, routing = rf.forward(folder, self.ids)
        self.assertEqual((a.shape, routing), ((6, 32), []))
        self.assertTrue(np.all(np.isfinite(a)))
        # A per-head norm makes each head's scale irrelevant: scaling head 1's q rows by 4
        # leaves the logits unchanged.
        t["model.layers.0.self_attn.q_proj.weight"][8:16] *= 4
        self.rewrite(folder, t)
        b, _ = rf.forward(folder, self.ids)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        # The q_norm weight is read: changing it changes the logits.
        t["model.layers.1.self_attn.q_norm.weight"] = t["model.layers.1.self_attn.q_norm.weight"] * 1.5
        self.rewrite(folder, t)
        c, _ = rf.forward(folder, self.ids)
        self.assertFalse(np.allclose(a, c))
        # A whole-projection-sized q_norm is refused.
        t["model.layers.0.self_attn.q_norm.weight"] = np.ones(32, np.float32)
        self.rewrite(folder, t)
        with self.assertRaisesRegex(ValueError, "q_norm"):
            rf.forward(folder, self.ids)

    def test_qwen3_sliding_window_layers(self):
        # Qwen3: only layers >= max_window_layers; Qwen3-MoE: every layer; both only with
        # use_sliding_window.
        for arch, expect in (("Qwen3ForCausalLM", [None, 2]), ("Qwen3MoeForCausalLM", [2, 2])):
            on, off = self.dir(arch + "on"), self.dir(arch + "off")
            make_model(on, arch=arch, use_sliding_window=True, sliding_window=2, max_window_layers=1)
            make_model(off, arch=arch, use_sliding_window=False, sliding_window=2, max_window_layers=1)
            self.assertEqual(rf.load_config(on)["windows"], expect)
            self.assertEqual(rf.load_config(off)["windows"], [None, None])
            a, _ = rf.forward(on, self.ids)
            b, _ = rf.forward(off, self.ids)
            np.testing.assert_array_equal(a[:2], b[:2])
            self.assertFalse(np.allclose(a[2:], b[2:]))

    def test_qwen3_default_head_dim_is_128(self):
        raw = {"architectures": ["Qwen3ForCausalLM"], "hidden_size": 16, "num_attention_heads": 4,
               "num_hidden_layers": 1, "rms_norm_eps": 1e-6, "vocab_size": 8}
        self.assertEqual(rf.parse_config(raw)["head_dim"], 128)
        raw["architectures"] = ["Qwen3MoeForCausalLM"]
        self.assertEqual(rf.parse_config(raw)["head_dim"], 4)

    def test_olmoe_whole_projection_norm_and_clip(self):
        folder = self.dir("olmoe")
        t = make_model(folder, arch="OlmoeForCausalLM", rms_norm_eps=1e-30)
        a, routing = rf.forward(folder, self.ids)
        self.assertTrue(np.all(np.isfinite(a)))
        self.assertEqual([r["layer"] for r in routing], [0, 1])
        for pos in routing[0]["positions"]:
            self.assertEqual(len(pos["experts"]), 2)
            self.assertLess(sum(pos["weights"]), 1.0)  # norm_topk_prob defaults to false
        # Scaling every q row by 4 does not matter to a whole-projection norm ...
        q = "model.layers.0.self_attn.q_proj.weight"
        original = t[q].copy()
        t[q] = original * 4
        self.rewrite(folder, t)
        np.testing.assert_allclose(rf.forward(folder, self.ids)[0], a, rtol=1e-12, atol=1e-12)
        # ... but scaling one head's rows does (unlike a per-head norm).
        t[q] = original.copy()
        t[q][4:8] *= 4
        self.rewrite(folder, t)
        self.assertFalse(np.allclose(rf.forward(folder, self.ids)[0], a))
        t[q] = original
        self.rewrite(folder, t)
        # clip_qkv: a huge bound changes nothing, a small one changes the logits.
        edit_config(folder, clip_qkv=1e9)
        np.testing.assert_array_equal(rf.forward(folder, self.ids)[0], a)
        edit_config(folder, clip_qkv=0.05)
        self.assertFalse(np.allclose(rf.forward(folder, self.ids)[0], a))
        edit_config(folder, clip_qkv=None, norm_topk_prob=True)
        for pos in rf.forward(folder, self.ids)[1][0]["positions"]:
            self.assertAlmostEqual(sum(pos["weights"]), 1.0, places=12)
        # A per-head-sized q_norm is refused.
        t["model.layers.0.self_attn.q_norm.weight"] = np.ones(4, np.float32)
        self.rewrite(folder, t)
        with self.assertRaisesRegex(ValueError, "q_norm"):
            rf.forward(folder, self.ids)

    def test_qk_norm_attention_matches_scalar_loops(self):
        # Explicit loops over heads, queries and keys: OLMoE normalises the whole q and k
        # projections then clamps q, k, v; Qwen3 normalises each head; both before RoPE.
        T, H, KV, hd, eps = 4, 4, 2, 4, 1e-5
        for arch, clip in (("OlmoeForCausalLM", 0.3), ("Qwen3ForCausalLM", None)):
            folder = self.dir(arch)
            extra = {"clip_qkv": clip} if clip else {}
            t = make_model(folder, arch=arch, layers=1, **extra)
            cfg, W = load(folder)
            x = np.random.default_rng(7).standard_normal((T, 16))
            cos, sin = rf.rope_cos_sin(range(T), hd, 10000.0)
            out = rf.attention(x, W, "model.layers.0.self_attn", cfg, cos, sin, None)
            w = {n: f64(t, f"model.layers.0.self_attn.{n}_proj.weight") for n in "qkvo"}
            qn = f64(t, "model.layers.0.self_attn.q_norm.weight")
            kn = f64(t, "model.layers.0.self_attn.k_norm.weight")
            q, k, v = x @ w["q"].T, x @ w["k"].T, x @ w["v"].T

            def rms(vec, weight):
                return vec / math.sqrt(sum(e * e for e in vec) / len(vec) + eps) * weight

            for i in range(T):
                if arch == "OlmoeForCausalLM":
                    q[i], k[i] = rms(q[i], qn), rms(k[i], kn)
                    q[i], k[i], v[i] = (np.clip(a[i], -clip, clip) for a in (q, k, v))
                else:
                    for h in range(H):
                        q[i, h * hd:(h + 1) * hd] = rms(q[i, h * hd:(h + 1) * hd], qn)
                    for h in range(KV):
                        k[i, h * hd:(h + 1) * hd] = rms(k[i, h * hd:(h + 1) * hd], kn)

            def rot(vec, pos):
                r = vec.copy()
                for j in range(hd // 2):
                    ang = pos * 10000.0 ** (-2.0 * j / hd)
                    a, b = vec[j], vec[j + hd // 2]
                    r[j] = a * math.cos(ang) - b * math.sin(ang)
                    r[j + hd // 2] = b * math.cos(ang) + a * math.sin(ang)
                return r

            expect = np.zeros((T, H * hd))
            for h in range(H):
                g = h // (H // KV)
                for i in range(T):
                    qi = rot(q[i, h * hd:(h + 1) * hd], i)
                    sc = [qi @ rot(k[j, g * hd:(g + 1) * hd], j) / math.sqrt(hd) for j in range(i + 1)]
                    p = np.exp(np.array(sc) - max(sc))
                    p /= p.sum()
                    expect[i, h * hd:(h + 1) * hd] = sum(p[j] * v[j, g * hd:(g + 1) * hd] for j in range(i + 1))
            np.testing.assert_allclose(out, expect @ w["o"].T, rtol=1e-12, atol=1e-13, err_msg=arch)

    def test_attention_bias_per_family(self):
        expect = {"LlamaForCausalLM": (True, True), "Qwen3ForCausalLM": (True, True),
                  "Qwen3MoeForCausalLM": (True, True), "OlmoeForCausalLM": (True, True),
                  "GraniteMoeForCausalLM": (True, True), "Qwen2MoeForCausalLM": (True, False),
                  "MixtralForCausalLM": (False, False), "MistralForCausalLM": (False, False)}
        for arch, biases in expect.items():
            cfg = rf.parse_config(raw_config(architectures=[arch], attention_bias=True))
            self.assertEqual((cfg["qkv_bias"], cfg["o_bias"]), biases, arch)
        cfg = rf.parse_config(raw_config(architectures=["Qwen2MoeForCausalLM"], qkv_bias=False))
        self.assertEqual((cfg["qkv_bias"], cfg["o_bias"]), (False, False))
        # The biases are read: changing Granite's o_proj bias changes the logits.
        folder = self.dir("g")
        t = make_model(folder, arch="GraniteMoeForCausalLM", attention_bias=True)
        a, _ = rf.forward(folder, self.ids)
        t["model.layers.1.self_attn.o_proj.bias"] = t["model.layers.1.self_attn.o_proj.bias"] + 1
        write_folder_tensors(folder, t)
        self.assertFalse(np.allclose(a, rf.forward(folder, self.ids)[0]))

    def test_clip_qkv_clamps_q_k_v_after_the_norm(self):
        folder = self.dir("olmoe")
        t = make_model(folder, arch="OlmoeForCausalLM", layers=1, clip_qkv=0.1)
        cfg, W = load(folder)
        x = np.random.default_rng(3).standard_normal((1, 16))
        cos, sin = rf.rope_cos_sin([0], 4, 10000.0)
        out = rf.attention(x, W, "model.layers.0.self_attn", cfg, cos, sin, None)
        # One token: the output is o_proj of the clamped v, repeated per query head.
        v = np.clip(x @ f64(t, "model.layers.0.self_attn.v_proj.weight").T, -0.1, 0.1).reshape(2, 4)
        per_head = np.concatenate([v[h // 2] for h in range(4)])
        np.testing.assert_allclose(out[0], per_head @ f64(t, "model.layers.0.self_attn.o_proj.weight").T,
                                   rtol=1e-12)

    def test_qwen3_moe_mixed_layers(self):
        folder = self.dir("q3moe")
        make_model(folder, arch="Qwen3MoeForCausalLM", layers=4, hd=8, mlp_only_layers=[0, 2],
                   norm_topk_prob=True, attention_bias=True, sharded=True, dtype="BF16")
        cfg = rf.load_config(folder)
        self.assertEqual(cfg["moe_layers"], [False, True, False, True])
        self.assertEqual((cfg["qkv_bias"], cfg["o_bias"]), (True, True))
        logits, routing = rf.forward(folder, self.ids)
        self.assertTrue(np.all(np.isfinite(logits)))
        self.assertEqual([r["layer"] for r in routing], [1, 3])
        for layer in routing:
            self.assertEqual(len(layer["positions"]), len(self.ids))
            for pos in layer["positions"]:
                self.assertEqual(len(pos["router_logits"]), 4)
                self.assertAlmostEqual(sum(pos["weights"]), 1.0, places=12)
        # The expert width is moe_intermediate_size; a config that disagrees is refused.
        edit_config(folder, moe_intermediate_size=13)
        with self.assertRaisesRegex(ValueError, "experts"):
            rf.forward(folder, self.ids)

    def test_qwen2_moe_shared_expert_and_router(self):
        folder = self.dir("q2moe")
        t = make_model(folder, arch="Qwen2MoeForCausalLM", layers=1)
        cfg, W = load(folder)
        h = np.random.default_rng(4).standard_normal((3, 16))
        out, positions = rf.moe(h, W, "model.layers.0", cfg)
        p = "model.layers.0.mlp"

        def shared(x):
            g = x @ f64(t, p + ".shared_expert.gate_proj.weight").T
            u = x @ f64(t, p + ".shared_expert.up_proj.weight").T
            return (np_silu(g) * u) @ f64(t, p + ".shared_expert.down_proj.weight").T

        routed = np.zeros_like(h)
        logits = h @ f64(t, p + ".gate.weight").T
        for i in range(3):
            probs = np.exp(logits[i]) / np.exp(logits[i]).sum()
            top = np.argsort(-probs, kind="stable")[:2]
            self.assertEqual(positions[i]["experts"], [int(e) for e in top])
            np.testing.assert_allclose(positions[i]["weights"], probs[top], rtol=1e-13)  # not renormalised
            for e in top:
                q = f"{p}.experts.{e}"
                y = (np_silu(h[i] @ f64(t, q + ".gate_proj.weight").T) * (h[i] @ f64(t, q + ".up_proj.weight").T))
                routed[i] += probs[e] * (y @ f64(t, q + ".down_proj.weight").T)
        gate = 1 / (1 + np.exp(-(h @ f64(t, p + ".shared_expert_gate.weight").T)))
        np.testing.assert_allclose(out, routed + gate * shared(h), rtol=1e-12, atol=1e-13)
        # A zero gate weight gives sigmoid(0) = 1/2 of the shared expert.
        t[p + ".shared_expert_gate.weight"] = np.zeros((1, 16), np.float32)
        write_folder_tensors(folder, t)
        out0, _ = rf.moe(h, rf.Weights(folder), "model.layers.0", cfg)
        np.testing.assert_allclose(out0, routed + 0.5 * shared(h), rtol=1e-12, atol=1e-13)
        # q, k, v carry biases, o does not.
        self.assertEqual((cfg["qkv_bias"], cfg["o_bias"]), (True, False))

    def test_qwen2_moe_end_to_end(self):
        folder = self.dir("q2moe")
        make_model(folder, arch="Qwen2MoeForCausalLM", layers=3, mlp_only_layers=[1], dtype="BF16")
        logits, routing = rf.forward(folder, self.ids)
        self.assertTrue(np.all(np.isfinite(logits)))
        self.assertEqual([r["layer"] for r in routing], [0, 2])
        for pos in routing[1]["positions"]:
            self.assertLess(sum(pos["weights"]), 1.0)
        edit_config(folder, use_sliding_window=True, sliding_window=2)
        with self.assertRaisesRegex(ValueError, "use_sliding_window"):
            rf.forward(folder, self.ids)

    def test_granite_fused_experts_and_router(self):
        folder = self.dir("granite")
        t = make_model(folder, arch="GraniteMoeForCausalLM", layers=1, F=6)
        cfg, W = load(folder)
        h = np.random.default_rng(5).standard_normal((3, 16))
        out, positions = rf.moe(h, W, "model.layers.0", cfg)
        p = "model.layers.0.block_sparse_moe"
        w_in, w_out = f64(t, p + ".input_linear.weight"), f64(t, p + ".output_linear.weight")
        logits = h @ f64(t, p + ".router.layer.weight").T
        expect = np.zeros_like(h)
        for i in range(3):
            top = np.argsort(-logits[i], kind="stable")[:2]
            w = np.exp(logits[i][top]) / np.exp(logits[i][top]).sum()
            self.assertEqual(positions[i]["experts"], [int(e) for e in top])
            np.testing.assert_allclose(positions[i]["weights"], w, rtol=1e-13)
            for e, we in zip(top, w):
                a = w_in[e] @ h[i]
                expect[i] += we * (w_out[e] @ (np_silu(a[:6]) * a[6:]))  # gate rows first
        np.testing.assert_allclose(out, expect, rtol=1e-12, atol=1e-13)

    def test_granite_multipliers(self):
        em, ls = 3.0, 2.5
        folder = self.dir("g")
        t = make_model(folder, arch="GraniteMoeForCausalLM", tied=True, embedding_multiplier=em,
                       residual_multiplier=0.0, attention_multiplier=0.2, logits_scaling=ls)
        # Residual multiplier 0 removes both branches: the logits are the final norm of
        # the scaled embeddings against the tied embedding matrix, divided by logits_scaling.
        logits, routing = rf.forward(folder, self.ids)
        x = f64(t, "model.embed_tokens.weight")[self.ids] * em
        x = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5) * f64(t, "model.norm.weight")
        np.testing.assert_allclose(logits, x @ f64(t, "model.embed_tokens.weight").T / ls, rtol=1e-13)
        self.assertEqual(len(routing), 2)
        # logits_scaling divides the logits exactly.
        edit_config(folder, residual_multiplier=0.5)
        a, _ = rf.forward(folder, self.ids)
        edit_config(folder, logits_scaling=1.0)
        b, _ = rf.forward(folder, self.ids)
        np.testing.assert_allclose(a, b / ls, rtol=1e-15)
        # embedding_multiplier 2 equals embeddings stored twice as large (untied head).
        u = make_model(self.dir("u1"), arch="GraniteMoeForCausalLM", embedding_multiplier=2.0,
                       residual_multiplier=0.5)
        u["model.embed_tokens.weight"] = u["model.embed_tokens.weight"] * 2
        make_model(self.dir("u2"), arch="GraniteMoeForCausalLM", residual_multiplier=0.5)
        write_folder_tensors(self.dir("u2"), u)
        np.testing.assert_array_equal(rf.forward(self.dir("u1"), self.ids)[0],
                                      rf.forward(self.dir("u2"), self.ids)[0])

    def test_granite_attention_multiplier_is_the_scale(self):
        folder = self.dir("g")
        t = make_model(folder, arch="GraniteMoeForCausalLM", layers=1, attention_multiplier=0.0)
        cfg, W = load(folder)
        x = np.random.default_rng(6).standard_normal((2, 16))
        cos, sin = rf.rope_cos_sin([0, 1], 4, 10000.0)
        out = rf.attention(x, W, "model.layers.0.self_attn", cfg, cos, sin, None)
        # Scale 0 makes all scores 0: position 1 averages the values of positions 0 and 1.
        v = (x @ f64(t, "model.layers.0.self_attn.v_proj.weight").T).reshape(2, 2, 4)
        mean = np.concatenate([(v[0, h // 2] + v[1, h // 2]) / 2 for h in range(4)])
        np.testing.assert_allclose(out[1], mean @ f64(t, "model.layers.0.self_attn.o_proj.weight").T,
                                   rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------
# The KV-cache emulation (--prefill).
# ----------------------------------------------------------------------------

class PrefillTest(Tmp):
    ids = [3, 1, 4, 1, 5, 9, 2]

    CASES = [
        ("MixtralForCausalLM", {"sliding_window": 3}),
        ("LlamaForCausalLM", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                               "high_freq_factor": 4.0, "original_max_position_embeddings": 4}}),
        ("Qwen3ForCausalLM", {"hd": 8, "use_sliding_window": True, "sliding_window": 2, "max_window_layers": 1}),
        ("Qwen3MoeForCausalLM", {"max_position_embeddings": 16, "norm_topk_prob": True, "rope_scaling": {
            "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4}}),
        ("Qwen2MoeForCausalLM", {"rope_parameters": {"rope_type": "linear", "factor": 2.0}}),
        ("OlmoeForCausalLM", {"clip_qkv": 0.5}),
        ("GraniteMoeForCausalLM", {"embedding_multiplier": 2.0, "residual_multiplier": 0.5,
                                   "attention_multiplier": 0.3, "logits_scaling": 3.0}),
    ]

    def test_prefill_matches_one_forward_for_static_rope(self):
        for n, (arch, extra) in enumerate(self.CASES):
            folder = self.dir(str(n))
            make_model(folder, arch=arch, **extra)
            full, r_full = rf.forward(folder, self.ids)
            for P in (1, 4):
                with self.subTest(arch=arch, prefill=P):
                    part, r_part = rf.forward(folder, self.ids, prefill=P)
                    np.testing.assert_allclose(part, full, rtol=1e-11, atol=1e-12)
                    self.assertEqual([r["layer"] for r in r_part], [r["layer"] for r in r_full])
                    for a, b in zip(r_full, r_part):
                        self.assertEqual([p["experts"] for p in a["positions"]],
                                         [p["experts"] for p in b["positions"]])
                        np.testing.assert_allclose([p["weights"] for p in a["positions"]],
                                                   [p["weights"] for p in b["positions"]], rtol=1e-11)

    def test_prefill_uses_the_cache(self):
        # Each decode step must see the earlier tokens: changing token 0 changes the last row.
        folder = self.dir("m")
        make_model(folder, arch="LlamaForCausalLM")
        a, _ = rf.forward(folder, self.ids, prefill=2)
        b, _ = rf.forward(folder, [7] + self.ids[1:], prefill=2)
        self.assertFalse(np.allclose(a[-1], b[-1]))
        with self.assertRaises(ValueError):
            rf.forward(folder, self.ids, prefill=0)

    def test_dynamic_within_max_position_equals_default(self):
        make_model(self.dir("dyn"), arch="LlamaForCausalLM",
                   rope_scaling={"type": "dynamic", "factor": 2.0}, max_position_embeddings=64)
        make_model(self.dir("def"), arch="LlamaForCausalLM", max_position_embeddings=64)
        ref, _ = rf.forward(self.dir("def"), self.ids)
        np.testing.assert_array_equal(rf.forward(self.dir("dyn"), self.ids)[0], ref)
        np.testing.assert_allclose(rf.forward(self.dir("dyn"), self.ids, prefill=3)[0], ref,
                                   rtol=1e-11, atol=1e-12)

    def manual_dynamic(self, t, ids, call_S, M, f, theta=10000.0, eps=1e-5, H=4, KV=2, hd=4):
        """A one-layer Llama written out by hand: token i is rotated with the
        frequencies of S = call_S[i], the S of the forward call that computed it."""
        def norm(x, w):
            return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * f64(t, w)

        def rot(vec, pos, S):
            th = theta * (f * S / M - (f - 1)) ** (hd / (hd - 2)) if S > M else theta
            ang = pos * th ** (-np.arange(0, hd, 2) / hd)
            a, b = vec[:hd // 2], vec[hd // 2:]
            return np.concatenate([a * np.cos(ang) - b * np.sin(ang), b * np.cos(ang) + a * np.sin(ang)])

        p = "model.layers.0."
        x = f64(t, "model.embed_tokens.weight")[ids]
        h = norm(x, p + "input_layernorm.weight")
        q, k, v = (h @ f64(t, p + f"self_attn.{n}_proj.weight").T for n in "qkv")
        att = np.zeros((len(ids), H * hd))
        for i in range(len(ids)):
            for head in range(H):
                g = head // (H // KV)
                qi = rot(q[i, head * hd:(head + 1) * hd], i, call_S[i])
                s = np.array([qi @ rot(k[j, g * hd:(g + 1) * hd], j, call_S[j]) / math.sqrt(hd)
                              for j in range(i + 1)])
                w = np.exp(s - s.max())
                w /= w.sum()
                att[i, head * hd:(head + 1) * hd] = w @ v[:i + 1, g * hd:(g + 1) * hd]
        x = x + att @ f64(t, p + "self_attn.o_proj.weight").T
        h = norm(x, p + "post_attention_layernorm.weight")
        y = (np_silu(h @ f64(t, p + "mlp.gate_proj.weight").T) * (h @ f64(t, p + "mlp.up_proj.weight").T))
        x = x + y @ f64(t, p + "mlp.down_proj.weight").T
        return norm(x, "model.norm.weight") @ f64(t, "lm_head.weight").T

    def test_dynamic_cached_keys_keep_their_rotation(self):
        M, f = 2, 2.0
        folder = self.dir("dyn")
        t = make_model(folder, arch="LlamaForCausalLM", layers=1,
                       rope_scaling={"type": "dynamic", "factor": f}, max_position_embeddings=M)
        T = len(self.ids)
        # One call: every token uses S = T.
        full, _ = rf.forward(folder, self.ids)
        np.testing.assert_allclose(full, self.manual_dynamic(t, self.ids, [T] * T, M, f), rtol=1e-11, atol=1e-12)
        for P in (1, 3):
            # Prefill [0, P) with S = P, then token t with S = t + 1.
            part, _ = rf.forward(folder, self.ids, prefill=P)
            call_S = [P if i < P else i + 1 for i in range(T)]
            np.testing.assert_allclose(part, self.manual_dynamic(t, self.ids, call_S, M, f),
                                       rtol=1e-11, atol=1e-12)
            self.assertFalse(np.allclose(part[:-1], full[:-1]))
        # The prefill rows are a one-call forward of the prefix.
        np.testing.assert_array_equal(rf.forward(folder, self.ids, prefill=3)[0][:3],
                                      rf.forward(folder, self.ids[:3])[0])

    def test_cli_prefill(self):
        folder = self.dir("m")
        make_model(folder, arch="Qwen2MoeForCausalLM", layers=3, mlp_only_layers=[1])
        out, routing = self.dir("out.npy"), self.dir("routing.json")
        subprocess.run([sys.executable, SCRIPT, folder, "--ids", "1,2,3,4", "--prefill", "2",
                        "--logits-out", out, "--routing-out", routing],
                       capture_output=True, text=True, check=True)
        expect, r = rf.forward(folder, [1, 2, 3, 4], prefill=2)
        np.testing.assert_array_equal(np.load(out), expect.astype(np.float32))
        with open(routing) as fh:
            got = json.load(fh)
        self.assertEqual([layer["layer"] for layer in got["layers"]], [0, 2])
        self.assertEqual(got["layers"], r)


# ----------------------------------------------------------------------------
# gpt-oss, DeepSeek-V2/V3 and PhiMoE: helpers.
# ----------------------------------------------------------------------------

def write_raw_safetensors(path, tensors):
    """Writes {name: array} keeping each array's own type: float32 -> F32, float64 -> F64,
    uint8 -> U8; a ("F8_E4M3", uint8 array) pair is written as FP8 bytes."""
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        if isinstance(a, tuple):
            dtype, a = a
            a = np.ascontiguousarray(a, dtype=np.uint8)
        else:
            a = np.ascontiguousarray(a)
            dtype = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64",
                     np.dtype(np.uint8): "U8"}[a.dtype]
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_config(folder):
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)


def write_folder(folder, config, tensors):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    write_raw_safetensors(os.path.join(folder, "model.safetensors"), tensors)


def fp8_value(b):
    """e4m3fn byte -> value, written out from the bit layout (S EEEE MMM, bias 7)."""
    sign = -1.0 if b & 0x80 else 1.0
    e, m = (b >> 3) & 15, b & 7
    if e == 15 and m == 7:
        return float("nan")
    if e == 0:
        return sign * (m / 8.0) * 2.0 ** -6
    return sign * (1.0 + m / 8.0) * 2.0 ** (e - 7)


LUT4 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def mxfp4_by_loops(blocks, scales):
    """The test's own MXFP4 decoder, one element at a time."""
    E, R, G, _ = blocks.shape
    out = np.zeros((E, R, G * 32))
    for e in range(E):
        for r in range(R):
            for g in range(G):
                s = 2.0 ** (int(scales[e, r, g]) - 127)
                for k in range(16):
                    b = int(blocks[e, r, g, k])
                    out[e, r, 32 * g + 2 * k] = LUT4[b & 15] * s
                    out[e, r, 32 * g + 2 * k + 1] = LUT4[b >> 4] * s
    return out


def rot_half_split(vec, angles):
    """NeoX RoPE of one vector: element i pairs with i + d/2."""
    h = len(vec) // 2
    a, b = vec[:h], vec[h:]
    return np.concatenate([a * np.cos(angles) - b * np.sin(angles), b * np.cos(angles) + a * np.sin(angles)])


def rot_pairs(vec, angles):
    """GPT-J RoPE of one vector: element 2i pairs with 2i + 1."""
    out = vec.copy()
    for i, ang in enumerate(angles):
        a, b = vec[2 * i], vec[2 * i + 1]
        out[2 * i], out[2 * i + 1] = a * math.cos(ang) - b * math.sin(ang), b * math.cos(ang) + a * math.sin(ang)
    return out


def rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def make_gpt_oss(folder, layers=2, D=64, H=4, KV=2, hd=8, E=4, top_k=2, I=32, V=32, seed=0, **extra):
    """A tiny gpt-oss folder with MXFP4 experts; returns (config, tensors). D and I are
    multiples of 32 (the MXFP4 block)."""
    rng = np.random.default_rng(seed)

    def rand(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def mx(E_, R, C):
        blocks = rng.integers(0, 256, size=(E_, R, C // 32, 16), dtype=np.uint8)
        scales = rng.integers(119, 124, size=(E_, R, C // 32), dtype=np.uint8)  # 2^-8 .. 2^-4
        return blocks, scales

    t = {"model.embed_tokens.weight": rand(V, D, scale=1.0),
         "model.norm.weight": 1 + rand(D, scale=0.1), "lm_head.weight": rand(V, D)}
    for i in range(layers):
        p = f"model.layers.{i}"
        t[p + ".input_layernorm.weight"] = 1 + rand(D, scale=0.1)
        t[p + ".post_attention_layernorm.weight"] = 1 + rand(D, scale=0.1)
        for n, rows in (("q", H * hd), ("k", KV * hd), ("v", KV * hd)):
            t[f"{p}.self_attn.{n}_proj.weight"] = rand(rows, D)
            t[f"{p}.self_attn.{n}_proj.bias"] = rand(rows)
        t[p + ".self_attn.o_proj.weight"] = rand(D, H * hd)
        t[p + ".self_attn.o_proj.bias"] = rand(D)
        t[p + ".self_attn.sinks"] = rand(H, scale=1.0)
        t[p + ".mlp.router.weight"] = rand(E, D, scale=1.0)
        t[p + ".mlp.router.bias"] = rand(E, scale=1.0)
        b, s = mx(E, 2 * I, D)
        t[p + ".mlp.experts.gate_up_proj_blocks"], t[p + ".mlp.experts.gate_up_proj_scales"] = b, s
        t[p + ".mlp.experts.gate_up_proj_bias"] = rand(E, 2 * I)
        b, s = mx(E, D, I)
        t[p + ".mlp.experts.down_proj_blocks"], t[p + ".mlp.experts.down_proj_scales"] = b, s
        t[p + ".mlp.experts.down_proj_bias"] = rand(E, D)
    cfg = {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": D,
           "intermediate_size": I, "num_hidden_layers": layers, "num_attention_heads": H,
           "num_key_value_heads": KV, "head_dim": hd, "num_local_experts": E, "num_experts_per_tok": top_k,
           "experts_per_token": top_k, "vocab_size": V, "rms_norm_eps": 1e-5, "rope_theta": 150000.0,
           "max_position_embeddings": 64, "sliding_window": 2, "attention_bias": True,
           "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
           "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                            "original_max_position_embeddings": 16, "truncate": False},
           "swiglu_limit": 7.0, "tie_word_embeddings": False,
           "quantization_config": {"quant_method": "mxfp4",
                                   "modules_to_not_convert": ["model.layers.*.self_attn", "lm_head"]}}
    cfg.update(extra)
    write_folder(folder, cfg, t)
    return cfg, t


def make_deepseek(folder, version=3, layers=2, D=32, H=2, q_lora=16, r=16, dn=8, dr=4, dv=6, E=8,
                  top_k=2, I=12, F=20, n_shared=1, V=32, first_dense=1, seed=0, fp8=False, mtp=False,
                  **extra):
    """A tiny DeepSeek-V2/V3 folder; returns (config, tensors as float64 values).

    With fp8, the attention and expert projections are stored as F8_E4M3 bytes with a
    weight_scale_inv each, and the returned tensors hold their dequantized values.
    With mtp, a layer num_hidden_layers full of unusable tensors is added.
    """
    rng = np.random.default_rng(seed)
    values, stored = {}, {}

    def put(name, shape, scale=0.3, quantize=False):
        if quantize:
            # Bytes away from NaN (0x7f/0xff) and from huge values; scale_inv powers-of-two-ish.
            b = rng.integers(0x20, 0x48, size=shape, dtype=np.uint8) | \
                (rng.integers(0, 2, size=shape, dtype=np.uint8) << 7)
            s = rng.choice([0.25, 0.5, 0.75, 1.25], size=(-(-shape[0] // 128), -(-shape[1] // 128)))
            grid = np.repeat(np.repeat(s, 128, 0), 128, 1)[:shape[0], :shape[1]]
            values[name] = np.vectorize(fp8_value)(b) * grid
            stored[name] = ("F8_E4M3", b)
            stored[name + "_scale_inv"] = s.astype(np.float32)
        else:
            a = (rng.standard_normal(shape) * scale).astype(np.float32)
            values[name] = a.astype(np.float64)
            stored[name] = a

    put("model.embed_tokens.weight", (V, D), 1.0)
    for i in range(layers):
        p = f"model.layers.{i}"
        values[p + ".input_layernorm.weight"] = stored[p + ".input_layernorm.weight"] = \
            (1 + rng.standard_normal(D) * 0.1).astype(np.float32)
        values[p + ".post_attention_layernorm.weight"] = stored[p + ".post_attention_layernorm.weight"] = \
            (1 + rng.standard_normal(D) * 0.1).astype(np.float32)
        a = p + ".self_attn"
        if q_lora is None:
            put(a + ".q_proj.weight", (H * (dn + dr), D), quantize=fp8)
        else:
            put(a + ".q_a_proj.weight", (q_lora, D), quantize=fp8)
            values[a + ".q_a_layernorm.weight"] = stored[a + ".q_a_layernorm.weight"] = \
                (1 + rng.standard_normal(q_lora) * 0.1).astype(np.float32)
            put(a + ".q_b_proj.weight", (H * (dn + dr), q_lora), quantize=fp8)
        put(a + ".kv_a_proj_with_mqa.weight", (r + dr, D), quantize=fp8)
        values[a + ".kv_a_layernorm.weight"] = stored[a + ".kv_a_layernorm.weight"] = \
            (1 + rng.standard_normal(r) * 0.1).astype(np.float32)
        put(a + ".kv_b_proj.weight", (H * (dn + dv), r), quantize=fp8)
        put(a + ".o_proj.weight", (D, H * dv), quantize=fp8)
        m = p + ".mlp"
        if i < first_dense:
            put(m + ".gate_proj.weight", (F, D), quantize=fp8)
            put(m + ".up_proj.weight", (F, D), quantize=fp8)
            put(m + ".down_proj.weight", (D, F), quantize=fp8)
            continue
        put(m + ".gate.weight", (E, D), 1.0)
        if version == 3:
            values[m + ".gate.e_score_correction_bias"] = stored[m + ".gate.e_score_correction_bias"] = \
                (rng.standard_normal(E) * 0.1).astype(np.float32)
        for e in range(E):
            put(f"{m}.experts.{e}.gate_proj.weight", (I, D), quantize=fp8)
            put(f"{m}.experts.{e}.up_proj.weight", (I, D), quantize=fp8)
            put(f"{m}.experts.{e}.down_proj.weight", (D, I), quantize=fp8)
        if n_shared:
            put(m + ".shared_experts.gate_proj.weight", (I * n_shared, D), quantize=fp8)
            put(m + ".shared_experts.up_proj.weight", (I * n_shared, D), quantize=fp8)
            put(m + ".shared_experts.down_proj.weight", (D, I * n_shared), quantize=fp8)
    values["model.norm.weight"] = stored["model.norm.weight"] = \
        (1 + rng.standard_normal(D) * 0.1).astype(np.float32)
    put("lm_head.weight", (V, D))
    if mtp:
        # DeepSeek-V3's multi-token-prediction layer: must be ignored, so make it unusable.
        stored[f"model.layers.{layers}.self_attn.q_a_proj.weight"] = ("F8_E4M3", np.full((3, 5), 0x7f, np.uint8))
        stored[f"model.layers.{layers}.eh_proj.weight"] = np.zeros((1, 7), np.float32)
    cfg = {"architectures": [f"DeepseekV{version}ForCausalLM"], "hidden_size": D, "intermediate_size": F,
           "moe_intermediate_size": I, "num_hidden_layers": layers, "num_attention_heads": H,
           "num_key_value_heads": H, "q_lora_rank": q_lora, "kv_lora_rank": r, "qk_nope_head_dim": dn,
           "qk_rope_head_dim": dr, "v_head_dim": dv, "n_routed_experts": E, "n_shared_experts": n_shared,
           "num_experts_per_tok": top_k, "first_k_dense_replace": first_dense, "vocab_size": V,
           "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 64,
           "tie_word_embeddings": False, "moe_layer_freq": 1,
           "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                            "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}}
    if version == 3:
        cfg.update(n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5,
                   scoring_func="sigmoid", topk_method="noaux_tc")
    else:
        cfg.update(topk_method="greedy", routed_scaling_factor=1.5, scoring_func="softmax")
    if fp8:
        cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128],
                                      "activation_scheme": "dynamic"}
    cfg.update(extra)
    write_folder(folder, cfg, stored)
    return cfg, values


def make_phimoe(folder, layers=2, D=16, H=4, KV=2, E=4, F=12, V=32, seed=0, arch="PhiMoEForCausalLM",
                orig=4, **extra):
    """A tiny PhiMoE folder (LayerNorms with bias, biased attention and lm_head, longrope)."""
    rng = np.random.default_rng(seed)

    def rand(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    hd = D // H
    t = {"model.embed_tokens.weight": rand(V, D, scale=1.0), "model.norm.weight": 1 + rand(D, scale=0.1),
         "model.norm.bias": rand(D, scale=0.1), "lm_head.weight": rand(V, D), "lm_head.bias": rand(V)}
    for i in range(layers):
        p = f"model.layers.{i}"
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[f"{p}.{n}.weight"], t[f"{p}.{n}.bias"] = 1 + rand(D, scale=0.1), rand(D, scale=0.1)
        for n, rows in (("q", H * hd), ("k", KV * hd), ("v", KV * hd), ("o", D)):
            t[f"{p}.self_attn.{n}_proj.weight"] = rand(rows, D if n != "o" else H * hd)
            t[f"{p}.self_attn.{n}_proj.bias"] = rand(rows)
        t[p + ".block_sparse_moe.gate.weight"] = rand(E, D, scale=1.0)
        for e in range(E):
            q = f"{p}.block_sparse_moe.experts.{e}"
            t[q + ".w1.weight"], t[q + ".w3.weight"], t[q + ".w2.weight"] = rand(F, D), rand(F, D), rand(D, F)
    cfg = {"architectures": [arch], "model_type": "phimoe", "hidden_size": D, "intermediate_size": F,
           "num_hidden_layers": layers, "num_attention_heads": H, "num_key_value_heads": KV,
           "num_local_experts": E, "num_experts_per_tok": 2, "vocab_size": V, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "max_position_embeddings": 4 * orig, "sliding_window": 64,
           "attention_bias": True, "lm_head_bias": True, "router_jitter_noise": 0.01,
           "input_jitter_noise": 0.01, "tie_word_embeddings": False,
           "rope_scaling": {"type": "longrope", "short_factor": [1.0, 1.5], "long_factor": [2.0, 5.0],
                            "short_mscale": 1.1, "long_mscale": 1.3,
                            "original_max_position_embeddings": orig}}
    cfg.update(extra)
    write_folder(folder, cfg, t)
    return cfg, t


# ----------------------------------------------------------------------------
# Decoders and routers on hand-made numbers.
# ----------------------------------------------------------------------------

class QuantDecodeTest(Tmp):
    def test_mxfp4_hand_bytes(self):
        blocks = np.zeros((1, 2, 2, 16), np.uint8)
        scales = np.array([[[127, 130], [0, 128]]], np.uint8)
        blocks[0, 0, 0, :3] = [0x21, 0xF8, 0x7A]  # (0.5, 1), (-0, -6), (-1, 6)
        blocks[0, 0, 1, :] = 0x44                   # (2, 2) x 16
        blocks[0, 0, 1, 0] = 0x93                   # (1.5, -0.5)
        blocks[0, 1, 0, 0] = 0x01                   # (0.5, 0) at 2^-127
        blocks[0, 1, 1, 5] = 0x0F                   # (-6, 0) at 2^1
        w = rf.decode_mxfp4(blocks, scales)
        self.assertEqual(w.shape, (1, 2, 64))
        # Row 0, group 0 (scale 127 = 2^0): low nibble first.
        np.testing.assert_array_equal(w[0, 0, :6], [0.5, 1.0, -0.0, -6.0, -1.0, 6.0])
        self.assertTrue(np.signbit(w[0, 0, 2]))  # nibble 8 is -0
        np.testing.assert_array_equal(w[0, 0, 6:32], np.zeros(26))
        # Row 0, group 1 (scale 130 = 2^3) starts at element 32.
        np.testing.assert_array_equal(w[0, 0, 32:34], [12.0, -4.0])
        np.testing.assert_array_equal(w[0, 0, 34:64], np.full(30, 16.0))
        # Row 1: scale 0 = 2^-127 and scale 128 = 2^1 (byte 5 -> elements 32 + 10, 11).
        self.assertEqual(w[0, 1, 0], 2.0 ** -128)
        np.testing.assert_array_equal(w[0, 1, 1:42], np.zeros(41))
        np.testing.assert_array_equal(w[0, 1, 42:44], [-12.0, 0.0])
        np.testing.assert_array_equal(w, mxfp4_by_loops(blocks, scales))
        # Random bytes agree with the loop decoder as well.
        rng = np.random.default_rng(0)
        b = rng.integers(0, 256, size=(2, 3, 2, 16), dtype=np.uint8)
        s = rng.integers(100, 150, size=(2, 3, 2), dtype=np.uint8)
        np.testing.assert_array_equal(rf.decode_mxfp4(b, s), mxfp4_by_loops(b, s))

    def test_mxfp4_shape_errors(self):
        with self.assertRaisesRegex(ValueError, "do not match"):
            rf.decode_mxfp4(np.zeros((1, 2, 3, 16), np.uint8), np.zeros((1, 2, 2), np.uint8))
        with self.assertRaisesRegex(ValueError, "16"):
            rf.decode_mxfp4(np.zeros((1, 2, 3, 8), np.uint8), np.zeros((1, 2, 3), np.uint8))

    def test_fp8_e4m3_table(self):
        known = {0x00: 0.0, 0x38: 1.0, 0x3C: 1.5, 0x01: 2.0 ** -9, 0x07: 7 * 2.0 ** -9, 0x08: 2.0 ** -6,
                 0x7E: 448.0, 0x40: 2.0, 0xB8: -1.0, 0xFE: -448.0, 0x30: 0.5, 0x77: 240.0}
        raw = bytes(known)
        got = rf.decode_tensor(raw, "F8_E4M3")
        np.testing.assert_array_equal(got, list(known.values()))
        self.assertTrue(np.isnan(rf.decode_tensor(bytes([0x7F]), "F8_E4M3")[0]))
        self.assertTrue(np.isnan(rf.decode_tensor(bytes([0xFF]), "F8_E4M3")[0]))
        neg_zero = rf.decode_tensor(bytes([0x80]), "F8_E4M3")[0]
        self.assertEqual(neg_zero, 0.0)
        self.assertTrue(np.signbit(neg_zero))
        # All 256 bytes agree with the bit-layout formula (NaN where it says NaN).
        table = rf.decode_tensor(bytes(range(256)), "F8_E4M3")
        expect = np.array([fp8_value(b) for b in range(256)])
        np.testing.assert_array_equal(table, expect)
        self.assertEqual(int(np.sum(np.isnan(table))), 2)
        self.assertEqual(float(np.nanmax(table)), 448.0)

    def test_fp8_block_dequantization(self):
        rng = np.random.default_rng(1)
        b = rng.integers(0x30, 0x48, size=(130, 3), dtype=np.uint8)
        scale = np.array([[0.5], [3.0]], np.float32)  # rows 0..127, rows 128..129
        path = self.dir("m")
        os.makedirs(path)
        write_raw_safetensors(os.path.join(path, "model.safetensors"),
                              {"w.weight": ("F8_E4M3", b), "w.weight_scale_inv": scale,
                               "plain.weight": ("F8_E4M3", b[:2])})
        W = rf.Weights(path)
        got = W.get("w.weight", [130, 3])
        plain = np.vectorize(fp8_value)(b)
        np.testing.assert_array_equal(got[:128], plain[:128] * 0.5)
        np.testing.assert_array_equal(got[128:], plain[128:] * 3.0)
        # Without a quantization_config an FP8 tensor without scale is read as is ...
        np.testing.assert_array_equal(W.get("plain.weight"), plain[:2])
        # ... with quant_method fp8 it is an error.
        with self.assertRaisesRegex(ValueError, "plain.weight_scale_inv"):
            rf.Weights(path, quant={"method": "fp8", "fp8_block": (128, 128)}).get("plain.weight")
        # The scale grid must be [ceil(out/128), ceil(in/128)].
        write_raw_safetensors(os.path.join(path, "model.safetensors"),
                              {"w.weight": ("F8_E4M3", b), "w.weight_scale_inv": scale[:1]})
        with self.assertRaisesRegex(ValueError, r"expected \[2, 1\]"):
            rf.Weights(path).get("w.weight")

    def test_layers_filter_hides_later_layers(self):
        path = self.dir("m")
        os.makedirs(path)
        write_raw_safetensors(os.path.join(path, "model.safetensors"),
                              {"model.layers.1.a": np.zeros(2, np.float32),
                               "model.layers.2.a": np.zeros(2, np.float32),
                               "model.layers.10.a": np.zeros(2, np.float32)})
        W = rf.Weights(path, layers=2)
        self.assertTrue(W.has("model.layers.1.a"))
        self.assertFalse(W.has("model.layers.2.a") or W.has("model.layers.10.a"))


class NewRouterTest(unittest.TestCase):
    def test_sparsemixer_near_ties(self):
        e = math.exp
        # m1 = 1.0: 0.995 and 0.99 are within 2 eps = 0.02 relative; 0.5 and -3 are not.
        experts, w = rf.route_sparsemixer([1.0, 0.995, 0.5, 0.99, -3.0], 0.01)
        self.assertEqual(list(experts), [0, 1])
        w1 = e(1.0) / (e(1.0) + e(0.995) + e(0.99))
        w2 = e(0.995) / (e(0.995) + e(0.99))  # expert 0 is out; 0.99 is within 2 % of 0.995
        np.testing.assert_allclose(w, [w1, w2], rtol=1e-14)
        # The threshold: (2 - 1.97)/2 = 0.015 keeps 1.97, (2 - 1.95)/2 = 0.025 drops 1.95;
        # in round 2, (1.97 - 1.95)/1.97 = 0.0102 keeps 1.95.
        experts, w = rf.route_sparsemixer([2.0, 1.95, 1.97, 0.0], 0.01)
        self.assertEqual(list(experts), [0, 2])
        np.testing.assert_allclose(w, [e(2) / (e(2) + e(1.97)), e(1.97) / (e(1.97) + e(1.95))], rtol=1e-14)
        # Negative maxima divide by |s_j|: (−1 + 1.01)/1.01 keeps -1.01; then -1.05 is
        # 0.04/1.05 away from -1.01, so expert 1 stands alone with weight 1.
        experts, w = rf.route_sparsemixer([-1.0, -1.01, -1.05, -3.0], 0.01)
        self.assertEqual(list(experts), [0, 1])
        np.testing.assert_allclose(w, [e(-1) / (e(-1) + e(-1.01)), 1.0], rtol=1e-14)
        # Clear winners: both weights exactly 1 (so they sum to 2, no renormalisation).
        experts, w = rf.route_sparsemixer([0.0, 5.0, 1.0, 3.0], 0.01)
        self.assertEqual(list(experts), [1, 3])
        np.testing.assert_array_equal(w, [1.0, 1.0])
        # A larger eps admits more experts: with eps 0.5 every logit within 100 % counts.
        experts, w = rf.route_sparsemixer([1.0, 0.5, 0.2], 0.5)
        self.assertEqual(list(experts), [0, 1])
        np.testing.assert_allclose(w[0], e(1) / (e(1) + e(0.5) + e(0.2)), rtol=1e-14)
        # Exact ties go to the lower index.
        self.assertEqual(list(rf.route_sparsemixer([2.0, 2.0, 2.0], 0.01)[0]), [0, 1])

    def spec_v3(self, **kw):
        spec = {"top_k": 2, "n_group": 4, "topk_group": 2, "norm_topk": True, "scaling": 2.5}
        spec.update(kw)
        return spec

    def test_deepseek_v3_group_limited_routing(self):
        s = np.array([0.9, 0.05, 0.6, 0.5, 0.55, 0.52, 0.1, 0.1])
        logits = np.log(s / (1 - s))
        bias = np.array([0, 0, 0, 0, 0, 0.1, 0, 0])
        # Biased b = s + bias; group sums of the top 2: g0 0.95, g1 1.10, g2 0.55 + 0.62
        # = 1.17, g3 0.2 -> groups 2 and 1 stay; the best b there: expert 5 (0.62), then
        # 2 (0.6). Without the group rule expert 0 (0.9) would win.
        experts, w = rf.route_deepseek_v3(logits, bias, self.spec_v3())
        self.assertEqual(list(experts), [5, 2])
        # Weights from the unbiased sigmoid, renormalised, times 2.5.
        np.testing.assert_allclose(w, np.array([0.52, 0.6]) / (1.12 + 1e-20) * 2.5, rtol=1e-13)
        # All groups kept: plain top-2 of b.
        experts, _ = rf.route_deepseek_v3(logits, bias, self.spec_v3(topk_group=4))
        self.assertEqual(list(experts), [0, 5])
        # Without norm_topk_prob: s times the scaling factor.
        _, w = rf.route_deepseek_v3(logits, bias, self.spec_v3(norm_topk=False))
        np.testing.assert_allclose(w, [0.52 * 2.5, 0.6 * 2.5], rtol=1e-13)
        # Ties (groups and experts) go to the lower index.
        experts, w = rf.route_deepseek_v3(np.zeros(8), np.zeros(8), self.spec_v3(top_k=3))
        self.assertEqual(list(experts), [0, 1, 2])
        np.testing.assert_allclose(w, [2.5 / 3] * 3, rtol=1e-14)
        experts, _ = rf.route_deepseek_v3(np.zeros(8), np.array([0, 0, 0, 0, 0, 0, 0.1, 0.1]), self.spec_v3())
        self.assertEqual(list(experts), [6, 7])

    def test_deepseek_v3_dropped_groups_are_minus_infinity(self):
        # b = [0.1, -0.1, -0.4, -0.4]; group 0 (sum 0.0) beats group 1 (-0.8). With -inf
        # for dropped experts the top 2 are 0 and 1; HF's 0.0 fill would pick expert 2.
        experts, w = rf.route_deepseek_v3(np.zeros(4), np.array([-0.4, -0.6, -0.9, -0.9]),
                                          self.spec_v3(n_group=2, topk_group=1, scaling=1.0))
        self.assertEqual(list(experts), [0, 1])
        np.testing.assert_allclose(w, [0.5, 0.5], rtol=1e-15)

    def test_deepseek_v2_greedy_and_group_limited(self):
        p = np.array([6.0, 1.0, 1.0, 1.0, 4.0, 3.5])
        logits = np.log(p)
        P = p / p.sum()
        spec = {"top_k": 2, "method": "greedy", "n_group": 3, "topk_group": 1, "norm_topk": False,
                "scaling": 1.5}
        experts, w = rf.route_deepseek_v2(logits, spec)
        self.assertEqual(list(experts), [0, 4])
        np.testing.assert_allclose(w, [P[0] * 1.5, P[4] * 1.5], rtol=1e-14)
        # Group maxima 6, 1, 4: with one group kept only experts 0 and 1 remain.
        spec["method"] = "group_limited_greedy"
        experts, w = rf.route_deepseek_v2(logits, spec)
        self.assertEqual(list(experts), [0, 1])
        np.testing.assert_allclose(w, [P[0] * 1.5, P[1] * 1.5], rtol=1e-14)
        # Two groups kept (0 and 2): back to 0 and 4.
        spec["topk_group"] = 2
        self.assertEqual(list(rf.route_deepseek_v2(logits, spec)[0]), [0, 4])
        # norm_topk_prob divides by the sum (+1e-20) instead of scaling.
        spec.update(topk_group=1, norm_topk=True)
        np.testing.assert_allclose(rf.route_deepseek_v2(logits, spec)[1], [6 / 7, 1 / 7], rtol=1e-14)


class NewRopeTest(unittest.TestCase):
    def test_interleaved_versus_half_split(self):
        x = np.array([1.0, 2.0, 3.0, 4.0])
        cos, sin = rf.rope_cos_sin([2], 4, 100.0)  # inv_freq [1, 0.1]: angles 2 and 0.2
        a, b = 2.0, 0.2
        inter = rf.apply_rope_interleaved(x[None], cos, sin)[0]
        expect = [1 * math.cos(a) - 2 * math.sin(a), 2 * math.cos(a) + 1 * math.sin(a),
                  3 * math.cos(b) - 4 * math.sin(b), 4 * math.cos(b) + 3 * math.sin(b)]
        np.testing.assert_allclose(inter, expect, rtol=1e-14, atol=1e-15)
        half = rf.apply_rope(x[None], cos, sin)[0]
        np.testing.assert_allclose(half, [1 * math.cos(a) - 3 * math.sin(a), 2 * math.cos(b) - 4 * math.sin(b),
                                          3 * math.cos(a) + 1 * math.sin(a), 4 * math.cos(b) + 2 * math.sin(b)],
                                   rtol=1e-14, atol=1e-15)
        self.assertFalse(np.allclose(inter, half))
        # Interleaved = half-split on the de-interleaved vector (HF's V3 form), re-interleaved.
        perm = [0, 2, 1, 3]
        np.testing.assert_allclose(rf.apply_rope(x[perm][None], cos, sin)[0][np.argsort(perm)], inter,
                                   rtol=1e-14, atol=1e-15)
        # Position 0 is the identity; the norm of each pair is kept.
        c0, s0 = rf.rope_cos_sin([0], 4, 100.0)
        np.testing.assert_array_equal(rf.apply_rope_interleaved(x[None], c0, s0)[0], x)
        self.assertAlmostEqual(inter[0] ** 2 + inter[1] ** 2, 5.0, places=13)

    def phimoe_rope(self, **scaling):
        base = {"type": "longrope", "short_factor": [1.0, 2.0], "long_factor": [3.0, 8.0],
                "original_max_position_embeddings": 16}
        base.update(scaling)
        raw = raw_config(architectures=["PhiMoEForCausalLM"], max_position_embeddings=64, rope_scaling=base,
                         num_key_value_heads=4)  # PhimoeConfig would default to 8
        return rf.parse_config(raw)["rope"]

    def test_longrope_switch_at_the_boundary(self):
        rope = self.phimoe_rope(short_mscale=1.25, long_mscale=1.5)
        # theta 100, d 4: theta^(2i/d) = [1, 10].
        for S in (None, 1, 16):  # S <= original: short factors
            inv, att = rf.rope_inv_freq(rope, seq_len=S)
            np.testing.assert_allclose(inv, [1 / 1.0, 1 / (2.0 * 10)], rtol=1e-15)
            self.assertEqual(att, 1.25)
        for S in (17, 64, 100):  # S > original: long factors
            inv, att = rf.rope_inv_freq(rope, seq_len=S)
            np.testing.assert_allclose(inv, [1 / 3.0, 1 / (8.0 * 10)], rtol=1e-15)
            self.assertEqual(att, 1.5)
        # Without mscale: sqrt(1 + ln(factor)/ln(original)), factor = 64/16 = 4.
        rope = self.phimoe_rope()
        self.assertAlmostEqual(rf.rope_inv_freq(rope, 17)[1], math.sqrt(1 + math.log(4) / math.log(16)), places=15)
        self.assertAlmostEqual(rf.rope_inv_freq(rope, 3)[1], math.sqrt(1 + math.log(4) / math.log(16)), places=15)
        # An explicit factor or attention_factor wins.
        self.assertAlmostEqual(rf.rope_inv_freq(self.phimoe_rope(factor=2.0), 3)[1],
                               math.sqrt(1 + math.log(2) / math.log(16)), places=15)
        self.assertEqual(rf.rope_inv_freq(self.phimoe_rope(attention_factor=0.9), 3)[1], 0.9)
        # The factor lists must be head_dim/2 long, and longrope is PhiMoE's only.
        with self.assertRaisesRegex(ValueError, "short_factor"):
            self.phimoe_rope(short_factor=[1.0])
        with self.assertRaisesRegex(ValueError, "rope_type 'longrope'"):
            rf.parse_config(raw_config(rope_scaling={"type": "longrope", "short_factor": [1, 1],
                                                     "long_factor": [1, 1]}))


# ----------------------------------------------------------------------------
# Real configuration fields (copied from the released config.json files).
# ----------------------------------------------------------------------------

class RealConfigTest(unittest.TestCase):
    def test_gpt_oss_20b_fields(self):
        raw = {"architectures": ["GptOssForCausalLM"], "attention_bias": True, "experts_per_token": 4,
               "head_dim": 64, "hidden_act": "silu", "hidden_size": 2880, "intermediate_size": 2880,
               "layer_types": ["sliding_attention", "full_attention"] * 12, "max_position_embeddings": 131072,
               "num_attention_heads": 64, "num_experts_per_tok": 4, "num_hidden_layers": 24,
               "num_key_value_heads": 8, "num_local_experts": 32, "rms_norm_eps": 1e-05,
               "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                                "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": False},
               "rope_theta": 150000, "sliding_window": 128, "swiglu_limit": 7.0, "tie_word_embeddings": False,
               "vocab_size": 201088, "quantization_config": {"quant_method": "mxfp4"}}
        cfg = rf.parse_config(raw)
        self.assertEqual(cfg["windows"][:4], [128, None, 128, None])
        self.assertEqual((cfg["moe"]["experts"], cfg["moe"]["top_k"], cfg["moe"]["limit"]), (32, 4, 7.0))
        self.assertEqual((cfg["qkv_bias"], cfg["o_bias"], cfg["sinks"], cfg["head_dim"]), (True, True, True, 64))
        self.assertAlmostEqual(rf.rope_inv_freq(cfg["rope"])[1], 1.34657, places=5)
        self.assertFalse(cfg["rope"]["truncate"])
        # Without any RoPE field, GptOssConfig's YaRN defaults apply.
        del raw["rope_scaling"]
        rope = rf.parse_config(raw)["rope"]
        self.assertEqual((rope["type"], rope["factor"], rope["original_max_pos"], rope["truncate"]),
                         ("yarn", 32.0, 4096.0, False))

    def deepseek_raw(self, version, **fields):
        raw = {"architectures": [f"DeepseekV{version}ForCausalLM"], "hidden_size": 7168, "num_hidden_layers": 61,
               "num_attention_heads": 128, "num_key_value_heads": 128, "q_lora_rank": 1536,
               "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
               "vocab_size": 129280, "rms_norm_eps": 1e-6, "rope_theta": 10000, "max_position_embeddings": 163840,
               "n_routed_experts": 256, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4,
               "first_k_dense_replace": 3, "n_shared_experts": 1, "moe_intermediate_size": 2048,
               "intermediate_size": 18432, "routed_scaling_factor": 2.5, "norm_topk_prob": True,
               "scoring_func": "sigmoid", "topk_method": "noaux_tc", "moe_layer_freq": 1,
               "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                                "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"},
               "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                       "weight_block_size": [128, 128]}}
        raw.update(fields)
        return raw

    def test_deepseek_r1_fields_and_softmax_scale(self):
        cfg = rf.parse_config(self.deepseek_raw(3))
        # scale = 192^-0.5 * (1 + 0.1 ln 40)^2 = 0.135234; the RoPE amplitude is 1.
        m = 1 + 0.1 * math.log(40)
        self.assertAlmostEqual(cfg["mla"]["scale"], 192 ** -0.5 * m * m, places=15)
        self.assertAlmostEqual(cfg["mla"]["scale"], 0.135234, places=6)
        self.assertEqual(rf.rope_inv_freq(cfg["rope"])[1], 1.0)
        self.assertEqual(cfg["rope"]["dim"], 64)
        self.assertEqual(cfg["moe_layers"][:4], [False, False, False, True])
        self.assertEqual(cfg["quant"]["method"], "fp8")
        # V2-Lite: q_lora_rank null, mscale_all_dim 0.707 -> 0.114721 (m^2 applied to V2 too).
        raw = self.deepseek_raw(2, q_lora_rank=None, n_group=1, topk_group=1, topk_method="greedy",
                                scoring_func="softmax", num_experts_per_tok=6, n_routed_experts=64,
                                rope_scaling={"type": "yarn", "factor": 40, "mscale": 0.707,
                                              "mscale_all_dim": 0.707, "beta_fast": 32, "beta_slow": 1,
                                              "original_max_position_embeddings": 4096})
        del raw["quantization_config"]
        cfg = rf.parse_config(raw)
        self.assertAlmostEqual(cfg["mla"]["scale"], 0.114721, places=6)
        self.assertIsNone(cfg["mla"]["q_lora_rank"])
        # Without rope scaling the scale is qk_head_dim^-0.5.
        del raw["rope_scaling"]
        self.assertEqual(rf.parse_config(raw)["mla"]["scale"], 192 ** -0.5)

    def test_deepseek_rejections(self):
        cases = [(3, {"scoring_func": "softmax"}, "scoring_func 'softmax'"),
                 (2, {"scoring_func": "sigmoid"}, "scoring_func 'sigmoid'"),
                 (3, {"topk_method": "greedy"}, "topk_method"),
                 (2, {"topk_method": "noaux_tc", "scoring_func": "softmax"}, "topk_method 'noaux_tc'"),
                 (3, {"quantization_config": {"quant_method": "fp8", "weight_block_size": [64, 64]}},
                  "weight_block_size"),
                 (3, {"quantization_config": {"quant_method": "gptq"}}, "quant_method 'gptq'"),
                 (3, {"moe_layer_freq": 2}, "moe_layer_freq"),
                 (3, {"n_group": 3}, "n_group"),
                 (3, {"num_key_value_heads": 8}, "num_key_value_heads")]
        for version, fields, message in cases:
            with self.assertRaisesRegex(ValueError, message, msg=str(fields)):
                rf.parse_config(self.deepseek_raw(version, **fields))


# ----------------------------------------------------------------------------
# gpt-oss on a tiny folder.
# ----------------------------------------------------------------------------

class GptOssTest(Tmp):
    ids = [3, 1, 4, 1, 5, 9, 2]

    def test_sink_attention_by_hand(self):
        folder = self.dir("g")
        _, t = make_gpt_oss(folder, layers=1, rope_scaling={"rope_type": "default"}, sliding_window=3)
        cfg, W = load(folder)
        T, H, hd = 5, 4, 8  # two query heads per key/value head
        x = np.random.default_rng(3).standard_normal((T, 64))
        cos, sin = rf.rope_cos_sin(range(T), hd, 150000.0)
        p = "model.layers.0.self_attn"
        for window in (None, 3):
            out = rf.attention(x, W, p, cfg, cos, sin, window)
            q, k, v = ((x @ f64(t, f"{p}.{n}_proj.weight").T + f64(t, f"{p}.{n}_proj.bias")) for n in "qkv")
            sinks = f64(t, p + ".sinks")
            expect = np.zeros((T, H * hd))
            for h in range(H):
                g = h // 2
                for i in range(T):
                    ang = lambda pos: pos * 150000.0 ** (-np.arange(0, hd, 2) / hd)  # noqa: E731
                    qi = rot_half_split(q[i, h * hd:(h + 1) * hd], ang(i))
                    keys = [j for j in range(i + 1) if window is None or j > i - window]
                    sc = np.array([qi @ rot_half_split(k[j, g * hd:(g + 1) * hd], ang(j)) / math.sqrt(hd)
                                   for j in keys])
                    # softmax with exp(sink) in the denominator
                    w = np.exp(sc) / (np.exp(sc).sum() + math.exp(sinks[h]))
                    self.assertLess(w.sum(), 1.0)
                    expect[i, h * hd:(h + 1) * hd] = sum(wj * v[j, g * hd:(g + 1) * hd] for wj, j in zip(w, keys))
            expect = expect @ f64(t, p + ".o_proj.weight").T + f64(t, p + ".o_proj.bias")
            np.testing.assert_allclose(out, expect, rtol=1e-12, atol=1e-13, err_msg=str(window))
        # The sink column matters: without it the rows would sum to 1.
        scores = np.random.default_rng(0).standard_normal((2, 3, 3))
        probs = rf.sink_softmax(scores, np.array([0.0, -50.0]))
        np.testing.assert_allclose(probs[1].sum(axis=-1), 1.0, rtol=1e-15)
        np.testing.assert_allclose(probs[0], np.exp(scores[0]) / (np.exp(scores[0]).sum(-1, keepdims=True) + 1),
                                   rtol=1e-14)

    def test_moe_by_hand(self):
        folder = self.dir("g")
        _, t = make_gpt_oss(folder, layers=1, top_k=2, swiglu_limit=0.5)
        cfg, W = load(folder)
        h = np.random.default_rng(4).standard_normal((3, 64))
        out, positions = rf.moe(h, W, "model.layers.0", cfg)
        p = "model.layers.0.mlp"
        gu_w = mxfp4_by_loops(t[p + ".experts.gate_up_proj_blocks"], t[p + ".experts.gate_up_proj_scales"])
        dn_w = mxfp4_by_loops(t[p + ".experts.down_proj_blocks"], t[p + ".experts.down_proj_scales"])
        logits = h @ f64(t, p + ".router.weight").T + f64(t, p + ".router.bias")
        expect = np.zeros_like(h)
        for i in range(3):
            top = np.argsort(-logits[i], kind="stable")[:2]
            w = np.exp(logits[i][top] - logits[i][top].max())
            w /= w.sum()
            self.assertEqual(positions[i]["experts"], [int(e) for e in top])
            np.testing.assert_allclose(positions[i]["weights"], w, rtol=1e-14)
            np.testing.assert_allclose(positions[i]["router_logits"], logits[i], rtol=1e-14)  # with the bias
            for e, we in zip(top, w):
                gu = gu_w[e] @ h[i] + f64(t, p + ".experts.gate_up_proj_bias")[e]
                gate, up = gu[0::2], gu[1::2]  # interleaved rows
                gate = np.minimum(gate, 0.5)
                up = np.clip(up, -0.5, 0.5)
                act = (up + 1) * gate / (1 + np.exp(-1.702 * gate))
                expect[i] += we * (dn_w[e] @ act + f64(t, p + ".experts.down_proj_bias")[e])
        np.testing.assert_allclose(out, expect, rtol=1e-12, atol=1e-13)

    def test_end_to_end_prefill_and_layer_types(self):
        folder = self.dir("g")
        make_gpt_oss(folder, layers=2)
        full, routing = rf.forward(folder, self.ids)
        self.assertEqual(full.shape, (7, 32))
        self.assertTrue(np.all(np.isfinite(full)))
        self.assertEqual([r["layer"] for r in routing], [0, 1])
        for pos in routing[0]["positions"]:
            self.assertEqual(len(pos["experts"]), 2)
            self.assertAlmostEqual(sum(pos["weights"]), 1.0, places=12)
        for P in (1, 3):
            part, r_part = rf.forward(folder, self.ids, prefill=P)
            np.testing.assert_allclose(part, full, rtol=1e-9, atol=1e-9)
            self.assertEqual([[p["experts"] for p in layer["positions"]] for layer in r_part],
                             [[p["experts"] for p in layer["positions"]] for layer in routing])
        # layer_types: layer 0 slides over 2 keys; all-full changes positions >= 2 only.
        edit_config(folder, layer_types=["full_attention", "full_attention"])
        all_full, _ = rf.forward(folder, self.ids)
        np.testing.assert_array_equal(all_full[:2], full[:2])
        self.assertFalse(np.allclose(all_full[2:], full[2:]))
        # Without layer_types, even layers slide: the same as the explicit list.
        edit_config(folder, layer_types=None)
        np.testing.assert_array_equal(rf.forward(folder, self.ids)[0], full)

    def test_bad_inputs(self):
        folder = self.dir("g")
        _, t = make_gpt_oss(folder, layers=2)
        edit_config(folder, layer_types=["sliding_attention"] * 3)
        with self.assertRaisesRegex(ValueError, "layer_types has 3 entries but num_hidden_layers is 2"):
            rf.forward(folder, self.ids)
        edit_config(folder, layer_types=["sliding_attention", "chunked_attention"])
        with self.assertRaisesRegex(ValueError, "chunked_attention"):
            rf.forward(folder, self.ids)
        edit_config(folder, layer_types=["sliding_attention", "full_attention"], swiglu_alpha=1.5)
        with self.assertRaisesRegex(ValueError, "swiglu_alpha"):
            rf.forward(folder, self.ids)
        edit_config(folder, swiglu_alpha=1.702, experts_per_token=3)
        with self.assertRaisesRegex(ValueError, "experts_per_token"):
            rf.forward(folder, self.ids)
        edit_config(folder, experts_per_token=2)
        rf.forward(folder, self.ids[:2])
        # Scales that do not match the blocks.
        t["model.layers.1.mlp.experts.down_proj_scales"] = np.zeros((4, 64, 2), np.uint8)  # blocks [4, 64, 1, 16]
        write_folder(folder, read_config(folder), t)
        with self.assertRaisesRegex(ValueError, "down_proj_scales"):
            rf.forward(folder, self.ids)

    def test_cli(self):
        folder = self.dir("g")
        make_gpt_oss(folder, layers=1)
        out, routing = self.dir("o.npy"), self.dir("r.json")
        subprocess.run([sys.executable, SCRIPT, folder, "--ids", "1,2,3", "--prefill", "2",
                        "--logits-out", out, "--routing-out", routing], capture_output=True, text=True, check=True)
        expect, r = rf.forward(folder, [1, 2, 3], prefill=2)
        np.testing.assert_array_equal(np.load(out), expect.astype(np.float32))
        with open(routing) as f:
            self.assertEqual(json.load(f)["layers"], r)


# ----------------------------------------------------------------------------
# DeepSeek-V2/V3 on tiny folders.
# ----------------------------------------------------------------------------

class DeepseekTest(Tmp):
    ids = [3, 1, 4, 1, 5, 9, 2]

    def test_absorbed_mla_equals_naive(self):
        for version, q_lora in ((2, None), (3, 16)):
            folder = self.dir(f"v{version}")
            # Default RoPE so the test can write the frequencies itself; rms_norm_eps far
            # from the latent norms' fixed 1e-6 so that a mix-up shows.
            _, t = make_deepseek(folder, version=version, layers=1, q_lora=q_lora, rope_scaling=None,
                                 rms_norm_eps=1e-2)
            cfg, W = load(folder)
            T, H, dn, dr, dv, r = 5, 2, 8, 4, 6, 16
            x = np.random.default_rng(5).standard_normal((T, 32))
            cos, sin = rf.rope_cos_sin(range(T), dr, 10000.0)
            a = "model.layers.0.self_attn"
            self.assertEqual(cfg["mla"]["scale"], (dn + dr) ** -0.5)
            naive = rf.mla_attention(x, W, a, cfg, cos, sin)
            cfg_scaled = dict(cfg, mla=dict(cfg["mla"], scale=0.37))
            naive_scaled = rf.mla_attention(x, W, a, cfg_scaled, cos, sin)
            if q_lora is None:
                q = x @ t[a + ".q_proj.weight"].T
            else:
                qa = rms(x @ t[a + ".q_a_proj.weight"].T, t[a + ".q_a_layernorm.weight"], 1e-6)
                q = qa @ t[a + ".q_b_proj.weight"].T
            ckv = x @ t[a + ".kv_a_proj_with_mqa.weight"].T
            c = rms(ckv[:, :r], t[a + ".kv_a_layernorm.weight"], 1e-6)
            inv = 10000.0 ** (-np.arange(0, dr, 2) / dr)
            k_pe = np.array([rot_pairs(ckv[j, r:], j * inv) for j in range(T)])
            kvb = t[a + ".kv_b_proj.weight"]

            def absorbed(scale):
                outs = []
                for h in range(H):
                    W_UK = kvb[h * (dn + dv):h * (dn + dv) + dn]          # [dn, r]
                    W_UV = kvb[h * (dn + dv) + dn:(h + 1) * (dn + dv)]    # [dv, r]
                    qh = q[:, h * (dn + dr):(h + 1) * (dn + dr)]
                    q_pe = np.array([rot_pairs(qh[i, dn:], i * inv) for i in range(T)])
                    scores = ((qh[:, :dn] @ W_UK) @ c.T + q_pe @ k_pe.T) * scale
                    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
                    P = np.exp(scores - scores.max(axis=1, keepdims=True))
                    P /= P.sum(axis=1, keepdims=True)
                    outs.append((P @ c) @ W_UV.T)
                return np.concatenate(outs, axis=1) @ t[a + ".o_proj.weight"].T
            np.testing.assert_allclose(naive, absorbed((dn + dr) ** -0.5), rtol=1e-9, atol=1e-9,
                                       err_msg=f"V{version}")
            # The softmax scale is the configured one (with yarn it carries m^2).
            np.testing.assert_allclose(naive_scaled, absorbed(0.37), rtol=1e-9, atol=1e-9, err_msg=f"V{version}")
            # rope_interleave false (V3 only) rotates half-split pairs instead: different.
            if version == 3:
                edit_config(folder, rope_interleave=False)
                cfg2 = rf.load_config(folder)
                self.assertFalse(np.allclose(rf.mla_attention(x, W, a, cfg2, cos, sin), naive))

    def test_v3_moe_layer_by_hand(self):
        folder = self.dir("v3")
        _, t = make_deepseek(folder, version=3, layers=2)
        cfg, W = load(folder)
        self.assertEqual(cfg["moe_layers"], [False, True])
        h = np.random.default_rng(6).standard_normal((4, 32))
        out, positions = rf.moe(h, W, "model.layers.1", cfg)
        m = "model.layers.1.mlp"
        logits = h @ t[m + ".gate.weight"].T

        def mlp(prefix, xv):
            return (np_silu(xv @ t[prefix + ".gate_proj.weight"].T) * (xv @ t[prefix + ".up_proj.weight"].T)) \
                @ t[prefix + ".down_proj.weight"].T
        expect = mlp(m + ".shared_experts", h)
        for i in range(4):
            s = 1 / (1 + np.exp(-logits[i]))
            b = s + t[m + ".gate.e_score_correction_bias"]
            sums = [sum(sorted(b[2 * g:2 * g + 2])) for g in range(4)]
            kept = sorted(range(4), key=lambda g: -sums[g])[:2]
            cand = [e for e in range(8) if e // 2 in kept]
            top = sorted(cand, key=lambda e: -b[e])[:2]
            w = s[top] / s[top].sum() * 2.5
            self.assertEqual(positions[i]["experts"], top)
            np.testing.assert_allclose(positions[i]["weights"], w, rtol=1e-13)
            np.testing.assert_allclose(positions[i]["router_logits"], logits[i], rtol=1e-14)
            for e, we in zip(top, w):
                expect[i] += we * mlp(f"{m}.experts.{e}", h[i])
        np.testing.assert_allclose(out, expect, rtol=1e-12, atol=1e-13)

    def test_end_to_end_prefill_fp8_and_mtp(self):
        for version, q_lora in ((2, None), (3, 16)):
            with self.subTest(version=version):
                plain = self.dir(f"plain{version}")
                cfg, values = make_deepseek(plain, version=version, q_lora=q_lora, layers=3)
                full, routing = rf.forward(plain, self.ids)
                self.assertTrue(np.all(np.isfinite(full)))
                self.assertEqual([r["layer"] for r in routing], [1, 2])
                for P in (1, 4):
                    part, _ = rf.forward(plain, self.ids, prefill=P)
                    np.testing.assert_allclose(part, full, rtol=1e-9, atol=1e-9)
                if version == 2:
                    for pos in routing[0]["positions"]:  # greedy softmax weights x 1.5, no renorm
                        self.assertLess(sum(pos["weights"]), 1.5)
                else:
                    for pos in routing[0]["positions"]:  # renormalised x 2.5
                        self.assertAlmostEqual(sum(pos["weights"]), 2.5, places=12)
        # FP8 weights with block scales give the same logits as their dequantized values
        # stored as float64; an MTP layer num_hidden_layers is ignored.
        q8 = self.dir("fp8")
        _, values = make_deepseek(q8, version=3, layers=3, fp8=True, mtp=True)
        ref = self.dir("ref")
        cfg = read_config(q8)
        del cfg["quantization_config"]
        write_folder(ref, cfg, values)
        a, ra = rf.forward(q8, self.ids)
        b, rb = rf.forward(ref, self.ids)
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)
        self.assertEqual([[p["experts"] for p in layer["positions"]] for layer in ra],
                         [[p["experts"] for p in layer["positions"]] for layer in rb])

    def test_fp8_without_scale_is_refused(self):
        folder = self.dir("q8")
        make_deepseek(folder, version=3, layers=2, fp8=True)
        path = os.path.join(folder, "model.safetensors")
        header, base = rf.read_safetensors_header(path)
        t = {}
        with open(path, "rb") as f:
            data = f.read()
        for name, info in header.items():
            b, e = info["data_offsets"]
            raw = np.frombuffer(data[base + b:base + e], dtype={"F32": "<f4", "F8_E4M3": "u1"}[info["dtype"]])
            raw = raw.reshape(info["shape"])
            t[name] = ("F8_E4M3", raw) if info["dtype"] == "F8_E4M3" else raw.astype(np.float32)
        del t["model.layers.0.self_attn.kv_b_proj.weight_scale_inv"]
        write_raw_safetensors(path, t)
        with self.assertRaisesRegex(ValueError, "kv_b_proj.weight has no .*weight_scale_inv"):
            rf.forward(folder, self.ids)

    def test_v2_group_limited_and_shared_experts_count(self):
        folder = self.dir("v2")
        make_deepseek(folder, version=2, layers=2, n_shared=2, topk_method="group_limited_greedy",
                      n_group=4, topk_group=1)
        logits, routing = rf.forward(folder, self.ids)
        self.assertTrue(np.all(np.isfinite(logits)))
        for pos in routing[0]["positions"]:
            self.assertEqual(pos["experts"][0] // 2, pos["experts"][1] // 2)  # one group kept
        # Shared experts are moe_intermediate_size * n_shared_experts wide; a config that
        # disagrees is refused.
        edit_config(folder, n_shared_experts=3)
        with self.assertRaisesRegex(ValueError, "shared_experts"):
            rf.forward(folder, self.ids)


# ----------------------------------------------------------------------------
# PhiMoE on a tiny folder.
# ----------------------------------------------------------------------------

class PhimoeTest(Tmp):
    ids = [3, 1, 4, 1, 5, 9]

    def test_layer_norm(self):
        x = np.array([[1.0, 2.0, 3.0, 6.0]])
        # mean 3, biased variance (4 + 1 + 0 + 9)/4 = 3.5
        out = rf.layer_norm(x, np.array([1.0, 2.0, 1.0, 1.0]), np.array([0.0, 0.0, 0.0, 1.0]), 0.5)
        np.testing.assert_allclose(out, [[-2 / 2, -2 / 2, 0.0, 3 / 2 + 1]], rtol=1e-15)

    def test_end_to_end(self):
        folder = self.dir("phi")
        _, t = make_phimoe(folder, orig=4)
        cfg = rf.load_config(folder)
        self.assertEqual((cfg["arch"], cfg["norm"], cfg["lm_head_bias"]), ("PhimoeForCausalLM", "layer", True))
        full, routing = rf.forward(folder, self.ids)  # S = 6 > 4: long factors throughout
        self.assertTrue(np.all(np.isfinite(full)))
        self.assertEqual([r["layer"] for r in routing], [0, 1])
        for pos in routing[0]["positions"]:
            self.assertEqual(len(pos["experts"]), 2)
            self.assertTrue(all(0 < w <= 1 for w in pos["weights"]))
        # Every call past the boundary uses the long factors: prefill 5 agrees.
        np.testing.assert_allclose(rf.forward(folder, self.ids, prefill=5)[0], full, rtol=1e-9, atol=1e-9)
        # Prefill 3: the first call (S = 3) uses the short factors and short mscale,
        # so its rows equal a one-call forward of those 3 tokens and not the full run.
        part, _ = rf.forward(folder, self.ids, prefill=3)
        np.testing.assert_array_equal(part[:3], rf.forward(folder, self.ids[:3])[0])
        self.assertFalse(np.allclose(part[:3], full[:3]))
        # With the boundary beyond T every call is short: prefill agrees with one call.
        edit_config(folder, rope_scaling=dict(read_config(folder)["rope_scaling"],
                                              original_max_position_embeddings=8))
        short, _ = rf.forward(folder, self.ids)
        for P in (1, 4):
            np.testing.assert_allclose(rf.forward(folder, self.ids, prefill=P)[0], short, rtol=1e-9, atol=1e-9)
        # LayerNorm everywhere: a constant added to every embedding entry changes nothing
        # (stored as float64 so that the shifted values are exact).
        t["model.embed_tokens.weight"] = t["model.embed_tokens.weight"].astype(np.float64) + 0.75
        cfg_raw = read_config(folder)
        write_folder(self.dir("shift"), cfg_raw, t)
        np.testing.assert_allclose(rf.forward(self.dir("shift"), self.ids)[0], short, rtol=1e-9, atol=1e-9)
        # The lm_head bias is added to every row.
        t["lm_head.bias"] = t["lm_head.bias"].astype(np.float64) + 2.0
        write_folder(self.dir("shift"), cfg_raw, t)
        np.testing.assert_allclose(rf.forward(self.dir("shift"), self.ids)[0], short + 2.0, rtol=1e-9, atol=1e-9)

    def test_moe_by_hand(self):
        folder = self.dir("phi")
        _, t = make_phimoe(folder, layers=1, arch="PhimoeForCausalLM", router_jitter_noise=0.3)
        cfg, W = load(folder)
        h = np.random.default_rng(8).standard_normal((4, 16))
        out, positions = rf.moe(h, W, "model.layers.0", cfg)
        p = "model.layers.0.block_sparse_moe"
        logits = h @ f64(t, p + ".gate.weight").T
        expect = np.zeros_like(h)
        for i in range(4):
            s = logits[i]
            i1 = int(np.argmax(s))
            keep1 = [j for j in range(4) if (s[i1] - s[j]) / max(abs(s[j]), s[i1]) <= 0.6]
            w1 = math.exp(s[i1]) / sum(math.exp(s[j]) for j in keep1)
            i2 = max((j for j in range(4) if j != i1), key=lambda j: (s[j], -j))
            keep2 = [j for j in range(4) if j != i1 and (s[i2] - s[j]) / max(abs(s[j]), s[i2]) <= 0.6]
            w2 = math.exp(s[i2]) / sum(math.exp(s[j]) for j in keep2)
            self.assertEqual(positions[i]["experts"], [i1, i2])
            np.testing.assert_allclose(positions[i]["weights"], [w1, w2], rtol=1e-13)
            for e, we in ((i1, w1), (i2, w2)):
                q = f"{p}.experts.{e}"
                y = np_silu(h[i] @ f64(t, q + ".w1.weight").T) * (h[i] @ f64(t, q + ".w3.weight").T)
                expect[i] += we * (y @ f64(t, q + ".w2.weight").T)
        np.testing.assert_allclose(out, expect, rtol=1e-12, atol=1e-13)
        self.assertTrue(any(w < 1 for pos in positions for w in pos["weights"]))  # eps 0.3 admits near-ties

    def test_rejections(self):
        folder = self.dir("phi")
        make_phimoe(folder, num_experts_per_tok=3)
        with self.assertRaisesRegex(ValueError, "sparsemixer picks 2"):
            rf.forward(folder, self.ids)


if __name__ == "__main__":
    unittest.main()
