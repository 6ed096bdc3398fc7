"""Real-text fine-tuning data for end-to-end tests (Debian package descriptions).

query = a package's short description, positive = its long description.
About 10% of the packages (chosen by a hash of the package name, so the split
never depends on file order) are held out as a BEIR-format retrieval set whose
corpus holds *every* long description: the held-out queries compete against
all the near-duplicate families (-dev / -doc / -data variants, bindings of one
library for several languages...).

Hard negatives for the training queries are mined with BM25 (`e5jax.mine`)
from the training corpus only, so no held-out passage is seen in training.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

from tests.fixtures.real_text import debian_records

SOURCE = "debian"


def is_heldout(package: str, fraction: float = 0.1) -> bool:
    h = int.from_bytes(hashlib.blake2b(package.encode("utf-8"), digest_size=8).digest(), "little")
    return h / 2.0**64 < fraction


def split_records(fraction: float = 0.1) -> tuple[list[dict], list[dict]]:
    """(train, heldout) Debian records."""
    train, held = [], []
    for r in debian_records():
        (held if is_heldout(r["package"], fraction) else train).append(r)
    return train, held


def write_beir(folder: pathlib.Path, heldout: list[dict]) -> pathlib.Path:
    """corpus.jsonl (all long descriptions), queries.jsonl (held-out shorts), qrels/test.tsv."""
    folder = pathlib.Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        for r in debian_records():
            f.write(json.dumps({"_id": r["package"], "title": "", "text": r["long"]}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as f:
        for r in heldout:
            f.write(json.dumps({"_id": "q-" + r["package"], "text": r["short"]}) + "\n")
    with open(folder / "qrels" / "test.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for r in heldout:
            f.write(f"q-{r['package']}\t{r['package']}\t1\n")
    return folder


def mine_train_records(train: list[dict], *, k: int = 3, window: tuple[int, int] = (0, 10), seed: int = 0):
    """Fine-tuning records for the training packages, BM25 negatives from the training corpus."""
    from e5jax import mine
    from e5jax.data.finetune.records import Stats

    corpus = {r["package"]: r["long"] for r in train}
    queries = {r["package"]: r["short"] for r in train}
    qrels = {r["package"]: [r["package"]] for r in train}
    stats = Stats()
    recs = mine.mine(queries, corpus, qrels, method="bm25", top_n=window[1], window=window, k=k, seed=seed,
                     source=SOURCE, stats=stats)
    return recs, stats


def build_finetune_dataset(root: pathlib.Path, *, k: int = 3, window: tuple[int, int] = (0, 10),
                           name: str = "debian_ft") -> dict:
    """Mine, write JSONL, build the TFDS fine-tuning dataset and the BEIR eval folder under `root`.

    Returns {"data_dir", "name", "beir", "records", "stats"}.
    """
    from e5jax.data.ccpairs.builder import build_dataset
    from e5jax.data.finetune.records import write_records

    root = pathlib.Path(root)
    train, held = split_records()
    recs, stats = mine_train_records(train, k=k, window=window)
    write_records(recs, root / "records.jsonl")
    build_dataset([root / "records.jsonl"], data_dir=root / "tfds", name=name, kind="finetune",
                  heldout_fraction=0.0)
    beir = write_beir(root / "beir", held)
    return {"data_dir": root / "tfds", "name": name, "beir": beir, "records": recs, "stats": stats}


def build_pairs_dataset(root: pathlib.Path, *, name: str = "debian_pt") -> tuple[pathlib.Path, str]:
    """The training packages as (short, long) pairs for pre-training (no held-out package in it)."""
    from e5jax.data.ccpairs.builder import build_dataset

    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    train, _ = split_records()
    with open(root / "pairs.jsonl", "w", encoding="utf-8") as f:
        for r in train:
            f.write(json.dumps({"query": r["short"], "passage": r["long"], "source": SOURCE}) + "\n")
    build_dataset([root / "pairs.jsonl"], data_dir=root / "tfds", name=name, heldout_fraction=0.0)
    return root / "tfds", name


def ndcg_at_10(workdir, beir_folder, *, max_length: int = 64) -> float:
    """nDCG@10 on the BEIR folder of the newest checkpoint in a training workdir."""
    from e5jax.eval.beir import evaluate_dataset
    from e5jax.model.encoder import Encoder
    from e5jax.train.state import load_trained

    model, tokenizer, _ = load_trained(str(workdir))
    enc = Encoder(model, tokenizer, name=str(workdir))
    res = evaluate_dataset(enc.encode, beir_folder, model_name=str(workdir), max_length=max_length,
                           batch_size=128, top_k=100)
    return float(res["metrics"]["nDCG@10"])
