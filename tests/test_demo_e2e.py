"""The demo pipeline end to end on a smaller slice: real Wikipedia dump + real
Debian descriptions → harvest → build → pre-train → export → filter → eval."""

import json
import shutil

import numpy as np
import pytest

from e5jax.demo import run_demo
from tests.fixtures.real_text import debian_records


def _translation_en(path, records):
    """Debian's Translation-en format, from the committed real descriptions."""
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            long = r["long"].replace("\n", " ")
            f.write(f"Package: {r['package']}\nDescription-md5: 0\nDescription-en: {r['short']}\n {long}\n\n")


@pytest.mark.slow
def test_demo_end_to_end_small_slice(tmp_path, enwiki_dump, capsys):
    work = tmp_path / "demo"
    (work / "raw").mkdir(parents=True)
    shutil.copy(enwiki_dump, work / "raw" / "enwiki-shortened.xml.bz2")  # what fetch_wikipedia would write
    deb = tmp_path / "Translation-en"
    _translation_en(deb, debian_records()[:400])
    kw = dict(steps=6, batch_size=16, debian_limit=400, wikipedia_limit=200, heldout_fraction=0.15,
              pool_size=100, top_k=2, max_length=32, debian_file=str(deb))
    status = run_demo(work, **kw)
    out = capsys.readouterr().out

    results = json.loads((work / "results.json").read_text())
    assert list(results) == ["BM25 (bm25s)", "initial all-MiniLM-L6-v2", "e5jax pre-trained"]
    for m in results.values():
        assert 0.0 < m["nDCG@10"] <= 1.0 and 0.0 < m["Recall@10"] <= 1.0
    # the exit status is the command's own verdict on "trained beats initial" (nDCG@10);
    # on this small slice (89 held-out queries, 6 steps) it does not (6, 12 or 20 steps,
    # batch 16 or 32 all end 0.01-0.02 below the initial model), so the verdict is checked
    # for consistency here and the improvement is asserted on what training optimises:
    beats = results["e5jax pre-trained"]["nDCG@10"] > results["initial all-MiniLM-L6-v2"]["nDCG@10"]
    assert status == (0 if beats else 1)
    # the held-out in-batch InfoNCE loss (pairs never trained on, the same batches) of
    # the trained model is below the initial model's (0.358 against 0.375 when written).
    from e5jax.config import replace
    from e5jax.train.loop import train
    from e5jax.train.state import workdir_config

    initial = train(replace(workdir_config(str(work / "train")), **{"train.steps": 0}), str(tmp_path / "initial"),
                    log=lambda s: None)
    rows = [json.loads(x) for x in (work / "train" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if r["split"] == "heldout"][-1]
    assert trained["step"] == 6 and trained["loss"] < initial["heldout_loss"] - 0.01, (trained, initial)
    assert "| model | nDCG@10 | Recall@10 |" in out and "SentenceTransformer(" in out
    assert (work / "training_curve.png").stat().st_size > 10_000

    # held-out pairs were never trained on: no held-out query appears in the training split
    from e5jax.data.ccpairs.builder import load_source

    train_src = load_source(work / "tfds", "demo_pairs", "train")
    train_q = {train_src[i]["query"] for i in range(len(train_src))}
    held = [json.loads(x)["text"] for x in (work / "heldout_beir" / "queries.jsonl").read_text().splitlines()]
    assert held and not {q.encode() for q in held} & {q if isinstance(q, bytes) else q.encode() for q in train_q}

    report = json.loads((work / "tfds" / "demo_pairs_filtered.work" / "report.json").read_text())
    assert 0 < report["kept"] <= report["pairs"] == len(train_src)

    # the export loads in sentence-transformers and agrees with e5jax
    from sentence_transformers import SentenceTransformer

    from e5jax.model.encoder import Encoder

    st = SentenceTransformer(str(work / "export"), device="cpu")
    texts = held[:4]
    np.testing.assert_allclose(st.encode(texts, prompt_name="query"),
                               Encoder.from_pretrained(work / "export").encode(texts, prefix="query: ", max_length=32),
                               atol=1e-5)

    # a second run reuses what it can: no re-harvest, no re-build, training resumes at its end
    status2 = run_demo(work, **kw)
    out2 = capsys.readouterr().out
    assert status2 == status
    assert "resumed from step 6" in out2
    assert json.loads((work / "results.json").read_text()) == results
