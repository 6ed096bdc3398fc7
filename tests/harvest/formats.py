"""Small input files in each source's published format, with awkward cases.

Schemas followed: Pushshift submissions/comments (reddit), the Stack Exchange
data dump's Posts.xml, S2ORC metadata JSONL, Debian Translation-en (deb822),
WARC/1.0 (via warcio).
"""

from __future__ import annotations

import bz2
import io
import json
import pathlib

import zstandard

HERE = pathlib.Path(__file__).parent
HTML_PAGES = sorted((HERE / "fixtures").glob("*.html"))  # from Debian's python3.11-doc

# --- reddit ------------------------------------------------------------------
REDDIT_POSTS = [
    {"id": "a1", "title": "What is the best way to learn Rust?", "selftext": "I know C &amp; Python.",
     "score": 12, "subreddit": "learnprogramming", "name": "t3_a1"},
    {"id": "a2", "title": "Is my sourdough starter dead?", "selftext": "[removed]", "score": 3,
     "subreddit": "Sourdough"},
    {"id": "a3", "title": "Only removed replies here", "selftext": "", "score": 1, "subreddit": "test"},
]
REDDIT_COMMENTS = [
    {"id": "c1", "link_id": "t3_a1", "parent_id": "t3_a1", "score": 5, "body": "Read the official book, it is free."},
    {"id": "c2", "link_id": "t3_a1", "parent_id": "t3_a1", "score": 10, "body": "Write a small project &gt; reading."},
    {"id": "c3", "link_id": "t3_a1", "parent_id": "t3_a1", "score": 10, "body": "Do rustlings exercises every day."},
    {"id": "c4", "link_id": "t3_a1", "parent_id": "t1_c2", "score": 99, "body": "A nested reply never wins the pair."},
    {"id": "c5", "link_id": "t3_a1", "parent_id": "t3_a1", "score": 500, "body": "[deleted]"},
    {"id": "c6", "link_id": "t3_a2", "parent_id": "t3_a2", "score": 2, "body": "Feed it twice a day and wait."},
    {"id": "c7", "link_id": "t3_a3", "parent_id": "t3_a3", "score": 7, "body": "[removed]"},
    {"id": "c8", "link_id": "t3_zz", "parent_id": "t3_zz", "score": 1, "body": "A reply to a post we never saw."},
]


def write_reddit(d: pathlib.Path) -> list[str]:
    """Submissions as .zst (as Pushshift ships them), comments as plain NDJSON."""
    rs, rc = d / "RS_2023-01.zst", d / "RC_2023-01.ndjson"
    lines = "".join(json.dumps(p) + "\n" for p in REDDIT_POSTS).encode()
    rs.write_bytes(zstandard.ZstdCompressor().compress(lines))
    rc.write_text("".join(json.dumps(c) + "\n" for c in REDDIT_COMMENTS))
    return [str(rs), str(rc)]


# --- stack exchange ----------------------------------------------------------
SE_ROWS = [
    '<row Id="1" PostTypeId="1" AcceptedAnswerId="3" Score="10" Title="How do I reverse a list in Python?" '
    'Body="&lt;p&gt;I have &lt;code&gt;[1, 2, 3]&lt;/code&gt; and want it backwards.&lt;/p&gt;" />',
    '<row Id="2" PostTypeId="2" ParentId="1" Score="50" Body="&lt;p&gt;Use slicing with a step of minus one.&lt;/p&gt;" />',
    '<row Id="3" PostTypeId="2" ParentId="1" Score="7" Body="&lt;p&gt;Call &lt;b&gt;list.reverse()&lt;/b&gt; to do it in place.&lt;/p&gt;" />',
    '<row Id="4" PostTypeId="1" Score="2" Title="Why is my loop slow?" Body="&lt;p&gt;It iterates a million times.&lt;/p&gt;" />',
    '<row Id="5" PostTypeId="2" ParentId="4" Score="3" Body="&lt;p&gt;Vectorise it with numpy arrays instead.&lt;/p&gt;" />',
    '<row Id="6" PostTypeId="2" ParentId="4" Score="9" Body="&lt;p&gt;Profile first, then optimise the hot path.&lt;/p&gt;" />',
    '<row Id="7" PostTypeId="1" Score="0" Title="A question nobody answered" Body="&lt;p&gt;Anyone?&lt;/p&gt;" />',
    '<row Id="8" PostTypeId="2" ParentId="99" Score="4" Body="&lt;p&gt;An answer whose question was deleted.&lt;/p&gt;" />',
    '<row Id="9" PostTypeId="4" Body="&lt;p&gt;A tag wiki excerpt.&lt;/p&gt;" />',
    '<row Id="10" PostTypeId="1" Score="1" Title="Downvoted answers only" Body="&lt;p&gt;Hmm.&lt;/p&gt;" />',
    '<row Id="11" PostTypeId="2" ParentId="10" Score="-2" Body="&lt;p&gt;This answer is wrong in every way.&lt;/p&gt;" />',
]


