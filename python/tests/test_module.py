"""`import epwa` against the `epwa` CLI: the same inputs must give the same numbers.

The CLI is the reference here because it is the product's documented behaviour; the module
must not merely agree in spirit (both run the library, and these tests make sure nothing in
the bindings changes a token, a probability or a statistic on the way).
"""

import json
import threading
import time

import numpy as np
import pytest

import epwa
from conftest import CHAT_MODEL, MODEL, cli_json_lines, run_cli, without_timing

PROMPT = "Once upon a time"


def test_info_plan_and_router_hash(engine):
    _, out, _ = run_cli("info", "-m", MODEL, "--json")
    info = json.loads(out)
    assert engine.router_hash == info["load"]["router_hash"] and len(engine.router_hash) == 64
    assert engine.info["num_experts"] > 1 and engine.info["moe_layers"] >= 1
    plan = engine.plan()
    assert plan["quant_level"] == engine.info["quant_level"]
    assert 0 < plan["planned_bytes"] <= plan["budget_bytes"]


def test_generate_matches_cli_token_for_token(engine, key_file):
    config = epwa.WatermarkingConfig(scheme="gsg", key_file=key_file)
    out = engine.generate(PROMPT, max_new_tokens=40, seed=7, temperature=0.9, watermark=config, ignore_eos=True)
    _, stdout, _ = run_cli("run", "-m", MODEL, "-t", "2", "-p", PROMPT, "-n", "40", "--seed", "7", "--temp", "0.9",
                           "--ignore-eos", "--watermark", "gsg", "--key-file", key_file, "--json")
    cli = json.loads(stdout)
    assert out.ids.tolist() == cli["ids"]
    assert out.text == cli["text"]
    assert out.prompt_ids.tolist() == cli["prompt_ids"]
    assert out.watermark["scheme"] == "gsg" and out.watermark["steps"] == 40
    # The per-step experts are the routing each token was sampled under: for gsg the last MoE
    # layer's first choice is the expert that seeded the green list (the CLI reports those).
    assert out.experts.shape == (40, engine.info["moe_layers"], engine.info["experts_per_token"])
    assert out.experts[:, -1, 0].tolist() == cli["watermark"]["experts_used"]
    assert out.stats["generated_tokens"] == 40


def test_detect_matches_cli_for_every_method(engine, key_file):
    config = epwa.WatermarkingConfig(key_file=key_file)  # the default scheme, epw2-et
    text = engine.generate(PROMPT, max_new_tokens=120, seed=3, watermark=config, ignore_eos=True).text
    for method, prompt in [("full", None), ("full", PROMPT), ("cspv", None)]:
        detector = epwa.WatermarkDetector(engine, config, method=method)
        result = detector.detect(text, prompt=prompt)
        args = ["detect", "-m", MODEL, "-t", "2", "--key-file", key_file, "--method", method, "--json",
                "--text", text]
        if prompt:
            args += ["--prompt", prompt]
        _, stdout, _ = run_cli(*args)
        cli = cli_json_lines(stdout)[0]
        cli["input"] = result.raw["input"]  # "text 1" both ways; kept explicit
        assert without_timing(result.raw) == without_timing(cli), method
        # transformers' names over the same numbers.
        assert result.num_tokens_scored == cli["scored"] and result.num_green_tokens == cli["green"]
        assert result.z_score == cli["z"] and result.p_value == cli["p_value"]
        assert result.green_fraction == cli["green_fraction"]
        assert result.prediction is True and result.z_score > 4
        assert result.scheme == epwa.DEFAULT_SCHEME and result.router_hash == engine.router_hash
        assert result.expert_recovery["source"] == "router"


def test_unmarked_text_is_not_detected_and_batching_changes_nothing(engine, key_file):
    config = epwa.WatermarkingConfig(key_file=key_file)
    texts = [engine.generate(PROMPT, max_new_tokens=60, seed=s, ignore_eos=True).text for s in range(3)]
    marked = engine.generate(PROMPT, max_new_tokens=60, seed=9, watermark=config, ignore_eos=True).text
    detector = epwa.WatermarkDetector(engine, config)
    batched = detector.detect_many(texts + [marked])
    alone = [detector.detect(t) for t in texts + [marked]]
    for i, (b, a) in enumerate(zip(batched, alone)):
        assert b.raw["input"] == f"text {i + 1}" and a.raw["input"] == "text 1"
        assert without_timing({**b.raw, "input": ""}) == without_timing({**a.raw, "input": ""})
    assert [r.prediction for r in batched] == [False, False, False, True]
    # By ids as generated, too.
    ids = engine.generate(PROMPT, max_new_tokens=60, seed=9, watermark=config, ignore_eos=True).ids
    assert detector.detect(ids).prediction


