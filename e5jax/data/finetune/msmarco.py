"""MS MARCO passage ranking → fine-tuning records.

Input files (the layouts published with the dataset):

- `collection.tsv`: ``pid \\t passage`` (8.8M lines, ~3 GB).
- `queries.{train,dev}.tsv`: ``qid \\t query``.
- `qrels.{train,dev}.tsv`: TREC style ``qid 0 pid rel`` (tabs or spaces);
  rows with rel > 0 are positives.
- Negatives, one of:
  - `msmarco-hard-negatives.jsonl` (sentence-transformers' layout): one JSON
    object a line, ``{"qid": 571018, "pos": [7349777], "neg": {"bm25":
    [pids], "<system>": [pids], ...}}``; ``neg`` may also be a plain list.
    The systems' lists are merged round-robin (rank 1 of every system, then
    rank 2, ...) so every system contributes near the top;
  - `qidpidtriples.train.full.2.tsv`: ``qid \\t pos_pid \\t neg_pid``;
  - `triples.train.small.tsv`: ``query \\t positive \\t negative`` — texts, so
    neither the collection nor the queries are read;
  - none: k random passages of the collection (weak negatives; run
    `e5jax mine` afterwards for hard ones).

One record per query: the positive is the query's first positive (file
order); every known positive of the query is kept out of its negatives.

Memory: the id-based layouts need the collection as a dict pid → passage,
about 5 GB of Python strings for the full 8.8M passages — what every MS MARCO
loader does. The text triples need no collection: ~40M lines are grouped by
query, a few GB for the full file.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterator

from tqdm.auto import tqdm

from e5jax.data.finetune.records import Record, Stats, make_record, open_text, pick_negatives, record_rng
from e5jax.errors import E5Error

SOURCE = "msmarco"


def _lines(path: str | os.PathLike, desc: str) -> Iterator[tuple[int, str]]:
    """(line number, line without its newline) with a progress bar on a TTY."""
    with open_text(path) as f:
        for lineno, line in enumerate(tqdm(f, desc=desc, unit=" lines", disable=None, leave=False), 1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield lineno, line


def read_id_text_tsv(path: str | os.PathLike, stats: Stats, desc: str = "") -> dict[str, str]:
    """`id \\t text` (collection.tsv, queries.*.tsv) → {id: text}.

    A line without a tab or with an empty text is counted as malformed.
    """
    out: dict[str, str] = {}
    for lineno, line in _lines(path, desc or os.path.basename(path)):
        key, sep, text = line.partition("\t")
        if not sep or not key.strip() or not text.strip():
            stats.malformed(f"{os.path.basename(path)}:{lineno}", "expected 'id<TAB>text'")
            continue
        out[key.strip()] = text.strip()
    return out


def read_qrels(path: str | os.PathLike, stats: Stats) -> dict[str, list[str]]:
    """Qrels → {qid: [positive pids in file order]} (rel > 0; [] if none).

    Accepts TREC ``qid 0 pid rel`` (MS MARCO) and ``qid pid rel`` with an
    optional header line (BEIR's ``query-id corpus-id score``).
    """
    out: dict[str, list[str]] = collections.defaultdict(list)
    for lineno, line in _lines(path, os.path.basename(path)):
        cols = line.split()
        if len(cols) == 4:
            qid, _, pid, rel = cols
        elif len(cols) == 3:
            qid, pid, rel = cols
        else:
            stats.malformed(f"{os.path.basename(path)}:{lineno}", "expected 'qid 0 pid rel' or 'qid pid rel'")
            continue
        try:
            relevance = float(rel)
        except ValueError:
            if lineno != 1:  # the first line may be a header
                stats.malformed(f"{os.path.basename(path)}:{lineno}", f"relevance {rel!r} is not a number")
            continue
        pids = out[qid]  # a query judged only non-relevant stays, with no positive
        if relevance > 0 and pid not in pids:
            pids.append(pid)
    return dict(out)


def read_id_triples(path: str | os.PathLike, stats: Stats) -> dict[str, tuple[list[str], list[str]]]:
    """`qid \\t pos_pid \\t neg_pid` → {qid: (positive pids, negative pids)}, file order."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    for lineno, line in _lines(path, os.path.basename(path)):
        cols = line.split()
        if len(cols) != 3:
            stats.malformed(f"{os.path.basename(path)}:{lineno}", "expected 'qid<TAB>pos_pid<TAB>neg_pid'")
            continue
        pos, neg = out.setdefault(cols[0], ([], []))
        if cols[1] not in pos:
            pos.append(cols[1])
        neg.append(cols[2])
    return out


def read_hard_negatives(path: str | os.PathLike, stats: Stats) -> Iterator[tuple[str, list[str], list[str]]]:
    """sentence-transformers hard-negatives JSONL → (qid, positive pids, negative pids)."""
    for lineno, line in _lines(path, os.path.basename(path)):
        try:
            obj = json.loads(line)
            qid, pos, neg = str(obj["qid"]), [str(p) for p in obj["pos"]], obj["neg"]
            if isinstance(neg, dict):
                lists = [[str(p) for p in v] for v in neg.values()]
                # Round-robin over systems: rank 1 of each, then rank 2, ...
                neg = [l[i] for i in range(max(map(len, lists), default=0)) for l in lists if i < len(l)]
            else:
                neg = [str(p) for p in neg]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            stats.malformed(f"{os.path.basename(path)}:{lineno}", f"not a hard-negatives object ({type(e).__name__})")
            continue
        yield qid, pos, neg


def convert_text_triples(path: str | os.PathLike, k: int | None, seed: int, stats: Stats) -> Iterator[Record]:
    """`triples.train.small.tsv` (query, positive, negative texts) → records, one per query.

    Ids are ``msmarco-t<n>`` with n the query's order of first appearance.
    """
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for lineno, line in _lines(path, os.path.basename(path)):
        cols = line.split("\t")
        if len(cols) != 3 or not all(c.strip() for c in cols):
            stats.malformed(f"{os.path.basename(path)}:{lineno}", "expected 'query<TAB>positive<TAB>negative'")
            continue
        query, pos, neg = (c.strip() for c in cols)
        positives, negatives = groups.setdefault(query, ([], []))
        if pos not in positives:
            positives.append(pos)
        negatives.append(neg)
    for n, (query, (positives, negatives)) in enumerate(groups.items()):
        rid = f"{SOURCE}-t{n}"
        negs = pick_negatives([negatives], positives, k, record_rng(seed, rid), stats)
        yield make_record(query, positives[0], negs, SOURCE, rid)


def convert_msmarco(
    collection: dict[str, str],
    queries: dict[str, str],
    qrels: dict[str, list[str]] | None,
    negatives: Iterator[tuple[str, list[str], list[str]]] | None,
    k: int | None,
    seed: int,
    stats: Stats,
) -> Iterator[Record]:
    """Id-based MS MARCO → records.

    `negatives` yields (qid, positive pids, negative pids) — from
    `read_hard_negatives` or `read_id_triples(...).items()`; if None, every
    query of `qrels` gets k random passages of `collection`. Positives are
    the union of the negatives file's and the qrels' (if given). Queries
    without a positive passage are counted as `no_positive`; ids missing
    from `queries` / `collection` as `missing_query` / `missing_passage`.
    """
    if negatives is None:
        if qrels is None:
            raise E5Error("MS MARCO needs qrels or a negatives file (hard negatives / triples)")
        all_pids = list(collection)
        negatives = ((qid, pids, None) for qid in queries for pids in [qrels.get(qid, [])])
    for qid, pos_pids, neg_pids in negatives:
        if qid not in queries:
            stats.add("missing_query")
            continue
        pos_pids = list(dict.fromkeys(pos_pids + (qrels or {}).get(qid, [])))
        positives = [collection[p] for p in pos_pids if p in collection]
        stats.add("missing_passage", len(pos_pids) - len(positives))
        if not positives:
            stats.add("no_positive")
            continue
        rid = f"{SOURCE}-{qid}"
        rng = record_rng(seed, rid)
        if neg_pids is None:  # random negatives: draw a few spare for positives / duplicates
            want = len(all_pids) if k is None else min(len(all_pids), 2 * k + len(pos_pids) + 8)
            neg_pids = [all_pids[i] for i in rng.choice(len(all_pids), size=want, replace=False)]
        known = [p for p in neg_pids if p in collection]
        stats.add("missing_passage", len(neg_pids) - len(known))
        texts = [collection[p] for p in known if p not in pos_pids]
        stats.add("duplicate_negatives", len(known) - len(texts))
        negs = pick_negatives([texts], positives, k, rng, stats)
        yield make_record(queries[qid], positives[0], negs, SOURCE, rid)

