"""epwa from Python: run MoE models, embed and detect Expert Pathway Watermarks.

    import epwa
    engine = epwa.Engine("models/tiny-moe")
    config = epwa.WatermarkingConfig(key_file="wm.key")
    out = engine.generate("Once upon a time", max_new_tokens=200, watermark=config)
    detector = epwa.WatermarkDetector(engine, config)
    result = detector.detect(out.text, prompt="Once upon a time")
    result.z_score, result.p_value, result.prediction

Everything here runs the same C++ library as the `epwa` command, so the same
inputs give the same numbers as `epwa run` and `epwa detect`. Model work
releases the GIL. Errors raise `epwa.Error` with the CLI's messages.

Names follow transformers' watermarking API where one exists
(`WatermarkingConfig`, `WatermarkDetector`, `num_tokens_scored`,
`num_green_tokens`, `green_fraction`, `z_score`, `p_value`, `prediction`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from . import _epwa

Error = _epwa.Error

__all__ = [
    "Engine",
    "Error",
    "GenerateOutput",
    "WatermarkingConfig",
    "WatermarkDetector",
    "DetectionResult",
    "keygen",
    "kernel_flags",
    "set_kernel_flags",
    "DEFAULT_SCHEME",
]

# The scheme epwa marks and detects with when none is named (EPW-A v2's
# epw2-et, chosen by the evaluation in docs/watermark-eval/report.md).
DEFAULT_SCHEME: str = _epwa.default_scheme()

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)


def _check_int(name: str, value: Any, lo: int, hi: int, allow_none: bool = False) -> None:
    """The CLI's range checks for integer options, raised as epwa.Error."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= int(value) <= hi:
        raise Error(f"{name} must be an integer in [{lo}, {hi}], not {value!r}")


def _token_ids(ids: Any, what: str = "ids") -> list:
    """Token ids as a list of Python ints, each a non-negative int32 (the range the library
    takes; whether they are in the model's vocabulary is its own check)."""
    try:
        values = np.asarray(ids).reshape(-1)
    except (TypeError, ValueError):
        raise Error(f"{what} must be a sequence of integer token ids") from None
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise Error(f"{what} must be a sequence of integer token ids")
    out = [int(t) for t in values]
    for t in out:
        if not 0 <= t < 1 << 31:
            raise Error(f"{what} must hold non-negative integer token ids below 2^31, not {t}")
    return out


