#!/usr/bin/env python3
"""The oracle for epwa's chat-template interpreter (src/template/).

Renders with Python's jinja2 exactly the way Hugging Face transformers'
tokenizer.apply_chat_template(..., tokenize=False) does, and writes what it
gets next to this script, for the C++ tests to compare byte for byte:

  * every model folder of the shared data set (../shared/data/models/NAME,
    found beside the repository or through $EPWA_SHARED_DIR) applied to every
    conversation in conversations/*.json, each in its variants
    (add_generation_prompt on/off, extra keyword arguments such as
    enable_thinking), into expected/NAME/CONVERSATION[__VARIANT].txt, or
    .error.txt holding the error message when the template raises;
  * the language cases of language_cases.json (one small template each) into
    language_expected.json.

transformers' environment, reproduced here without transformers itself
(src/transformers/utils/chat_template_utils.py): jinja2's
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with the
loopcontrols extension and a {% generation %} extension that renders its body
as is, a `tojson` filter that is json.dumps(x, ensure_ascii=False, indent=...,
separators=..., sort_keys=...), and the globals raise_exception(message)
(raises TemplateError) and strftime_now(format). The render call passes
messages, tools (None when absent), documents (None when absent),
add_generation_prompt, the tokenizer's special tokens and the extra keyword
arguments. strftime_now sees a fixed time (NOW) so that the expected files do
not change from day to day; the C++ tests pass the same time.

Use: make_expected.py            regenerate the files
     make_expected.py --check    re-render and compare with the committed
                                 files; exit 1 on a difference, 77 (skip)
                                 when jinja2 is not installed
Needs python3-jinja2 (Debian 12: 3.1.2, the version the files were made with).
"""

import argparse
import datetime
import functools
import json
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[2]
MODELS = [
    "mixtral-8x7b-instruct-v0.1",
    "qwen3-coder-30b-a3b-instruct",
    "gpt-oss-20b",
    "deepseek-r1",
    "granite-3.0-1b-a400m-instruct",
    "granite-3.1-1b-a400m-instruct",
]
# The time strftime_now() reports (local, naive, as datetime.now() gives).
NOW = datetime.datetime(2025, 8, 5, 12, 34, 56)
SPECIAL_TOKEN_NAMES = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]


def shared_dir():
    env = os.environ.get("EPWA_SHARED_DIR")
    if env and (pathlib.Path(env) / "data").exists():
        return pathlib.Path(env)
    beside = REPO.parent / "shared"
    if (beside / "data").exists():
        return beside
    return None


