"""Natural Questions in the DPR JSON layout → fine-tuning records.

DPR's `biencoder-nq-{train,dev}.json` is one JSON list of objects::

    {"dataset": "nq_train_psgs_w100", "question": str, "answers": [str],
     "positive_ctxs": [{"title": str, "text": str, "score": ..., "passage_id": str}, ...],
     "negative_ctxs": [...], "hard_negative_ctxs": [...]}

Record: positive = the first positive ctx as "title text"; negatives = the
hard negatives first, then the other (random, BM25-ish) negatives, sampled
per tier with the record's seeded generator when there are more than k.

Reading: the file is a single JSON array, so it is read with `json.load`
(the train file is ~7 GB of JSON → roughly 2–3x that in Python objects).
`ijson` would stream it, but it is not a dependency of e5jax; split the file
or use a machine with the memory for the full train set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from tqdm.auto import tqdm

from e5jax.data.finetune.records import (
    Record,
    Stats,
    join_title_text,
    make_record,
    open_text,
    pick_negatives,
    record_rng,
)
from e5jax.errors import E5Error

SOURCE = "nq"


def _ctx_texts(ctxs: object) -> list[str]:
    """Passage texts of a DPR ctx list; raises TypeError/KeyError on a bad layout."""
    if not isinstance(ctxs, list):
        raise TypeError("ctx list is not a list")
    out = []
    for c in ctxs:
        text = join_title_text(c.get("title"), c["text"])
        if text:
            out.append(text)
    return out


def load_dpr(path: str | os.PathLike) -> list:
    """The DPR JSON list (decompressing .gz / .bz2 / .zst)."""
    with open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise E5Error(f"{path}: not a DPR JSON file ({e.msg} at line {e.lineno})") from e
    if not isinstance(data, list):
        raise E5Error(f"{path}: expected a JSON list of DPR questions, got {type(data).__name__}")
    return data


def convert_nq(items: list, k: int | None, seed: int, stats: Stats, name: str = "nq") -> Iterator[Record]:
    """DPR items → records with ids ``nq-<index in the list>``.

    Items without a question or with a broken ctx layout are counted as
    malformed; items without a positive ctx as `no_positive`.
    """
    for i, item in enumerate(tqdm(items, desc=name, unit=" questions", disable=None, leave=False)):
        try:
            question = item["question"].strip()
            positives = _ctx_texts(item.get("positive_ctxs", []))
            hard = _ctx_texts(item.get("hard_negative_ctxs", []))
            other = _ctx_texts(item.get("negative_ctxs", []))
            if not question:
                raise ValueError("empty question")
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            stats.malformed(f"{name}[{i}]", f"not a DPR question ({type(e).__name__}: {e})")
            continue
        if not positives:
            stats.add("no_positive")
            continue
        rid = f"{SOURCE}-{i}"
        negs = pick_negatives([hard, other], positives, k, record_rng(seed, rid), stats)
        yield make_record(question, positives[0], negs, SOURCE, rid)
