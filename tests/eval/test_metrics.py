"""Our metrics against pytrec_eval (trec_eval) on the same run and qrels."""

import numpy as np
import pytest
import pytrec_eval

from e5jax.eval import metrics

# pytrec_eval measure -> our name
MEASURES = {f"ndcg_cut_{k}": f"nDCG@{k}" for k in metrics.NDCG_AT}
MEASURES |= {f"recall_{k}": f"Recall@{k}" for k in metrics.RECALL_AT}
MEASURES |= {"map_cut_100": "MAP@100"}


def reference(run, qrels):
    """pytrec_eval per query; MRR@10 = recip_rank on the run cut to its top 10."""
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.1,3,5,10,100", "recall.1,10,100,1000", "map_cut.100"})
    out = {q: {MEASURES[m]: v for m, v in ms.items()} for q, ms in ev.evaluate(run).items()}
    top10 = {}
    for q, docs in run.items():  # trec_eval order: score desc, docid desc
        top10[q] = dict(sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:10])
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    for q in out:
        out[q]["MRR@10"] = rr[q]["recip_rank"]
    return out


def random_case(seed: int):
    rng = np.random.default_rng(seed)
    docs = [f"d{i}" for i in range(1500)]
    run, qrels = {}, {}
    for qi in range(40):
        q = f"q{qi}"
        n = int(rng.choice([0, 3, 20, 150, 1200]))  # 1200 > 1000: Recall@1000 cut matters
        picked = rng.choice(len(docs), size=n, replace=False)
        # Coarse scores -> many ties (ordered by docid descending in trec_eval).
        run[q] = {docs[i]: float(rng.integers(0, 6)) / 4 for i in picked}
        judged = rng.choice(len(docs), size=int(rng.integers(0, 12)), replace=False)
        qrels[q] = {docs[i]: int(rng.integers(0, 4)) for i in judged}  # graded, with zeros
        if qi % 5 == 0:  # judged docs missing from the corpus and from the run
            qrels[q][f"missing{qi}"] = 2
        if qi % 7 == 0:  # judged, but nothing relevant
            qrels[q] = {docs[0]: 0}
    run["only_in_run"] = {"d1": 1.0}
    qrels["only_in_qrels"] = {"d1": 1}
    return run, qrels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_to_pytrec_eval(seed):
    run, qrels = random_case(seed)
    ours = metrics.per_query(run, qrels)
    ref = reference(run, qrels)
    assert ours.keys() == ref.keys()
    for q in ref:
        for name in metrics.metric_names():
            assert ours[q][name] == pytest.approx(ref[q][name], abs=1e-6), (q, name)
    mean = metrics.evaluate(run, qrels)
    for name in metrics.metric_names():
        assert mean[name] == pytest.approx(np.mean([ref[q][name] for q in ref]), abs=1e-6)


def test_ties_sorted_by_docid_descending():
    qrels = {"q": {"a": 1}}
    run = {"q": {"a": 1.0, "b": 1.0, "c": 1.0}}  # trec_eval ranks c, b, a
    m = metrics.per_query(run, qrels)["q"]
    assert m["MRR@10"] == pytest.approx(1 / 3)
    assert m["nDCG@1"] == 0.0


def test_graded_gain_is_linear_and_ideal_counts_missing_docs():
    qrels = {"q": {"a": 2, "b": 1, "gone": 2}}
    run = {"q": {"b": 2.0, "a": 1.0}}
    m = metrics.per_query(run, qrels)["q"]
    dcg = 1 / np.log2(2) + 2 / np.log2(3)
    idcg = 2 / np.log2(2) + 2 / np.log2(3) + 1 / np.log2(4)
    assert m["nDCG@10"] == pytest.approx(dcg / idcg)
    assert m["Recall@1"] == pytest.approx(1 / 3)


def test_run_from_topk_drops_identical_ids():
    run = metrics.run_from_topk(["x", "y"], ["x", "a", "b"], np.array([[3.0, 2.0], [1.0, 0.5]]), np.array([[0, 1], [2, 0]]))
    assert run == {"x": {"a": 2.0}, "y": {"b": 1.0, "x": 0.5}}


def test_hand_computed_beir_numbers():
    """MRR@10 is cut at 10 (recip_rank alone is not); MAP and Recall by hand."""
    run = {"q": {f"d{i:02d}": 100.0 - i for i in range(20)}}  # d00 first ... d19 last
    qrels = {"q": {"d10": 1, "d01": 2, "absent": 1}}  # ranks 11 and 2; one relevant doc not retrieved
    m = metrics.per_query(run, qrels)["q"]
    assert m["MRR@10"] == pytest.approx(1 / 2)
    assert m["Recall@1"] == 0.0 and m["Recall@10"] == pytest.approx(1 / 3) and m["Recall@100"] == pytest.approx(2 / 3)
    assert m["MAP@100"] == pytest.approx((1 / 2 + 2 / 11) / 3)
    only_late = metrics.per_query({"q": run["q"]}, {"q": {"d10": 1}})["q"]
    assert only_late["MRR@10"] == 0.0 and only_late["Recall@100"] == 1.0