def test_score_matches_cli(engine):
    text = "The quick brown fox jumps over the lazy dog. It was the best of times."
    scored = engine.score(text, logits=True)
    _, stdout, _ = run_cli("score", "-m", MODEL, "-t", "2", "-p", text, "--json", "--top", "0")
    cli = json.loads(stdout)
    assert scored["ids"].tolist() == cli["ids"]
    T = len(cli["ids"])
    assert np.isnan(scored["logprobs"][0])
    np.testing.assert_array_equal(scored["logprobs"][1:], np.array([p["logprob"] for p in cli["positions"][1:]],
                                                                    dtype=np.float32))
    L = len(cli["moe_layers"])
    assert scored["experts"].shape[:2] == (T, L)
    for t, pos in enumerate(cli["positions"]):
        for m, layer in enumerate(pos["routing"]):
            assert scored["experts"][t, m].tolist() == layer["experts"]
            np.testing.assert_array_equal(scored["router_logits"][t, m], np.array(layer["router_logits"], np.float32))
    assert scored["logits"].shape == (T, engine.info["vocab_size"])
    # Scoring ids gives the same pass as scoring their text.
    again = engine.score(scored["ids"])
    np.testing.assert_array_equal(again["logprobs"][1:], scored["logprobs"][1:])


def test_errors_raise_epwa_error_with_the_cli_message(engine, key_file, tmp_path):
    with pytest.raises(epwa.Error) as e:
        epwa.Engine(str(tmp_path / "no-such-model"))
    _, _, stderr = run_cli("info", "-m", str(tmp_path / "no-such-model"), check=False)
    assert f"epwa: error: {e.value}" in stderr
    detector = epwa.WatermarkDetector(engine, epwa.WatermarkingConfig(key_file=key_file))
    with pytest.raises(epwa.Error) as e:
        detector.detect("Too short.")
    code, _, stderr = run_cli("detect", "-m", MODEL, "--key-file", key_file, "--text", "Too short.", check=False)
    assert code != 0 and f"epwa: error: {e.value}" in stderr
    with pytest.raises(epwa.Error, match="kgw green lists are keyed by the previous token"):
        epwa.WatermarkDetector(engine, epwa.WatermarkingConfig(scheme="kgw", key_file=key_file), method="cspv")
    with pytest.raises(epwa.Error, match="32 bytes|exactly"):
        bad = tmp_path / "bad.key"
        bad.write_bytes(b"short")
        epwa.WatermarkDetector(engine, epwa.WatermarkingConfig(key_file=str(bad)))
    with pytest.raises(epwa.Error, match="outside the vocabulary"):
        engine.score([1, 2, 10**8])
    with pytest.raises(epwa.Error, match="mem_budget"):
        epwa.Engine(MODEL, mem_budget="lots")
    # Nothing was broken by the errors.
    assert engine.score("Still here.")["ids"].size > 0


def test_generate_releases_the_gil(engine):
    ticks = 0
    stop = threading.Event()

    def count():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.0005)

    counter = threading.Thread(target=count)
    counter.start()
    started = time.perf_counter()
    engine.generate(PROMPT, max_new_tokens=96, seed=1, ignore_eos=True)
    elapsed = time.perf_counter() - started
    stop.set()
    counter.join()
    # With the GIL held through generation the counter could not run at all; released, it runs
    # throughout (a tick every 0.5 ms at best; asking for a fifth of that leaves room for a
    # loaded machine).
    assert ticks >= 0.2 * elapsed / 0.0005 * 0.5, (ticks, elapsed)


