"""Each source on a small file in its real format, awkward cases included."""

from __future__ import annotations

from e5jax.data.harvest import CleanConfig, harvest
from tests.harvest import formats
from tests.harvest.helpers import dropped, read_pairs, summary


def _run(source, tmp_path, **kw):
    inputs = formats.WRITERS[source](tmp_path)
    out = tmp_path / "out"
    harvest(source, inputs, out, **kw)
    return read_pairs(out), out


def test_reddit_top_scored_direct_comment(tmp_path):
    pairs, out = _run("reddit", tmp_path)
    by_post = {p["meta"]["post_id"]: p for p in pairs}
    assert set(by_post) == {"a1", "a2"}
    # c2 and c3 tie at 10 (c5 [deleted] at 500 and nested c4 at 99 never count): the older id wins.
    assert by_post["a1"]["passage"] == "Write a small project > reading."
    assert by_post["a1"]["query"] == "What is the best way to learn Rust? I know C & Python."
    assert by_post["a2"]["query"] == "Is my sourdough starter dead?"  # [removed] selftext left out
    d = dropped(out, "reddit")
    assert d["deleted_comment"] == 2 and d["nested_comment"] == 1
    assert d["post_without_comment"] == 1 and d["comment_without_post"] == 1


def test_stackexchange_accepted_else_highest_voted(tmp_path):
    pairs, out = _run("stackexchange", tmp_path)
    by_q = {p["meta"]["question_id"]: p for p in pairs}
    assert set(by_q) == {"1", "4"}
    assert by_q["1"]["passage"] == "Call list.reverse() to do it in place."  # accepted, though 2 has more votes
    assert by_q["1"]["meta"]["accepted"] is True
    assert by_q["1"]["query"] == "How do I reverse a list in Python? I have [1, 2, 3] and want it backwards."
    assert by_q["4"]["passage"] == "Profile first, then optimise the hot path."
    assert by_q["4"]["meta"]["site"] == "python.stackexchange.com"
    d = dropped(out, "stackexchange")
    assert d["question_without_answer"] == 1 and d["answer_without_question"] == 1
    assert d["not_question_or_answer"] == 1 and d["no_upvoted_answer"] == 1


def test_s2orc_title_abstract_and_citations(tmp_path):
    pairs, out = _run("s2orc", tmp_path)
    got = {(p["meta"]["kind"], p["query"][:20], p["passage"][:25]) for p in pairs}
    assert got == {
        ("title_abstract", "Attention Is All You", "We propose the Transforme"),
        ("title_abstract", "Neural Machine Trans", "Neural machine translatio"),
        ("citation", "Attention Is All You", "Neural Machine Translatio"),
        ("citation", "BERT: Pre-training o", "Attention Is All You Need"),  # listed twice, counted once
    }
    d = dropped(out, "s2orc")
    assert d["citation_target_missing"] == 1 and d["paper_without_abstract"] == 1
    assert d["paper_without_id_or_title"] == 1


def test_debian_translation_en(tmp_path):
    from tests.fixtures.real_text import debian_records

    pairs, out = _run("debian", tmp_path)
    recs = {r["package"]: r for r in debian_records()[:40]}
    assert len(pairs) >= 35
    for p in pairs:
        r = recs[p["meta"]["package"]]
        assert p["query"] == " ".join(r["short"].split())
        assert p["passage"].split()[:60] == r["long"].split()[:60]
    assert dropped(out, "debian")["no_long_description"] == 1


def test_jsonl_and_tsv_user_pairs(tmp_path):
    for source in ("jsonl", "tsv"):
        (tmp_path / source).mkdir()
        pairs, out = _run(source, tmp_path / source)
        assert [(p["query"], p["passage"]) for p in pairs] == [
            ("how tall is mount everest", "Mount Everest is 8,849 metres tall."),
            ("capital of france", "Paris is the capital of France."),
        ]
        d = dropped(out, source)
        assert d["duplicate"] == 1 and d["query_equals_passage"] == 1
        assert d["missing_query_or_passage"] == 1
    assert pairs[0]["meta"] == {}  # tsv has no extra fields
    assert dropped(out, "tsv")["bad_tsv_row"] == 1


def test_limit_compress_and_shards(tmp_path):
    inputs = formats.write_debian(tmp_path, n=40)
    harvest("debian", inputs, tmp_path / "a", limit=25, compress="zst",
            cfg=CleanConfig(lines_per_shard=10))
    s = summary(tmp_path / "a")
    assert s["kept"] == 25 and s["shards"] == ["pairs-00000.jsonl.zst", "pairs-00001.jsonl.zst",
                                                "pairs-00002.jsonl.zst"]
    pairs = read_pairs(tmp_path / "a")
    assert len(pairs) == 25 and len({p["id"] for p in pairs}) == 25
    assert not list((tmp_path / "a").glob("*.tmp"))
