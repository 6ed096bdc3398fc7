"""The top-level Python API: lazy imports, callable `train` / `export`, `load`'s errors,
and every entry point's docstring example, run as written (doctest)."""

import doctest
import json
import pathlib
import subprocess
import sys

import pytest

import e5jax
from e5jax.errors import E5Error

ROOT = pathlib.Path(__file__).resolve().parent.parent
PUBLIC = ["Encoder", "load", "train", "evaluate", "export"]


def test_import_is_cheap_and_names_resolve():
    # A fresh interpreter: `import e5jax` must not import JAX; each public name then resolves.
    code = ("import sys, e5jax; assert 'jax' not in sys.modules, 'import e5jax imported jax'; "
            f"from e5jax import {', '.join(PUBLIC)}; "
            "import e5jax.train.loop, e5jax.export; "  # importing the submodules keeps them callable
            "assert callable(e5jax.train) and callable(e5jax.export), 'train/export not callable'; "
            "assert e5jax.export.check_output and e5jax.train.loop.train")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_caller_reaches_into_train_for_loading():
    """filter, mine, eval, export and the demo load models through e5jax.loading only."""
    for path in ["e5jax/filter.py", "e5jax/mine.py", "e5jax/demo.py", "e5jax/commands/export.py",
                 "e5jax/commands/eval.py", "e5jax/commands/mine.py", "e5jax/commands/filter.py"]:
        text = (ROOT / path).read_text()
        assert "load_trained" not in text and "Encoder.from_pretrained" not in text, path


def _api(name):
    """The function `e5jax.<name>(...)` runs (for train / export, the submodule calls it)."""
    from e5jax import api, loading
    from e5jax.model.encoder import Encoder

    return {"train": api.train, "export": api.export, "load": loading.load, "evaluate": api.evaluate,
            "Encoder": Encoder}[name]


def _examples(obj):
    [test] = doctest.DocTestFinder(recurse=False).find(obj)
    assert test.examples, f"{obj.__qualname__} has no docstring example"
    return test


def _run(obj, globs):
    test = _examples(obj)
    test.globs = globs
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = []
    runner.run(test, out=out.append)
    assert runner.failures == 0, f"docstring example of e5jax.{obj.__name__} failed:\n" + "".join(out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, minilm_dir):
    """Runs `e5jax.train`'s example on a tiny real pair dataset; its workdir serves the others."""
    from e5jax.data.ccpairs.builder import build_dataset
    from tests.fixtures.real_text import debian_records

    tmp = tmp_path_factory.mktemp("api")
    with open(tmp / "pairs.jsonl", "w") as f:
        for r in debian_records()[:400]:
            f.write(json.dumps({"query": r["short"], "passage": r["long"], "source": "debian"}) + "\n")
    build_dataset([tmp / "pairs.jsonl"], data_dir=tmp / "tfds", name="debian_pairs", heldout_fraction=0.1)
    globs = {"tmp": str(tmp), "data_dir": str(tmp / "tfds"), "tokenizer_dir": str(minilm_dir)}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)  # the examples name repository paths (configs/, tests/eval/fixtures/)
        _run(_api("train"), dict(globs))
    return {**globs, "workdir": str(tmp / "run")}


@pytest.mark.parametrize("name", ["load", "evaluate", "export", "Encoder"])
def test_docstring_example_runs(name, trained, monkeypatch):
    monkeypatch.chdir(ROOT)
    _run(_api(name), dict(trained))


def test_every_public_entry_point_has_an_example():
    from e5jax import api, loading

    for obj in (api.train, api.evaluate, api.export, loading.load, e5jax.Encoder):
        _examples(obj)
    assert e5jax.train.__call__ and e5jax.load is loading.load and e5jax.evaluate is api.evaluate


def test_load_refuses_what_is_not_a_model(tmp_path, minilm_dir):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    with pytest.raises(E5Error, match="neither a model folder .* nor an e5jax training workdir"):
        e5jax.load(tmp_path / "notes")
    with pytest.raises(E5Error, match="does not exist"):
        e5jax.load(tmp_path / "missing")
    with pytest.raises(E5Error, match="is a file"):
        e5jax.load(tmp_path / "notes" / "a.txt")
    with pytest.raises(E5Error, match="step=3 picks a checkpoint of a training workdir"):
        e5jax.load(minilm_dir, step=3)


def test_cli_names_the_folder_that_is_not_a_model(tmp_path, capsys):
    from e5jax.cli import main

    (tmp_path / "out").mkdir()
    rc = main(["export", "--workdir", str(tmp_path / "out"), "--output", str(tmp_path / "exp")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nor an e5jax training workdir" in err[0], err


def test_load_over_all_local_devices_equals_one(trained):
    """What `e5jax filter` does (a batch split over every local device) gives what one device gives."""
    import jax
    import numpy as np

    texts = ["how to resize a partition", "free software office suite", "a tiling window manager"]
    one = e5jax.load(trained["workdir"]).encode(texts, prefix="query: ")
    assert jax.local_device_count() > 1, "conftest emulates 8 devices"
    many = e5jax.load(trained["workdir"], devices=jax.local_devices()).encode(texts, prefix="query: ")
    np.testing.assert_allclose(many, one, atol=1e-5)