def test_chat_messages_match_cli(tmp_path):
    chat_engine = epwa.Engine(CHAT_MODEL, threads=2)
    messages = [{"role": "user", "content": "Tell me about the sea."}]
    out = chat_engine.generate(messages, max_new_tokens=24, seed=5)
    path = tmp_path / "messages.json"
    path.write_text(json.dumps(messages))
    _, stdout, _ = run_cli("run", "-m", CHAT_MODEL, "-t", "2", "--messages", str(path), "-n", "24", "--seed", "5",
                           "--json")
    cli = json.loads(stdout)
    assert out.ids.tolist() == cli["ids"] and out.text == cli["text"]
    assert out.prompt_ids.tolist() == cli["prompt_ids"]


def test_pepi_from_text_and_from_logprobs_matches_cli(engine, key_file, tmp_path):
    oracle = str(tmp_path / "oracle.bin")
    run_cli("oracle", "train", "-m", MODEL, "-t", "2", "--corpus", "data/heldout/jargon.txt", "--max-tokens", "20000",
            "--out", oracle, "--json")
    config = epwa.WatermarkingConfig(scheme="gsg", key_file=key_file)
    _, stdout, _ = run_cli("run", "-m", MODEL, "-t", "2", "-p", PROMPT, "-n", "120", "--seed", "4", "--ignore-eos",
                           "--watermark", "gsg", "--key-file", key_file, "--json", "--logprobs", "20")
    generated = json.loads(stdout)
    # With a model: the oracle predicts the experts from the pass's own log-probabilities.
    detector = epwa.WatermarkDetector(engine, config, method="pepi", oracle=oracle)
    result = detector.detect(generated["text"])
    _, stdout, _ = run_cli("detect", "-m", MODEL, "-t", "2", "--watermark", "gsg", "--key-file", key_file,
                           "--method", "pepi", "--oracle", oracle, "--json", "--text", generated["text"])
    assert without_timing(result.raw) == without_timing(cli_json_lines(stdout)[0])
    assert result.expert_recovery["source"] == "oracle"
    assert 0 < result.expert_recovery["agreement_with_router"] <= 1
    # Without a model: an API's log-probabilities alone.
    logprobs = tmp_path / "api.json"
    logprobs.write_text(json.dumps(generated["logprobs"]))
    blind = epwa.WatermarkDetector(None, config, method="pepi", oracle=oracle).detect(logprobs=str(logprobs))
    _, stdout, _ = run_cli("detect", "--watermark", "gsg", "--key-file", key_file, "--method", "pepi",
                           "--oracle", oracle, "--logprobs", str(logprobs), "--json")
    cli = cli_json_lines(stdout)[0]
    for field in ("scored", "green", "z", "p_value", "detected", "tokens", "router_hash"):
        assert blind.raw[field] == cli[field], field
    assert blind.prediction and blind.z_score > 4


def test_keygen_writes_a_private_random_key_the_detector_accepts(engine, tmp_path):
    first, second = tmp_path / "a.key", tmp_path / "b.key"
    epwa.keygen(str(first))
    epwa.keygen(str(second))
    assert first.stat().st_mode & 0o777 == 0o600
    assert len(first.read_bytes()) == 32 and first.read_bytes() != second.read_bytes()
    with pytest.raises(epwa.Error):
        epwa.keygen(str(first))  # an existing key is never overwritten
    detector = epwa.WatermarkDetector(engine, epwa.WatermarkingConfig(key_file=str(first)))
    assert detector.detect(" ".join(f"word{i} and more" for i in range(40))).raw["scored"] > 0


