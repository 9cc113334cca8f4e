#!/usr/bin/python3
"""Helper of tools/compare_llamacpp.sh: writes the GGUF and the report.

  compare_llamacpp_report.py gguf --gguf-py DIR MODEL_DIR OUT.gguf
      Writes a BF16 GGUF of a synthetic Hugging Face folder (OlmoeForCausalLM
      or MixtralForCausalLM) with llama.cpp's gguf-py package.
  compare_llamacpp_report.py table --runs DIR --levels fp16:bf16,... --rounds N --json OUT
      Reads the per-round JSON of `epwa bench` and `llama-bench`, prints the
      comparison tables and writes them as JSON.

Why not llama.cpp's convert_hf_to_gguf.py: it imports `transformers` and
`mistral_common` at module level (before looking at the model), and builds
the vocabulary through `transformers.AutoTokenizer`; neither package is
installed here and nothing may be downloaded. Speed does not depend on how
the file was written, only on its tensors, so this script writes the same
tensors itself: the names, shapes and types that llama.cpp's loader expects
for the architecture (checked against its src/llama-model.cpp), weights
copied bit for bit from the safetensors, and the tokenizer.json vocabulary
as a SentencePiece-style ("llama") vocabulary, the kind llama.cpp uses for
byte-fallback BPE such as the one `epwa synth` writes. It needs only numpy
and gguf-py (numpy and PyYAML). Checked by hand: on fixture-mixtral, and on
fixture-olmoe written without clip_qkv, llama.cpp's llama-simple generates
the same greedy tokens from these files as `epwa run --temperature 0
--repeat-penalty 1` from the folders.
"""

import argparse
import json
import math
import os
import statistics
import struct
import sys
from pathlib import Path

import numpy as np


# ---------------------------------------------------------------- safetensors


class SafeTensors:
    """Memory-mapped tensors of a Hugging Face folder (one file or an index).

    The format is an 8-byte little-endian header length, a JSON header of
    name -> dtype, shape and byte range, then the raw data; reading it here
    avoids a dependency on the `safetensors` package, which is not installed.
    """

    DTYPES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}

    def __init__(self, model_dir: Path):
        index = model_dir / "model.safetensors.index.json"
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        self.entries = {}
        for name in files:
            path = model_dir / name
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                if info["dtype"] not in self.DTYPES:
                    raise SystemExit(f"{path}: {key} has dtype {info['dtype']}; only BF16, F16 and F32 are handled")
                self.entries[key] = (data, info)

    def names(self):
        return list(self.entries)

    def shape(self, name):
        return tuple(self.entries[name][1]["shape"])

    def dtype(self, name):
        return self.entries[name][1]["dtype"]

    def array(self, name):
        """The tensor as stored: BF16 comes back as its raw uint16 bits."""
        data, info = self.entries[name]
        begin, end = info["data_offsets"]
        return data[begin:end].view(self.DTYPES[info["dtype"]]).reshape(info["shape"])


