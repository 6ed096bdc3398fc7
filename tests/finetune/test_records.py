"""The shared record layout: negative picking, per-record seeding, JSONL I/O."""

import gzip
import json

import pytest

from e5jax.data.finetune import records as R
from e5jax.errors import E5Error


def test_pick_negatives_drops_positive_and_repeats_and_counts_them():
    stats = R.Stats()
    negs = R.pick_negatives([["a", "p", "b", "a "], ["b", "c"]], ["p"], 10, R.record_rng(0, "x"), stats)
    assert negs == ["a", "b", "c"]
    assert stats["duplicate_negatives"] == 3  # "p" (= positive), "a " (repeat after strip), "b" (across tiers)
    assert stats["short_negatives"] == 1


def test_pick_negatives_prefers_earlier_tiers_and_keeps_order():
    hard, other = [f"h{i}" for i in range(6)], [f"o{i}" for i in range(6)]
    negs = R.pick_negatives([hard, other], [], 4, R.record_rng(3, "q"), None)
    assert len(negs) == 4 and all(n.startswith("h") for n in negs)
    assert negs == sorted(negs)  # sampled, but in the original (rank) order
    negs = R.pick_negatives([hard[:2], other], [], 5, R.record_rng(3, "q"), None)
    assert negs[:2] == ["h0", "h1"] and len(negs) == 5 and all(n.startswith("o") for n in negs[2:])
    assert R.pick_negatives([hard, other], [], None, R.record_rng(3, "q")) == hard + other


def test_record_rng_depends_on_seed_and_key_only():
    draw = lambda s, k: R.record_rng(s, k).integers(0, 2**31, size=4).tolist()  # noqa: E731
    assert draw(0, "msmarco-1") == draw(0, "msmarco-1")
    assert draw(0, "msmarco-1") != draw(1, "msmarco-1")
    assert draw(0, "msmarco-1") != draw(0, "msmarco-2")
    items = list(range(50))
    assert R.sample_in_order(items, 5, R.record_rng(0, "a")) == R.sample_in_order(items, 5, R.record_rng(0, "a"))


def test_make_record_checks_teacher_scores_length():
    rec = R.make_record("q", "p", ["n1", "n2"], "src", 7, teacher_scores=[3, 1, 0.5])
    assert rec == {"query": "q", "positive": "p", "negatives": ["n1", "n2"], "source": "src", "id": "7",
                   "teacher_scores": [3.0, 1.0, 0.5]}  # fmt: skip
    with pytest.raises(E5Error, match="teacher_scores"):
        R.make_record("q", "p", ["n1", "n2"], "src", "7", teacher_scores=[1.0, 2.0])


def test_write_then_read_roundtrip_and_no_tmp_left(tmp_path):
    recs = [R.make_record("qü", "p", ["n"], "s", "1"), R.make_record("q2", "p2", [], "s", "2", [0.5])]
    out = tmp_path / "sub" / "ft.jsonl"
    stats = R.Stats()
    assert R.write_records(iter(recs), out, stats) == 2 and stats["records"] == 2
    assert list(R.read_records(out)) == recs
    assert sorted(p.name for p in out.parent.iterdir()) == ["ft.jsonl"]
    assert "qü" in out.read_text(encoding="utf-8")  # UTF-8, not \u escapes
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "positive": "p", "negatives": ["n"], "teacher_scores": [1.0]}) + "\n")
    with pytest.raises(E5Error, match="bad.jsonl:1"):
        list(R.read_records(bad))


def test_open_text_reads_gzip(tmp_path):
    p = tmp_path / "x.tsv.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write("1\thello\n")
    with R.open_text(p) as f:
        assert f.read() == "1\thello\n"
    with pytest.raises(E5Error, match="not found"):
        R.open_text(tmp_path / "missing.tsv")


def _compress(data: bytes, suffix: str) -> bytes:
    import bz2
    import lzma

    import zstandard

    return {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress,
            ".zst": zstandard.ZstdCompressor().compress}[suffix](data)


@pytest.mark.parametrize("suffix", [".zst", ".gz", ".bz2", ".xz"])
def test_compressed_records_read_whole(tmp_path, suffix):
    recs = [R.make_record(f"q{i}", f"p{i}", [f"n{i}"], "s", str(i)) for i in range(300)]
    plain = tmp_path / "ft.jsonl"
    R.write_records(iter(recs), plain)
    packed = tmp_path / f"ft.jsonl{suffix}"
    packed.write_bytes(_compress(plain.read_bytes(), suffix))
    assert list(R.read_records(packed)) == recs


@pytest.mark.parametrize("suffix", [".zst", ".gz", ".bz2", ".xz"])
def test_truncated_compressed_input_is_a_one_line_error_naming_the_file(tmp_path, suffix):
    """A cut download must stop the run: zstandard's stream_reader used to hand
    back the first half as if it were the whole file (no error, fewer records)."""
    recs = [R.make_record(f"query {i}", f"passage {i} " * 20, [f"neg {i}"], "s", str(i)) for i in range(2000)]
    plain = tmp_path / "ft.jsonl"
    R.write_records(iter(recs), plain)
    cut = tmp_path / f"cut.jsonl{suffix}"
    packed = _compress(plain.read_bytes(), suffix)
    cut.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(E5Error, match=rf"^{cut}: compressed file ends mid-stream") as e:
        list(R.read_records(cut))
    assert "\n" not in str(e.value)


def test_join_title_text():
    assert R.join_title_text(" Title ", "text.") == "Title text."
    assert R.join_title_text("", "text") == R.join_title_text(None, "text") == "text"


def test_failed_write_keeps_the_old_file_and_leaves_no_tmp(tmp_path):
    out = tmp_path / "ft.jsonl"
    out.write_text("old\n")

    def breaks_midway():
        yield R.make_record("q", "p", ["n"], "s", "1")
        raise E5Error("converter failed")

    with pytest.raises(E5Error, match="converter failed"):
        R.write_records(breaks_midway(), out)
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["ft.jsonl"]
    with pytest.raises(E5Error, match="is a folder"):
        R.write_records([], tmp_path)
    with pytest.raises(E5Error, match=r"x\.jsonl: .*ft\.jsonl is a file, not a folder$"):
        R.write_records([], out / "x.jsonl")
