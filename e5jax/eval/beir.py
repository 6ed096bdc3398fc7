"""BEIR-format retrieval evaluation: load, encode (cached), retrieve, score.

Layout of one dataset folder (as BEIR ships them):

    corpus.jsonl        {"_id", "title", "text"} per line
    queries.jsonl       {"_id", "text"} per line
    qrels/<split>.tsv   header "query-id corpus-id score", then one judgment a line

Documents are encoded as passage_prefix + (title + " " + text).strip() — E5's
and BEIR's join — and queries as query_prefix + text. Only queries that have
qrels are evaluated (BEIR does the same). Retrieval is exact top-1000 through
`e5jax.retrieval`; the metrics follow trec_eval (`e5jax.eval.metrics`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Callable, Sequence

import numpy as np

from e5jax.errors import E5Error
from e5jax.eval import metrics
from e5jax.paths import check_folder, local

TOP_K = 1000
EncodeFn = Callable[..., np.ndarray]  # Encoder.encode(texts, prefix, *, max_length, batch_size)


@dataclasses.dataclass(frozen=True)
class BeirData:
    """One dataset: corpus ids and texts in file order, queries with qrels, qrels."""

    name: str
    doc_ids: list[str]
    doc_texts: list[str]  # title and text joined, without prefix
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]


def _read_jsonl(path: pathlib.Path, fields: Sequence[str]) -> list[dict]:
    if not path.is_file():
        raise E5Error(f"missing {path.name} in {path.parent} (a BEIR dataset folder needs it)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise E5Error(f"{path}:{n}: not valid JSON ({e.msg}); fix or remove that line") from None
            missing = [k for k in fields if k not in row]
            if not isinstance(row, dict) or missing:
                raise E5Error(f"{path}:{n}: missing field(s) {missing or fields}; each line needs {list(fields)}")
            rows.append(row)
    return rows


def read_qrels(path: pathlib.Path) -> dict[str, dict[str, int]]:
    """qrels/<split>.tsv -> {qid: {docid: grade}}; the header line is optional."""
    if not path.is_file():
        raise E5Error(f"missing qrels file {path} (choose an existing split with --split)")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or (n == 1 and row[0] == "query-id"):
                continue
            if len(row) < 3:
                raise E5Error(f"{path}:{n}: expected 'query-id<TAB>corpus-id<TAB>score', got {row!r}")
            try:
                grade = int(float(row[2]))
            except ValueError:
                raise E5Error(f"{path}:{n}: score {row[2]!r} is not a number") from None
            qrels.setdefault(row[0], {})[row[1]] = grade
    return qrels


def doc_text(title: str | None, text: str | None) -> str:
    """BEIR / E5 join: title and text with a space (empty title -> text). The one
    join mining and fine-tuning records use too, so a document reads the same everywhere."""
    from e5jax.data.finetune.records import join_title_text

    return join_title_text(title, text)


def load_beir(folder: str | os.PathLike, split: str = "test") -> BeirData:
    """Read one BEIR-format folder; clear one-line errors for missing or broken files."""
    root = local(folder, "--beir")
    if not root.is_dir():
        raise E5Error(f"BEIR dataset folder {root} does not exist")
    corpus = _read_jsonl(root / "corpus.jsonl", ("_id", "text"))
    queries = {str(r["_id"]): r["text"] for r in _read_jsonl(root / "queries.jsonl", ("_id", "text"))}
    qrels = read_qrels(root / "qrels" / f"{split}.tsv")
    unknown = [q for q in qrels if q not in queries]
    if unknown:
        raise E5Error(f"{len(unknown)} query ids in qrels/{split}.tsv are not in queries.jsonl (e.g. {unknown[0]!r})")
    query_ids = [q for q in queries if q in qrels]
    return BeirData(
        name=root.resolve().name,
        doc_ids=[str(r["_id"]) for r in corpus],
        doc_texts=[doc_text(r.get("title"), r["text"]) for r in corpus],
        query_ids=query_ids,
        query_texts=[queries[q] for q in query_ids],
        qrels=qrels,
    )


def weights_fingerprint(model_dir: str | os.PathLike) -> list:
    """(file, size, mtime) of the model's weight files: changes when weights change."""
    root = local(model_dir, "--model", "a Hugging Face model folder is read with local-file APIs")
    files = sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin")) if root.is_dir() else []
    return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def cache_key(model_name: str, corpus_path: pathlib.Path, prefix: str, max_length: int) -> str:
    """Hash of everything that changes the corpus embeddings."""
    st = corpus_path.stat()
    parts = {
        "model": model_name,
        "weights": weights_fingerprint(model_name),
        "corpus": [str(corpus_path.resolve()), st.st_size, st.st_mtime_ns],
        "prefix": prefix,
        "max_length": max_length,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def check_cache_dir(cache_dir: str | os.PathLike | None) -> None:
    """A --cache-dir that cannot be a folder fails here, before a corpus is encoded."""
    if cache_dir is not None:
        check_folder(cache_dir, "--cache-dir")


def encode_corpus(
    encode: EncodeFn,
    data: BeirData,
    corpus_path: pathlib.Path,
    *,
    model_name: str,
    prefix: str,
    max_length: int,
    batch_size: int,
    cache_dir: str | os.PathLike | None,
) -> tuple[np.ndarray, bool]:
    """Corpus embeddings, from the disk cache when present: (embeddings, was_cached)."""
    path = None
    if cache_dir is not None:
        path = local(cache_dir, "--cache-dir", "embeddings are cached with np.save") / f"{data.name}-{cache_key(model_name, corpus_path, prefix, max_length)}.npy"
        if path.is_file():
            emb = np.load(path)
            if emb.shape[0] == len(data.doc_ids):
                return emb, True
    emb = encode(data.doc_texts, prefix, max_length=max_length, batch_size=batch_size)
    emb = np.asarray(emb, dtype=np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, emb)
        os.replace(tmp, path)  # atomic: a killed run never leaves a half-written cache
    return emb, False


def evaluate_dataset(
    encode: EncodeFn,
    folder: str | os.PathLike,
    *,
    model_name: str,
    split: str = "test",
    query_prefix: str = "query: ",
    passage_prefix: str = "passage: ",
    max_length: int = 512,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    top_k: int = TOP_K,
    mesh=None,
    corpus_embeddings: str | os.PathLike | None = None,
) -> dict:
    """Encode, retrieve top-k and score one dataset.

    `corpus_embeddings`: an `e5jax embed --output-dir` folder of this corpus,
    used instead of encoding it (its prefix and max length are checked here;
    the caller checks its model, `e5jax.embed.load_embedded(model=...)`).
    Returns {"name", "n_docs", "n_queries", "cached", "metrics": {name: mean}}
    with the per-query values under "per_query".
    """
    from e5jax import retrieval  # JAX is imported only when retrieving

    data = load_beir(folder, split)
    if not data.doc_ids:
        raise E5Error(f"{folder}/corpus.jsonl is empty")
    check_cache_dir(cache_dir)
    corpus_path = local(folder, "--beir") / "corpus.jsonl"
    dropped = 0
    if corpus_embeddings is not None:
        from e5jax import embed

        flag = "--corpus-embeddings"
        emb = embed.load_embedded(corpus_embeddings, flag=flag, prefix=passage_prefix, max_length=max_length)
        docs, kept = embed.align(emb, data.doc_ids, flag=flag, path=corpus_embeddings)
        # Documents `e5jax embed` listed as bad lines (e.g. empty) have no row: left out, and counted.
        dropped = len(data.doc_ids) - len(kept)
        if dropped:
            data = dataclasses.replace(data, doc_ids=[data.doc_ids[i] for i in kept],
                                       doc_texts=[data.doc_texts[i] for i in kept])
        cached = False
    else:
        docs, cached = encode_corpus(
            encode, data, corpus_path, model_name=model_name, prefix=passage_prefix,
            max_length=max_length, batch_size=batch_size, cache_dir=cache_dir,
        )
    queries = encode(data.query_texts, query_prefix, max_length=max_length, batch_size=batch_size)
    scores, ids = retrieval.search(queries, docs, min(top_k, len(data.doc_ids)), mesh=mesh)
    run = metrics.run_from_topk(data.query_ids, data.doc_ids, scores, ids)
    per_q = metrics.per_query(run, data.qrels)
    return {
        "name": data.name,
        "n_docs": len(data.doc_ids),
        "n_queries": len(per_q),
        "cached": cached,
        "docs_without_embedding": dropped,
        "metrics": metrics.mean_metrics(per_q),
        "per_query": per_q,
    }


def average(results: Sequence[dict]) -> dict[str, float]:
    """Unweighted mean over datasets (how BEIR averages are reported)."""
    names = metrics.metric_names()
    return {n: float(np.mean([r["metrics"][n] for r in results])) for n in names} if results else {}


def format_table(results: Sequence[dict], avg: dict[str, float]) -> str:
    """A fixed-width table: one row per dataset plus the average, values x100."""
    names = metrics.metric_names()
    width = max([len("average")] + [len(r["name"]) for r in results])
    head = f"{'dataset':<{width}} " + " ".join(f"{n:>10}" for n in names)
    rows = [head, "-" * len(head)]
    for label, m in [(r["name"], r["metrics"]) for r in results] + [("average", avg)]:
        rows.append(f"{label:<{width}} " + " ".join(f"{100 * m[n]:>10.2f}" for n in names))
    return "\n".join(rows)