def to_bf16_bits(a: np.ndarray, src_dtype: str) -> np.ndarray:
    """bf16 bits of a tensor; BF16 sources are passed through untouched."""
    if src_dtype == "BF16":
        return np.ascontiguousarray(a)
    f = np.ascontiguousarray(a, dtype=np.float32)
    bits = f.view(np.uint32)
    # Round to nearest even, the rounding torch and llama.cpp use for bf16.
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def to_f32(a: np.ndarray, src_dtype: str) -> np.ndarray:
    if src_dtype == "BF16":
        return (np.ascontiguousarray(a).astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(a, dtype=np.float32)


# ---------------------------------------------------------------- GGUF writer


def permute_for_norm_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q/k projection reordered from halves to adjacent pairs.

    Hugging Face's Llama/Mixtral rotate the two halves of each head
    (rotate_half), llama.cpp's "llama" architecture rotates adjacent pairs;
    reordering the output rows of q and k makes the two the same function.
    OLMoE is loaded with the NEOX (halves) rotation and needs no reordering.
    """
    out, inp = w.shape
    head_dim = out // n_head
    return w.reshape(n_head, 2, head_dim // 2, inp).swapaxes(1, 2).reshape(out, inp)


def load_vocab(model_dir: Path, vocab_size: int):
    """tokens, scores and types for a SentencePiece-style GGUF vocabulary.

    llama-bench never tokenizes text (it feeds random ids), but llama.cpp
    refuses a model whose vocabulary does not match the embedding rows, so
    the list is padded to vocab_size with unused tokens. Scores rank the BPE
    pieces by id (earlier merges score higher), which is how a piece-score
    tokenizer reproduces BPE merge order closely enough for text.
    """
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    model = tok["model"]
    pieces = {}
    if model.get("type") == "Unigram":
        for i, (piece, score) in enumerate(model["vocab"]):
            pieces[i] = (piece, float(score))
    else:
        for piece, i in model["vocab"].items():
            pieces[i] = (piece, -float(i))
    special = {}
    for added in tok.get("added_tokens", []):
        pieces[added["id"]] = (added["content"], 0.0)
        special[added["id"]] = added.get("special", False)
    if pieces and max(pieces) >= vocab_size:
        raise SystemExit(f"tokenizer.json has id {max(pieces)}, beyond vocab_size {vocab_size}")
    tokens, scores, types = [], [], []
    unk = model.get("unk_token")
    for i in range(vocab_size):
        piece, score = pieces.get(i, (f"[PAD{i}]", -1e9))
        if i not in pieces:
            kind = 5  # UNUSED
        elif special.get(i):
            kind = 2 if piece == unk else 3  # UNKNOWN or CONTROL
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            kind = 6  # BYTE: the byte-fallback pieces
        else:
            kind = 1  # NORMAL
        tokens.append(piece)
        scores.append(score)
        types.append(kind)
    return tokens, scores, types, tok


def special_ids(model_dir: Path, tokens, cfg):
    """bos/eos/unk ids: the tokenizer's special strings, else config.json."""
    tc_path = model_dir / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text()) if tc_path.exists() else {}
    index = {t: i for i, t in enumerate(tokens)}

    def lookup(key):
        value = tc.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        return index.get(value) if isinstance(value, str) else None

    ids = {"bos": lookup("bos_token"), "eos": lookup("eos_token"), "unk": lookup("unk_token")}
    # config.json overrides: OLMoE has no BOS and ends on a vocabulary token.
    if "bos_token_id" in cfg:
        ids["bos"] = cfg["bos_token_id"] if isinstance(cfg["bos_token_id"], int) and cfg["bos_token_id"] >= 0 else None
    eos = cfg.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    if isinstance(eos, int) and eos >= 0:
        ids["eos"] = eos
    add_bos = bool(tc.get("add_bos_token", ids["bos"] is not None)) and ids["bos"] is not None
    return ids, add_bos


