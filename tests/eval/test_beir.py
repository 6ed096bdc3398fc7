"""BEIR loading, errors, and `e5jax eval` against sentence-transformers + pytrec_eval."""

import json
import pathlib
import time

import numpy as np
import pytest

from e5jax import cli
from e5jax.errors import E5Error
from e5jax.eval import beir

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "debian_beir"


def test_load_fixture():
    data = beir.load_beir(FIXTURE)
    assert len(data.doc_ids) == 160 and len(set(data.doc_ids)) == 160
    assert len(data.query_ids) == 46  # 48 queries, 2 without qrels are skipped
    assert not any(q.startswith("unjudged") for q in data.query_ids)
    corpus = [json.loads(line) for line in open(FIXTURE / "corpus.jsonl")]
    assert data.doc_texts[0] == corpus[0]["title"] + " " + corpus[0]["text"]
    assert corpus[3]["title"] == "" and data.doc_texts[3] == corpus[3]["text"]
    assert {g for q in data.qrels.values() for g in q.values()} == {0, 1, 2}


def test_doc_text_join():
    assert beir.doc_text("Title", "body") == "Title body"
    assert beir.doc_text("", "body") == "body"
    assert beir.doc_text(None, "body") == "body"


def write(folder: pathlib.Path, corpus: str, queries: str, qrels: str) -> pathlib.Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(corpus)
    (folder / "queries.jsonl").write_text(queries)
    (folder / "qrels" / "test.tsv").write_text(qrels)
    return folder


GOOD_C = '{"_id": "d1", "title": "", "text": "a"}\n'
GOOD_Q = '{"_id": "q1", "text": "b"}\n'
GOOD_R = "query-id\tcorpus-id\tscore\nq1\td1\t1\n"


@pytest.mark.parametrize(
    "corpus,queries,qrels,match",
    [
        ('{"_id": "d1", "text": "a"\n', GOOD_Q, GOOD_R, r"corpus.jsonl:1: not valid JSON"),
        ('{"_id": "d1"}\n', GOOD_Q, GOOD_R, r"corpus.jsonl:1: missing field"),
        (GOOD_C, GOOD_Q, "query-id\tcorpus-id\tscore\nq1\td1\n", r"test.tsv:2: expected"),
        (GOOD_C, GOOD_Q, "q1\td1\thigh\n", r"score 'high' is not a number"),
        (GOOD_C, GOOD_Q, "q9\td1\t1\n", r"not in queries.jsonl"),
    ],
)
def test_malformed_inputs(tmp_path, corpus, queries, qrels, match):
    folder = write(tmp_path / "ds", corpus, queries, qrels)
    with pytest.raises(E5Error, match=match):
        beir.load_beir(folder)


