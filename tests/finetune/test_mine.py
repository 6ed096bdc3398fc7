"""Hard-negative mining: the selection rule, determinism, dense = brute force,
BM25 on real text (Debian package descriptions), and the `e5jax mine` CLI."""

import json
import random
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e5jax import cli, mine
from e5jax.data.finetune.records import Stats, read_records
from e5jax.errors import E5Error
from tests.fixtures.real_text import debian_records


@settings(max_examples=200, deadline=None)
@given(
    ranked=st.lists(st.integers(0, 40).map(str), max_size=60),
    positives=st.sets(st.integers(0, 40).map(str), max_size=10),
    lo=st.integers(0, 20),
    width=st.integers(1, 50),
    k=st.integers(0, 12),
    seed=st.integers(0, 2**32 - 1),
)
def test_select_negatives_never_returns_a_positive(ranked, positives, lo, width, k, seed):
    got = mine.select_negatives(ranked, positives, (lo, lo + width), k, np.random.default_rng(seed))
    assert not set(got) & positives
    assert len(got) == len(set(got))
    window = list(dict.fromkeys(r for r in ranked if r not in positives))[lo : lo + width]
    assert set(got) <= set(window) and len(got) == min(k, len(window))
    assert got == [w for w in window if w in set(got)]  # rank order kept


def test_parse_window():
    assert mine.parse_window("10:100") == (10, 100) and mine.parse_window(":5") == (0, 5)
    for bad in ("10", "5:5", "a:b", "9:3"):
        with pytest.raises(E5Error, match="rank-window"):
            mine.parse_window(bad)


def _toy(n_docs=60, n_q=12, seed=0):
    corpus = {f"d{i}": f"document {i}" for i in range(n_docs)}
    queries = {f"q{i}": f"query {i}" for i in range(n_q)}
    qrels = {f"q{i}": [f"d{i}", f"d{i + n_q}"] for i in range(n_q)}
    rng = np.random.default_rng(seed)
    ranked = {q: [f"d{j}" for j in rng.permutation(n_docs)] for q in queries}
    return queries, corpus, qrels, ranked


def test_mining_is_deterministic_per_query_not_per_order():
    queries, corpus, qrels, ranked = _toy()
    run = lambda qr, seed: {  # noqa: E731
        r["id"]: r for r in mine.mine_records(queries, corpus, qr, ranked, (2, 40), 5, seed, "t", Stats())
    }
    a = run(qrels, 0)
    shuffled = dict(random.Random(1).sample(list(qrels.items()), len(qrels)))
    assert run(shuffled, 0) == a
    assert run({"q3": qrels["q3"]}, 0)["q3"] == a["q3"]  # a subset gives the same record
    assert run(qrels, 1) != a
    for qid, r in a.items():
        assert len(r["negatives"]) == 5
        assert not {corpus[p] for p in qrels[qid]} & set(r["negatives"])


def test_text_duplicate_of_a_positive_is_never_a_negative():
    corpus = {"p": "same text", "dup": "same text ", "a": "other", "b": "other", "c": "third"}
    stats = Stats()
    (rec,) = mine.mine_records({"q": "Q"}, corpus, {"q": ["p"], "x": []}, {"q": ["dup", "a", "b", "p", "c"]},
                               (0, 10), 5, 0, "t", stats)  # fmt: skip
    assert rec["negatives"] == ["other", "third"]
    assert stats["missing_query"] == 1 and stats["short_negatives"] == 1


def _brute_force(q, d, depth):
    scores = q @ d.T
    # sort by score descending, then by smaller id (the retrieval core's tie rule)
    return np.lexsort((np.broadcast_to(np.arange(d.shape[0]), scores.shape), -scores), axis=1)[:, :depth]


def test_rank_dense_equals_numpy_brute_force():
    rng = np.random.default_rng(0)
    d = rng.standard_normal((203, 16)).astype(np.float32)
    d[50] = d[7]  # exact ties must go to the smaller id
    q = rng.standard_normal((21, 16)).astype(np.float32)
    q[3] = d[7]
    got = mine.rank_dense(q, d, 30)
    np.testing.assert_array_equal(got, _brute_force(q, d, 30))


