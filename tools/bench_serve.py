#!/usr/bin/python3
"""Throughput of `epwa serve` seen by its clients: 1, 2, 4, 8 ... concurrent streams.

  tools/bench_serve.py EPWA MODEL_DIR [--counts 1,2,4,8] [--prompt-tokens 64]
                       [--gen-tokens 32] [--requests 3] [--quant fp16] [--threads 0]

Starts `epwa serve --parallel max(counts)` on loopback and, for each count C,
runs C client threads that each send --requests streamed /v1/completions
requests back to back (a prompt of token ids, a fixed length: the EOS tokens
are banned with logit_bias so every answer has --gen-tokens tokens). Reports
per count the aggregate generated tokens/s over the wall time of the round,
its ratio to one stream, p50/p99 time to first token and p50/p99 time between
tokens, all measured at the client, so HTTP, JSON and the scheduler are
included. Compare with `epwa bench --parallel` (the engine alone) on the same
model. Only the Python standard library is used.

With --detect, the clients send POST /v1/watermark/detect requests instead
(random --prompt-tokens ids each, scheme epw2-et with a fresh key) and it reports detections/s, scored tokens/s, its ratio to one client,
p50/p99 request latency and how many batched passes served them (the
server's epwa_detection_batches_total).
"""
import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time


def percentile(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def stream_request(port, body):
    """(time to first token, [gaps between tokens], tokens) of one streamed request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    ttft, last, gaps, tokens = None, None, [], 0
    for raw in resp:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        event = json.loads(data)
        if "error" in event:
            raise RuntimeError(event["error"])
        now = time.perf_counter()
        if event.get("usage"):
            tokens = event["usage"]["completion_tokens"]
        if event["choices"] and event["choices"][0].get("text"):
            if ttft is None:
                ttft = now - t0
            else:
                gaps.append(now - last)
            last = now
    conn.close()
    return ttft, gaps, tokens


def run_clients(count, client, errors):
    """Wall seconds of `count` threads running client(i); exits on any error they recorded."""
    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        sys.exit(f"{len(errors)} requests failed: {errors[0]}")
    return wall


def post_json(port, path, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {data[:300]!r}")
    return json.loads(data)


def metric(port, name):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("epwa")
    ap.add_argument("model")
    ap.add_argument("--counts", default="1,2,4,8")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--requests", type=int, default=3, help="requests per client per count")
    ap.add_argument("--quant", default="fp16")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--detect", action="store_true", help="time /v1/watermark/detect instead of completions")
    a = ap.parse_args()
    counts = [int(c) for c in a.counts.split(",")]
    config = json.load(open(os.path.join(a.model, "config.json")))
    vocab = config["vocab_size"]
    eos = config.get("eos_token_id")
    eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
    gen_path = os.path.join(a.model, "generation_config.json")
    if os.path.exists(gen_path):
        g = json.load(open(gen_path)).get("eos_token_id")
        eos += g if isinstance(g, list) else [g] if g is not None else []
    ctx = a.prompt_tokens + a.gen_tokens + 8
    cmd = [a.epwa, "serve", "-m", a.model, "--port", "0", "--parallel", str(max(counts)), "--ctx", str(ctx),
           "--quant", a.quant, "--no-cache", "--quiet", "--max-queue", str(max(counts))]
    if a.threads:
        cmd += ["-t", str(a.threads)]
    if a.detect:
        import tempfile
        key_dir = tempfile.mkdtemp(prefix="epwa-bench-serve-")
        key_file = os.path.join(key_dir, "bench.key")
        subprocess.run([a.epwa, "keygen", "--out", key_file], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        cmd += ["--watermark", "epw2-et", "--key-file", key_file]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    port, log = None, []
    while port is None:
        line = server.stderr.readline()
        if not line:
            sys.exit("the server exited before listening:\n" + "".join(log))
        log.append(line)
        if "listening on http://127.0.0.1:" in line:
            port = int(line.split("127.0.0.1:")[1].split()[0].rstrip("/"))
    threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
    rng = random.Random(7)
    if a.detect:
        try:
            bench_detect(a, port, counts, vocab, rng)
        finally:
            server.terminate()
            server.wait(timeout=60)
        return
    print(f"epwa serve on {a.model} ({a.quant}): {a.prompt_tokens}-token prompts, {a.gen_tokens} tokens each, "
          f"{a.requests} requests per client")
    print(f"{'clients':>7} {'tok/s':>8} {'x one':>6} {'ttft p50':>9} {'ttft p99':>9} {'itl p50':>8} {'itl p99':>8}")
    base = None
    try:
        # One unmeasured request warms the server (page faults of the weights).
        stream_request(port, {"prompt": [1] * 4, "max_tokens": 2, "stream": True})
        for c in counts:
            ttfts, gaps, total = [], [], [0]
            errors = []
            lock = threading.Lock()

            def client(i):
                for r in range(a.requests):
                    body = {"prompt": [rng.randrange(vocab) for _ in range(a.prompt_tokens)],
                            "max_tokens": a.gen_tokens, "stream": True, "seed": i * 100 + r,
                            "stream_options": {"include_usage": True},
                            "logit_bias": {str(t): -100 for t in set(eos)}}
                    try:
                        t, g, n = stream_request(port, body)
                    except Exception as e:  # reported below
                        errors.append(str(e))
                        return
                    with lock:
                        ttfts.append(t)
                        gaps.extend(g)
                        total[0] += n

            wall = run_clients(c, client, errors)
            rate = total[0] / wall
            base = base or rate
            print(f"{c:>7} {rate:>8.1f} {rate / base:>6.2f} {percentile(ttfts, 50) * 1e3:>7.1f}ms "
                  f"{percentile(ttfts, 99) * 1e3:>7.1f}ms {percentile(gaps, 50) * 1e3:>6.1f}ms "
                  f"{percentile(gaps, 99) * 1e3:>6.1f}ms", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)


def bench_detect(a, port, counts, vocab, rng):
    print(f"epwa serve on {a.model} ({a.quant}): /v1/watermark/detect of {a.prompt_tokens} token ids, "
          f"{a.requests} requests per client")
    print(f"{'clients':>7} {'det/s':>7} {'tok/s':>8} {'x one':>6} {'p50':>8} {'p99':>8} {'passes':>7}")
    post_json(port, "/v1/watermark/detect", {"ids": [rng.randrange(vocab) for _ in range(64)]})  # warm-up
    base = None
    for c in counts:
        latencies, errors, lock = [], [], threading.Lock()
        bodies = [[{"ids": [rng.randrange(vocab) for _ in range(a.prompt_tokens)]} for _ in range(a.requests)]
                  for _ in range(c)]

        def client(i):
            for body in bodies[i]:
                t0 = time.perf_counter()
                try:
                    post_json(port, "/v1/watermark/detect", body)
                except Exception as e:  # reported below
                    errors.append(str(e))
                    return
                with lock:
                    latencies.append(time.perf_counter() - t0)

        passes0 = metric(port, "epwa_detection_batches_total")
        wall = run_clients(c, client, errors)
        passes = metric(port, "epwa_detection_batches_total") - passes0
        rate = len(latencies) / wall
        base = base or rate
        print(f"{c:>7} {rate:>7.1f} {rate * a.prompt_tokens:>8.0f} {rate / base:>6.2f} "
              f"{percentile(latencies, 50) * 1e3:>6.1f}ms {percentile(latencies, 99) * 1e3:>6.1f}ms "
              f"{passes:>7.0f}", flush=True)


if __name__ == "__main__":
    main()
