"""Shared fixtures: the bundled model loaded once, a key, and the epwa CLI to compare against."""

import hashlib
import json
import os
import subprocess

import pytest

import epwa

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models", "tiny-moe")
CHAT_MODEL = os.path.join(ROOT, "models", "tiny-qwen3-moe")


def cli_path() -> str:
    path = os.environ.get("EPWA_CLI", os.path.join(ROOT, "build", "epwa"))
    if not os.path.exists(path):
        pytest.skip(f"the epwa CLI is not built at {path}")
    return path


def run_cli(*args, check=True, env=None):
    """The CLI's result: (exit status, stdout, stderr). Two threads, like the Python engines."""
    proc = subprocess.run([cli_path(), *args], capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"epwa {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc.returncode, proc.stdout, proc.stderr


def cli_json_lines(stdout: str):
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def without_timing(result: dict) -> dict:
    """A detection result without its wall-clock field, the only one that may differ between runs."""
    return {k: v for k, v in result.items() if k != "detect_ms"}


@pytest.fixture(scope="session")
def engine():
    return epwa.Engine(MODEL, threads=2)


@pytest.fixture(scope="session")
def key_file(tmp_path_factory):
    """A fixed key, so that every run generates the same watermarked text.

    A fresh random key per run (epwa.keygen, tested on its own in test_module.py)
    made the tests' outcomes depend on the draw: with some keys tiny-moe's
    watermarked continuation loops, and a detector then has too few non-repeated
    tokens to score. The key is 32 bytes derived from a label, written 0600 as
    keygen writes it.
    """
    path = tmp_path_factory.mktemp("key") / "wm.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(hashlib.sha256(b"epwa python tests key").digest())
    return str(path)
