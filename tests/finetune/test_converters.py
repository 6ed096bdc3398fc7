"""Converters on fixtures in the published formats (tests/finetune/fixtures/).

Each fixture holds queries without positives, duplicate passages (same text
under two ids, a positive listed as a negative, repeats across systems) and
malformed lines; the expected counts below were worked out by hand from the
files.
"""

import json
import pathlib

import pytest

from e5jax import cli
from e5jax.data.finetune import msmarco, nli, nq
from e5jax.data.finetune.records import Stats, read_records

FIX = pathlib.Path(__file__).parent / "fixtures"
MS = FIX / "msmarco"


@pytest.fixture(scope="module")
def passages() -> dict[str, str]:
    return msmarco.read_id_text_tsv(MS / "collection.tsv", Stats())


def _convert(tmp_path, *argv) -> tuple[list[dict], str]:
    out = tmp_path / "out.jsonl"
    assert cli.main(["convert", *argv, "--output", str(out)]) == 0
    return list(read_records(out)), str(out)


def _check_invariants(recs):
    for r in recs:
        assert r["positive"] not in r["negatives"]
        assert len(set(r["negatives"])) == len(r["negatives"])


def test_msmarco_readers_count_malformed_lines(passages):
    assert len(passages) == 14 and "13" not in passages  # the line without a tab
    stats = Stats()
    qrels = msmarco.read_qrels(MS / "qrels.train.tsv", stats)
    assert qrels == {"1001": ["1"], "1002": ["3"], "1003": ["5", "6"], "1005": ["999"], "1004": []}
    assert stats["malformed"] == 1


def test_msmarco_hard_negatives(tmp_path, capsys, passages):
    recs, _ = _convert(tmp_path, "msmarco", "--input", str(MS))
    summary = capsys.readouterr().out
    assert "hard-negatives" in summary and "records=3" in summary
    assert "no_positive=1" in summary  # qid 1004 ("pos": [] and only rel-0 qrels)
    assert "malformed=4" in summary  # one each in collection, queries, qrels, hard-negatives
    assert "missing_query=1" in summary  # qid 7777
    by_id = {r["id"]: r for r in recs}
    assert set(by_id) == {"msmarco-1001", "msmarco-1002", "msmarco-1003"}
    r = by_id["msmarco-1001"]
    assert r["query"] == "what was the manhattan project" and r["positive"] == passages["1"]
    # Round-robin over systems, repeats and pid 10 (same text as the positive) removed.
    assert r["negatives"] == [passages[p] for p in ("2", "4", "7", "0")]
    assert by_id["msmarco-1002"]["negatives"] == [passages["8"], passages["12"]]  # 9 duplicates 8's text
    # pid 6 is a qrels positive of 1003: never a negative.
    assert by_id["msmarco-1003"]["negatives"] == [passages[p] for p in ("11", "14", "0")]
    _check_invariants(recs)


def test_msmarco_id_triples(tmp_path, passages):
    recs, _ = _convert(tmp_path, "msmarco", "--input", str(MS), "--negatives", "triples")
    by_id = {r["id"]: r for r in recs}
    assert by_id["msmarco-1001"]["negatives"] == [passages["2"], passages["4"]]
    assert by_id["msmarco-1002"]["negatives"] == [passages["8"]]
    assert by_id["msmarco-1003"]["negatives"] == [passages["11"]]
    assert "msmarco-1005" not in by_id  # its positive pid is not in the collection
    _check_invariants(recs)


def test_msmarco_text_triples_group_by_query():
    stats = Stats()
    recs = list(msmarco.convert_text_triples(MS / "triples.train.small.tsv", 7, 0, stats))
    assert [r["query"] for r in recs] == ["what was the manhattan project", "where is yellowstone national park"]
    assert len(recs[0]["negatives"]) == 2  # 4 lines: one negative == positive, one repeat
    assert stats["malformed"] == 1 and stats["duplicate_negatives"] == 2
    _check_invariants(recs)


def test_msmarco_random_negatives_deterministic_and_split(tmp_path, passages):
    args = ["msmarco", "--input", str(MS), "--negatives", "random", "--num-negatives", "3"]
    a, _ = _convert(tmp_path, *args, "--seed", "5")
    b, _ = _convert(tmp_path, *args, "--seed", "5")
    c, _ = _convert(tmp_path, *args, "--seed", "6")
    assert a == b and a != c
    assert [r["id"] for r in a] == ["msmarco-1001", "msmarco-1002", "msmarco-1003"]
    assert all(len(r["negatives"]) == 3 for r in a)
    _check_invariants(a)
    dev, _ = _convert(tmp_path, "msmarco", "--input", str(MS), "--split", "dev", "--negatives", "random")
    assert [(r["id"], r["positive"]) for r in dev] == [("msmarco-2001", passages["4"])]


