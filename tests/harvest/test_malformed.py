"""Malformed input is counted and skipped with its reason; the run finishes
and what was written stays intact."""

from __future__ import annotations

import gzip
import json

import pytest
import zstandard

from e5jax.cli import main
from e5jax.data.harvest import CleanConfig, harvest
from e5jax.data.harvest.writer import ShardWriter
from e5jax.errors import E5Error
from tests.harvest import formats
from tests.harvest.helpers import dropped, read_pairs

GOOD = {"query": "what is zstd", "passage": "Zstandard is a fast lossless compression algorithm."}


def _jsonl_lines(n: int) -> list[bytes]:
    return [json.dumps({"query": f"question number {i}", "passage": f"the answer to question {i} is here"}).encode()
            for i in range(n)]


def test_truncated_zst_keeps_pairs_before_the_cut(tmp_path):
    data = b"\n".join(_jsonl_lines(5000)) + b"\n"
    comp = zstandard.ZstdCompressor().compress(data)
    p = tmp_path / "pairs.jsonl.zst"
    p.write_bytes(comp[: len(comp) // 2])
    harvest("jsonl", [str(p)], tmp_path / "out")
    pairs = read_pairs(tmp_path / "out")
    assert 0 < len(pairs) < 5000
    assert pairs[0]["query"] == "question number 0"
    assert dropped(tmp_path / "out", "jsonl")["truncated_stream"] == 1


def test_truncated_bz2_xml(tmp_path):
    rows = [f'<row Id="{i}" PostTypeId="1" Title="question {i} about lists" AcceptedAnswerId="{i + 1}" '
            f'Body="body {i}"/>\n<row Id="{i + 1}" PostTypeId="2" ParentId="{i}" Score="1" '
            f'Body="an answer that has several words {i}"/>' for i in range(0, 20000, 2)]
    site = tmp_path / "x.stackexchange.com"
    site.mkdir()
    (site / "Posts.xml.bz2").write_bytes(formats.bz2_truncated(formats.se_xml(rows)))
    harvest("stackexchange", [str(site / "Posts.xml.bz2")], tmp_path / "out")
    assert 0 < len(read_pairs(tmp_path / "out")) < 10000
    assert dropped(tmp_path / "out", "stackexchange")["truncated_stream"] == 1


def test_broken_json_non_utf8_and_huge_field(tmp_path):
    p = tmp_path / "mixed.jsonl"
    huge = json.dumps({"query": "huge", "passage": "x " * 5_000_000}).encode()  # a 10 MB text field
    p.write_bytes(b"\n".join([json.dumps(GOOD).encode(), b'{"query": "broken", "passa', b"[1, 2]",
                              b'{"query": "bad \xff\xfe bytes", "passage": "some passage words"}', huge,
                              json.dumps({**GOOD, "query": "what is gzip"}).encode()]) + b"\n")
    harvest("jsonl", [str(p)], tmp_path / "out")
    assert [x["query"] for x in read_pairs(tmp_path / "out")] == ["what is zstd", "what is gzip"]
    d = dropped(tmp_path / "out", "jsonl")
    assert d == {"bad_json": 2, "non_utf8": 1, "oversized_record": 1}


def test_invalid_xml_inside_a_row(tmp_path):
    rows = list(formats.SE_ROWS)
    rows[4] = '<row Id="5" PostTypeId="2" ParentId="4" Score="30" Body="a < b & c is not escaped" />'
    rows[5] = '<row Id="6" PostTypeId="2" ParentId="4" Score="9" Body="bad NONUTF8 bytes" />'
    inputs = formats.write_stackexchange(tmp_path, rows)
    data = open(inputs[0], "rb").read().replace(b"NONUTF8", b"\xff\xfe")
    open(inputs[0], "wb").write(data)
    harvest("stackexchange", inputs, tmp_path / "out")
    pairs = {p["meta"]["question_id"]: p for p in read_pairs(tmp_path / "out")}
    assert set(pairs) == {"1"}  # question 4 lost both its answers
    assert pairs["1"]["passage"] == "Call list.reverse() to do it in place."
    d = dropped(tmp_path / "out", "stackexchange")
    assert d["bad_xml"] == 2 and d["question_without_answer"] == 2


def test_huge_xml_attribute_and_wiki_text(tmp_path):
    rows = list(formats.SE_ROWS)
    rows[1] = f'<row Id="2" PostTypeId="2" ParentId="1" Score="50" Body="{"word " * 2_000_000}" />'
    inputs = formats.write_stackexchange(tmp_path, rows)
    harvest("stackexchange", inputs, tmp_path / "out", cfg=CleanConfig(max_record_chars=1_000_000))
    assert dropped(tmp_path / "out", "stackexchange")["oversized_record"] == 1
    assert len(read_pairs(tmp_path / "out")) == 2


def test_shards_written_before_an_error_stay_intact(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, lines_per_shard=3, compress="gz") as w:
            for i in range(5):
                w.write({"id": str(i), "query": "q", "passage": "p", "source": "t", "meta": {}})
            raise RuntimeError("disk on fire")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["pairs-00000.jsonl.gz", "pairs-00001.jsonl.gz"]
    lines = [json.loads(x) for n in names for x in gzip.decompress((tmp_path / n).read_bytes()).splitlines()]
    assert [x["id"] for x in lines] == ["0", "1", "2", "3", "4"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("case", ["empty", "wrong_format", "corrupt_gz"])
def test_cli_nothing_kept_is_a_one_line_error(tmp_path, capsys, case):
    source, name, reason = {"empty": ("jsonl", "empty.jsonl", "nothing dropped"),
                            "wrong_format": ("wikipedia", "pairs.jsonl", "nothing dropped"),
                            "corrupt_gz": ("jsonl", "pairs.jsonl.gz", "corrupt_stream=1")}[case]
    p = tmp_path / name
    p.write_bytes({"empty": b"", "wrong_format": b"\n".join(_jsonl_lines(20)),
                   "corrupt_gz": gzip.compress(b"\n".join(_jsonl_lines(20)))[:10] + b"\xff" * 200}[case])
    rc = main(["harvest", source, "--input", str(p), "--output", str(tmp_path / "out"), "--workers", "1"])
    assert rc == 2
    out, err = capsys.readouterr()
    assert f"{source}: kept 0 pairs" in out  # the summary first, then one error line naming the input and why
    assert len(err.strip().splitlines()) == 1 and "kept 0 pairs" in err and str(p) in err and reason in err, err
    assert not list((tmp_path / "out").glob("pairs-*")) and (tmp_path / "out" / "summary.json").exists()


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_cli_limit_below_one_is_refused(tmp_path, capsys, limit):
    inputs = formats.write_jsonl(tmp_path)
    assert main(["harvest", "jsonl", "--input", *inputs, "--output", str(tmp_path / "out"), "--limit", limit]) == 2
    assert f"--limit {limit}" in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()
    with pytest.raises(E5Error, match="--limit"):
        harvest("jsonl", inputs, tmp_path / "out", limit=int(limit))
    assert harvest("jsonl", inputs, tmp_path / "out", limit=1).kept == 1 == len(read_pairs(tmp_path / "out"))


def test_cli_input_folder_and_output_file_are_one_line_errors(tmp_path, capsys):
    inputs = formats.write_jsonl(tmp_path)
    (tmp_path / "adir").mkdir()
    assert main(["harvest", "jsonl", "--input", str(tmp_path / "adir"), "--output", str(tmp_path / "out")]) == 2
    assert "adir is a directory" in _one_line_error(capsys)
    afile = tmp_path / "afile"
    afile.write_text("kept as it is\n")
    assert main(["harvest", "jsonl", "--input", *inputs, "--output", str(afile)]) == 2
    assert "afile is a file" in _one_line_error(capsys)
    assert afile.read_text() == "kept as it is\n"
