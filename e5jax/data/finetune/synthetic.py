"""E5-mistral synthetic-data records (Wang et al. 2024) → fine-tuning records.

The paper's generator returns, per brainstormed task, a JSON object; the
released reproductions store one per line with the task next to it::

    {"task": "Retrieve scientific abstracts that answer a medical question",
     "user_query": "...", "positive_document": "...", "hard_negative_document": "..."}

Accepted spellings (one of each list; the first present wins):

* instruction: ``task``, ``instruction``, ``task_definition``, ``task_description``
* query: ``user_query``, ``query``, ``input``, ``input_text`` (the paper's short-short /
  long-long matching prompts call it ``input``)
* positive: ``positive_document``, ``positive``, ``pos``
* hard negative: ``hard_negative_document``, ``negative``, ``neg``, ``hard_negative``
  (a string or a list of strings; optional: in-batch negatives only then)

The instruction is kept per record: the query is stored as
``Instruct: {task}\\nQuery: {query}`` (the paper's template), documents as they
are (no instruction on the document side). A record without an instruction
gets `default_instruction`. Because the query text already carries its
instruction, train with ``data.query_prefix=""`` and ``data.passage_prefix=""``
(configs/e5_mistral_7b_finetune.py does). The raw task is also kept in the
record's ``instruction`` field (the dataset builder ignores it; it documents
where the query's prompt came from).

Ids are ``synthetic-<line>`` unless the input has an ``id``; the source is the
input's ``source`` / ``task_type`` field, else ``synthetic``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator

from e5jax.data.finetune.records import Record, Stats, make_record, open_text, pick_negatives, record_rng

SOURCE = "synthetic"
QUERY_TEMPLATE = "Instruct: {task}\nQuery: {query}"
# The paper's instruction for web-search style pairs (its MS MARCO passage instruction):
# a dataset without instructions is treated as generic retrieval.
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"

INSTRUCTION_KEYS = ("task", "instruction", "task_definition", "task_description")
QUERY_KEYS = ("user_query", "query", "input", "input_text")
POSITIVE_KEYS = ("positive_document", "positive", "pos")
NEGATIVE_KEYS = ("hard_negative_document", "negative", "neg", "hard_negative")


def format_query(query: str, instruction: str) -> str:
    """The paper's query side: ``Instruct: {task}\\nQuery: {query}``."""
    return QUERY_TEMPLATE.format(task=instruction.strip(), query=query.strip())


def _first(obj: dict, keys: tuple[str, ...]):
    for k in keys:
        if k in obj and obj[k] is not None:
            return obj[k]
    return None


def _text(value) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def read_synthetic(paths: Iterable[str | os.PathLike], stats: Stats) -> Iterator[tuple[str, dict]]:
    """(location, JSON object) per line; non-objects are counted as malformed."""
    for path in paths:
        name = os.path.basename(str(path))
        with open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    stats.malformed(f"{name}:{lineno}", "not JSON")
                    continue
                if not isinstance(obj, dict):
                    stats.malformed(f"{name}:{lineno}", "not a JSON object")
                    continue
                yield f"{name}:{lineno}", obj


def convert_synthetic(items: Iterable[tuple[str, dict]], k: int | None, seed: int, stats: Stats, *,
                      default_instruction: str = DEFAULT_INSTRUCTION) -> Iterator[Record]:
    """One record per input object. Counters: `no_positive` (query or positive
    missing/empty), `default_instruction` (no task given), `no_negative`."""
    for where, obj in items:
        query, positive = _text(_first(obj, QUERY_KEYS)), _text(_first(obj, POSITIVE_KEYS))
        if query is None or positive is None:
            stats.add("no_positive")
            continue
        task = _first(obj, INSTRUCTION_KEYS)
        if task is not None and not isinstance(task, str):
            stats.malformed(where, f"instruction is a {type(task).__name__}, not a string")
            continue
        if not (task or "").strip():
            task = default_instruction
            stats.add("default_instruction")
        neg = _first(obj, NEGATIVE_KEYS)
        negs = [neg] if isinstance(neg, str) else neg if isinstance(neg, list) else []
        if not all(isinstance(n, str) for n in negs):
            stats.malformed(where, "hard negative is not a string or a list of strings")
            continue
        rid = obj.get("id")
        rid = f"{SOURCE}-{rid}" if isinstance(rid, (str, int)) and str(rid) else f"{SOURCE}-{where}"
        # The generator sometimes repeats the positive as its "hard negative": drop it.
        negs = pick_negatives([negs], [positive], k, record_rng(seed, rid), stats)
        if not negs:
            stats.add("no_negative")
        source = _text(obj.get("source")) or _text(obj.get("task_type")) or SOURCE
        rec = make_record(format_query(query, task), positive, negs, source, rid)
        rec["instruction"] = task.strip()  # type: ignore[typeddict-unknown-key]
        yield rec
