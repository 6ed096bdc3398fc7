"""IR metrics with trec_eval's conventions (what BEIR reports through pytrec_eval).

- A run is {qid: {docid: score}}; qrels are {qid: {docid: grade}}.
- Ranking: score descending, equal scores by docid *descending* (trec_eval
  sorts (score, docno) in reverse) — byte order of the ids.
- Relevant: grade >= 1 (trec_eval's default relevance level; BEIR: > 0 on ints).
  nDCG gain is the grade itself (not 2^g - 1); grades <= 0 gain nothing; the
  ideal ranking sorts all judged grades, including documents absent from the
  run or the corpus; discount 1 / log2(rank + 1).
- Per-query values exist for queries in both the qrels (with at least one
  judgment) and the run, as pytrec_eval; a query whose judgments are all
  non-relevant scores 0 and still counts.
  The mean is over those queries, like BEIR's EvaluateRetrieval.
- MRR@10 = trec_eval's recip_rank on the top 10 (BEIR's custom "MRR@10").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

NDCG_AT = (1, 3, 5, 10, 100)
RECALL_AT = (1, 10, 100, 1000)
MRR_AT = 10
MAP_AT = 100

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def metric_names() -> list[str]:
    """Report keys in a stable order: nDCG@k, MRR@10, Recall@k, MAP@100."""
    return [f"nDCG@{k}" for k in NDCG_AT] + [f"MRR@{MRR_AT}"] + [f"Recall@{k}" for k in RECALL_AT] + [f"MAP@{MAP_AT}"]


def ranked_grades(docs: Mapping[str, float], judged: Mapping[str, int], depth: int) -> np.ndarray:
    """Grades of the run's documents in trec_eval order, cut at `depth` (unjudged -> 0)."""
    # reverse of (score asc, docid asc) = score desc, docid desc: trec_eval's order.
    order = sorted(docs.items(), key=lambda kv: (kv[1], kv[0].encode()), reverse=True)[:depth]
    return np.array([judged.get(d, 0) for d, _ in order], dtype=np.float64)


def query_metrics(grades: np.ndarray, judged: Mapping[str, int]) -> dict[str, float]:
    """All metrics of one query from its ranked grades (deep enough for every cut)."""
    all_grades = np.array(sorted(judged.values(), reverse=True), dtype=np.float64)
    num_rel = int(np.sum(all_grades >= 1))
    rel = (grades >= 1).astype(np.float64)
    ranks = np.arange(1, len(grades) + 1, dtype=np.float64)
    gain = np.where(grades > 0, grades, 0.0) / np.log2(ranks + 1)
    ideal_grades = np.where(all_grades > 0, all_grades, 0.0)
    ideal = ideal_grades / np.log2(np.arange(2, len(ideal_grades) + 2, dtype=np.float64))
    hits = np.cumsum(rel)
    out: dict[str, float] = {}
    for k in NDCG_AT:
        idcg = ideal[:k].sum()
        out[f"nDCG@{k}"] = float(gain[:k].sum() / idcg) if idcg > 0 else 0.0
    first = np.flatnonzero(rel[:MRR_AT])
    out[f"MRR@{MRR_AT}"] = float(1.0 / (first[0] + 1)) if len(first) else 0.0
    for k in RECALL_AT:
        out[f"Recall@{k}"] = float(rel[:k].sum() / num_rel) if num_rel else 0.0
    precision_at_hits = (hits / ranks * rel)[:MAP_AT]
    out[f"MAP@{MAP_AT}"] = float(precision_at_hits.sum() / num_rel) if num_rel else 0.0
    return out


def per_query(run: Run, qrels: Qrels) -> dict[str, dict[str, float]]:
    """{qid: {metric: value}} for queries in both the run and the qrels."""
    depth = max(max(NDCG_AT), max(RECALL_AT), MAP_AT, MRR_AT)
    return {
        qid: query_metrics(ranked_grades(run[qid], qrels[qid], depth), qrels[qid])
        for qid in sorted(qrels)
        if qid in run and qrels[qid]  # pytrec_eval skips a query with no judgments at all
    }


def mean_metrics(per_q: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Average every metric over the queries (0.0 for an empty set)."""
    names = metric_names()
    if not per_q:
        return {n: 0.0 for n in names}
    table = np.array([[m[n] for n in names] for m in per_q.values()])
    return dict(zip(names, table.mean(axis=0).tolist()))


def evaluate(run: Run, qrels: Qrels) -> dict[str, float]:
    """Mean nDCG@{1,3,5,10,100}, MRR@10, Recall@{1,10,100,1000}, MAP@100."""
    return mean_metrics(per_query(run, qrels))


def run_from_topk(
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    scores: np.ndarray,
    ids: np.ndarray,
    *,
    ignore_identical_ids: bool = True,
) -> dict[str, dict[str, float]]:
    """Turn the retrieval core's (scores, ids) [nq, k] into a run dict.

    `ignore_identical_ids` drops a document whose id equals the query id (BEIR's
    default: some collections list the query itself in the corpus).
    """
    run: dict[str, dict[str, float]] = {}
    for qid, row_s, row_i in zip(query_ids, scores.tolist(), ids.tolist()):
        docs = {doc_ids[i]: s for s, i in zip(row_s, row_i)}
        if ignore_identical_ids:
            docs.pop(qid, None)
        run[qid] = docs
    return run
