"""Hard-negative mining for fine-tuning (dense or BM25).

For every query with a known positive: retrieve its top-N passages, drop
every known positive (and any passage whose text equals a positive's — the
same passage under another id is still a positive), then sample k negatives
from a rank window. The window skips the very top because the best-ranked
non-positives are often unlabelled positives (false negatives); the paper's
recipe mines from a model's top ranks the same way.

Window semantics: ``(lo, hi)`` is a Python slice of the ranking *after*
positives and duplicates are dropped, so ``(10, 100)`` means "the 11th to the
100th best non-positive passages"; a positive ranked high does not shift a
likely false negative into the window.

Sampling uses `record_rng(seed, query id)`, so a query's negatives depend
only on the seed and its id, never on the order or subset of queries.

Dense ranking goes through the one retrieval core (`e5jax.retrieval`);
BM25 through `bm25s`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from e5jax.data.finetune.records import Record, Stats, make_record, record_rng, sample_in_order
from e5jax.errors import E5Error


def parse_window(spec: str) -> tuple[int, int]:
    """"10:100" → (10, 100); "lo:" is not allowed (the end bounds retrieval depth)."""
    lo, sep, hi = spec.partition(":")
    try:
        window = (int(lo or 0), int(hi))
    except ValueError:
        raise E5Error(f"--rank-window must look like LO:HI (e.g. 10:100), got {spec!r}") from None
    if not sep or not 0 <= window[0] < window[1]:
        raise E5Error(f"--rank-window must be LO:HI with 0 <= LO < HI, got {spec!r}")
    return window


def select_negatives(
    ranked_ids: Sequence[str],
    positives: set[str] | frozenset[str],
    window: tuple[int, int],
    k: int,
    rng: np.random.Generator,
) -> list[str]:
    """k ids sampled from `ranked_ids[lo:hi]` after removing positives and repeats.

    Returned in rank order; fewer than k if the window holds fewer. Never
    returns an id in `positives`.
    """
    lo, hi = window
    seen = set(positives)
    candidates = []
    for i in ranked_ids:
        if i not in seen:
            seen.add(i)
            candidates.append(i)
    return sample_in_order(candidates[lo:hi], k, rng)


def _drop_text_duplicates(ranked: Sequence[str], positives: Sequence[str], corpus: Mapping[str, str]) -> list[str]:
    """Drop ranked ids whose text equals a positive's or an earlier candidate's."""
    seen = {corpus[p].strip() for p in positives}
    out = []
    for i in ranked:
        t = corpus[i].strip()
        if t not in seen:
            seen.add(t)
            out.append(i)
    return out


def mine_records(
    queries: Mapping[str, str],
    corpus: Mapping[str, str],
    qrels: Mapping[str, Sequence[str]],
    ranked: Mapping[str, Sequence[str]],
    window: tuple[int, int],
    k: int,
    seed: int,
    source: str,
    stats: Stats,
) -> Iterator[Record]:
    """Fine-tuning records from rankings: one per query of `qrels` with a positive.

    `ranked` maps a query id to its retrieved doc ids, best first. The
    positive is the query's first qrels positive present in `corpus`; all its
    positives are excluded. Counts: no_positive, missing_query,
    missing_passage, short_negatives.
    """
    for qid, pos_ids in qrels.items():
        if qid not in queries:
            stats.add("missing_query")
            continue
        present = [p for p in pos_ids if p in corpus]
        stats.add("missing_passage", len(pos_ids) - len(present))
        if not present:
            stats.add("no_positive")
            continue
        candidates = _drop_text_duplicates(ranked.get(qid, ()), present, corpus)
        negs = select_negatives(candidates, frozenset(present), window, k, record_rng(seed, qid))
        if len(negs) < k:
            stats.add("short_negatives")
        yield make_record(queries[qid], corpus[present[0]], [corpus[i] for i in negs], source, qid)


def retrieval_depth(top_n: int, qrels: Mapping[str, Sequence[str]], corpus_size: int) -> int:
    """How deep to retrieve so that top_n non-positives remain after dropping positives."""
    most = max((len(v) for v in qrels.values()), default=0)
    return max(1, min(corpus_size, top_n + most))


def rank_dense(query_emb: np.ndarray, corpus_emb: np.ndarray, depth: int) -> np.ndarray:
    """Row indices of the `depth` best passages per query, by dot product (exact).

    Goes through the sharded retrieval core; ties are broken by lower index.
    """
    from e5jax import retrieval  # JAX is imported only when dense mining runs

    _, ids = retrieval.search(np.asarray(query_emb, np.float32), np.asarray(corpus_emb, np.float32), k=depth)
    return np.asarray(ids)


def rank_bm25(query_texts: Sequence[str], corpus_texts: Sequence[str], depth: int) -> list[list[int]]:
    """Row indices of the best BM25 passages per query (bm25s, English stopwords).

    Passages with score 0 share no term with the query: they are not
    neighbours of anything, so they are left out (a list may be shorter).
    """
    import bm25s

    bar = sys.stderr.isatty()  # bm25s's own progress bars, on a terminal only
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(list(corpus_texts), stopwords="en", show_progress=bar), show_progress=bar)
    # Queries as token strings: bm25s maps them onto the index's vocabulary
    # (a separately built id vocabulary would not match).
    q_tokens = bm25s.tokenize(list(query_texts), stopwords="en", return_ids=False, show_progress=bar)
    docs, scores = retriever.retrieve(q_tokens, k=min(depth, len(corpus_texts)), show_progress=bar)
    return [[int(d) for d, s in zip(drow, srow) if s > 0] for drow, srow in zip(docs, scores)]


def mine(
    queries: Mapping[str, str],
    corpus: Mapping[str, str],
    qrels: Mapping[str, Sequence[str]],
    *,
    method: str,
    top_n: int = 100,
    window: tuple[int, int] = (10, 100),
    k: int = 7,
    seed: int = 0,
    source: str = "mined",
    stats: Stats,
    encoder=None,
    query_prefix: str = "query: ",
    passage_prefix: str = "passage: ",
    max_length: int = 512,
    batch_size: int = 64,
) -> list[Record]:
    """Rank with `method` ("dense" with `encoder`, or "bm25") and build records.

    Only the queries of `qrels` are encoded/ranked. `encoder` follows
    `e5jax.model.encoder.Encoder`: ``encode(texts, prefix=, max_length=,
    batch_size=) -> [n, d]`` normalised float32.
    """
    if window[1] > top_n:
        raise E5Error(f"--rank-window end {window[1]} is deeper than --top-n {top_n}; raise --top-n")
    qids = [q for q in qrels if q in queries]
    if not qids:  # bm25s and the dense ranker both fail obscurely on zero queries
        raise E5Error(
            f"no query id of the qrels ({len(qrels)} queries) is in the queries ({len(queries)}): nothing to mine"
        )
    doc_ids = list(corpus)
    depth = retrieval_depth(top_n, {q: qrels[q] for q in qids}, len(doc_ids))
    q_texts = [queries[q] for q in qids]
    if method == "bm25":
        rows = rank_bm25(q_texts, [corpus[d] for d in doc_ids], depth)
    elif method == "dense":
        if encoder is None:
            raise E5Error("dense mining needs --model DIR (or use --bm25)")
        enc = dict(max_length=max_length, batch_size=batch_size)
        q_emb = encoder.encode(q_texts, prefix=query_prefix, **enc)
        d_emb = encoder.encode([corpus[d] for d in doc_ids], prefix=passage_prefix, **enc)
        rows = rank_dense(q_emb, d_emb, depth).tolist()
    else:
        raise E5Error(f"unknown mining method {method!r}: use 'dense' or 'bm25'")
    ranked = {q: [doc_ids[i] for i in row] for q, row in zip(qids, rows)}
    return list(mine_records(queries, corpus, qrels, ranked, window, k, seed, source, stats))
