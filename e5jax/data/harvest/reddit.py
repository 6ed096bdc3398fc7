"""Reddit: Pushshift NDJSON dumps of submissions (RS_*) and comments (RC_*).

Pair = (post title + selftext, its top-scored direct comment). Posts and
comments usually arrive in different files, so the pair is a join on the post
id (`link_id` of a comment is "t3_" + post id; a direct comment's `parent_id`
equals its `link_id`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from e5jax.data.harvest import fields
from e5jax.data.harvest.streams import iter_json_records
from e5jax.data.harvest.types import Drop, Pair, Record, Source

_GONE = {"[deleted]", "[removed]", ""}


def slim(obj: Record) -> Record | Drop:
    """Keep only what pairing needs; classify post vs comment."""
    if "title" in obj:
        pid = fields.text(obj, "id")
        title = fields.text(obj, "title")
        if not pid or title.strip() in _GONE:
            return Drop("post_without_title")
        selftext = fields.text(obj, "selftext")
        return {
            "kind": "post",
            "id": pid,
            "title": title,
            "selftext": "" if selftext.strip() in _GONE else selftext,
            "subreddit": fields.text(obj, "subreddit"),
        }
    if "body" in obj and "link_id" in obj:
        link, parent = fields.text(obj, "link_id"), fields.text(obj, "parent_id")
        if not link.startswith("t3_") or parent != link:
            return Drop("nested_comment")
        body = fields.text(obj, "body")
        if body.strip() in _GONE:
            return Drop("deleted_comment")
        return {"kind": "comment", "id": fields.text(obj, "id"), "post": link[3:], "body": body,
                "score": fields.number(obj, "score")}
    return Drop("not_a_post_or_comment")


def read(path: str, max_chars: int) -> Iterator[Record | Drop]:
    for obj in iter_json_records(path, max_chars):
        yield obj if isinstance(obj, Drop) else slim(obj)


def key(rec: Record) -> str:
    return rec["id"] if rec["kind"] == "post" else rec["post"]


def _better(c: Record, best: Record | None) -> bool:
    # Highest score; ties go to the oldest comment, so the choice does not
    # depend on the order records arrive in (Beam gives no order).
    if best is None or c["score"] != best["score"]:
        return best is None or c["score"] > best["score"]
    return fields.id_order(c["id"]) < fields.id_order(best["id"])


def group_to_pairs(post_id: str, recs: Iterable[Record]) -> Iterator[Pair | Drop]:
    post: Record | None = None
    best: Record | None = None
    for r in recs:  # streamed: one post plus the best comment so far
        if r["kind"] == "post":
            if post is None or (r["title"], r["selftext"]) < (post["title"], post["selftext"]):
                post = r
        elif _better(r, best):
            best = r
    if post is None:
        yield Drop("comment_without_post")
        return
    if best is None:
        yield Drop("post_without_comment")
        return
    query = fields.unescape(post["title"] + ("\n" + post["selftext"] if post["selftext"] else ""))
    meta = {"subreddit": post["subreddit"], "post_id": post_id, "comment_id": best["id"], "score": best["score"]}
    yield Pair(query, fields.unescape(best["body"]), meta)


SOURCE = Source("reddit", read, key=key, group_to_pairs=group_to_pairs, doc=__doc__)
