"""TFDS builds: read back from a fresh process, summaries, per-name identity, Beam == local."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from e5jax.cli import main as cli_main
from e5jax.data.ccpairs.builder import build_dataset, builder_class, load_source, load_summary
from e5jax.errors import E5Error
from tests.data.conftest import N_PAIRS, pair_lines, write_jsonl



def _records(source) -> set[tuple]:
    return {(r["query"], r["passage"], r["source"], r["id"]) for r in (source[i] for i in range(len(source)))}


def test_build_keeps_every_real_pair_once(built):
    data_dir, name = built
    train, held = load_source(data_dir, name, "train"), load_source(data_dir, name, "heldout")
    assert len(train) + len(held) == N_PAIRS and 0 < len(held) < 0.2 * N_PAIRS
    got = {(r[0].decode(), r[1].decode()) for r in _records(train) | _records(held)}
    want = {(json.loads(x)["query"], json.loads(x)["passage"]) for x in pair_lines()}
    assert got == want
    assert list((pathlib.Path(data_dir) / name / "1.0.0").glob("*.array_record-*"))


def test_fresh_process_reads_it_back_without_the_jsonl(built):
    data_dir, name = built
    code = f"""
import json, tensorflow_datasets as tfds
ds = tfds.data_source({name!r}, data_dir={str(data_dir)!r}, download=False)
b = tfds.builder_from_directory({str(data_dir / name / "1.0.0")!r}).as_data_source()
print(json.dumps({{s: len(ds[s]) for s in ds}} | {{"first": ds["train"][0]["query"].decode(),
                  "same": b["train"][0]["query"] == ds["train"][0]["query"]}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    train = load_source(data_dir, name, "train")
    assert got["train"] == len(train) and got["heldout"] == N_PAIRS - len(train)
    assert got["first"] == train[0]["query"].decode() and got["same"]


def test_summary_is_stored_with_the_dataset(built):
    meta = load_summary(*built)
    s = meta["summary"]
    assert meta["kind"] == "pairs" and meta["heldout_fraction"] == 0.1
    assert s["splits"]["train"]["kept"] + s["splits"]["heldout"]["kept"] == N_PAIRS
    assert set(s["splits"]["train"]["sources"]) == {"debian_a", "debian_b"}
    assert s["unassigned"] == {}  # summary.json in the folder is not a shard


def test_names_are_identities(tmp_path):
    shard = write_jsonl(tmp_path / "p.jsonl", pair_lines(n=40))
    for name in ("first_set", "second_set"):
        build_dataset([shard], data_dir=tmp_path / "d", name=name, heldout_fraction=0.5)
    assert len(load_source(tmp_path / "d", "first_set", "train")) == len(load_source(tmp_path / "d", "second_set"))
    assert builder_class("pairs", "first_set").name == "first_set"
    with pytest.raises(E5Error, match="already exists"):
        build_dataset([shard], data_dir=tmp_path / "d", name="first_set")
    build_dataset([shard], data_dir=tmp_path / "d", name="first_set", heldout_fraction=0.0, overwrite=True)
    assert len(load_source(tmp_path / "d", "first_set", "train")) == 40
    for bad in ("Bad-Name", "1abc", ""):
        with pytest.raises(E5Error, match="snake_case"):
            build_dataset([shard], data_dir=tmp_path / "d", name=bad)
    with pytest.raises(E5Error, match="no dataset 'missing'"):
        load_source(tmp_path / "d", "missing")
    with pytest.raises(E5Error, match="not 'test'"):
        load_source(tmp_path / "d", "first_set", "test")


def test_dropped_records_are_summarised_by_the_cli(tmp_path, capsys):
    lines = pair_lines(n=30) + ["{oops", json.dumps({"query": "", "passage": "p", "source": "web"})]
    lines.append(json.dumps({"query": "q", "passage": "long " * 100, "source": "web"}))
    shard = write_jsonl(tmp_path / "p.jsonl", lines)
    rc = cli_main(["build", "--pairs", str(shard), "--data-dir", str(tmp_path / "d"), "--name", "noisy",
                   "--heldout-fraction", "0", "--max-chars", "300", "--json"])
    assert rc == 0
    out = capsys.readouterr().out
    printed = json.loads(out[out.index("{\n") :])  # TFDS may print a line before the summary
    s = load_summary(tmp_path / "d", "noisy")["summary"]
    assert printed["splits"] == s["splits"] and printed["unassigned"] == s["unassigned"]
    long_ones = sum(len(json.loads(x)["passage"]) > 300 for x in pair_lines(n=30))
    assert s["unassigned"] == {"malformed": 1}
    assert s["splits"]["train"]["sources"]["web"]["dropped"] == {"empty": 1, "oversized": 1}
    assert s["splits"]["train"]["kept"] == 30 - long_ones
    assert len(load_source(tmp_path / "d", "noisy")) == 30 - long_ones
    assert cli_main(["build", "--pairs", str(tmp_path / "nope"), "--data-dir", str(tmp_path), "--name", "x"]) == 2


def test_finetune_build(built_finetune):
    src = load_source(*built_finetune, "train")
    rows = [src[i] for i in range(len(src))]
    with_scores = [r for r in rows if r["teacher_scores"].size]
    assert with_scores and all(r["teacher_scores"].shape == (len(r["negatives"]) + 1,) for r in with_scores)
    assert {len(r["negatives"]) for r in rows} == {0, 1, 2, 3}
    assert all(isinstance(n, bytes) for r in rows for n in r["negatives"])


@pytest.fixture(scope="module")
def beam_built(tmp_path_factory, pair_shards):
    pytest.importorskip("apache_beam")
    d = tmp_path_factory.mktemp("beam")
    rc = cli_main(["build", "--pairs", str(pair_shards), "--data-dir", str(d), "--name", "debian_pairs",
                   "--heldout-fraction", "0.1", "--beam-runner", "DirectRunner"])
    assert rc == 0
    return d, "debian_pairs"


def test_beam_build_equals_local_build(beam_built, built):
    for split in ("train", "heldout"):
        assert _records(load_source(*beam_built, split)) == _records(load_source(*built, split))
    beam_meta, local_meta = load_summary(*beam_built), load_summary(*built)
    assert (beam_meta["built_with"], local_meta["built_with"]) == ("beam", "local")
    assert beam_meta["summary"] == local_meta["summary"]  # drop counts came through Beam metrics


def test_empty_splits_are_a_clear_error(tmp_path):
    shard = write_jsonl(tmp_path / "p.jsonl", pair_lines(n=3))
    with pytest.raises(E5Error, match="no records kept for split 'heldout'.*heldout-fraction"):
        build_dataset([shard], data_dir=tmp_path / "d", name="tiny", heldout_fraction=1e-9)
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{oops", "[]"])
    with pytest.raises(E5Error, match="no records kept for split 'train'.*malformed=2"):
        build_dataset([bad], data_dir=tmp_path / "d", name="bad", heldout_fraction=0.0)


def test_grain_pipeline_reads_the_beam_build(beam_built, built, tokenizer):
    from e5jax.config import DataConfig
    from e5jax.data.pipeline import make_eval_iterator, text_key

    cfg = DataConfig(max_query_length=16, max_passage_length=32)
    for data_dir, name in (beam_built, built):
        src = load_source(data_dir, name, "train")
        keys = [int(k) for b in make_eval_iterator(src, tokenizer=tokenizer, cfg=cfg, batch_size_per_process=50)
                for k in b["passage_key"]]
        assert len(keys) == len(src) // 50 * 50
        assert sorted(keys) == sorted(text_key(src[i]["passage"].decode()) for i in range(len(keys)))


def test_failed_overwrite_keeps_the_old_dataset(tmp_path):
    shard = write_jsonl(tmp_path / "p.jsonl", pair_lines(n=20))
    empty = write_jsonl(tmp_path / "empty.jsonl", ["{oops"])
    data_dir = tmp_path / "d"
    build_dataset([shard], data_dir=data_dir, name="good", heldout_fraction=0.0)
    before = sorted(p.name for p in (data_dir / "good" / "1.0.0").iterdir())
    for _ in range(2):  # a second failure must not find leftovers of the first
        with pytest.raises(E5Error, match="no records kept for split 'train' of 'good'"):
            build_dataset([empty], data_dir=data_dir, name="good", heldout_fraction=0.0, overwrite=True)
    assert sorted(p.name for p in (data_dir / "good" / "1.0.0").iterdir()) == before
    assert len(load_source(data_dir, "good")) == 20
    assert load_summary(data_dir, "good")["summary"]["splits"]["train"]["kept"] == 20
    # A failed build of a new name leaves no empty folder (nor staging) behind.
    assert cli_main(["build", "--pairs", str(empty), "--data-dir", str(data_dir), "--name", "fresh"]) == 2
    assert sorted(p.name for p in data_dir.iterdir()) == ["good"]
    with pytest.raises(E5Error, match="no records kept"):
        build_dataset([empty], data_dir=tmp_path / "new_dir", name="fresh", heldout_fraction=0.0)
    assert not (tmp_path / "new_dir").exists()
    # A successful overwrite replaces it, with nothing left aside.
    build_dataset([shard], data_dir=data_dir, name="good", heldout_fraction=0.5, overwrite=True)
    assert len(load_source(data_dir, "good", "heldout")) > 0
    assert sorted(p.name for p in data_dir.iterdir()) == ["good"]
    assert [p.name for p in (data_dir / "good").iterdir()] == ["1.0.0"]