def _byte_size(value: Union[int, str, None]) -> Optional[int]:
    """6 * 2**30, "6G", "512M" -> bytes (K/M/G/T are powers of 1024), as --mem-budget."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise Error("mem_budget must be a number of bytes or a size such as '6G'")
    if isinstance(value, (int, np.integer)):
        if value <= 0:
            raise Error("mem_budget must be positive")
        return int(value)
    match = _SIZE.match(str(value))
    if not match:
        raise Error(f"mem_budget expects a size such as 6G, 512M or 1500000000, got '{value}'")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[match.group(2).upper()]
    size = int(match.group(1)) * scale
    if size <= 0 or size >= 1 << 64:
        raise Error(f"mem_budget '{value}' is out of range")
    return size


class Engine:
    """A Hugging Face model folder, loaded at the quantization level that fits.

    quant: "auto" (the EPW_LOAD_IN_4BIT / EPW_LOAD_IN_8BIT / EPW_FAST_LOADING
    variables when set, else the largest level the memory plan fits), or a
    level: "none", "fp16", "bf16", "int8", "int4", "nf4", "mxfp4" (as
    `epwa --quant`). ctx: the context the memory plan must hold (None: the
    model's, capped at 4096). threads: None for all cores. mem_budget: bytes
    or a size like "6G" (None: free memory). int8_lm_head: at the int levels,
    store an untied lm_head as int8 (`--int8-lm-head`). no_mmap: copy the
    weights that would be read from the mapped files into this process's
    memory (`--no-mmap`; also EPW_NO_MMAP=1). kv_cache: "f32", "f16" or
    "bf16", the KV cache's element type (`--kv-cache`; None: EPW_KV_CACHE,
    else f32).
    """

    def __init__(self, model_dir: str, quant: Optional[str] = "auto", ctx: Optional[int] = None,
                 threads: Optional[int] = None, mem_budget: Union[int, str, None] = None,
                 cache: bool = True, parallel: int = 1, batch_tokens: Optional[int] = None,
                 int8_lm_head: bool = False, no_mmap: bool = False, kv_cache: Optional[str] = None):
        level = None if quant in (None, "auto") else str(quant)
        _check_int("ctx", ctx, 0, 1 << 24, allow_none=True)
        _check_int("threads", threads, 0, 1024, allow_none=True)
        _check_int("parallel", parallel, 1, 4096)
        _check_int("batch_tokens", batch_tokens, 0, 1 << 24, allow_none=True)
        self._engine = _epwa._Engine(str(model_dir), level, int(ctx or 0), int(threads or 0),
                                     _byte_size(mem_budget), bool(cache), int(parallel),
                                     int(batch_tokens or 0), bool(int8_lm_head), bool(no_mmap),
                                     None if kv_cache is None else str(kv_cache))
        self.info: dict = json.loads(self._engine.info_json())
        self.router_hash: str = self.info["router_hash"]

    def plan(self) -> dict:
        """The memory plan the engine was loaded with: level, planned and budgeted bytes, context."""
        return json.loads(self._engine.plan_json())

    def tokenize(self, text: str, add_special_tokens: bool = True) -> np.ndarray:
        """Ids as `epwa run` encodes a prompt (with BOS where the model wants one)."""
        return np.asarray(self._engine.tokenize(text, bool(add_special_tokens)), dtype=np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        return self._engine.decode(_token_ids(ids))

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The conversation rendered with the model's chat template, ready for a reply."""
        return self._engine.render_chat(json.dumps(list(messages)))

    def generate(self, prompt: Union[str, Sequence[Mapping[str, Any]]], max_new_tokens: Optional[int] = None,
                 temperature: Optional[float] = None, top_p: Optional[float] = None,
                 top_k: Optional[int] = None, min_p: Optional[float] = None,
                 repeat_penalty: Optional[float] = None, seed: int = 0,
                 watermark: Optional["WatermarkingConfig"] = None, ignore_eos: bool = False) -> "GenerateOutput":
        """Generates a continuation of `prompt` (text), or the reply to `prompt` as a list of chat
        messages ({"role", "content"}, rendered with the model's chat template).

        Unset sampling values come from generation_config.json, as with `epwa run`; the same
        arguments and seed give the same tokens as `epwa run`. With `watermark` the text carries
        that watermark. `experts` in the result is the router's choice each token was sampled
        under: [tokens, moe_layers, top_k].
        """
        chat = not isinstance(prompt, str)
        text = self.apply_chat_template(prompt) if chat else prompt
        _check_int("seed", seed, 0, (1 << 64) - 1)
        _check_int("max_new_tokens", max_new_tokens, 0, 1 << 30, allow_none=True)
        _check_int("top_k", top_k, 0, 1 << 30, allow_none=True)
        raw, experts = self._engine.generate(
            text, chat, max_new_tokens, temperature, top_p, top_k, min_p, repeat_penalty, int(seed),
            bool(ignore_eos), watermark._generation_json() if watermark is not None else None)
        out = json.loads(raw)
        return GenerateOutput(text=out["text"], ids=np.asarray(out["ids"], dtype=np.int32),
                              prompt=out["prompt"], prompt_ids=np.asarray(out["prompt_ids"], dtype=np.int32),
                              experts=experts, stats=out["stats"], watermark=out["watermark"])

    def score(self, text: Union[str, Sequence[int], np.ndarray], logits: bool = False) -> dict:
        """One causal forward pass over `text` (encoded as a prompt) or over token ids (used as
        given): NumPy arrays of `ids` [T], `logprobs` [T] (of token t given the tokens before it;
        NaN at 0, as `epwa score`), `experts` and `expert_weights` [T, moe_layers, top_k],
        `router_logits` [T, moe_layers, num_experts], and `logits` [T, vocab] when asked.
        """
        if isinstance(text, str):
            return self._engine.score([], text, bool(logits))
        return self._engine.score(_token_ids(text), None, bool(logits))


@dataclasses.dataclass
class GenerateOutput:
    text: str
    ids: np.ndarray
    prompt: str
    prompt_ids: np.ndarray
    experts: np.ndarray  # [tokens, moe_layers, top_k]
    stats: dict
    watermark: Optional[dict]


