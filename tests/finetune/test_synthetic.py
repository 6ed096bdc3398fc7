"""`e5jax convert synthetic`: E5-mistral synthetic-data lines → fine-tuning records.

The fixture (tests/finetune/fixtures/synthetic/) follows the paper's generator
output (task, user_query, positive_document, hard_negative_document) with the
cases seen in real generations: a task-less record, the short-short prompt's
`input` key with no negative, a "hard negative" that repeats the positive, an
empty query, a non-string task and a line that is not JSON.
"""

import json
import pathlib

from e5jax import cli
from e5jax.data.finetune import synthetic
from e5jax.data.finetune.records import Stats, read_records

FIX = pathlib.Path(__file__).parent / "fixtures" / "synthetic" / "e5_mistral_synthetic.jsonl"


def test_format_query_is_the_papers_template():
    assert synthetic.format_query(" does it work ", "Retrieve answers ") == "Instruct: Retrieve answers\nQuery: does it work"


def test_convert_keeps_each_records_instruction(tmp_path, capsys):
    out = tmp_path / "synthetic.jsonl"
    assert cli.main(["convert", "synthetic", "--input", str(FIX), "--output", str(out), "--num-negatives", "1"]) == 0
    recs = list(read_records(out))
    raw = [json.loads(line) for line in FIX.read_text().splitlines()[:5]]
    assert len(recs) == 5  # 8 lines: the empty query, the list task and the non-JSON line are dropped
    for r, src in zip(recs, raw):
        query = src.get("user_query") or src["input"]
        task = src.get("task", synthetic.DEFAULT_INSTRUCTION)
        assert r["query"] == f"Instruct: {task}\nQuery: {query}"
        assert r["instruction"] == task
        assert r["positive"] == src["positive_document"]  # documents carry no instruction
        assert not r["positive"].startswith("Instruct:")
    assert recs[0]["negatives"] == [json.loads(FIX.read_text().splitlines()[0])["hard_negative_document"]]
    assert recs[0]["source"] == "short-long" and recs[3]["source"] == "synthetic"
    assert recs[2]["negatives"] == []  # its "hard negative" repeated the positive
    assert recs[4]["negatives"] == []  # short-short matching: in-batch negatives only
    summary = capsys.readouterr().out
    assert "records=5" in summary and "default_instruction=1" in summary and "no_positive=1" in summary
    assert "malformed=2" in summary and "duplicate_negatives=1" in summary


def test_default_instruction_flag(tmp_path):
    out = tmp_path / "s.jsonl"
    assert cli.main(["convert", "synthetic", "--input", str(FIX), "--output", str(out),
                     "--instruction", "Find the answer"]) == 0
    recs = list(read_records(out))
    assert recs[3]["query"].startswith("Instruct: Find the answer\nQuery: how do I reset")
    assert recs[0]["query"].startswith("Instruct: Retrieve scientific paper abstracts")


def test_nothing_converted_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\nnot json\n')
    out = tmp_path / "o.jsonl"
    assert cli.main(["convert", "synthetic", "--input", str(bad), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing converted" in err and "synthetic" in err, err
    assert not out.exists()


def test_list_of_negatives_and_ids():
    items = [("f:1", {"id": "x7", "task": "T", "query": "q", "positive": "p", "negative": ["n1", "n2", "p"]})]
    stats = Stats()
    (rec,) = synthetic.convert_synthetic(items, None, 0, stats)
    assert rec["id"] == "synthetic-x7" and rec["negatives"] == ["n1", "n2"] and stats["duplicate_negatives"] == 1


def test_eval_query_instruction_gives_the_papers_prompts():
    import argparse

    from e5jax.commands import eval as eval_cmd

    parser = argparse.ArgumentParser()
    eval_cmd.add_arguments(parser)
    base = ["--model", "m", "--beir", "b", "--output", "o.json"]
    args = parser.parse_args(base + ["--query-instruction", "Retrieve answers"])
    eval_cmd.resolve_prefixes(args)
    assert (args.query_prefix, args.passage_prefix) == ("Instruct: Retrieve answers\nQuery: ", "")
    args = parser.parse_args(base)  # without it: E5's prefixes, as before
    eval_cmd.resolve_prefixes(args)
    assert (args.query_prefix, args.passage_prefix) == ("query: ", "passage: ")


def test_embed_query_instruction_is_the_papers_prefix(tmp_path, minilm_dir):
    import numpy as np

    texts = tmp_path / "q.txt"
    texts.write_text("how to resize a partition\nwhich package plays mp3 files\n")
    outs = []
    for flags in (["--query-instruction", "Find the package"], ["--prefix", "Instruct: Find the package\nQuery: "],
                  []):
        out = tmp_path / f"e{len(outs)}.npy"
        assert cli.main(["embed", "--model", str(minilm_dir), "--input", str(texts), "--output", str(out),
                         "--dtype", "float32", *flags]) == 0
        outs.append(np.load(out))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.allclose(outs[0], outs[2])  # the instruction really went in front of the texts
