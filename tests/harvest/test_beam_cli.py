"""The Beam path (DirectRunner) yields the same pairs as the local path; the
CLI runs a harvest and reports bad input in one line."""

from __future__ import annotations

import pytest

from e5jax.cli import main
from e5jax.data.harvest import CleanConfig, harvest
from tests.harvest import formats
from tests.harvest.helpers import dropped, read_pairs, summary


def _as_set(pairs):
    return {(p["id"], p["query"], p["passage"], p["source"], repr(sorted(p["meta"].items()))) for p in pairs}


@pytest.mark.parametrize("source", ["reddit", "stackexchange", "s2orc", "jsonl"])
def test_beam_direct_runner_equals_local(source, tmp_path):
    pytest.importorskip("apache_beam")
    from e5jax.data.harvest.beam import run_pipeline

    inputs = formats.WRITERS[source](tmp_path)
    harvest(source, inputs, tmp_path / "local")
    s = run_pipeline(source, inputs, str(tmp_path / "beam"), CleanConfig())
    local, beam = read_pairs(tmp_path / "local"), read_pairs(tmp_path / "beam")
    assert len(local) > 0 and _as_set(beam) == _as_set(local)
    assert s.kept == len(local)
    assert dropped(tmp_path / "beam", source) == dropped(tmp_path / "local", source)


def test_cli_debian(tmp_path, capsys):
    inputs = formats.write_debian(tmp_path, n=30)
    rc = main(["harvest", "debian", "--input", *inputs, "--output", str(tmp_path / "o"), "--limit", "10",
               "--compress", "--min-passage-words", "5"])
    assert rc == 0
    assert "debian: kept 10 pairs" in capsys.readouterr().out
    s = summary(tmp_path / "o")
    assert s["shards"] == ["pairs-00000.jsonl.gz"] and s["config"]["min_passage_words"] == 5
    assert len(read_pairs(tmp_path / "o")) == 10


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    rc = main(["harvest", "reddit", "--input", str(tmp_path / "missing.zst"), "--output", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.zst" in err[0]
    rc = main(["harvest", "jsonl", "--input", *formats.write_jsonl(tmp_path), "--output", str(tmp_path / "o"),
               "--min-query-words", "0"])
    assert rc == 2 and "min_query_words" in capsys.readouterr().err


def test_beam_harvest_that_keeps_nothing_leaves_no_shard(tmp_path, capsys):
    """An input of the wrong format keeps no pair: exit 2 with one line, the summary
    written, and no empty `pairs-*` shard that a build would take for data."""
    inputs = formats.write_debian(tmp_path, n=5)  # Debian text given to the jsonl harvester
    out = tmp_path / "o"
    rc = main(["harvest", "jsonl", "--beam", "--input", *inputs, "--output", str(out)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kept 0 pairs from --input" in err[0], err
    assert summary(out)["kept"] == 0 and summary(out)["shards"] == []
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]
    # --limit cannot apply to a Beam run: refused instead of ignored.
    rc = main(["harvest", "debian", "--beam", "--input", *inputs, "--output", str(tmp_path / "o2"), "--limit", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--limit does not apply to --beam" in err[0]
    assert not (tmp_path / "o2").exists()
