"""Common Crawl: WARC files (`.warc.gz` or plain), read with warcio.

Pair = (page title, main-text passage), the main text extracted by
trafilatura. Only HTTP responses with an HTML content type are used; other
records (warcinfo, request, metadata, images, PDFs) are counted and skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import trafilatura
from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed

from e5jax.data.compressed import open_raw
from e5jax.data.harvest.streams import CORRUPT, CORRUPT_ERRORS, OVERSIZED, TRUNCATED
from e5jax.data.harvest.types import Drop, Pair, Record, Source

_HTML_TYPES = ("text/html", "application/xhtml+xml")


def _record(rec, max_chars: int) -> Record | Drop:
    if rec.rec_type != "response":
        return Drop("not_a_response")
    ctype = (rec.http_headers.get_header("Content-Type") or "") if rec.http_headers else ""
    if not ctype.lower().split(";")[0].strip() in _HTML_TYPES:
        return Drop("non_html_record")
    stream = rec.content_stream()  # de-chunked and decoded body
    body = stream.read(max_chars + 1)
    if len(body) > max_chars:
        return Drop(OVERSIZED)
    return {"url": rec.rec_headers.get_header("WARC-Target-URI") or "", "html": body}


def read(path: str, max_chars: int) -> Iterator[Record | Drop]:
    # warcio detects gzip per record itself, so the raw file is passed in.
    with open_raw(path) as f:  # local or gs://
        try:
            for rec in ArchiveIterator(f):
                yield _record(rec, max_chars)
        except EOFError:
            yield Drop(TRUNCATED)
        except (ArchiveLoadFailed, ValueError, *CORRUPT_ERRORS):
            yield Drop(CORRUPT)


def to_pairs(rec: Record) -> Iterator[Pair | Drop]:
    doc = trafilatura.bare_extraction(rec["html"], url=rec["url"] or None, with_metadata=True)
    if doc is None:
        yield Drop("no_main_text")
        return
    title, text = (doc.title or "").strip(), (doc.text or "").strip()
    if not title:
        yield Drop("page_without_title")
        return
    if not text:
        yield Drop("no_main_text")
        return
    yield Pair(title, text, {"url": rec["url"]})


SOURCE = Source("commoncrawl", read, to_pairs=to_pairs, doc=__doc__)