def test_hostile_arguments_raise_epwa_error(engine, key_file):
    for kwargs in ({"threads": -1}, {"threads": 1.5}, {"ctx": -5}, {"parallel": 0}, {"mem_budget": -1}):
        with pytest.raises(epwa.Error):
            epwa.Engine(MODEL, **kwargs)
    for kwargs in ({"seed": -1}, {"max_new_tokens": -1}, {"top_k": -2}, {"temperature": float("nan")},
                   {"top_p": 0.0}, {"watermark": epwa.WatermarkingConfig(scheme="nope", key_file=key_file)},
                   {"watermark": epwa.WatermarkingConfig(gamma=1.5, key_file=key_file)}):
        with pytest.raises(epwa.Error):
            engine.generate(PROMPT, **kwargs)
    detector = epwa.WatermarkDetector(engine, epwa.WatermarkingConfig(key_file=key_file))
    for bad in ([-1, 5, 7] * 10, [2**40] * 20, ["a", "b"], [[1, 2], [3]]):
        with pytest.raises(epwa.Error):
            detector.detect(bad)
    with pytest.raises(epwa.Error):
        detector.detect_many([{"text": 5}])
    # One bad input among good ones is its own error, as with the CLI's batches.
    results = detector.detect_many([" ".join(f"word{i} and more" for i in range(40)), {"ids": [10**6] * 30}], raise_errors=False)
    assert not isinstance(results[0], dict) and "outside" in results[1]["error"]
    with pytest.raises(epwa.Error):
        epwa.WatermarkDetector(engine, epwa.WatermarkingConfig(key_file=key_file), seed=-3)
    with pytest.raises(epwa.Error):
        engine.decode([-4])


def test_int8_lm_head_moves_logits_slightly():
    text = "The quick brown fox jumps over the lazy dog. It was the best of times."
    plain = epwa.Engine(MODEL, quant="int8", threads=2, cache=False)
    small = epwa.Engine(MODEL, quant="int8", threads=2, cache=False, int8_lm_head=True)
    a, b = plain.score(text), small.score(text)
    assert np.array_equal(a["experts"], b["experts"])  # the lm_head does not feed the routers
    diff = np.abs(a["logprobs"][1:] - b["logprobs"][1:])
    assert 0 < diff.max() < 0.2, diff.max()
    # fp16 keeps the lm_head 16-bit whatever the flag.
    fp16 = epwa.Engine(MODEL, quant="fp16", threads=2, cache=False, int8_lm_head=True)
    np.testing.assert_array_equal(fp16.score(text)["logprobs"][1:],
                                  epwa.Engine(MODEL, quant="fp16", threads=2, cache=False).score(text)["logprobs"][1:])


def test_no_mmap_copies_the_weights_and_changes_nothing():
    text = "The quick brown fox jumps over the lazy dog. It was the best of times."
    mapped = epwa.Engine(MODEL, quant="fp16", threads=2, cache=False)
    copied = epwa.Engine(MODEL, quant="fp16", threads=2, cache=False, no_mmap=True)
    assert mapped.info["load"]["copied_bytes"] == 0
    assert copied.info["load"]["copied_bytes"] > 0
    # Only the untied embedding stays mapped.
    assert copied.info["load"]["mapped_bytes"] < mapped.info["load"]["mapped_bytes"]
    a, b = mapped.score(text, logits=True), copied.score(text, logits=True)
    np.testing.assert_array_equal(a["logits"], b["logits"])
    np.testing.assert_array_equal(a["experts"], b["experts"])


def test_kv_cache_type_rounds_keys_and_values_and_is_reported():
    text = "The quick brown fox jumps over the lazy dog. It was the best of times."
    f32 = epwa.Engine(MODEL, quant="fp16", threads=2, cache=False)
    f16 = epwa.Engine(MODEL, quant="fp16", threads=2, cache=False, kv_cache="f16")
    assert f32.info["load"]["kv_cache"] == "f32"
    assert f16.info["load"]["kv_cache"] == "f16"
    a, b = f32.score(text, logits=True)["logits"], f16.score(text, logits=True)["logits"]
    # The first position attends to itself only (softmax of one score is 1), so
    # only its value's rounding shows; later positions differ, but slightly.
    diff = np.abs(np.asarray(a) - np.asarray(b))
    assert diff.max() > 0
    assert diff.max() < 0.05 * np.abs(np.asarray(a)).max()
    with pytest.raises(epwa.Error, match="unknown KV cache type 'int4'"):
        epwa.Engine(MODEL, quant="fp16", threads=2, cache=False, kv_cache="int4")


@pytest.fixture
def restore_kernel_flags():
    before = epwa.kernel_flags()
    yield before
    epwa.set_kernel_flags(float_activations=before["float_activations"], bf16_activations=before["bf16_activations"],
                          split_activations=before["split_activations"], isa=before["isa"])


