"""BEIR-layout inputs for mining: `corpus.jsonl`, `queries.jsonl`, qrels TSV.

- corpus.jsonl: ``{"_id": str, "title": str, "text": str}`` a line; a
  document's text is "title text" (E5's convention).
- queries.jsonl: ``{"_id": str, "text": str}`` a line.
- qrels/<split>.tsv: ``query-id \\t corpus-id \\t score`` after a header
  line (MS MARCO's 4-column TREC qrels are accepted too); score > 0 = positive.
"""

from __future__ import annotations

import json
import os

from tqdm.auto import tqdm

from e5jax.data.finetune.msmarco import read_qrels
from e5jax.data.finetune.records import Stats, join_title_text, open_text

__all__ = ["read_corpus", "read_queries", "read_qrels"]


def _read_jsonl_texts(path: str | os.PathLike, stats: Stats, with_title: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    name = os.path.basename(path)
    with open_text(path) as f:
        for lineno, line in enumerate(tqdm(f, desc=name, unit=" lines", disable=None, leave=False), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                key = str(obj["_id"])
                text = join_title_text(obj.get("title") if with_title else None, obj["text"])
                if not text:
                    raise ValueError("empty text")
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
                stats.malformed(f"{name}:{lineno}", f"expected {{'_id', 'text'}} ({type(e).__name__})")
                continue
            out[key] = text
    return out


def read_corpus(path: str | os.PathLike, stats: Stats) -> dict[str, str]:
    """BEIR corpus → {doc id: "title text"}, in file order."""
    return _read_jsonl_texts(path, stats, with_title=True)


def read_queries(path: str | os.PathLike, stats: Stats) -> dict[str, str]:
    """BEIR queries → {query id: text}, in file order."""
    return _read_jsonl_texts(path, stats, with_title=False)
