"""Line parsing, split assignment and drop counting (pure functions, no TFDS)."""

from __future__ import annotations

import collections
import gzip
import json
import math

import pytest

from e5jax.data.ccpairs import records
from e5jax.errors import E5Error
from tests.data.conftest import pair_lines, write_jsonl


def _run(path, kind="pairs", split="train", fraction=0.0, max_chars=200):
    counts = collections.Counter()
    out = list(
        records.examples_from_file(
            path, 0, kind=kind, split=split, heldout_fraction=fraction, max_chars=max_chars,
            count=lambda n: counts.update([n]),
        )
    )
    return out, records.summarize(counts)


def test_bad_lines_are_counted_and_skipped(tmp_path):
    good = [g for g in pair_lines(n=100) if len(json.loads(g)["passage"]) <= 300][:3]
    lines = [
        good[0],
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"query": 5, "passage": "x"}),  # wrong type
        json.dumps({"query": "q", "passage": "   ", "source": "s"}),  # empty
        json.dumps({"query": "q", "passage": "x" * 301, "source": "s"}),  # oversized
        "",  # blank: not a record at all
        good[1],
    ]
    path = write_jsonl(tmp_path / "x.jsonl", lines)
    with open(path, "ab") as f:
        f.write(b'{"query": "\xff\xfe", "passage": "p"}\n' + good[2].encode() + b"\n")  # non-UTF-8
    out, s = _run(path, max_chars=300)
    assert [e["query"] for _, e in out] == [json.loads(g)["query"] for g in good]
    assert s["unassigned"] == {"malformed": 4}
    assert s["splits"]["train"]["dropped"] == {"empty": 1, "oversized": 1}
    assert s["splits"]["train"]["sources"]["s"] == {"kept": 0, "dropped": {"empty": 1, "oversized": 1}}


def test_truncated_compressed_shards_keep_what_was_read(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    lines = pair_lines(n=200)
    raw = ("\n".join(lines) + "\n").encode()
    # zstd: flush a block every 20 lines, as a streaming writer does; a
    # one-shot frame would hold no decodable block before the cut.
    cobj = zstandard.ZstdCompressor().compressobj()
    zst = b""
    for i in range(0, 200, 20):
        zst += cobj.compress(("\n".join(lines[i : i + 20]) + "\n").encode())
        zst += cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    zst += cobj.flush()
    for name, blob in [("t.jsonl.gz", gzip.compress(raw)), ("t.jsonl.zst", zst)]:
        path = tmp_path / name
        path.write_bytes(blob[: len(blob) * 2 // 3])
        out, s = _run(path, max_chars=100_000)
        assert 0 < len(out) < 200, name
        assert s["unassigned"].get("truncated_file") == 1, name
        assert [e["query"] for _, e in out] == [json.loads(x)["query"] for x in lines[: len(out)]]


def test_zst_and_plain_read_the_same(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    lines = pair_lines(n=50)
    plain = write_jsonl(tmp_path / "a.jsonl", lines)
    zst = tmp_path / "a.jsonl.zst"
    raw, c = plain.read_bytes(), zstandard.ZstdCompressor()
    half = raw.index(b"\n", len(raw) // 2) + 1
    zst.write_bytes(c.compress(raw[:half]) + c.compress(raw[half:]))  # two frames, as `cat a.zst b.zst`
    assert _run(plain, max_chars=100_000)[0] == _run(zst, max_chars=100_000)[0]


def test_split_is_a_deterministic_function_of_the_pair(tmp_path):
    lines = pair_lines(n=400)
    path = write_jsonl(tmp_path / "p.jsonl", lines)
    train, _ = _run(path, split="train", fraction=0.25, max_chars=100_000)
    held, _ = _run(path, split="heldout", fraction=0.25, max_chars=100_000)
    ids_t, ids_h = {e["id"] for _, e in train}, {e["id"] for _, e in held}
    assert not ids_t & ids_h and len(ids_t) + len(ids_h) == 400
    assert 0.15 < len(ids_h) / 400 < 0.35
    # The split depends on the pair only, not on the file or its position.
    reversed_path = write_jsonl(tmp_path / "r.jsonl", lines[::-1])
    assert {e["id"] for _, e in _run(reversed_path, split="heldout", fraction=0.25, max_chars=100_000)[0]} == ids_h


def test_finetune_records():
    line = json.dumps({"query": "q", "positive": "p", "negatives": ["n1", "n2"], "teacher_scores": [1, None, 0.5]})
    ex, key, source, outcome = records.parse_record(line.encode(), "finetune", 100)
    assert outcome == "kept" and source == "unknown" and ex["negatives"] == ["n1", "n2"]
    assert ex["teacher_scores"][0] == 1.0 and math.isnan(ex["teacher_scores"][1])
    no_scores = json.dumps({"query": "q", "positive": "p", "negatives": ["n1"]}).encode()
    assert records.parse_record(no_scores, "finetune", 100)[0]["teacher_scores"].shape == (0,)
    wrong_len = json.dumps({"query": "q", "positive": "p", "negatives": ["n1"], "teacher_scores": [1.0]}).encode()
    assert records.parse_record(wrong_len, "finetune", 100)[3] == "malformed"
    empty_neg = json.dumps({"query": "q", "positive": "p", "negatives": ["n1", ""]}).encode()
    assert records.parse_record(empty_neg, "finetune", 100)[3] == "empty"


def test_expand_inputs(tmp_path):
    (tmp_path / "sub").mkdir()
    a = write_jsonl(tmp_path / "sub" / "a.jsonl", ["{}"])
    write_jsonl(tmp_path / "b.jsonl.gz", ["{}"])
    (tmp_path / "README.md").write_text("not a shard")
    assert records.expand_inputs([tmp_path]) == sorted([a, tmp_path / "b.jsonl.gz"])
    with pytest.raises(E5Error, match="input not found"):
        records.expand_inputs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(E5Error, match="no pair shards"):
        records.expand_inputs([tmp_path / "empty"])
