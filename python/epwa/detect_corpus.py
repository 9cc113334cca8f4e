"""Watermark detection over a corpus on a Dask cluster.

    python3 -m epwa.detect_corpus INPUT.jsonl --out RESULTS.jsonl --model DIR --key-file K \
        [--local-workers N | --scheduler tcp://HOST:8786] [--method full|cspv|pepi] ...

INPUT.jsonl has one {"text": ...} or {"ids": [...]} object per line, with an optional "prompt",
exactly as `epwa detect --jsonl` reads it; RESULTS.jsonl gets the object `epwa detect --jsonl
--json` prints for each line, in input order. Every worker process runs the same C++ detector as
the CLI, and scoring is row-invariant, so the numbers are the CLI's whatever the partitioning.

How it runs:
- The driver reads the input as a stream and submits partitions of --partition-texts lines,
  keeping a bounded number in flight, so neither the driver nor the scheduler holds the corpus.
- Each worker process loads the model once (on its first task) and keeps it for every later
  task; a task carries only its lines.
- Results stream into RESULTS.jsonl.parts/, one file per partition, each written whole
  (temporary file, then rename). When all are in, they are joined into RESULTS.jsonl the same
  way, and the folder is removed: RESULTS.jsonl is complete or absent, never partial.
- A rerun after a crash (of the driver, the workers or the machine) skips the partitions already
  in the parts folder. The folder records the input's hash and the settings, and a rerun with
  other input or settings is refused rather than mixing two runs (--restart discards it).
- Progress (texts, texts/s, an estimate of the time left) goes to stderr.
- The exit status is 1 when some input could not be tested (its result holds "error", as with
  the CLI), else 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Iterator, List, Optional, Tuple

# One loaded model and detector per worker process, keyed by what determines them, so that a
# worker serving tasks of one run loads the model exactly once.
_WORKER_STATE: dict = {}
_WORKER_LOCK = threading.Lock()
_WORKER_LOADS = 0  # models this process has loaded, reported with every result


def _worker_detector(model: dict, settings: str):
    from . import _epwa

    global _WORKER_LOADS
    key = json.dumps(model, sort_keys=True) + settings
    with _WORKER_LOCK:
        state = _WORKER_STATE.get(key)
        if state is None:
            _WORKER_STATE.clear()  # one model per process: a new run replaces the old one
            started = time.perf_counter()
            # The kernels' switches are process-wide: set them as the driver's flags ask before
            # this worker loads, so that its memory plan counts their scratch.
            _epwa.set_kernel_flags(**model.get("kernel_flags", {}))
            engine = _epwa._Engine(model["dir"], model["quant"], model["ctx"], model["threads"],
                                   model["mem_budget"], model["cache"], 1, 0, False, model["no_mmap"])
            detector = _epwa._Detector(engine, settings)
            _WORKER_LOADS += 1
            state = {"engine": engine, "detector": detector, "load_s": time.perf_counter() - started,
                     "pid": os.getpid()}
            _WORKER_STATE[key] = state
        return state


def detect_partition(model: dict, settings: str, lines: List[Tuple[str, bytes]],
                     default_prompt: Optional[str]) -> dict:
    """One partition on a worker: (label, raw line) pairs -> the CLI's JSON result lines."""
    state = _worker_detector(model, settings)
    started = time.perf_counter()
    results = state["detector"].detect_json_lines(lines, default_prompt)
    return {"results": results, "seconds": time.perf_counter() - started, "pid": state["pid"],
            "load_s": state["load_s"], "loads": _WORKER_LOADS}


def _read_partitions(path: str, partition_texts: int) -> Iterator[List[Tuple[str, bytes]]]:
    """The input's non-blank lines, labelled path:line as `epwa detect --jsonl` labels them."""
    part: List[Tuple[str, bytes]] = []
    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            line = line[:-1] if line.endswith(b"\n") else line
            if not line.strip(b" \t\r"):
                continue
            part.append((f"{path}:{n}", line))
            if len(part) == partition_texts:
                yield part
                part = []
    if part:
        yield part


def _file_sha256(path: str) -> Tuple[str, int]:
    h = hashlib.sha256()
    texts = 0
    with open(path, "rb") as f:
        for line in f:
            h.update(line)
            texts += bool(line.strip(b" \t\r\n"))
    return h.hexdigest(), texts