def se_xml(rows: list[str]) -> bytes:
    return ('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n' + "".join(f"  {r}\n" for r in rows)
            + "</posts>\n").encode()


def write_stackexchange(d: pathlib.Path, rows: list[str] = SE_ROWS) -> list[str]:
    site = d / "python.stackexchange.com"
    site.mkdir(exist_ok=True)
    (site / "Posts.xml").write_bytes(se_xml(rows))
    return [str(site / "Posts.xml")]


# --- s2orc -------------------------------------------------------------------
S2ORC = [
    {"paper_id": "101", "title": "Attention Is All You Need",
     "abstract": "We propose the Transformer, a network based solely on attention mechanisms.",
     "outbound_citations": ["102", "999"], "inbound_citations": ["103"]},
    {"paper_id": "102", "title": "Neural Machine Translation by Jointly Learning to Align and Translate",
     "abstract": [{"text": "Neural machine translation is a recently proposed approach."}],
     "outbound_citations": []},
    {"paper_id": "103", "title": "BERT: Pre-training of Deep Bidirectional Transformers",
     "abstract": None, "outbound_citations": ["101", "101"]},
    {"paper_id": "104", "title": "", "abstract": "An untitled paper has no query.", "outbound_citations": []},
]


def write_s2orc(d: pathlib.Path) -> list[str]:
    p = d / "metadata_0.jsonl.gz"
    import gzip

    with gzip.open(p, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in S2ORC)
    return [str(p)]


# --- debian --------------------------------------------------------------------
def translation_en(records: list[dict]) -> str:
    """Debian's Translation-en layout for {package, short, long} records."""
    out = []
    for r in records:
        body = "\n".join(" " + (ln if ln.strip() else ".") for ln in r["long"].split("\n"))
        out.append(f"Package: {r['package']}\nDescription-md5: 0123456789abcdef0123456789abcdef\n"
                   f"Description-en: {r['short']}\n{body}\n")
    return "\n".join(out)


def write_debian(d: pathlib.Path, n: int = 40) -> list[str]:
    from tests.fixtures.real_text import debian_records

    p = d / "Translation-en"
    extra = "Package: no-long-desc\nDescription-md5: 00\nDescription-en: A short line only\n"
    p.write_text(translation_en(debian_records()[:n]) + "\n" + extra)
    return [str(p)]


# --- user pairs ------------------------------------------------------------
USER = [
    {"query": "how tall is mount everest", "passage": "Mount Everest is 8,849 metres tall.", "lang": "en"},
    {"query": "same text twice", "passage": "same text twice"},
    {"query": "how tall is mount everest", "passage": "Mount Everest is 8,849 metres tall.", "lang": "en"},
    {"query": "capital of france", "passage": "<p>Paris is the <b>capital</b> of France.</p>"},
    {"query": "", "passage": "no query here at all"},
]


def write_jsonl(d: pathlib.Path) -> list[str]:
    p = d / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in USER))
    return [str(p)]


def write_tsv(d: pathlib.Path) -> list[str]:
    p = d / "pairs.tsv"
    p.write_text("query\tpassage\n" + "".join(f"{r['query']}\t{r['passage']}\n" for r in USER) + "no tab here\n")
    return [str(p)]


# --- common crawl --------------------------------------------------------------
def write_warc(d: pathlib.Path, gz: bool = True) -> list[str]:
    """A WARC of the real HTML pages plus non-HTML records (warcinfo, request,
    a PNG response), as Common Crawl lays them out."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    p = d / ("crawl.warc.gz" if gz else "crawl.warc")
    with open(p, "wb") as f:
        w = WARCWriter(f, gzip=gz)
        w.write_record(w.create_warcinfo_record("crawl.warc", {"software": "e5jax-test"}))
        for page in HTML_PAGES:
            url = f"https://docs.python.org/3.11/library/{page.name}"
            req = StatusAndHeaders("GET /3.11/library/ HTTP/1.1", [("Host", "docs.python.org")], is_http_request=True)
            w.write_record(w.create_warc_record(url, "request", http_headers=req))
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(page.read_bytes()),
                                                http_headers=headers))
        png = b"\x89PNG\r\n\x1a\n" + bytes(64)
        headers = StatusAndHeaders("200 OK", [("Content-Type", "image/png")], protocol="HTTP/1.1")
        w.write_record(w.create_warc_record("https://docs.python.org/logo.png", "response",
                                            payload=io.BytesIO(png), http_headers=headers))
    return [str(p)]


def bz2_truncated(data: bytes) -> bytes:
    c = bz2.compress(data)
    return c[: len(c) * 2 // 3]


WRITERS = {
    "reddit": write_reddit, "stackexchange": write_stackexchange, "s2orc": write_s2orc,
    "debian": write_debian, "jsonl": write_jsonl, "tsv": write_tsv, "commoncrawl": write_warc,
}