class MatrixEncoder:
    """Stand-in encoder: looks texts up in given embedding matrices."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table, self.calls = table, []

    def encode(self, texts, prefix="", *, max_length=512, batch_size=64):
        self.calls.append(prefix)
        return np.stack([self.table[prefix + t] for t in texts])


def test_dense_miner_equals_brute_force_records():
    queries, corpus, qrels, _ = _toy(n_docs=80, n_q=10)
    rng = np.random.default_rng(1)
    d_emb = rng.standard_normal((80, 8)).astype(np.float32)
    q_emb = rng.standard_normal((10, 8)).astype(np.float32)
    table = {"query: " + t: e for t, e in zip(queries.values(), q_emb)}
    table.update({"passage: " + t: e for t, e in zip(corpus.values(), d_emb)})
    enc = MatrixEncoder(table)
    got = mine.mine(queries, corpus, qrels, method="dense", encoder=enc, top_n=30, window=(3, 30), k=6,
                    seed=4, stats=Stats())  # fmt: skip
    assert enc.calls == ["query: ", "passage: "]
    ids = list(corpus)
    ranked = {q: [ids[j] for j in row] for q, row in zip(queries, _brute_force(q_emb, d_emb, 32))}
    want = list(mine.mine_records(queries, corpus, qrels, ranked, (3, 30), 6, 4, "mined", Stats()))
    assert got == want and all(len(r["negatives"]) == 6 for r in got)


def _debian(n=400):
    recs = [r for r in debian_records() if r["short"].strip() and r["long"].strip()][:n]
    queries = {r["package"]: r["short"] for r in recs}
    corpus = {r["package"]: r["long"] for r in recs}
    return queries, corpus, {p: [p] for p in queries}


def _terms(text):
    return set(re.findall(r"\w\w+", text.lower()))


def test_bm25_miner_on_debian_descriptions():
    queries, corpus, qrels = _debian()
    ranked = mine.rank_bm25(list(queries.values()), list(corpus.values()), 20)
    ids = list(corpus)
    hits = sum(ids[row[0]] == q for q, row in zip(queries, ranked) if row)
    assert hits / len(queries) > 0.5  # BM25 itself works: the positive usually ranks first
    stats = Stats()
    recs = mine.mine(queries, corpus, qrels, method="bm25", top_n=20, window=(0, 20), k=5, stats=stats)
    assert len(recs) == len(queries)
    import bm25s

    stop = set(bm25s.stopwords.STOPWORDS_EN)
    shares = []
    for r in recs:
        assert r["positive"] == corpus[r["id"]]
        assert r["positive"].strip() not in {n.strip() for n in r["negatives"]}
        q_terms = _terms(r["query"]) - stop
        shares += [bool(q_terms & _terms(n)) for n in r["negatives"]]
    assert shares and all(shares)  # every negative is a lexical neighbour of its query


def _write_beir(tmp_path, queries, corpus, qrels):
    with open(tmp_path / "corpus.jsonl", "w") as f:
        for i, t in corpus.items():
            f.write(json.dumps({"_id": i, "title": "", "text": t}) + "\n")
        f.write("{not json\n")
    with open(tmp_path / "queries.jsonl", "w") as f:
        for i, t in queries.items():
            f.write(json.dumps({"_id": i, "text": t}) + "\n")
    with open(tmp_path / "qrels.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q, ps in qrels.items():
            f.writelines(f"{q}\t{p}\t1\n" for p in ps)
        f.write(f"{next(iter(queries))}-x\tnope\t0\n")  # judged non-relevant only: no positive
    return [f"--{n}={tmp_path / f}" for n, f in (("queries", "queries.jsonl"), ("corpus", "corpus.jsonl"),
                                                  ("qrels", "qrels.tsv"))]  # fmt: skip


def test_mine_cli_bm25(tmp_path, capsys):
    queries, corpus, qrels = _debian(150)
    args = _write_beir(tmp_path, queries, corpus, qrels)
    out = tmp_path / "mined.jsonl"
    base = ["mine", "--bm25", *args, "--top-n", "30", "--rank-window", "2:30", "--num-negatives", "4"]
    assert cli.main([*base, "--output", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "records=150" in summary and "malformed=1" in summary and "missing_query=1" in summary
    recs = list(read_records(out))
    assert all(r["source"] == "mined" and r["positive"] not in r["negatives"] for r in recs)
    assert cli.main([*base, "--output", str(tmp_path / "again.jsonl")]) == 0
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()
    assert cli.main([*base[:-4], "--top-n", "10", "--output", str(out)]) == 2  # window deeper than top-n
    assert "raise --top-n" in capsys.readouterr().err



@pytest.mark.slow
def test_mine_cli_dense_with_real_encoder_equals_brute_force(tmp_path, minilm_dir):
    from e5jax.model.encoder import Encoder

    queries, corpus, qrels = _debian(40)
    args = _write_beir(tmp_path, queries, corpus, qrels)
    flags = ["--top-n", "20", "--rank-window", "1:20", "--num-negatives", "3", "--max-length", "64", "--seed", "2"]
    out = tmp_path / "dense.jsonl"
    # all-MiniLM-L6-v2 expects no prefixes
    argv = ["mine", "--model", str(minilm_dir), *args, *flags, "--query-prefix=", "--passage-prefix="]
    argv += ["--output", str(out)]
    assert cli.main(argv) == 0
    enc = Encoder.from_pretrained(minilm_dir)
    q_emb = enc.encode(list(queries.values()), max_length=64)
    d_emb = enc.encode(list(corpus.values()), max_length=64)
    ids = list(corpus)
    ranked = {q: [ids[j] for j in row] for q, row in zip(queries, _brute_force(q_emb, d_emb, 21))}
    want = list(mine.mine_records(queries, corpus, qrels, ranked, (1, 20), 3, 2, "mined", Stats()))
    assert list(read_records(out)) == want


@pytest.mark.parametrize("empty", ["queries", "qrels", "neither"])
def test_mine_cli_without_a_shared_query_id_is_a_one_line_error(tmp_path, capsys, empty):
    queries, corpus, qrels = _debian(20)
    if empty == "neither":  # both hold ids, but none in common
        qrels = {f"other-{q}": ps for q, ps in qrels.items()}
    args = _write_beir(tmp_path, queries, corpus, qrels)
    if empty != "neither":
        (tmp_path / f"{empty}.{'tsv' if empty == 'qrels' else 'jsonl'}").write_text("")
    out = tmp_path / "mined.jsonl"
    assert cli.main(["mine", "--bm25", *args, "--top-n", "10", "--rank-window", "0:10", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no query id of --qrels {tmp_path / 'qrels.tsv'}" in err[0], err
    assert f"--queries {tmp_path / 'queries.jsonl'} ({0 if empty == 'queries' else 20} queries)" in err[0], err
    assert not out.exists()
    with pytest.raises(E5Error, match="nothing to mine"):
        mine.mine({} if empty == "queries" else queries, corpus, {} if empty == "qrels" else qrels,
                  method="bm25", top_n=10, window=(0, 10), stats=Stats())


def test_mine_cli_with_no_positive_in_the_corpus_writes_nothing(tmp_path, capsys):
    """Queries and qrels match, but every positive is missing from the corpus: no
    record can be made, and an empty file would look like a finished run."""
    queries, _, qrels = _debian(20)
    positives = {p for ps in qrels.values() for p in ps}
    corpus = {d: t for d, t in _debian(40)[1].items() if d not in positives}  # other packages only
    assert len(corpus) >= 10
    args = _write_beir(tmp_path, queries, corpus, qrels)
    out = tmp_path / "mined.jsonl"
    out.write_text("earlier run\n")
    assert cli.main(["mine", "--bm25", *args, "--top-n", "10", "--rank-window", "0:10", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no record mined (" in err[0] and "missing_passage=" in err[0], err
    assert out.read_text() == "earlier run\n"