@dataclasses.dataclass
class WatermarkingConfig:
    """What marks text and what detection tests for.

    scheme: "epw2-et" (the default), "epw2-minhash", "epw2-votes" (EPW-A v2), "gsg", "ewp"
    (EPW-A v1) or "kgw" (the previous-token baseline). key_file: the 32-byte key from
    `epwa keygen` or `epwa.keygen()` (None: $EPWA_KEY_FILE). router_layer: the MoE layer whose
    router keys the lists (None: the scheme's own). expert_deltas: ewp's per-expert delta.
    """

    scheme: str = DEFAULT_SCHEME
    gamma: float = 0.25
    delta: float = 2.0
    key_file: Optional[str] = None
    router_layer: Optional[int] = None
    expert_deltas: Optional[Sequence[float]] = None

    def _layer(self) -> int:
        # kSchemeDefaultLayer in the C++ library: "the scheme's own default".
        return -1000000 if self.router_layer is None else int(self.router_layer)

    def _generation_json(self) -> str:
        return json.dumps({"scheme": self.scheme, "gamma": float(self.gamma), "delta": float(self.delta),
                           "router_layer": self._layer(),
                           "expert_deltas": None if self.expert_deltas is None else [float(x) for x in self.expert_deltas],
                           "key_file": None if self.key_file is None else str(self.key_file)})


@dataclasses.dataclass
class DetectionResult:
    """One text's detection, with transformers' field names and epwa's.

    `raw` is the whole object `epwa detect --json` prints for the same input.
    """

    num_tokens_scored: int
    num_green_tokens: int
    green_fraction: float
    z_score: float
    p_value: float
    prediction: bool
    confidence: float  # 1 - p_value, as transformers reports it
    method: str
    scheme: str
    router_hash: Optional[str]
    # How the expert behind each scored token was found: "router" (read from one forward pass
    # over the text) or "oracle" (PEPI), with PEPI's agreement with the router when known.
    expert_recovery: dict
    raw: dict

    @staticmethod
    def from_json(j: dict) -> "DetectionResult":
        if "error" in j:
            raise Error(j["error"])
        if j["method"] == "pepi":
            recovery = {"source": "oracle", "oracle_heldout_accuracy": j["oracle"]["heldout_accuracy"],
                        "chance": j["oracle"]["chance"],
                        "agreement_with_router": j["oracle"].get("agreement_with_router")}
        elif j["scheme"] == "kgw":
            recovery = {"source": "previous token"}
        else:
            recovery = {"source": "router", "router_layer": j.get("router_layer")}
        return DetectionResult(num_tokens_scored=j["scored"], num_green_tokens=j["green"],
                               green_fraction=j["green_fraction"], z_score=j["z"], p_value=j["p_value"],
                               prediction=bool(j["detected"]), confidence=1.0 - j["p_value"],
                               method=j["method"], scheme=j["scheme"], router_hash=j.get("router_hash"),
                               expert_recovery=recovery, raw=j)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class WatermarkDetector:
    """Tests texts for the watermark of `config`.

    engine: an Engine (needed by "full" and "cspv", and by "pepi" on text), or None for PEPI on
    an API's log-probabilities alone. method: "full" (one forward pass recovers every expert),
    "cspv" (a confidence-stratified sample of that pass) or "pepi" (an oracle from
    `epwa oracle train` predicts the experts from log-probabilities). The other arguments are
    `epwa detect`'s flags. With config.scheme left at its default and method "pepi", gsg is
    tested (PEPI keys v1's lists only), as the CLI does.
    """

    def __init__(self, engine: Optional[Engine], config: Optional[WatermarkingConfig] = None,
                 method: str = "full", oracle: Optional[str] = None, z_threshold: float = 4.0,
                 dedup: bool = True, min_margin: float = 0.0, min_tokens: int = 16, sample: int = 48,
                 seed: int = 0, batch_texts: int = 64):
        self.config = config if config is not None else WatermarkingConfig()
        _check_int("min_tokens", min_tokens, 1, 1 << 40)
        _check_int("sample", sample, 3, 1 << 40)
        _check_int("seed", seed, 0, (1 << 64) - 1)
        _check_int("batch_texts", batch_texts, 1, 4096)
        scheme = self.config.scheme
        if method == "pepi" and scheme == DEFAULT_SCHEME and config is None:
            scheme = None  # the library's PEPI default (gsg)
        self.method = method
        self._settings = json.dumps({
            "scheme": scheme, "method": method, "gamma": float(self.config.gamma),
            "router_layer": self.config._layer(), "z_threshold": float(z_threshold), "dedup": bool(dedup),
            "min_margin": float(min_margin), "min_tokens": int(min_tokens), "sample": int(sample),
            "seed": int(seed), "oracle": None if oracle is None else str(oracle),
            "batch_texts": int(batch_texts),
            "key_file": None if self.config.key_file is None else str(self.config.key_file)})
        self.engine = engine
        if engine is not None:
            self._detector = _epwa._Detector(engine._engine, self._settings)
        else:
            # No model to check against: the settings and the key are checked now all the same.
            _epwa.check_detect_settings(self._settings)
            self._detector = None

    def detect(self, text: Union[str, Sequence[int], np.ndarray, None] = None, *, ids=None,
               logprobs: Optional[str] = None, prompt: Optional[str] = None) -> DetectionResult:
        """Detects one input: a text, generated token ids, or (PEPI without a model) the path of
        a logprobs file as `epwa run --json --logprobs K` writes it. Raises epwa.Error when the
        input cannot be tested (too few tokens, ids outside the vocabulary, ...)."""
        if logprobs is not None:
            if text is not None or ids is not None:
                raise Error("logprobs gives the tokens itself; leave out text and ids")
            return DetectionResult.from_json(json.loads(_epwa.detect_logprobs_file(str(logprobs), self._settings)))
        if text is not None and not isinstance(text, str):
            text, ids = None, text
        return self.detect_many([_Item(text, ids, prompt)])[0]

    __call__ = detect

    def detect_many(self, inputs: Iterable[Union[str, Mapping[str, Any], "_Item"]],
                    prompt: Optional[str] = None, raise_errors: bool = True) -> list:
        """Detects many inputs, batched into shared forward passes (the results do not depend on
        the batching). Each input is a text, or a mapping with "text" or "ids" and an optional
        "prompt". With raise_errors=False an input that cannot be tested yields the CLI's
        {"input", ..., "error"} object instead of a result, and the others are still tested."""
        if self._detector is None:
            raise Error("this detector has no engine: give an Engine, or logprobs= for pepi")
        items = []
        for i, x in enumerate(inputs):
            label = f"text {i + 1}"
            if isinstance(x, _Item):
                item = x
            elif isinstance(x, str):
                item = _Item(x, None, prompt)
            else:
                item = _Item(x.get("text"), x.get("ids"), x.get("prompt", prompt))
                label = str(x.get("label", label))
            if item.text is not None and not isinstance(item.text, str):
                raise Error(f"{label}: the text must be a string")
            ids = None if item.ids is None else _token_ids(item.ids, f"{label}: ids")
            items.append((label, item.text, ids, item.prompt))
        results = [json.loads(r) for r in self._detector.detect(items)]
        if raise_errors:
            return [DetectionResult.from_json(r) for r in results]
        return [r if "error" in r else DetectionResult.from_json(r) for r in results]


