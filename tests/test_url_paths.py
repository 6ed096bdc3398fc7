"""Lint: no value that may be a URL goes through `pathlib.Path`.

pathlib folds `gs://bucket/x` into `gs:/bucket/x`, so a `--data-dir`,
`--input`, `--workdir`, `--output` or `model.init` on Cloud Storage that meets
it is silently "not found". Values that may be URLs go through `etils.epath`;
what only works on a local file system goes through `e5jax.paths.local`, which
refuses a URL with a one-line error. Every other `pathlib.Path(<value>)` in the
package is listed below with the reason it cannot see a URL; a new one fails
here until it is given one (or switched to epath / `paths.local`).
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "e5jax"

# (file under e5jax/, enclosing function) -> why its pathlib.Path(...) never sees a URL.
ALLOWED = {
    ("paths.py", "local"): "the one sanctioned conversion: it refuses URLs first",
    ("paths.py", "_check_ancestors"): "`given` is the path local() has already accepted",
    ("filter_files.py", "work_dir"): "refuses a URL data dir just above (progress logs need POSIX appends)",
    ("export.py", "_temporary"): "mkdtemp beside `out`, which check_output passed through local()",
    ("train/state.py", "load_tokenizer"): "`path` passed _local(), which refuses URLs",
    ("train/state.py", "bert_config"): "the argument is _local(...), which refuses URLs",
    ("train/state.py", "_config_json"): "the argument is _local(...), which refuses URLs",
    ("aot/build.py", "tpu_config"): "asks whether model.init is on this machine; a URL rightly is not (is_dir False)",
}


def _is_pathlib_path(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "Path" and isinstance(node.value, ast.Name) \
        and node.value.id == "pathlib"


def _harmless(arg: ast.AST) -> bool:
    """A literal, or a path derived from a module's own `__file__`."""
    if isinstance(arg, ast.Constant):
        return True
    return any(isinstance(n, ast.Name) and n.id == "__file__" or isinstance(n, ast.Attribute) and n.attr == "__file__"
               for n in ast.walk(arg))


def pathlib_uses(source: str) -> list[tuple[str, int, str]]:
    """(enclosing function, line, code) of each `pathlib.Path(x)` / `map(pathlib.Path, xs)` on a value."""
    found = []

    def walk(node: ast.AST, fn: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else fn
            if isinstance(child, ast.Call):
                if _is_pathlib_path(child.func) and child.args and not _harmless(child.args[0]):
                    found.append((name, child.lineno, ast.unparse(child)))
                elif any(_is_pathlib_path(a) for a in child.args):  # map(pathlib.Path, paths), ...
                    found.append((name, child.lineno, ast.unparse(child)))
            walk(child, name)

    walk(ast.parse(source), "<module>")
    return found


def test_no_url_valued_path_goes_through_pathlib():
    bad = []
    for f in sorted(PACKAGE.rglob("*.py")):
        rel = f.relative_to(PACKAGE).as_posix()
        for fn, line, code in pathlib_uses(f.read_text(encoding="utf-8")):
            if (rel, fn) not in ALLOWED:
                bad.append(f"e5jax/{rel}:{line} in {fn}(): {code}")
    assert not bad, ("pathlib.Path on a value that may be a gs:// URL (use etils.epath, or e5jax.paths.local "
                     "where a local file system is required, or add it to ALLOWED with the reason):\n  "
                     + "\n  ".join(bad))


def test_allowlist_has_no_stale_entries():
    for rel, fn in ALLOWED:
        f = PACKAGE / rel
        if f.exists():  # a module another change has not landed yet is not stale
            assert any(name == fn for name, _, _ in pathlib_uses(f.read_text(encoding="utf-8"))), (rel, fn)


def test_the_lint_sees_what_it_must():
    src = "import pathlib\ndef dataset_dir(d, n):\n    return pathlib.Path(d) / n\n" \
          "def inputs(ps):\n    return list(map(pathlib.Path, ps))\n" \
          "def fine():\n    return pathlib.Path(__file__).parent, pathlib.Path('/proc/cpuinfo')\n"
    assert [(fn, line) for fn, line, _ in pathlib_uses(src)] == [("dataset_dir", 3), ("inputs", 5)]


def test_local_only_paths_refuse_urls_in_one_line():
    import pytest

    from e5jax.errors import E5Error
    from e5jax.paths import check_file, check_folder, local

    with pytest.raises(E5Error, match=r"^--model gs://b/m: .*local-file APIs; .*not a URL$"):
        local("gs://b/m", "--model")
    with pytest.raises(E5Error, match=r"^--output gs://b/x\.json: is written with local-file APIs"):
        check_file("gs://b/x.json", "--output")
    with pytest.raises(E5Error, match=r"^--cache-dir gs://b/c: "):
        check_folder("gs://b/c", "--cache-dir")
    assert local("rel/x", "--input") == pathlib.Path("rel/x")
