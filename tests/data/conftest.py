"""Shared fixtures: real Debian pairs as JSONL shards, built TFDS datasets, a real tokenizer."""

from __future__ import annotations

import gzip
import json
import pathlib

import pytest

from tests.fixtures.real_text import debian_records

N_PAIRS = 600  # enough for a few dozen batches and a non-empty held-out split


def pair_lines(start: int = 0, n: int = N_PAIRS, source_of=lambda i: "debian") -> list[str]:
    """Real (short description -> long description) pairs as JSONL lines."""
    recs = debian_records()[start : start + n]
    return [
        json.dumps({"query": r["short"], "passage": r["long"], "source": source_of(i), "meta": {"pkg": r["package"]}})
        for i, r in enumerate(recs)
    ]


def finetune_lines(n: int = 200) -> list[str]:
    """Fine-tuning records: other packages' descriptions as negatives (0-3 of them), scores on odd rows."""
    recs = debian_records()
    out = []
    for i, r in enumerate(recs[:n]):
        negs = [recs[(i * 7 + j + 1000) % len(recs)]["long"] for j in range(i % 4)]
        d = {"query": r["short"], "positive": r["long"], "negatives": negs, "source": "debian"}
        if i % 2:
            d["teacher_scores"] = [5.0] + [float(-j) for j in range(len(negs))]
        out.append(json.dumps(d))
    return out


def write_jsonl(path: pathlib.Path, lines: list[str]) -> pathlib.Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def pair_shards(tmp_path_factory) -> pathlib.Path:
    """A folder of two shards (plain and .gz), two sources, plus a file that is not a shard."""
    d = tmp_path_factory.mktemp("shards")
    lines = pair_lines(source_of=lambda i: "debian_a" if i % 3 else "debian_b")
    write_jsonl(d / "part-0.jsonl", lines[: N_PAIRS // 2])
    write_jsonl(d / "part-1.jsonl.gz", lines[N_PAIRS // 2 :])
    (d / "summary.json").write_text('{"not": "a shard"}')
    return d


@pytest.fixture(scope="session")
def built(tmp_path_factory, pair_shards) -> tuple[pathlib.Path, str]:
    """(data_dir, name) of the pair dataset built locally from `pair_shards`."""
    from e5jax.data.ccpairs.builder import build_dataset

    data_dir = tmp_path_factory.mktemp("tfds")
    build_dataset([pair_shards], data_dir=data_dir, name="debian_pairs", heldout_fraction=0.1)
    return data_dir, "debian_pairs"


@pytest.fixture(scope="session")
def built_finetune(tmp_path_factory) -> tuple[pathlib.Path, str]:
    from e5jax.data.ccpairs.builder import build_dataset

    d = tmp_path_factory.mktemp("ft")
    shard = write_jsonl(d / "ft.jsonl.gz", finetune_lines())
    build_dataset([shard], data_dir=d / "tfds", name="debian_ft", kind="finetune", heldout_fraction=0.1)
    return d / "tfds", "debian_ft"


@pytest.fixture(scope="session")
def tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir))
