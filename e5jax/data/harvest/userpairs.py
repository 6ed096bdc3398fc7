"""A user's own pairs: JSONL (`{"query": …, "passage": …, …}`) or TSV
(`query<TAB>passage`, an optional `query<TAB>passage` header line).

JSONL fields other than query/passage are kept in `meta`; HTML, if any, is
stripped like every source's.
"""

from __future__ import annotations

from collections.abc import Iterator

from e5jax.data.harvest import fields
from e5jax.data.harvest.cleaning import strip_html
from e5jax.data.harvest.streams import iter_json_records, iter_lines, open_binary
from e5jax.data.harvest.types import Drop, Pair, Record, Source


def read_jsonl(path: str, max_chars: int) -> Iterator[Record | Drop]:
    yield from iter_json_records(path, max_chars)


def read_tsv(path: str, max_chars: int) -> Iterator[Record | Drop]:
    with open_binary(path) as stream:
        for i, line in enumerate(iter_lines(stream, max_chars)):
            if isinstance(line, Drop):
                yield line
                continue
            cols = line.split("\t")
            if len(cols) < 2:
                yield Drop("bad_tsv_row")
            elif i == 0 and cols[0].strip().lower() == "query" and cols[1].strip().lower() == "passage":
                continue  # header
            else:
                yield {"query": cols[0], "passage": cols[1]}


def to_pairs(rec: Record) -> Iterator[Pair | Drop]:
    query, passage = fields.text(rec, "query"), fields.text(rec, "passage")
    if not query or not passage:
        yield Drop("missing_query_or_passage")
        return
    meta = {k: v for k, v in rec.items() if k not in ("query", "passage", "id", "source")}
    yield Pair(strip_html(query), strip_html(passage), meta)


JSONL = Source("jsonl", read_jsonl, to_pairs=to_pairs, doc=__doc__)
TSV = Source("tsv", read_tsv, to_pairs=to_pairs, doc=__doc__)