def write_gguf(args):
    sys.path.insert(0, str(Path(args.gguf_py).resolve()))
    import gguf  # noqa: E402  (llama.cpp's own package, found through --gguf-py)

    model_dir = Path(args.model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    arch_name = (cfg.get("architectures") or ["?"])[0]
    # llama.cpp loads Mixtral as its "llama" architecture with expert tensors.
    if arch_name == "OlmoeForCausalLM":
        arch, rope_pairs = gguf.MODEL_ARCH.OLMOE, False
        moe_prefix, expert_names = "mlp", {"gate_proj": "gate", "up_proj": "up", "down_proj": "down"}
        n_expert = cfg["num_experts"]
    elif arch_name == "MixtralForCausalLM":
        arch, rope_pairs = gguf.MODEL_ARCH.LLAMA, True
        moe_prefix, expert_names = "block_sparse_moe", {"w1": "gate", "w3": "up", "w2": "down"}
        n_expert = cfg["num_local_experts"]
    else:
        raise SystemExit(f"{arch_name}: only OlmoeForCausalLM and MixtralForCausalLM are written "
                         "(use PRESET=olmoe-1b-7b, bench-moe or mixtral-8x7b)")
    arch_str = gguf.MODEL_ARCH_NAMES[arch]
    T = gguf.MODEL_TENSOR

    def tname(kind, bid=None):
        return gguf.TENSOR_NAMES[kind].format(bid=bid) + ".weight"

    st = SafeTensors(model_dir)
    n_layer = cfg["num_hidden_layers"]
    n_head = cfg["num_attention_heads"]
    n_head_kv = cfg.get("num_key_value_heads") or n_head
    d_model = cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or d_model // n_head

    # Every tensor, in file order: (gguf name, shape, "bf16" or "f32", producer).
    plan = []
    used = set()

    def add(name, hf_name, kind, transform=None):
        if hf_name not in st.entries:
            raise SystemExit(f"{model_dir}: tensor {hf_name} is missing")
        used.add(hf_name)
        shape = st.shape(hf_name)

        def produce(hf_name=hf_name, kind=kind, transform=transform):
            a = st.array(hf_name)
            if transform is not None:
                a = transform(a)
            return to_f32(a, st.dtype(hf_name)) if kind == "f32" else to_bf16_bits(a, st.dtype(hf_name))

        plan.append((name, shape, kind, produce))

    def add_experts(name, bid, hf_kind):
        hf_names = [f"model.layers.{bid}.{moe_prefix}.experts.{e}.{hf_kind}.weight" for e in range(n_expert)]
        for h in hf_names:
            if h not in st.entries:
                raise SystemExit(f"{model_dir}: tensor {h} is missing")
        used.update(hf_names)
        shape = (n_expert,) + st.shape(hf_names[0])

        # llama.cpp stores each layer's experts as one 3-D tensor; stacking
        # one projection of one layer at a time keeps memory to ~270 MB.
        def produce(hf_names=hf_names):
            return np.stack([to_bf16_bits(st.array(h), st.dtype(h)) for h in hf_names])

        plan.append((name, shape, "bf16", produce))

    add(tname(T.TOKEN_EMBD), "model.embed_tokens.weight", "bf16")
    for i in range(n_layer):
        p = f"model.layers.{i}."
        add(tname(T.ATTN_NORM, i), p + "input_layernorm.weight", "f32")
        q_fix = (lambda a: permute_for_norm_rope(a, n_head)) if rope_pairs else None
        k_fix = (lambda a: permute_for_norm_rope(a, n_head_kv)) if rope_pairs else None
        add(tname(T.ATTN_Q, i), p + "self_attn.q_proj.weight", "bf16", q_fix)
        add(tname(T.ATTN_K, i), p + "self_attn.k_proj.weight", "bf16", k_fix)
        add(tname(T.ATTN_V, i), p + "self_attn.v_proj.weight", "bf16")
        add(tname(T.ATTN_OUT, i), p + "self_attn.o_proj.weight", "bf16")
        if arch == gguf.MODEL_ARCH.OLMOE:
            add(tname(T.ATTN_Q_NORM, i), p + "self_attn.q_norm.weight", "f32")
            add(tname(T.ATTN_K_NORM, i), p + "self_attn.k_norm.weight", "f32")
        add(tname(T.FFN_NORM, i), p + "post_attention_layernorm.weight", "f32")
        # The router stays float32, as llama.cpp's converter and epwa keep it.
        add(tname(T.FFN_GATE_INP, i), p + f"{moe_prefix}.gate.weight", "f32")
        for hf_kind, kind in expert_names.items():
            gg = {"gate": T.FFN_GATE_EXP, "up": T.FFN_UP_EXP, "down": T.FFN_DOWN_EXP}[kind]
            add_experts(tname(gg, i), i, hf_kind)
    add(tname(T.OUTPUT_NORM), "model.norm.weight", "f32")
    if "lm_head.weight" in st.entries:
        add(tname(T.OUTPUT), "lm_head.weight", "bf16")
    elif arch == gguf.MODEL_ARCH.OLMOE:
        raise SystemExit(f"{model_dir}: OLMoE needs lm_head.weight (tied embeddings are not handled)")
    # llama.cpp's "llama" architecture reuses token_embd when output is absent.

    leftover = [n for n in st.names() if n not in used]
    if leftover:
        raise SystemExit(f"{model_dir}: tensors this writer does not map: {leftover[:5]}")

    out = Path(args.out)
    tmp = out.with_name(out.name + ".part")
    w = gguf.GGUFWriter(str(tmp), arch_str)
    w.add_name(f"{arch_name} ({model_dir.name}, synthetic)")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(d_model)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    w.add_expert_count(n_expert)
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    if cfg.get("clip_qkv"):
        # llama.cpp's OLMoE graph has no q/k/v clamp, so with clip_qkv set
        # the two engines compute slightly different functions (greedy
        # tokens part after a few steps on fixture-olmoe, which sets 1.5).
        # The olmoe-1b-7b preset, like the real OLMoE-1B-7B, leaves it null.
        print(f"warning: clip_qkv={cfg['clip_qkv']} is recorded but llama.cpp's OLMoE graph does not clamp",
              file=sys.stderr)
        w.add_clamp_kqv(float(cfg["clip_qkv"]))

    tokens, scores, types, _ = load_vocab(model_dir, cfg["vocab_size"])
    ids, add_bos = special_ids(model_dir, tokens, cfg)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    if ids["bos"] is not None:
        w.add_bos_token_id(ids["bos"])
    if ids["eos"] is not None:
        w.add_eos_token_id(ids["eos"])
    if ids["unk"] is not None:
        w.add_unk_token_id(ids["unk"])
    w.add_add_bos_token(add_bos)
    w.add_add_eos_token(False)

    # Header and tensor table first, then each tensor streamed in plan order,
    # so the 3-4 GB of weights are never all in memory at once.
    for name, shape, kind, _ in plan:
        n = math.prod(shape)
        if kind == "f32":
            w.add_tensor_info(name, shape, np.dtype(np.float32), n * 4)
        else:
            w.add_tensor_info(name, shape, np.dtype(np.uint16), n * 2, raw_dtype=gguf.GGMLQuantizationType.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    total = 0
    for name, shape, kind, produce in plan:
        a = produce()
        if tuple(a.shape) != tuple(shape):
            raise SystemExit(f"{name}: produced shape {a.shape}, planned {shape}")
        w.write_tensor_data(a)
        total += a.nbytes
    w.close()
    os.replace(tmp, out)
    print(f"wrote {out}: {arch_str}, {len(plan)} tensors, {total / 1e9:.2f} GB", file=sys.stderr)


# ---------------------------------------------------------------- report


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: {e}")


def llama_rate(path: Path):
    """Best tokens/s of one llama-bench call (best of its -r samples).

    Taking the best of the call's samples mirrors `epwa bench`, which
    reports the best of its --repeats.
    """
    rows = read_json(path)
    if not isinstance(rows, list) or len(rows) != 1:
        raise SystemExit(f"{path}: expected one llama-bench test, got {rows!r:.200}")
    row = rows[0]
    samples = row.get("samples_ts") or [row["avg_ts"]]
    return max(samples), row


def summarize(values):
    return {"samples": values, "best": max(values), "median": statistics.median(values)}


def table(args):
    runs = Path(args.runs)
    levels = [pair.split(":") for pair in args.levels.split(",")]
    result = {"rounds": args.rounds,
              "statistic": "tok/s: median of rounds, each the best of one call's repeats; "
                           "ratio_median: median of per-round epwa/llama.cpp ratios",
              "levels": []}
    info = {}
    for epwa_level, llama_type in levels:
        e_pre, e_dec, l_pre, l_dec = [], [], [], []
        for r in range(1, args.rounds + 1):
            e = read_json(runs / f"epwa-{epwa_level}-r{r}.json")
            e_pre.append(e["prefill_tokens_per_s"])
            e_dec.append(e["decode_tokens_per_s"])
            pp, pp_row = llama_rate(runs / f"llama-{llama_type}-pp-r{r}.json")
            tg, tg_row = llama_rate(runs / f"llama-{llama_type}-tg-r{r}.json")
            l_pre.append(pp)
            l_dec.append(tg)
            info = {
                "epwa_isa": e.get("isa"),
                "epwa_threads": e.get("threads"),
                "llama_build_commit": pp_row.get("build_commit"),
                "llama_build_number": pp_row.get("build_number"),
                "llama_cpu_info": pp_row.get("cpu_info"),
                "llama_threads": pp_row.get("n_threads"),
                "llama_type_k": pp_row.get("type_k"),
                "llama_flash_attn": pp_row.get("flash_attn"),
                "prompt_tokens": pp_row.get("n_prompt"),
                "gen_tokens": tg_row.get("n_gen"),
                "gen_depth": tg_row.get("n_depth"),
            }
            result.setdefault("model_bytes", {})[llama_type] = pp_row.get("model_size")
            result.setdefault("epwa_weight_bytes", {})[epwa_level] = e.get("weight_bytes")
        row = {
            "epwa_level": epwa_level,
            "llama_type": llama_type,
            "prefill": {"epwa": summarize(e_pre), "llama_cpp": summarize(l_pre)},
            "decode": {"epwa": summarize(e_dec), "llama_cpp": summarize(l_dec)},
        }
        for phase in ("prefill", "decode"):
            p = row[phase]
            # Each round's two figures were measured minutes apart, so their
            # ratio is the pair least touched by the machine's drift; the
            # median of those per-round ratios is the headline figure.
            paired = [e / l for e, l in zip(p["epwa"]["samples"], p["llama_cpp"]["samples"])]
            p["ratio_per_round"] = paired
            p["ratio_median"] = statistics.median(paired)
            p["ratio_best"] = p["epwa"]["best"] / p["llama_cpp"]["best"]
        result["levels"].append(row)
    result["setup"] = info
    result["setup"].update(json.loads(args.setup) if args.setup else {})
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")

    print(f"tok/s: median of {args.rounds} alternating rounds, each the best of one call's repeats")
    print("ratio: epwa / llama.cpp (above 1: epwa is faster), median of the per-round ratios;"
          " [best]: best epwa over best llama.cpp")
    # A llama-bench older than its -d option reports no depth: its decode
    # then starts from an empty cache, which the header says rather than
    # printing "after None".
    depth = info.get("gen_depth")
    after = f"after {depth} tokens" if depth is not None else "llama.cpp's from an empty cache"
    for phase, unit in (("prefill", f"{info.get('prompt_tokens')}-token prompt"),
                        ("decode", f"{info.get('gen_tokens')} tokens, {after}")):
        print()
        print(f"{phase} tok/s ({unit})")
        print(f"{'level':<14} {'epwa':>10} {'llama.cpp':>10} {'ratio':>7} {'[best]':>7}")
        for row in result["levels"]:
            p = row[phase]
            label = f"{row['epwa_level']}/{row['llama_type']}"
            print(f"{label:<14} {p['epwa']['median']:>10.1f} {p['llama_cpp']['median']:>10.1f} "
                  f"{p['ratio_median']:>6.2f}x {p['ratio_best']:>6.2f}x")
    print()
    print(f"written to {args.json}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gguf", help="write a BF16 GGUF of a synthetic Hugging Face folder")
    g.add_argument("--gguf-py", required=True, help="llama.cpp's gguf-py folder")
    g.add_argument("model_dir")
    g.add_argument("out")
    t = sub.add_parser("table", help="print and write the comparison")
    t.add_argument("--runs", required=True)
    t.add_argument("--levels", required=True, help="epwa level:llama.cpp type pairs, e.g. fp16:bf16,int4:q4_0")
    t.add_argument("--rounds", type=int, required=True)
    t.add_argument("--json", required=True)
    t.add_argument("--setup", help="extra JSON object recorded under setup")
    args = ap.parse_args()
    if args.cmd == "gguf":
        write_gguf(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