@dataclasses.dataclass
class _Item:
    text: Optional[str]
    ids: Any
    prompt: Optional[str]


def keygen(path: str, overwrite: bool = False) -> None:
    """Writes a new 32-byte secret key (mode 0600), as `epwa keygen`."""
    _epwa.keygen(str(path), bool(overwrite))


def kernel_flags() -> dict:
    """The kernels' process-wide switches and what they select on this CPU: `isa` ("avx512",
    "avx2" or "scalar"), `float_activations`, `bf16_activations`, `split_activations`, and the
    arithmetic the prefill runs with for BF16 weights (`prefill_bf16`) and for the integer levels
    (`prefill_int`), named as `epwa bench` names them (e.g. "AMX bf16 tile (x in 3 parts)").
    """
    return json.loads(_epwa.kernel_flags())


def set_kernel_flags(*, float_activations: Optional[bool] = None, bf16_activations: Optional[bool] = None,
                     split_activations: Optional[bool] = None, isa: Optional[str] = None) -> dict:
    """Sets the kernels' switches, as the CLI's flags of the same names and EPWA_ISA do; None
    leaves one as it is. Returns kernel_flags() as it was before, so a caller can restore it.

    float_activations: integer-level weights times float32 activations (exact; slower decode).
    bf16_activations: the BF16 prefill rounds activations to bf16 (faster; logits and 1-2 % of
    routings move). split_activations: on CPUs with AMX, the BF16 prefill splits each float32
    activation into three bf16 parts for the tile unit (float32's products, summed in the tile
    unit's order; about 2x the float32 prefill). isa: force "avx512", "avx2" or "scalar" (an
    error where the CPU lacks it).

    The switches are process-wide: they apply to every Engine of the process. A change waits for
    the calls running on other threads to finish, so that no forward pass mixes two settings. Set
    them before loading, so that the memory plan counts the scratch they need.
    """
    for name, value in (("float_activations", float_activations), ("bf16_activations", bf16_activations),
                        ("split_activations", split_activations)):
        if value is not None and not isinstance(value, bool):
            raise Error(f"{name} must be True, False or None, got {value!r}")
    if isa is not None and not isinstance(isa, str):
        raise Error(f"isa must be a string such as 'avx2', got {isa!r}")
    return json.loads(_epwa.set_kernel_flags(float_activations, bf16_activations, split_activations, isa))
