"""`python3 -m epwa.detect_corpus` on a real Dask LocalCluster of 2 worker processes, against
`epwa detect --jsonl --json` on the same corpus: the same results, line for line."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import epwa
from conftest import MODEL, ROOT, cli_json_lines, run_cli, without_timing

# Human text: paragraphs of the Jargon File (held-out text, committed).
HUMAN = os.path.join(ROOT, "data", "heldout", "jargon.txt")


def human_paragraphs(count):
    with open(HUMAN, encoding="utf-8") as f:
        paragraphs = [" ".join(p.split()) for p in f.read().split("\n\n")]
    return [p for p in paragraphs if len(p) >= 200][:count]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, engine, key_file):
    """About 300 lines: human paragraphs, watermarked generations (with and without their
    prompt, as text and as ids), and malformed lines that must get their own errors."""
    folder = tmp_path_factory.mktemp("corpus")
    lines = [json.dumps({"text": p}, ensure_ascii=False) for p in human_paragraphs(250)]
    assert len(lines) == 250
    config = epwa.WatermarkingConfig(key_file=key_file)
    for seed in range(30):
        prompt = f"Story {seed}: once upon a time"
        out = engine.generate(prompt, max_new_tokens=48, seed=seed, watermark=config, ignore_eos=True)
        if seed % 3 == 0:
            lines.append(json.dumps({"ids": out.ids.tolist(), "prompt": prompt}))
        elif seed % 3 == 1:
            lines.append(json.dumps({"text": out.text, "prompt": prompt}))
        else:
            lines.append(json.dumps({"text": out.text}))
    lines += ['{"text": "too short"}', "not json at all", '{"ids": [1, 2, 999999999]}', "",
              '{"text": 5}', '{"text": "x", "ids": [1]}']
    path = folder / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def run_corpus(corpus, out, key_file, *extra, timeout=600):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "epwa.detect_corpus", corpus, "--out", out, "--model", MODEL,
                           "--key-file", key_file, "--partition-texts", "32", *extra],
                          capture_output=True, text=True, env=env, timeout=timeout)


def test_two_local_workers_give_the_cli_results(corpus, key_file, tmp_path):
    code, stdout, _ = run_cli("detect", "-m", MODEL, "-t", "2", "--key-file", key_file, "--jsonl", corpus, "--json",
                              check=False)
    assert code == 1  # the malformed lines
    expected = [without_timing(j) for j in cli_json_lines(stdout)]
    assert len(expected) == 285
    out = str(tmp_path / "results.jsonl")
    proc = run_corpus(corpus, out, key_file, "--local-workers", "2", "--threads", "1")
    assert proc.returncode == 1, proc.stderr
    with open(out) as f:
        got = [without_timing(json.loads(line)) for line in f]
    assert got == expected
    # Nine partitions over two processes, and the model loaded once in each.
    assert "2 worker(s)" in proc.stderr and "on 2 worker process(es), 2 model load(s)" in proc.stderr, proc.stderr
    assert not os.path.exists(out + ".parts")
    # The 30 watermarked generations are found, no human paragraph is, and each malformed line
    # has its own error.
    human, marked, malformed = got[:250], got[250:280], got[280:]
    assert sum("error" not in j and j["detected"] for j in marked) >= 28
    assert not any("error" not in j and j["detected"] for j in human)
    assert all("error" in j for j in malformed)


def test_a_killed_run_resumes_where_it_stopped(corpus, key_file, tmp_path):
    out = str(tmp_path / "resumed.jsonl")
    parts = out + ".parts"
    env = dict(os.environ)
    # The driver and its LocalCluster in their own process group, killed together without
    # warning once some partitions are on disk: a crash, not a clean stop.
    proc = subprocess.Popen([sys.executable, "-m", "epwa.detect_corpus", corpus, "--out", out, "--model", MODEL,
                             "--key-file", key_file, "--partition-texts", "16", "--local-workers", "1",
                             "--threads", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(parts) and sum(n.startswith("part-") for n in os.listdir(parts)) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not os.path.exists(out), "a killed run must not leave a results file"
    done_before = sum(n.startswith("part-") and n.endswith(".jsonl") for n in os.listdir(parts))
    assert done_before >= 3
    # The rerun must partition as the killed run did (16 texts), or its manifest is refused.
    rerun = run_corpus(corpus, out, key_file, "--local-workers", "1", "--threads", "2", "--partition-texts", "16")
    assert rerun.returncode == 1, rerun.stderr
    assert f"{done_before} partitions already done" in rerun.stderr, rerun.stderr
    code, stdout, _ = run_cli("detect", "-m", MODEL, "-t", "2", "--key-file", key_file, "--jsonl", corpus, "--json",
                              check=False)
    with open(out) as f:
        assert [without_timing(json.loads(line)) for line in f] == [without_timing(j) for j in cli_json_lines(stdout)]


def test_other_settings_do_not_mix_with_earlier_parts(corpus, key_file, tmp_path):
    out = str(tmp_path / "mixed.jsonl")
    os.makedirs(out + ".parts")
    with open(os.path.join(out + ".parts", "manifest.json"), "w") as f:
        f.write('{"input": "something else"}')
    proc = run_corpus(corpus, out, key_file, "--local-workers", "1")
    assert proc.returncode == 2 and "--restart" in proc.stderr
    proc = run_corpus(corpus, out, key_file, "--method", "cspv", "--watermark", "kgw", "--local-workers", "1")
    assert proc.returncode == 2 and "kgw green lists" in proc.stderr


def test_kernel_flags_reach_the_workers(corpus, key_file, tmp_path):
    # The last 40 lines: watermarked generations and the malformed lines.
    with open(corpus) as f:
        lines = f.read().splitlines()[-40:]
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(lines) + "\n")
    flags = ("--quant", "fp16", "--split-activations")
    code, stdout, _ = run_cli("detect", "-m", MODEL, "-t", "2", "--key-file", key_file, "--jsonl", str(small),
                              "--json", *flags, check=False)
    assert code == 1
    expected = [without_timing(j) for j in cli_json_lines(stdout)]
    out = str(tmp_path / "split.jsonl")
    proc = run_corpus(str(small), out, key_file, "--local-workers", "1", "--threads", "2", *flags)
    assert proc.returncode == 1, proc.stderr
    with open(out) as f:
        assert [without_timing(json.loads(line)) for line in f] == expected
    # The worker reports the arithmetic it ran (detection's z and counts do not show the split:
    # it moves no routing), as this process names it with the same switch.
    from epwa.detect_corpus import _kernels_line

    before = epwa.set_kernel_flags(split_activations=True)
    try:
        split_line = "kernels: " + _kernels_line(epwa.kernel_flags())
    finally:
        epwa.set_kernel_flags(split_activations=before["split_activations"])
    assert split_line in proc.stderr, proc.stderr
    if "AMX" in split_line:  # elsewhere the split is the default's float32 prefill
        assert "kernels: " + _kernels_line(before) not in proc.stderr
