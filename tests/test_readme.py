"""The README keeps its promises: short, every link resolves, every command in it
parses against the code it names, and (opt-in) the walkthrough runs as written.

The fast checks run in `make test`. Running the walkthrough takes minutes and needs
`make demo`'s downloads, so it runs when asked:

    E5JAX_README_WALKTHROUGH=1 .venv/bin/python -m pytest tests/test_readme.py -k walkthrough
"""

import argparse
import ast
import importlib
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from tests.cpu_env import cpu_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAX_LINES = 400
WALKTHROUGH_MARK = "<!-- walkthrough -->"


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def _commands(block: str) -> list[str]:
    """Shell lines of a block, backslash continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _readme_commands() -> list[str]:
    text = README.read_text()
    cmds = [c for b in _blocks(text, "bash") for c in _commands(b)]
    # Commands quoted inline in the prose (`e5jax demo --help`), when they carry a flag:
    # a bare `e5jax train` names the command, it is not one to run.
    for span in re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
        span = " ".join(span.split())
        if re.match(r"(\.venv/bin/)?(e5jax|python|\.venv/bin/python) ", span) and " --" in span and "..." not in span:
            cmds.append(span)
    return cmds


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_is_short_and_keeps_the_placeholders():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"README.md has {len(text.splitlines())} lines (at most {MAX_LINES})"
    for title in ("Corpus-scale embedding (`e5jax embed`)", "Encoding speed", "Decoder-LLM embedders (E5-mistral)"):
        assert re.search(rf"^#+ {re.escape(title)}$", text, flags=re.M), f"README lost its section {title!r}"
    assert text.count(WALKTHROUGH_MARK) == 1, "mark the walkthrough's bash block with " + WALKTHROUGH_MARK


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(doc):
    text = doc.read_text()
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            bad.append(f"{target}: no {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md":
            slugs = {_slug(h) for h in re.findall(r"^#+ (.*)$", dest.read_text(), flags=re.M)}
            if anchor not in slugs:
                bad.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not bad, f"{doc.name}: broken links:\n" + "\n".join(bad)


def _parse_e5jax(argv: list[str]):
    from e5jax.cli import COMMANDS

    assert argv and argv[0] in COMMANDS, f"unknown e5jax command {argv[:1]}"
    parser = argparse.ArgumentParser(prog=f"e5jax {argv[0]}", exit_on_error=False)
    importlib.import_module(COMMANDS[argv[0]][0]).add_arguments(parser)
    if "--help" in argv or "-h" in argv:
        return None
    args, extra = parser.parse_known_args(argv[1:])
    assert not extra, f"e5jax {argv[0]}: unknown arguments {extra}"
    # parse_known_args reports a missing required flag only through exit(); check by hand.
    for action in parser._actions:
        if action.required:
            assert getattr(args, action.dest) is not None, f"e5jax {argv[0]}: {action.option_strings} missing"
    return args


def _check_config(args, cmd: str):
    """A preset and its --set overrides are what `e5jax train` would accept."""
    from e5jax.config import laptop, load_config, parse_overrides, replace

    cfg = load_config(ROOT / args.config)
    if getattr(args, "laptop", False):
        cfg = laptop(cfg)
    replace(cfg, **parse_overrides(args.set))


def _check_paths(argv: list[str], cmd: str):
    # Repository files the command names (configs/, tests/ fixtures) exist.
    for word in argv:
        for part in word.split("="):
            if part.startswith(("configs/", "tests/", "benchmarks/", "tpu_scripts/")):
                assert (ROOT / part).exists(), f"{cmd!r} names {part}, which does not exist"


def test_every_command_parses(monkeypatch):
    monkeypatch.setenv("MINILM", "minilm")
    cmds = _readme_commands()
    assert any(c.startswith("e5jax train") for c in cmds), "no e5jax command found in README.md"
    makefile = (ROOT / "Makefile").read_text()
    seen = set()
    for cmd in cmds:
        if cmd.startswith(("source ", "MINILM=", "printf ")):
            continue  # shell set-up, run by the walkthrough test
        argv = shlex.split(os.path.expandvars(cmd))
        if argv[0] == "E5JAX_README_WALKTHROUGH=1":
            argv = argv[1:]
        if argv[0] == "make":
            assert re.search(rf"^{argv[1]}:", makefile, flags=re.M), f"no make target {argv[1]}"
            continue
        _check_paths(argv, cmd)
        if argv[0] in ("e5jax", ".venv/bin/e5jax"):
            try:
                args = _parse_e5jax(argv[1:])
            except argparse.ArgumentError as e:
                pytest.fail(f"README command {cmd!r}: {e}")
            if args is not None and getattr(args, "config", None):
                _check_config(args, cmd)
            seen.add(argv[1])
        elif argv[0].startswith("tpu_scripts/"):
            seen.add(argv[0])
            _check_tpu_script(argv, cmd)
        elif argv[0].startswith("benchmarks/") or argv[0].endswith("python") and argv[1].startswith("benchmarks/"):
            script = ROOT / (argv[0] if argv[0].startswith("benchmarks/") else argv[1])
            src = script.read_text()
            for flag in (a.split("=")[0] for a in argv if a.startswith("--")):
                assert f'"{flag}"' in src, f"README command {cmd!r}: {script.name} has no {flag}"
        elif argv[0].endswith("python") and argv[1:3] == ["-m", "pytest"]:
            for path in (a for a in argv[3:] if a.startswith("tests/")):
                assert (ROOT / path).exists(), f"{cmd!r}: no {path}"
        else:
            pytest.fail(f"README command {cmd!r}: the test does not know how to check it; teach it")
    # The walkthrough's stages are all there.
    for stage in ("harvest", "build", "train", "export", "filter", "mine", "eval", "embed", "compile"):
        assert stage in seen, f"README no longer runs e5jax {stage}"


def _check_tpu_script(argv, cmd):
    """Each TPU script, as written, with --dry-run: prints its gcloud commands, needs no gcloud."""
    extra = ["--dry-run"]
    if argv[0].endswith("setup.sh"):
        # setup.sh clones --repo, by default this checkout's origin; a checkout without one
        # (CI's) gets a stand-in so that the command as written can be checked.
        origin = subprocess.run(["git", "-C", str(ROOT), "remote", "get-url", "origin"], capture_output=True)
        if origin.returncode:
            extra += ["--repo", "https://example.invalid/e5jax.git"]
    if argv[0].endswith("launch.sh"):
        extra += ["--skip-compile-check"]  # the compile check is `e5jax compile`, checked above
    proc = subprocess.run(["bash", str(ROOT / argv[0]), *argv[1:], *extra], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "gcloud" in proc.stdout, f"{cmd!r} --dry-run: {proc.stderr[-1000:]}"


def test_python_blocks_are_valid_and_use_the_public_api():
    blocks = _blocks(README.read_text(), "python")
    assert len(blocks) >= 3
    import e5jax

    for block in blocks:
        tree = ast.parse(block)  # a syntax error in the README fails here
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "e5jax":
                assert hasattr(e5jax, node.attr), f"README uses e5jax.{node.attr}, which does not exist"


@pytest.mark.skipif(os.environ.get("E5JAX_README_WALKTHROUGH") != "1",
                    reason="minutes long; E5JAX_README_WALKTHROUGH=1 runs it (after make demo)")
def test_walkthrough_runs_as_written(tmp_path):
    """The walkthrough block, unchanged, in a scratch folder that sees the checkout's
    .venv, configs/, tests/ and demo_out/; then the README's Python snippets on its export."""
    if not (ROOT / "demo_out" / "raw").is_dir() or not (ROOT / "demo_out" / "heldout_beir").is_dir():
        pytest.fail("the walkthrough uses make demo's downloads: run `make demo` first", pytrace=False)
    for name in (".venv", "configs", "tests", "demo_out"):
        (tmp_path / name).symlink_to(ROOT / name)
    text = README.read_text()
    block = _blocks(text[text.index(WALKTHROUGH_MARK):], "bash")[0]
    env = cpu_env(1)  # one device, as on a user's laptop
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"walkthrough failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    for block in _blocks(text, "python"):
        proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"README snippet failed:\n{block}\n{proc.stderr[-3000:]}"