def make_environment(now=NOW):
    import jinja2
    from jinja2 import nodes
    from jinja2.exceptions import TemplateError
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class AssistantTracker(Extension):
        # transformers' extension: {% generation %}...{% endgeneration %}
        # renders its body (it also records where, for assistant masks).
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

        @jinja2.pass_eval_context
        def _generation_support(self, context, caller):
            return caller()

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return now.strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[AssistantTracker, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def token_text(value):
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def load_model(folder):
    """(templates, special_tokens) of a model folder, as transformers loads them.

    templates: {name: source}; special_tokens: {name: str or [str]}.
    """
    folder = pathlib.Path(folder)
    config = {}
    if (folder / "tokenizer_config.json").exists():
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokens = dict(config)
    # Legacy configurations (no added_tokens_decoder) take special_tokens_map.json over them.
    if "added_tokens_decoder" not in config and (folder / "special_tokens_map.json").exists():
        tokens.update(json.loads((folder / "special_tokens_map.json").read_text(encoding="utf-8")))
    special = {}
    for name in SPECIAL_TOKEN_NAMES:
        text = token_text(tokens.get(name))
        if text:
            special[name] = text
    extra = tokens.get("additional_special_tokens")
    if isinstance(extra, list):
        texts = [t for t in (token_text(v) for v in extra) if t is not None]
        if texts:
            special["additional_special_tokens"] = texts
    templates = {}
    if (folder / "chat_template.jinja").exists():
        templates["default"] = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        extra_dir = folder / "additional_chat_templates"
        if extra_dir.is_dir():
            for f in sorted(extra_dir.glob("*.jinja")):
                templates[f.stem] = f.read_text(encoding="utf-8")
    elif isinstance(config.get("chat_template"), str):
        templates["default"] = config["chat_template"]
    elif isinstance(config.get("chat_template"), list):
        for entry in config["chat_template"]:
            templates[entry["name"]] = entry["template"]
    return templates, special


def pick_template(templates, tools):
    if len(templates) == 1:
        return next(iter(templates.values()))
    if tools is not None and "tool_use" in templates:
        return templates["tool_use"]
    return templates["default"]


@functools.lru_cache(maxsize=None)
def compile_template(source, now=NOW):
    # transformers caches compiled templates the same way (lru_cache).
    return make_environment(now).from_string(source)


def render_chat(templates, special, messages, tools=None, documents=None, add_generation_prompt=False,
                kwargs=None, now=NOW):
    """("ok", text) or ("error", message), as apply_chat_template would give."""
    template_kwargs = {**special, **(kwargs or {})}
    try:
        compiled = compile_template(pick_template(templates, tools), now)
        text = compiled.render(messages=messages, tools=tools, documents=documents,
                               add_generation_prompt=add_generation_prompt, **template_kwargs)
        return "ok", text
    except Exception as e:  # noqa: BLE001 - every failure is an expected outcome here
        return "error", str(e)


def conversations():
    out = []
    for path in sorted((HERE / "conversations").glob("*.json")):
        out.append((path.stem, json.loads(path.read_text(encoding="utf-8"))))
    return out


def variants(conversation):
    return conversation.get("variants") or [{"name": "", "add_generation_prompt": True}]


def file_stem(conversation_name, variant):
    return conversation_name + ("__" + variant["name"] if variant.get("name") else "")


def model_expectations(folder):
    """{relative file name: content} for one model folder."""
    templates, special = load_model(folder)
    files = {}
    for name, conv in conversations():
        for variant in variants(conv):
            status, text = render_chat(templates, special, conv["messages"], conv.get("tools"),
                                       conv.get("documents"), variant.get("add_generation_prompt", True),
                                       variant.get("kwargs"))
            suffix = ".txt" if status == "ok" else ".error.txt"
            files[file_stem(name, variant) + suffix] = text
    return files


def language_expectations():
    data = json.loads((HERE / "language_cases.json").read_text(encoding="utf-8"))
    context = data["context"]
    out = {}
    for case in data["cases"]:
        ctx = dict(context)
        ctx.update(case.get("context", {}))
        env = make_environment()
        try:
            out[case["name"]] = {"output": env.from_string(case["template"]).render(**ctx)}
        except Exception as e:  # noqa: BLE001
            out[case["name"]] = {"error": str(e), "type": type(e).__name__}
    return out


def dump_json(obj):
    return json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = parser.parse_args()
    try:
        import jinja2  # noqa: F401
    except ImportError:
        print("make_expected.py: python3-jinja2 is not installed; skipped", file=sys.stderr)
        return 77

    problems = []
    lang_path = HERE / "language_expected.json"
    lang = dump_json(language_expectations())
    if args.check:
        if not lang_path.exists() or lang_path.read_text(encoding="utf-8") != lang:
            problems.append(str(lang_path.relative_to(REPO)))
    else:
        lang_path.write_text(lang, encoding="utf-8")

    shared = shared_dir()
    if shared is None:
        print("make_expected.py: the shared data folder is absent (../shared beside the repository, or "
              "$EPWA_SHARED_DIR); the model templates were not checked", file=sys.stderr)
    else:
        for model in MODELS:
            folder = shared / "data" / "models" / model
            if not folder.exists():
                print(f"make_expected.py: {folder} is absent; skipped", file=sys.stderr)
                continue
            files = model_expectations(folder)
            out_dir = HERE / "expected" / model
            existing = {p.name for p in out_dir.glob("*.txt")} if out_dir.exists() else set()
            if args.check:
                for name, text in files.items():
                    path = out_dir / name
                    if not path.exists() or path.read_bytes() != text.encode("utf-8"):
                        problems.append(str(path.relative_to(REPO)))
                for stale in sorted(existing - set(files)):
                    problems.append(str((out_dir / stale).relative_to(REPO)) + " (no longer produced)")
            else:
                out_dir.mkdir(parents=True, exist_ok=True)
                for stale in existing - set(files):
                    (out_dir / stale).unlink()
                for name, text in files.items():
                    (out_dir / name).write_bytes(text.encode("utf-8"))
    if problems:
        print("make_expected.py: these files differ from what jinja2 renders now "
              "(run tests/data/templates/make_expected.py to regenerate):", file=sys.stderr)
        for p in problems:
            print("  " + p, file=sys.stderr)
        return 1
    print("make_expected.py: " + ("the committed expectations match jinja2" if args.check else "files written"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