def test_msmarco_missing_file_is_a_one_line_error(tmp_path, capsys):
    rc = cli.main(["convert", "msmarco", "--input", str(MS / "collection.tsv"), "--output", str(tmp_path / "o")])
    assert rc == 2 and "needs queries" in capsys.readouterr().err


def test_nq_dpr(tmp_path, capsys):
    recs, _ = _convert(tmp_path, "nq", "--input", str(FIX / "nq" / "biencoder-nq-dev.json"))
    summary = capsys.readouterr().out
    assert "records=2" in summary and "no_positive=1" in summary and "malformed=1" in summary
    first, last = recs
    assert first["positive"].startswith('Does He Love You "Does He Love You" is a song')
    # hard negatives first (the one equal to the positive removed), then the others (repeat removed)
    assert [n.split(" (")[0] for n in first["negatives"]] == [
        "Reba McEntire Reba Nell McEntire",
        "The Reba Show Reba is an American sitcom starring Reba McEntire that aired for six seasons.",
        "Cormac McCarthy Cormac McCarthy is an American novelist, playwright, and screenwriter.",
    ]
    assert len(last["negatives"]) == 7 and all("Old Trafford" not in n for n in last["negatives"])
    _check_invariants(recs)


def test_nq_seed_changes_only_the_sample():
    items = nq.load_dpr(FIX / "nq" / "biencoder-nq-dev.json")
    s0 = [r["negatives"] for r in nq.convert_nq(items, 3, 0, Stats())]
    s1 = [r["negatives"] for r in nq.convert_nq(items, 3, 1, Stats())]
    assert s0 == [r["negatives"] for r in nq.convert_nq(items, 3, 0, Stats())]
    assert s0 != s1 and all(len(n) == 3 for n in s0 + s1)
    assert len(list(nq.convert_nq(items, None, 0, Stats()))[1]["negatives"]) == 10


def test_nq_not_a_list_is_an_error(tmp_path, capsys):
    p = tmp_path / "nq.json"
    p.write_text(json.dumps({"question": "q"}))
    assert cli.main(["convert", "nq", "--input", str(p), "--output", str(tmp_path / "o")]) == 2
    assert "JSON list" in capsys.readouterr().err


def test_nli_snli_and_multinli(tmp_path, capsys):
    files = [str(FIX / "nli" / "snli_1.0_train.jsonl"), str(FIX / "nli" / "multinli_1.0_dev_matched.jsonl")]
    recs, _ = _convert(tmp_path, "nli", "--input", *files)
    summary = capsys.readouterr().out
    for expect in ("records=6", "malformed=3", "no_gold_label=1", "no_negative=2", "no_positive=1"):
        assert expect in summary, summary
    by_id = {r["id"]: r for r in recs}
    r = by_id["nli-3416050480.jpg#4r1e"]
    assert (r["query"], r["positive"], r["negatives"]) == (
        "A person on a horse jumps over a broken down airplane.",
        "A person is outdoors, on a horse.",
        ["A person is at a diner, ordering an omelette."],
    )
    # A repeated contradiction and one equal to the entailed hypothesis are dropped.
    assert by_id["nli-2267923837.jpg#2r1e"]["negatives"] == ["The kids are frowning"]
    # Two entailed hypotheses of one premise: two records sharing the contradiction.
    assert by_id["nli-3691670743.jpg#0r1e"]["negatives"] == by_id["nli-3691670743.jpg#0r2e"]["negatives"]
    assert "nli-91383e" in by_id and "nli-4804607632.jpg#0r1e" not in by_id
    _check_invariants(recs)


def test_nli_groups_across_files_by_premise():
    groups = nli.read_nli([FIX / "nli" / "snli_1.0_train.jsonl"], Stats())
    assert len(groups["A boy is jumping on skateboard in the middle of a red bridge."]["entailment"]) == 2


@pytest.mark.parametrize("content", ["", "{oops\n" + json.dumps({"query": "a pairs line", "passage": "p"}) + "\n"])
def test_nothing_converted_is_an_error_and_keeps_the_old_output(tmp_path, capsys, content):
    src = tmp_path / "in.jsonl"
    src.write_text(content)
    out = tmp_path / "out.jsonl"
    out.write_text("previous output\n")
    assert cli.main(["convert", "nli", "--input", str(src), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"nothing converted from --input {src}" in err, err
    assert ("malformed=2" in err) == bool(content), err
    assert out.read_text() == "previous output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # no .tmp left


def test_output_that_is_a_directory_is_refused(tmp_path, capsys):
    (tmp_path / "adir").mkdir()
    assert cli.main(["convert", "msmarco", "--input", str(MS), "--output", str(tmp_path / "adir")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a folder" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"] and not any((tmp_path / "adir").iterdir())