def cli_logprobs(*flags):
    text = "The lighthouse keeper wound the clock at dusk, and the lamp turned over the grey water until morning."
    _, stdout, _ = run_cli("score", "-m", MODEL, "-t", "2", "-p", text, "--json", "--top", "0", *flags)
    cli = json.loads(stdout)
    return (np.array([p["logprob"] for p in cli["positions"][1:]], dtype=np.float32),
            [[r["experts"] for r in p["routing"]] for p in cli["positions"]])


def test_kernel_flags_select_the_cli_flags_arithmetic(restore_kernel_flags):
    text = "The lighthouse keeper wound the clock at dusk, and the lamp turned over the grey water until morning."
    defaults = restore_kernel_flags
    assert not defaults["float_activations"] and not defaults["bf16_activations"] and not defaults["split_activations"]
    assert defaults["prefill_bf16"] == "fp32 FMA"

    def scored(quant):
        out = epwa.Engine(MODEL, quant=quant, threads=2, cache=False).score(text)
        return out["logprobs"][1:], out["experts"].tolist()

    plain, plain_experts = scored("fp16")
    # Each switch gives, bit for bit, what the CLI's flag of the same name gives.
    before = epwa.set_kernel_flags(split_activations=True)
    assert before == defaults and epwa.kernel_flags()["split_activations"]
    split, split_experts = scored("fp16")
    cli_split, cli_split_routing = cli_logprobs("--quant", "fp16", "--split-activations")
    np.testing.assert_array_equal(split, cli_split)
    # float32's products in another order: every routing kept, log-probs within 1e-4, and moved
    # only where the tile unit runs them.
    assert split_experts == plain_experts
    assert np.abs(split - plain).max() < 1e-4
    on_amx = epwa.kernel_flags()["prefill_bf16"] == "AMX bf16 tile (x in 3 parts)"
    assert (np.abs(split - plain).max() > 0) == on_amx

    epwa.set_kernel_flags(split_activations=False, bf16_activations=True)
    bf16, _ = scored("fp16")
    np.testing.assert_array_equal(bf16, cli_logprobs("--quant", "fp16", "--bf16-activations")[0])
    if epwa.kernel_flags()["prefill_bf16"] != "fp32 FMA":
        assert np.abs(bf16 - plain).max() > np.abs(split - plain).max()

    epwa.set_kernel_flags(bf16_activations=False, float_activations=True)
    exact, _ = scored("int8")
    np.testing.assert_array_equal(exact, cli_logprobs("--quant", "int8", "--float-activations")[0])
    assert epwa.kernel_flags()["prefill_int"] == "fp32 FMA"
    epwa.set_kernel_flags(float_activations=False)
    assert not np.array_equal(exact, scored("int8")[0])

    for bad in ({"split_activations": "yes"}, {"bf16_activations": 1}, {"isa": "sse2"}, {"isa": 3}):
        with pytest.raises(epwa.Error):
            epwa.set_kernel_flags(**bad)
    assert epwa.kernel_flags() == defaults


def test_kernel_flags_never_change_inside_a_call(restore_kernel_flags):
    # A change of switches waits for the calls running on other threads: every pass is wholly
    # the default's or wholly the split's, never a mix of the two within one forward pass.
    engine = epwa.Engine(MODEL, quant="fp16", threads=2, cache=False)
    text = " ".join(["The lighthouse keeper wound the clock at dusk, and the lamp turned over the grey water."] * 8)
    plain = engine.score(text)["logprobs"]
    epwa.set_kernel_flags(split_activations=True)
    split = engine.score(text)["logprobs"]
    epwa.set_kernel_flags(split_activations=False)
    if np.array_equal(plain, split, equal_nan=True):
        pytest.skip("without AMX the split is the float32 prefill: a mixed pass would not show")
    results = []
    stop = threading.Event()

    def work():
        while not stop.is_set():
            results.append(engine.score(text)["logprobs"])

    worker = threading.Thread(target=work)
    worker.start()
    for i in range(120):
        epwa.set_kernel_flags(split_activations=i % 2 == 0)
        time.sleep(0.0003)
    stop.set()
    worker.join()
    assert len(results) >= 2
    for r in results:
        assert np.array_equal(r, plain, equal_nan=True) or np.array_equal(r, split, equal_nan=True)
