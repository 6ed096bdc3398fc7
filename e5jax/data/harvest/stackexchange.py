"""Stack Exchange: `Posts.xml` of the data dump (one `<row>` per post).

Pair = (question title + body, accepted answer — or else the highest-voted
answer with a positive score). Bodies are HTML; the markup is stripped.
Questions are joined with their answers on the question id (`ParentId`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from e5jax.data.harvest import fields
from e5jax.data.harvest.cleaning import strip_html
from e5jax.data.harvest.streams import iter_xml_records
from e5jax.data.harvest.types import Drop, Pair, Record, Source


def _site(path: str) -> str:
    """The site a dump belongs to: its folder (math.stackexchange.com/Posts.xml)."""
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return parent or "unknown"


def row_to_record(elem, site: str) -> Record | Drop:
    a = elem.attrib
    kind = a.get("PostTypeId")
    pid = a.get("Id", "")
    if kind == "1":
        return {"kind": "q", "id": pid, "title": a.get("Title", ""), "body": a.get("Body", ""),
                "accepted": a.get("AcceptedAnswerId", ""), "site": site}
    if kind == "2":
        parent = a.get("ParentId", "")
        if not parent:
            return Drop("answer_without_question")
        return {"kind": "a", "id": pid, "parent": parent, "body": a.get("Body", ""),
                "score": fields.number(a, "Score")}
    return Drop("not_question_or_answer")


def read(path: str, max_chars: int) -> Iterator[Record | Drop]:
    site = _site(path)
    yield from iter_xml_records(path, "row", lambda e: row_to_record(e, site), max_chars)


def key(rec: Record) -> str:
    return rec["id"] if rec["kind"] == "q" else rec["parent"]


def group_to_pairs(qid: str, recs: Iterable[Record]) -> Iterator[Pair | Drop]:
    question: Record | None = None
    accepted: Record | None = None
    best: Record | None = None
    answers: list[Record] = []  # only until the question is seen (its AcceptedAnswerId)
    for r in recs:
        if r["kind"] == "q":
            question = question or r
        else:
            answers.append(r)
        if question is not None:
            for ans in answers:
                if ans["id"] == question["accepted"]:
                    accepted = ans
                elif best is None or (ans["score"], fields.id_order(best["id"])) > (
                    best["score"], fields.id_order(ans["id"])):
                    best = ans
            answers.clear()
    if question is None:
        yield Drop("answer_without_question")
        return
    chosen = accepted or (best if best is not None and best["score"] > 0 else None)
    if chosen is None:
        yield Drop("question_without_answer" if best is None else "no_upvoted_answer")
        return
    query = question["title"] + "\n" + strip_html(question["body"])
    meta = {"site": question["site"], "question_id": qid, "answer_id": chosen["id"],
            "accepted": chosen is accepted, "score": chosen["score"]}
    yield Pair(query, strip_html(chosen["body"]), meta)


SOURCE = Source("stackexchange", read, key=key, group_to_pairs=group_to_pairs, doc=__doc__)
