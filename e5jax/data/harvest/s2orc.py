"""Scientific papers: S2ORC / Semantic Scholar JSONL (one paper per line).

Fields read (S2ORC metadata schema): `paper_id` (or `corpusid`), `title`,
`abstract` (a string, or S2ORC's list of `{"text": …}` paragraphs) and
`outbound_citations` (ids of cited papers).

Pairs: (title, abstract) for every paper, and for every citation whose target
is in the input, (citing paper's title, cited paper's title + abstract).
Citations are joined on the cited paper's id.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from e5jax.data.harvest import fields
from e5jax.data.harvest.streams import iter_json_records
from e5jax.data.harvest.types import Drop, Pair, Record, Source

_MAX_CITATIONS = 1_000  # a paper citing more than this is a parsing accident


def _abstract(obj: Record) -> str:
    a = obj.get("abstract")
    if isinstance(a, list):  # S2ORC pdf_parses: [{"text": ...}, ...]
        return "\n".join(fields.text(p, "text") for p in a if isinstance(p, dict))
    return fields.text(obj, "abstract")


def explode(obj: Record) -> Iterator[Record | Drop]:
    """A paper record keyed by its id, plus one stub per citation keyed by the
    cited paper's id (so the join finds the cited paper's text)."""
    pid = fields.text(obj, "paper_id") or fields.text(obj, "corpusid")
    title = fields.unescape(fields.text(obj, "title"))
    if not pid or not title.strip():
        yield Drop("paper_without_id_or_title")
        return
    yield {"kind": "paper", "id": pid, "title": title, "abstract": fields.unescape(_abstract(obj))}
    cited = obj.get("outbound_citations")
    if isinstance(cited, list):
        for c in cited[:_MAX_CITATIONS]:
            if isinstance(c, (str, int)) and not isinstance(c, bool) and str(c) != pid:
                yield {"kind": "cite", "id": str(c), "citing": pid, "title": title}


def read(path: str, max_chars: int) -> Iterator[Record | Drop]:
    for obj in iter_json_records(path, max_chars):
        if isinstance(obj, Drop):
            yield obj
        else:
            yield from explode(obj)


def key(rec: Record) -> str:
    return rec["id"]


def group_to_pairs(pid: str, recs: Iterable[Record]) -> Iterator[Pair | Drop]:
    paper: Record | None = None
    citing: set[str] = set()
    cites: list[Record] = []
    for r in recs:
        if r["kind"] == "paper":
            if paper is None or (r["title"], r["abstract"]) < (paper["title"], paper["abstract"]):
                paper = r
        elif r["citing"] not in citing:  # the same citation listed twice counts once
            citing.add(r["citing"])
            cites.append(r)
    if paper is None:
        yield from (Drop("citation_target_missing") for _ in cites)
        return
    if not paper["abstract"].strip():
        yield Drop("paper_without_abstract")
    else:
        yield Pair(paper["title"], paper["abstract"], {"paper_id": pid, "kind": "title_abstract"})
    passage = (paper["title"] + "\n" + paper["abstract"]).strip()
    for c in sorted(cites, key=lambda r: r["citing"]):
        yield Pair(c["title"], passage, {"paper_id": c["citing"], "cited_id": pid, "kind": "citation"})


SOURCE = Source("s2orc", read, key=key, group_to_pairs=group_to_pairs, doc=__doc__)
