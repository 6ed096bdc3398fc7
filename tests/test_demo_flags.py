"""`e5jax demo` checks every flag before its first stage: one line naming the
flag, in a second, and the workdir is neither created nor touched."""

import time

import pytest

from e5jax import cli, demo


@pytest.fixture(autouse=True)
def no_stage_runs(monkeypatch):
    """Reaching a stage means a bad flag got through: fail there, not minutes later."""

    def refuse(*args, **kwargs):
        pytest.fail("a demo stage ran before the flags were checked")

    for name in ("fetch_wikipedia", "fetch_debian", "harvest_all", "build"):
        monkeypatch.setattr(demo, name, refuse)


def _demo(capsys, argv):
    t0 = time.perf_counter()
    rc = cli.main(["demo"] + argv)
    elapsed = time.perf_counter() - t0
    captured = capsys.readouterr()
    return rc, captured.err.strip().splitlines(), captured.out, elapsed


BAD = [
    (["--steps", "-1"], "--steps"),
    (["--steps", "0"], "--steps"),
    (["--top-k", "0"], "--top-k"),
    (["--pool-size", "0"], "--pool-size"),
    (["--top-k", "1001"], "--top-k"),  # above the default pool of 1,000: would keep every pair
    (["--batch-size", "0"], "--batch-size"),
    (["--max-length", "0"], "--max-length"),
    (["--max-length", "4"], "--max-length"),  # below the pre-training config's minimum of 8
    (["--debian-limit", "-1"], "--debian-limit"),
    (["--heldout-fraction", "1.5"], "--heldout-fraction"),
    (["--heldout-fraction", "0"], "--heldout-fraction"),  # the held-out pairs are the evaluation set
    (["--heldout-fraction", "1"], "--heldout-fraction"),
    (["--heldout-fraction", "nan"], "--heldout-fraction"),
    (["--debian", "/nonexistent/Translation-en"], "--debian"),
]


@pytest.mark.parametrize("argv,flag", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_flag_is_refused_before_any_stage(tmp_path, capsys, argv, flag):
    work = tmp_path / "demo"
    rc, err, out, elapsed = _demo(capsys, ["--workdir", str(work)] + argv)
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"e5jax demo: error: {flag} "), err
    assert argv[1] in err[0] and out == ""
    assert elapsed < 10 and not work.exists()


def test_debian_folder_is_refused(tmp_path, capsys):
    rc, err, _, _ = _demo(capsys, ["--workdir", str(tmp_path / "demo"), "--debian", str(tmp_path)])
    assert rc == 2 and len(err) == 1 and "--debian" in err[0] and "not a file" in err[0]
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("argv,flag", [(["--heldout-fraction", "1.5"], "--heldout-fraction"),
                                       (["--top-k", "0"], "--top-k"), (["--steps", "-1"], "--steps")])
def test_reused_workdir_is_left_as_it_was(tmp_path, capsys, argv, flag):
    """A rerun with a bad flag neither ignores it nor changes what the first run left."""
    work = tmp_path / "demo"
    (work / "raw").mkdir(parents=True)
    (work / "raw" / "Translation-en").write_text("Package: a\n")
    before = sorted((p.relative_to(work), p.stat().st_mtime_ns) for p in work.rglob("*"))
    rc, err, _, _ = _demo(capsys, ["--workdir", str(work)] + argv)
    assert rc == 2 and len(err) == 1 and flag in err[0]
    assert sorted((p.relative_to(work), p.stat().st_mtime_ns) for p in work.rglob("*")) == before


@pytest.mark.parametrize("workdir", ["afile", "afile/demo"])
def test_workdir_under_a_file_is_refused(tmp_path, capsys, workdir):
    (tmp_path / "afile").write_text("keep me\n")
    rc, err, _, _ = _demo(capsys, ["--workdir", str(tmp_path / workdir)])
    assert rc == 2 and len(err) == 1 and "--workdir" in err[0] and "is a file, not a folder" in err[0]
    assert (tmp_path / "afile").read_text() == "keep me\n"


def test_good_flags_pass_the_check(tmp_path):
    deb = tmp_path / "Translation-en"
    deb.write_text("Package: a\n")
    demo.check_settings(tmp_path / "demo", steps=1, batch_size=1, debian_limit=0, heldout_fraction=0.5,
                        pool_size=1, top_k=1, max_length=8, debian_file=str(deb), wikipedia_limit=None)


def test_reused_dataset_with_another_heldout_fraction_is_not_silent(tmp_path, monkeypatch, capsys):
    """The dataset a rerun reuses keeps its held-out fraction: the demo says so."""
    from e5jax.data.ccpairs import builder

    monkeypatch.undo()  # the real `demo.build`, with a stored dataset faked
    meta = {"heldout_fraction": 0.1, "summary": {"splits": {}}}
    monkeypatch.setattr(builder, "load_summary", lambda data_dir, name: meta)
    monkeypatch.setattr(builder, "build_dataset", lambda *a, **k: pytest.fail("rebuilt the reused dataset"))
    assert demo.build(tmp_path / "pairs", tmp_path / "tfds", 0.1) == meta["summary"]
    assert "note" not in capsys.readouterr().out
    assert demo.build(tmp_path / "pairs", tmp_path / "tfds", 0.2) == meta["summary"]
    out = capsys.readouterr().out
    assert "--heldout-fraction 0.1" in out and "not 0.2" in out and str(tmp_path / "tfds") in out
