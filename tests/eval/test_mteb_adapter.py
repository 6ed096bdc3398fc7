"""The mteb adapter: E5's prompt rule, and mteb.evaluate offline on local tasks."""

import pathlib

import numpy as np
import pytest

from e5jax.eval import beir, sts
from e5jax.eval.mteb_adapter import MtebEncoder, e5_prefix

FIX = pathlib.Path(__file__).parent / "fixtures"


def test_prompt_rule():
    assert e5_prefix("document") == "passage: "
    assert e5_prefix("query") == "query: "
    assert e5_prefix(None) == "query: "  # symmetric tasks (STS, classification...)
    assert e5_prefix("document", passage_prefix="") == ""


import mteb  # noqa: E402  (a test extra: the adapter is tested against the real package)
from datasets import Dataset  # noqa: E402  (installed with mteb)
from mteb.abstasks.retrieval import AbsTaskRetrieval  # noqa: E402
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData  # noqa: E402
from mteb.abstasks.sts import AbsTaskSTS  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from mteb.types import PromptType  # noqa: E402

COMMON = dict(
    reference="https://github.com/embeddings-benchmark/mteb", dataset={"path": "local", "revision": "local"},
    category="t2t", eval_splits=["test"], eval_langs=["eng-Latn"], date=("2023-01-01", "2023-06-01"),
    dialect=["Written"], domains=["Programming"], task_subtypes=[], license="not specified",
    annotations_creators="derived", modalities=["text"], sample_creation="found", bibtex_citation="",
)


class DebianRetrieval(AbsTaskRetrieval):
    """The BEIR fixture as an mteb task, from local files only."""

    metadata = TaskMetadata(type="Retrieval", name="E5jaxDebianRetrieval", main_score="ndcg_at_10",
                            description="Debian short descriptions -> long descriptions.", **COMMON)

    def load_data(self, num_proc=None, **kwargs):
        data = beir.load_beir(FIX / "debian_beir")
        corpus = [{"id": i, "title": "", "text": t} for i, t in zip(data.doc_ids, data.doc_texts)]
        queries = [{"id": i, "text": t} for i, t in zip(data.query_ids, data.query_texts)]
        split = RetrievalSplitData(queries=Dataset.from_list(queries), corpus=Dataset.from_list(corpus),
                                   relevant_docs=data.qrels, top_ranked=None)
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


class PairsSTS(AbsTaskSTS):
    metadata = TaskMetadata(type="STS", name="E5jaxDebianSTS", main_score="cosine_spearman",
                            description="Hand-graded pairs of Debian descriptions.", **COMMON)
    min_score, max_score = 0, 5

    def load_data(self, num_proc=None, **kwargs):
        s1, s2, gold = sts.read_pairs(FIX / "sts_pairs.tsv")
        self.dataset = {"test": Dataset.from_dict({"sentence1": s1, "sentence2": s2, "score": gold.tolist()})}
        self.data_loaded = True


class HashEncoder:
    """Stand-in for e5jax's Encoder: deterministic random unit vectors per text, records prefixes."""

    name = "/models/hash"

    def __init__(self):
        self.calls = []

    def encode(self, texts, prefix="", *, max_length=512, batch_size=64):
        self.calls.append((prefix, len(texts)))
        # Prefix-independent vectors so our own evaluation can reproduce them.
        rows = [np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(16) for t in texts]
        emb = np.asarray(rows, np.float32)
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_retrieval_prompts_and_scores_through_mteb():
    enc = HashEncoder()
    res = mteb.evaluate(MtebEncoder(enc), DebianRetrieval(), cache=None, show_progress_bar=False)
    prefixes = {p for p, _ in enc.calls}
    assert prefixes == {"query: ", "passage: "}
    assert sum(n for p, n in enc.calls if p == "passage: ") == 160
    score = res.task_results[0].scores["test"][0]["ndcg_at_10"]
    # Same vectors through e5jax's own evaluation: same nDCG@10 (mteb rounds to 5 places).
    ours = beir.evaluate_dataset(enc.encode, FIX / "debian_beir", model_name="hash")
    assert score == pytest.approx(ours["metrics"]["nDCG@10"], abs=1e-5)


def test_sts_symmetric_prompt_and_real_model(minilm_dir):
    from e5jax.model.encoder import Encoder

    enc = Encoder.from_pretrained(minilm_dir)
    seen = []

    class Spy:
        name = enc.name

        def encode(self, texts, prefix="", **kw):
            seen.append(prefix)
            return enc.encode(texts, prefix, **kw)

    res = mteb.evaluate(MtebEncoder(Spy(), query_prefix=""), PairsSTS(), cache=None, show_progress_bar=False)
    assert set(seen) == {""}  # STS: the query prefix on both sides (set to "" for MiniLM)
    got = res.task_results[0].scores["test"][0]["cosine_spearman"]
    ref = sts.evaluate_sts(enc.encode, FIX / "sts_pairs.tsv")["spearman"]
    assert got == pytest.approx(ref, abs=1e-4)


def test_prompt_type_enum_values():
    assert e5_prefix(PromptType.document) == "passage: " and e5_prefix(PromptType.query) == "query: "
