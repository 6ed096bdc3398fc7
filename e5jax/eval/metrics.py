"""IR metrics as BEIR reports them: trec_eval's, through pytrec_eval.

- A run is {qid: {docid: score}}; qrels are {qid: {docid: grade}}.
- trec_eval's conventions hold because trec_eval computes them: ranking by
  score descending, equal scores by docid descending; relevant = grade >= 1;
  nDCG gain = the grade, the ideal ranking over every judged document
  (including ones absent from the run or the corpus).
- Per-query values exist for the queries pytrec_eval scores (in both the run
  and the qrels, with at least one judgment); a query whose judgments are all
  non-relevant scores 0 and still counts. The mean is over those queries, like
  BEIR's EvaluateRetrieval.
- MRR@10 = recip_rank on the run cut to its top 10, BEIR's own "MRR@10".
- BEIR drops a document whose id equals the query id (`run_from_topk`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytrec_eval

NDCG_AT = (1, 3, 5, 10, 100)
RECALL_AT = (1, 10, 100, 1000)
MRR_AT = 10
MAP_AT = 100

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

# trec_eval measure -> our report name
_NAMES = {f"ndcg_cut_{k}": f"nDCG@{k}" for k in NDCG_AT} | {f"recall_{k}": f"Recall@{k}" for k in RECALL_AT}
_NAMES |= {f"map_cut_{MAP_AT}": f"MAP@{MAP_AT}"}
_MEASURES = {
    "ndcg_cut." + ",".join(map(str, NDCG_AT)),
    "recall." + ",".join(map(str, RECALL_AT)),
    f"map_cut.{MAP_AT}",
}


def metric_names() -> list[str]:
    """Report keys in a stable order: nDCG@k, MRR@10, Recall@k, MAP@100."""
    return [f"nDCG@{k}" for k in NDCG_AT] + [f"MRR@{MRR_AT}"] + [f"Recall@{k}" for k in RECALL_AT] + [f"MAP@{MAP_AT}"]


def _top(docs: Mapping[str, float], k: int) -> dict[str, float]:
    """The first k documents in trec_eval's order (score desc, then docid desc)."""
    return dict(sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:k])


def per_query(run: Run, qrels: Qrels) -> dict[str, dict[str, float]]:
    """{qid: {metric: value}} for the queries pytrec_eval scores (sorted by qid)."""
    # pytrec_eval wants plain dicts of str -> float / int.
    run = {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items()}
    qrels = {q: {d: int(g) for d, g in judged.items()} for q, judged in qrels.items()}
    scored = pytrec_eval.RelevanceEvaluator(qrels, _MEASURES).evaluate(run)
    # recip_rank has no cut-off in trec_eval: BEIR cuts the run itself.
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(
        {q: _top(docs, MRR_AT) for q, docs in run.items()}
    )
    out = {}
    for q in sorted(scored):
        m = {_NAMES[k]: v for k, v in scored[q].items() if k in _NAMES}
        m[f"MRR@{MRR_AT}"] = rr[q]["recip_rank"]
        out[q] = {n: float(m[n]) for n in metric_names()}
    return out


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
