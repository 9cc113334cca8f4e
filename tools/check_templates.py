#!/usr/bin/env python3
"""Checks `epwa template` against Python's jinja2 on a folder of chat templates.

Development tool, not run by the test suite: point it at any folder of
*.jinja chat templates (for instance llama.cpp's models/templates) and it
renders each one on every committed conversation
(tests/data/templates/conversations) twice, with jinja2 in transformers'
environment (tests/data/templates/make_expected.py) and with `epwa template`,
and reports per template whether the two agree byte for byte (or fail with
the same message).

Each template runs as a model folder of its own with bos_token "<s>" and
eos_token "</s>", and strftime_now() sees the fixed time make_expected.py uses.

Use: tools/check_templates.py DIR [--epwa build/epwa] [-v]
Exit status 1 when any template disagrees.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import importlib.util

REPO = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("make_expected", REPO / "tests/data/templates/make_expected.py")
oracle = importlib.util.module_from_spec(spec)
spec.loader.exec_module(oracle)

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}


def run_epwa(epwa, model_dir, conv_path, conv, variant, work):
    cmd = [str(epwa), "template", "-m", str(model_dir), "--messages", str(conv_path),
           "--now", oracle.NOW.strftime("%Y-%m-%dT%H:%M:%S")]
    if not variant.get("add_generation_prompt", True):
        cmd.append("--no-generation-prompt")
    for key in ("tools", "documents"):
        if conv.get(key) is not None:
            path = work / (key + ".json")
            path.write_text(json.dumps(conv[key], ensure_ascii=False), encoding="utf-8")
            cmd += ["--" + key, str(path)]
    if variant.get("kwargs"):
        cmd += ["--kwargs", json.dumps(variant["kwargs"], ensure_ascii=False)]
    p = subprocess.run(cmd, capture_output=True, timeout=120)
    if p.returncode == 0:
        return "ok", p.stdout.decode("utf-8")
    err = p.stderr.decode("utf-8", "replace").strip().splitlines()
    line = err[-1] if err else "(no message)"
    # "epwa: error: PATH: template line N: MESSAGE" -> MESSAGE
    marker = line.find("template line ")
    if marker >= 0:
        line = line[marker:].split(": ", 1)[-1]
    return "error", line


def first_difference(a, b):
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return n, a[max(0, n - 30):n + 40], b[max(0, n - 30):n + 40]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=pathlib.Path)
    parser.add_argument("--epwa", type=pathlib.Path, default=REPO / "build" / "epwa")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    templates = sorted(args.folder.glob("*.jinja"))
    if not templates:
        print(f"no *.jinja files in {args.folder}", file=sys.stderr)
        return 2
    failures = 0
    conversations = oracle.conversations()
    conv_dir = REPO / "tests/data/templates/conversations"
    for path in templates:
        source = path.read_text(encoding="utf-8")
        problems = []
        warnings = []
        renders = errors = 0
        with tempfile.TemporaryDirectory() as tmp:
            work = pathlib.Path(tmp)
            model = work / "model"
            model.mkdir()
            (model / "chat_template.jinja").write_text(source, encoding="utf-8")
            (model / "tokenizer_config.json").write_text(json.dumps({**SPECIAL, "added_tokens_decoder": {}}),
                                                         encoding="utf-8")
            for name, conv in conversations:
                for variant in oracle.variants(conv):
                    label = oracle.file_stem(name, variant)
                    want = oracle.render_chat({"default": source}, SPECIAL, conv["messages"], conv.get("tools"),
                                              conv.get("documents"), variant.get("add_generation_prompt", True),
                                              variant.get("kwargs"))
                    got = run_epwa(args.epwa, model, conv_dir / (name + ".json"), conv, variant, work)
                    renders += 1
                    if want[0] == "error":
                        errors += 1
                    if want == got:
                        continue
                    if want[0] == "error" and got[0] == "error":
                        warnings.append(f"{label}: both fail, worded differently: jinja2 {want[1][:200]!r}, "
                                        f"epwa {got[1][:200]!r}")
                    elif want[0] == "ok" and got[0] == "ok":
                        at, a, b = first_difference(want[1], got[1])
                        problems.append(f"{label}: outputs differ at character {at}:\n"
                                        f"      jinja2: {a!r}\n      epwa:   {b!r}")
                    else:
                        problems.append(f"{label}: jinja2 {want[0]} {want[1][:200]!r}, epwa {got[0]} {got[1][:200]!r}")
        if problems:
            failures += 1
            print(f"FAIL {path.name}: {len(problems)} of {renders} renders differ")
            for p in problems if args.verbose else problems[:3]:
                print("    " + p)
        else:
            print(f"PASS {path.name}: {renders} renders agree ({errors} of them errors"
                  f"{f', {len(warnings)} worded differently' if warnings else ''})")
        if args.verbose:
            for w in warnings:
                print("    note: " + w)
    print(f"{len(templates) - failures} of {len(templates)} templates match")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
