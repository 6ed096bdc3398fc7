"""Wikipedia on a real dump (enwiki, shortened, from the gensim wheel) and
Common Crawl on a WARC built from real HTML pages (Debian python3.11-doc)."""

from __future__ import annotations

import os

from e5jax.cli import main
from e5jax.data.harvest import harvest
from e5jax.data.harvest.wikipedia import WORKERS_ENV
from tests.harvest import formats
from tests.harvest.helpers import dropped, read_pairs


def test_wikipedia_real_dump(enwiki_dump, tmp_path):
    out = tmp_path / "wiki"
    harvest("wikipedia", [enwiki_dump], out, limit=400)
    pairs = read_pairs(out)
    assert len(pairs) == 400
    lead = pairs[0]
    assert lead["query"] == "Anarchism" and lead["passage"].startswith("Anarchism is a political philosophy")
    assert any(p["query"] == "Anarchism Etymology and terminology" for p in pairs)
    for p in pairs:
        assert p["query"].startswith(p["meta"]["title"])
        assert p["meta"]["section"] not in ("References", "See also", "External links")
        for markup in ("'''", "[[", "]]", "{{", "<ref", "thumb|"):
            assert markup not in p["passage"], (markup, p["passage"][:200])
    d = dropped(out, "wikipedia")
    assert d["redirect"] > 10 and d["boilerplate_section"] > 10


def test_cli_workers_flag(enwiki_dump, tmp_path, monkeypatch, capsys):
    """--workers sets how many processes parse pages; the pairs do not depend on it.
    A bad count, by flag or environment, is a one-line error."""
    monkeypatch.setenv(WORKERS_ENV, "1")  # restored after the test (the CLI sets it for its children)
    args = ["harvest", "wikipedia", "--input", enwiki_dump, "--limit", "150"]
    for n in (1, 2):
        assert main([*args, "--output", str(tmp_path / f"w{n}"), "--workers", str(n)]) == 0
        assert os.environ[WORKERS_ENV] == str(n)
    one, two = read_pairs(tmp_path / "w1"), read_pairs(tmp_path / "w2")
    assert len(one) == 150 and one == two
    capsys.readouterr()
    assert main([*args, "--output", str(tmp_path / "bad"), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--workers 0" in err[0]
    monkeypatch.setenv(WORKERS_ENV, "two")
    assert main([*args, "--output", str(tmp_path / "bad_env")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{WORKERS_ENV}='two'" in err[0]


def test_wikipedia_skips_disambiguation(enwiki_dump, tmp_path):
    from e5jax.data.harvest.wikipedia import to_pairs
    from e5jax.data.harvest.types import Drop

    page = {"title": "Mercury", "id": "1", "text": "'''Mercury''' may refer to:\n* [[Mercury (planet)]]\n{{disambiguation}}"}
    assert list(to_pairs(page)) == [Drop("disambiguation")]


def test_commoncrawl_warc_from_real_pages(tmp_path):
    inputs = formats.write_warc(tmp_path)
    out = tmp_path / "cc"
    harvest("commoncrawl", inputs, out)
    pairs = read_pairs(out)
    assert len(pairs) == len(formats.HTML_PAGES) == 4
    by_url = {p["meta"]["url"].rsplit("/", 1)[1]: p for p in pairs}
    assert "keyword" in by_url["keyword.html"]["query"]
    assert "This module allows a Python program to determine" in by_url["keyword.html"]["passage"]
    for p in pairs:
        assert "<" not in p["passage"] and len(p["passage"].split()) > 20
    d = dropped(out, "commoncrawl")
    assert d["not_a_response"] == 1 + 4  # warcinfo + requests
    assert d["non_html_record"] == 1  # the PNG


def test_commoncrawl_uncompressed_warc(tmp_path):
    inputs = formats.write_warc(tmp_path, gz=False)
    harvest("commoncrawl", inputs, tmp_path / "cc")
    assert len(read_pairs(tmp_path / "cc")) == 4