def _write_atomically(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _part_path(parts_dir: str, index: int) -> str:
    return os.path.join(parts_dir, f"part-{index:08d}.jsonl")


def _settings_json(args: argparse.Namespace) -> str:
    return json.dumps({
        "scheme": args.watermark, "method": args.method, "gamma": args.gamma,
        "router_layer": -1000000 if args.router_layer is None else args.router_layer,
        "z_threshold": args.z_threshold, "dedup": not args.no_dedup, "min_margin": args.min_margin,
        "min_tokens": args.min_tokens, "sample": args.sample, "seed": args.seed, "oracle": args.oracle,
        "batch_texts": args.batch_texts,
        "key_file": os.path.abspath(args.key_file) if args.key_file else None}, sort_keys=True)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m epwa.detect_corpus",
                                description="Watermark detection over a JSON Lines corpus on a Dask cluster, "
                                            "with the numbers of `epwa detect --jsonl`.")
    p.add_argument("input", help="JSON Lines: {\"text\": ...} or {\"ids\": [...]}, optional \"prompt\"")
    p.add_argument("--out", required=True, help="results, one JSON object per input line, in input order")
    p.add_argument("--model", required=True, help="the model folder (the same path on every worker)")
    p.add_argument("--key-file", default=None, help="secret key (default: $EPWA_KEY_FILE, read on each worker)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (tcp://host:8786)")
    where.add_argument("--local-workers", type=int, default=None,
                       help="start a LocalCluster of this many worker processes (default: 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="model threads per worker (default: the cores divided among local workers; "
                        "all cores with --scheduler)")
    p.add_argument("--quant", default=None, help="quantization level (default: EPW_* variables, else auto)")
    p.add_argument("--ctx", type=int, default=0, help="context the memory plan holds (default: the model's)")
    p.add_argument("--mem-budget", default=None, help="memory each worker's model may use, e.g. 6G")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the quantized weight cache")
    p.add_argument("--no-mmap", action="store_true",
                   help="copy mapped weights into each worker's memory (as epwa --no-mmap)")
    p.add_argument("--float-activations", action="store_true",
                   help="integer levels: float32 activations on every worker (as epwa --float-activations)")
    p.add_argument("--bf16-activations", action="store_true",
                   help="BF16 prefill with activations rounded to bf16 (as epwa --bf16-activations)")
    p.add_argument("--split-activations", action="store_true",
                   help="BF16 prefill on AMX with float32 activations in three bf16 parts "
                        "(as epwa --split-activations)")
    p.add_argument("--watermark", default=None, help="scheme to test for (default: epw2-et; gsg for pepi)")
    p.add_argument("--method", default="full", choices=["full", "cspv", "pepi"])
    p.add_argument("--gamma", type=float, default=0.25)
    p.add_argument("--router-layer", type=int, default=None)
    p.add_argument("--z-threshold", type=float, default=4.0)
    p.add_argument("--no-dedup", action="store_true")
    p.add_argument("--min-tokens", type=int, default=16)
    p.add_argument("--min-margin", type=float, default=0.0)
    p.add_argument("--sample", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--oracle", default=None, help="pepi: oracle file (the same path on every worker)")
    p.add_argument("--prompt", default=None, help="prompt of every line that gives none")
    p.add_argument("--partition-texts", type=int, default=256, help="texts per Dask task (default 256)")
    p.add_argument("--batch-texts", type=int, default=64, help="texts per forward pass on a worker (default 64)")
    p.add_argument("--restart", action="store_true", help="discard the parts of an earlier run instead of resuming")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    if args.local_workers is not None and args.local_workers < 1:
        p.error("--local-workers must be at least 1")
    if args.partition_texts < 1 or args.batch_texts < 1:
        p.error("--partition-texts and --batch-texts must be at least 1")
    if args.threads is not None and args.threads < 0:
        p.error("--threads must not be negative")
    return args


def run(args: argparse.Namespace) -> int:
    from . import Error, _byte_size, _epwa

    if not os.path.isfile(args.input):
        raise Error(f"the input '{args.input}' is not a readable file")
    if os.path.isdir(args.out):
        raise Error(f"--out '{args.out}' is a folder")
    settings = _settings_json(args)
    local_workers = args.local_workers if args.scheduler is None else None
    if local_workers is None and args.scheduler is None:
        local_workers = 1
    threads = args.threads
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // local_workers) if local_workers else 0
    model = {"dir": os.path.abspath(args.model), "quant": args.quant, "ctx": args.ctx, "threads": threads,
             "mem_budget": _byte_size(args.mem_budget), "cache": not args.no_cache,
             "no_mmap": bool(args.no_mmap),
             "kernel_flags": {"float_activations": bool(args.float_activations),
                              "bf16_activations": bool(args.bf16_activations),
                              "split_activations": bool(args.split_activations)}}
    # Settings that cannot work (and a missing key) fail here, before a cluster starts.
    _epwa.check_detect_settings(settings)

    input_hash, total = _file_sha256(args.input)
    parts_dir = args.out + ".parts"
    manifest = {"input": os.path.abspath(args.input), "input_sha256": input_hash, "texts": total,
                "settings": json.loads(settings), "model": model["dir"], "quant": args.quant,
                "partition_texts": args.partition_texts, "prompt": args.prompt,
                "kernel_flags": model["kernel_flags"]}
    manifest_path = os.path.join(parts_dir, "manifest.json")
    if args.restart and os.path.isdir(parts_dir):
        shutil.rmtree(parts_dir)
    if os.path.isdir(parts_dir):
        try:
            with open(manifest_path) as f:
                earlier = json.load(f)
        except (OSError, ValueError):
            earlier = None
        if earlier != manifest:
            raise Error(f"'{parts_dir}' holds parts of a run with another input or other settings; "
                        f"rerun with --restart to discard them")
    else:
        os.makedirs(parts_dir)
        _write_atomically(manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())
    done = {int(n[5:13]) for n in os.listdir(parts_dir) if n.startswith("part-") and n.endswith(".jsonl")}

    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if args.scheduler:
        client = Client(args.scheduler)
    else:
        cluster = LocalCluster(n_workers=local_workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    log = (lambda *a: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        # Every worker loads the model now, once, so that a model that cannot load fails before any
        # task runs and the throughput below is detection alone. Workers that join later load it
        # on their first task.
        warm = client.run(_warm_worker, model, settings)  # worker address -> its load's seconds and kernels
        workers = max(1, len(warm))
        log(f"detect_corpus: model loaded on {len(warm)} worker(s) in "
            f"{max(w['load_s'] for w in warm.values()) if warm else 0:.2f} s")
        for line in sorted({_kernels_line(w["kernels"]) for w in warm.values()}):
            log(f"detect_corpus: kernels: {line}")
        in_flight_limit = 2 * workers
        log(f"detect_corpus: {total} texts, {len(done)} partitions already done, "
            f"{workers} worker(s), {threads or 'all'} model thread(s) each, "
            f"{args.partition_texts} texts per partition")
        started = time.perf_counter()
        texts_done = 0
        texts_skipped = 0
        loads = {}  # worker process -> models it has loaded in all (1 unless it served another run)
        pending = as_completed()
        in_flight = 0

        def collect(future) -> None:
            nonlocal texts_done
            index, result = future.result()
            lines = result["results"]
            loads[result["pid"]] = result["loads"]
            _write_atomically(_part_path(parts_dir, index), "".join(r + "\n" for r in lines).encode())
            texts_done += len(lines)
            elapsed = time.perf_counter() - started
            rate = texts_done / elapsed if elapsed > 0 else 0.0
            left = total - texts_skipped - texts_done
            log(f"detect_corpus: {texts_skipped + texts_done}/{total} texts, {rate:.1f} texts/s, "
                f"about {left / rate if rate else 0:.0f} s left")

        for index, lines in enumerate(_read_partitions(args.input, args.partition_texts)):
            if index in done:
                texts_skipped += len(lines)
                continue
            future = client.submit(_indexed, index, model, settings, lines, args.prompt, pure=False,
                                   key=f"epwa-detect-{input_hash[:12]}-{index}")
            pending.add(future)
            in_flight += 1
            while in_flight >= in_flight_limit:
                collect(next(pending))
                in_flight -= 1
        for future in pending:
            collect(future)
        # Earlier runs' parts may hold errors too: the exit status covers the whole corpus.
        elapsed = time.perf_counter() - started
        joined = bytearray()
        failures = 0
        count = 0
        for index in range(_partition_count(total, args.partition_texts)):
            with open(_part_path(parts_dir, index), "rb") as f:
                data = f.read()
            for line in data.splitlines():
                count += 1
                if "error" in json.loads(line):
                    failures += 1
            joined += data
        if count != total:
            raise Error(f"the parts hold {count} results for {total} texts; rerun with --restart")
        _write_atomically(args.out, bytes(joined))
        shutil.rmtree(parts_dir)
        log(f"detect_corpus: {texts_done} texts detected in {elapsed:.2f} s "
            f"({texts_done / elapsed if elapsed > 0 else 0:.1f} texts/s on {len(loads) or workers} worker "
            f"process(es), {sum(loads.values())} model load(s) in all), {texts_skipped} skipped as already done, "
            f"{failures} with errors; results in {args.out}")
        return 1 if failures else 0
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _warm_worker(model: dict, settings: str) -> dict:
    from . import _epwa

    return {"load_s": _worker_detector(model, settings)["load_s"], "kernels": json.loads(_epwa.kernel_flags())}


def _kernels_line(flags: dict) -> str:
    return (f"{flags['isa']}; BF16 prefill: {flags['prefill_bf16']}; "
            f"integer prefill: {flags['prefill_int']}")


def _indexed(index: int, model: dict, settings: str, lines, prompt):
    return index, detect_partition(model, settings, lines, prompt)


def _partition_count(texts: int, per_partition: int) -> int:
    return (texts + per_partition - 1) // per_partition


def main(argv: Optional[List[str]] = None) -> int:
    from . import Error

    args = parse_args(argv)
    try:
        return run(args)
    except Error as e:
        print(f"epwa: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Run from the importable module, not from __main__: Dask sends the task functions to the
    # workers by reference (epwa.detect_corpus.detect_partition), which only works for a module
    # the workers can import; functions of __main__ would be pickled by value, with their state.
    from epwa.detect_corpus import main as importable_main

    sys.exit(importable_main())
