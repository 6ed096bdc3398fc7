"""Cleaning every source shares: markup out, whitespace normalised, length
bounds, query == passage dropped, exact de-duplication, a deterministic id.

`clean_pair` is a pure function (the Beam pipeline calls it on workers);
`Deduper` is the one piece of state, a set of 8-byte digests.
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import asdict, dataclass

import lxml.html

from e5jax.errors import E5Error
from e5jax.data.harvest.types import Drop, Pair

_TAG_HINT = re.compile(r"<[A-Za-z/!]")


@dataclass(frozen=True)
class CleanConfig:
    """Bounds and switches of the shared cleaning step (lengths in words)."""

    min_query_words: int = 1  # shorter queries are dropped ("query_too_short")
    max_query_words: int = 128  # longer queries are cut (truncate) or dropped
    min_passage_words: int = 3  # "lol" is not a passage
    max_passage_words: int = 256  # E5 trains at 128 tokens; keep some slack
    truncate: bool = True  # cut over-long texts to the max instead of dropping them
    max_record_chars: int = 5_000_000  # a field larger than this is malformed input
    lines_per_shard: int = 100_000  # pairs per output shard

    def __post_init__(self):
        if not 0 < self.min_query_words <= self.max_query_words:
            raise E5Error("harvest: need 0 < min_query_words <= max_query_words")
        if not 0 < self.min_passage_words <= self.max_passage_words:
            raise E5Error("harvest: need 0 < min_passage_words <= max_passage_words")
        if self.max_record_chars < 1_000 or self.lines_per_shard < 1:
            raise E5Error("harvest: max_record_chars must be >= 1000 and lines_per_shard >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


def strip_html(text: str) -> str:
    """Visible text of an HTML fragment (tags dropped, entities decoded).

    Block elements are separated by spaces so "<p>a</p><p>b</p>" stays two words.
    """
    if not _TAG_HINT.search(text):
        return html.unescape(text)  # plain text: skip the parser (fast path)
    try:
        root = lxml.html.fragment_fromstring(text, create_parent="div")
    except Exception:  # lxml raises several types on garbage; fall back to entities only
        return html.unescape(re.sub(r"<[^>]*>", " ", text))
    for bad in root.xpath(".//script|.//style"):
        bad.drop_tree()
    return " ".join(root.itertext())


def pair_id(source: str, query: str, passage: str) -> str:
    """Deterministic id: the first 8 bytes of BLAKE2b(source, query, passage)."""
    h = hashlib.blake2b(digest_size=8)
    for part in (source, query, passage):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")  # separator: ("ab", "c") and ("a", "bc") differ
    return h.hexdigest()


def _bound(text: str, lo: int, hi: int, truncate: bool, what: str) -> str | Drop:
    """Whitespace-normalised `text` within [lo, hi] words, or why not."""
    words = text.split()  # splits on every Unicode whitespace run: normalises for free
    if len(words) < lo:
        return Drop(f"{what}_too_short")
    if len(words) > hi:
        if not truncate:
            return Drop(f"{what}_too_long")
        words = words[:hi]
    return " ".join(words)


def clean_pair(source: str, pair: Pair, cfg: CleanConfig) -> dict | Drop:
    """The output record for `pair`, or the reason it is dropped.

    Sources hand over text with markup already removed (each knows its markup);
    this step normalises whitespace and applies the bounds every source shares.
    """
    query = _bound(pair.query, cfg.min_query_words, cfg.max_query_words, cfg.truncate, "query")
    if isinstance(query, Drop):
        return query
    passage = _bound(
        pair.passage, cfg.min_passage_words, cfg.max_passage_words, cfg.truncate, "passage"
    )
    if isinstance(passage, Drop):
        return passage
    if query.casefold() == passage.casefold():
        return Drop("query_equals_passage")
    return {
        "id": pair_id(source, query, passage),
        "query": query,
        "passage": passage,
        "source": source,
        "meta": pair.meta,
    }


class Deduper:
    """Exact de-duplication by pair id: 8-byte digests in a set, so memory is
    ~70 bytes per kept pair whatever the texts' lengths."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def first_time(self, pid: str) -> bool:
        key = int(pid, 16)
        if key in self._seen:
            return False
        self._seen.add(key)
        return True