def test_missing_files_are_one_line_cli_errors(tmp_path, capsys):
    folder = write(tmp_path / "ds", GOOD_C, GOOD_Q, GOOD_R)
    (folder / "queries.jsonl").unlink()
    rc = cli.main(["eval", "--model", str(tmp_path), "--beir", str(folder), "--output", str(tmp_path / "o.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "missing queries.jsonl" in err and len(err.splitlines()) == 1
    rc = cli.main(["eval", "--model", str(tmp_path), "--beir", str(folder), "--split", "dev", "--output", "x.json"])
    assert rc == 2


def test_cache_hit_skips_encoding(tmp_path):
    folder = write(tmp_path / "ds", GOOD_C + GOOD_C.replace("d1", "d2"), GOOD_Q, GOOD_R)
    calls = []

    def encode(texts, prefix, *, max_length, batch_size):
        calls.append((tuple(texts), prefix))
        return np.eye(len(texts), 4, dtype=np.float32)

    kw = dict(model_name="m", passage_prefix="p: ", query_prefix="", cache_dir=tmp_path / "cache", top_k=2)
    first = beir.evaluate_dataset(encode, folder, **kw)
    second = beir.evaluate_dataset(encode, folder, **kw)
    assert not first["cached"] and second["cached"]
    assert [c[1] for c in calls] == ["p: ", "", ""]  # corpus once, queries twice
    assert first["metrics"] == second["metrics"]
    beir.evaluate_dataset(encode, folder, **(kw | {"passage_prefix": "other: "}))  # new key -> encodes
    assert calls[-2][1] == "other: "


def test_eval_equals_sentence_transformers_and_pytrec_eval(minilm_dir, tmp_path, capsys):
    import pytrec_eval
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "res.json"
    argv = ["eval", "--model", str(minilm_dir), "--beir", str(FIXTURE), "--query-prefix", "",
            "--passage-prefix", "", "--max-length", "256", "--batch-size", "32",
            "--cache-dir", str(tmp_path / "cache"), "--output", str(out)]
    assert cli.main(argv) == 0
    ours = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "nDCG@10" in printed and "average" in printed

    data = beir.load_beir(FIXTURE)
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    st.max_seq_length = 256
    d = st.encode(data.doc_texts, normalize_embeddings=True)
    q = st.encode(data.query_texts, normalize_embeddings=True)
    s = q @ d.T
    run = {qid: {did: float(x) for did, x in zip(data.doc_ids, row)} for qid, row in zip(data.query_ids, s)}
    ev = pytrec_eval.RelevanceEvaluator(data.qrels, {"ndcg_cut.10", "recall.100"})
    ref = ev.evaluate(run)
    ref_ndcg = np.mean([m["ndcg_cut_10"] for m in ref.values()])
    got = ours["datasets"]["debian_beir"]["metrics"]
    assert got["nDCG@10"] == pytest.approx(ref_ndcg, abs=1e-4)
    assert got["Recall@100"] == pytest.approx(np.mean([m["recall_100"] for m in ref.values()]), abs=1e-4)
    assert ours["average"]["nDCG@10"] == got["nDCG@10"]
    assert 0.3 < got["nDCG@10"] < 1.0  # a real model finds most own descriptions

    t0 = time.perf_counter()
    assert cli.main(argv) == 0  # second run: corpus from the cache
    assert "from cache" in capsys.readouterr().out
    assert json.loads(out.read_text())["average"] == ours["average"]
    print(f"cached re-run {time.perf_counter() - t0:.1f}s")


def _no_model_load(monkeypatch):
    """Loading the model means the bad input was not checked up front: fail the test there."""
    from e5jax.model.encoder import Encoder

    def refuse(cls, *args, **kwargs):
        pytest.fail("the model loaded before the bad input was refused")

    monkeypatch.setattr(Encoder, "from_pretrained", classmethod(refuse))


@pytest.mark.parametrize("extra,flag,match", [
    (["--output", "adir"], "--output", "is a folder"),
    (["--output", "afile/res.json"], "--output", "is a file, not a folder"),
    (["--output", "res.json", "--cache-dir", "afile"], "--cache-dir", "is a file, not a folder"),
    (["--output", "res.json", "--cache-dir", "afile/cache"], "--cache-dir", "is a file, not a folder"),
])
def test_eval_output_and_cache_dir_are_checked_before_the_evaluation(tmp_path, capsys, monkeypatch, extra, flag,
                                                                     match):
    _no_model_load(monkeypatch)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("keep me\n")
    extra = [x if x.startswith("--") else str(tmp_path / x) for x in extra]
    rc = cli.main(["eval", "--model", str(tmp_path), "--beir", str(FIXTURE)] + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and flag in err[0] and match in err[0]
    assert (tmp_path / "afile").read_text() == "keep me\n" and not any((tmp_path / "adir").iterdir())
    assert not (tmp_path / "res.json").exists()


def test_cache_dir_that_is_a_file_fails_before_encoding(tmp_path):
    folder = write(tmp_path / "ds", GOOD_C, GOOD_Q, GOOD_R)
    (tmp_path / "afile").write_text("keep me\n")
    calls = []

    def encode(texts, prefix, *, max_length, batch_size):
        calls.append(prefix)
        return np.eye(len(texts), 4, dtype=np.float32)

    with pytest.raises(E5Error, match=r"^--cache-dir .*afile is a file, not a folder$"):
        beir.evaluate_dataset(encode, folder, model_name="m", cache_dir=tmp_path / "afile")
    assert calls == [] and (tmp_path / "afile").read_text() == "keep me\n"
