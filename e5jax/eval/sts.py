"""STS evaluation: Pearson and Spearman correlation of cosine with gold scores.

The pairs file is tab-separated: sentence1, sentence2, score (extra columns
ignored); a first line whose score column is not a number is a header.
Both sentences get the same prefix (E5 treats STS as a symmetric task:
"query: " on both sides).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

from e5jax.errors import E5Error
from e5jax.paths import local


def read_pairs(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """(sentences1, sentences2, gold scores float64) from a TSV file."""
    p = local(path, "--pairs")
    if not p.is_file():
        raise E5Error(f"pairs file {p} does not exist")
    s1, s2, gold = [], [], []
    with open(p, encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) < 3:
                raise E5Error(f"{p}:{n}: expected 'sentence1<TAB>sentence2<TAB>score', got {len(row)} column(s)")
            try:
                score = float(row[2])
            except ValueError:
                if n == 1:  # header
                    continue
                raise E5Error(f"{p}:{n}: score {row[2]!r} is not a number") from None
            s1.append(row[0])
            s2.append(row[1])
            gold.append(score)
    if len(gold) < 2:
        raise E5Error(f"{p} has {len(gold)} pair(s); correlations need at least 2")
    return s1, s2, np.asarray(gold, np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity in float64 (embeddings need not be normalised)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(denom, 1e-12)


def correlations(sims: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """{"pearson", "spearman"} of predicted similarities against gold scores."""
    return {
        "pearson": float(stats.pearsonr(sims, gold).statistic),
        "spearman": float(stats.spearmanr(sims, gold).statistic),
    }


def evaluate_sts(
    encode: Callable[..., np.ndarray],
    path: str | os.PathLike,
    *,
    prefix: str = "",
    max_length: int = 512,
    batch_size: int = 64,
) -> dict[str, float]:
    """Encode both sides once (unique sentences), then correlate cosine with gold."""
    s1, s2, gold = read_pairs(path)
    uniq: Sequence[str] = list(dict.fromkeys(s1 + s2))
    emb = encode(uniq, prefix, max_length=max_length, batch_size=batch_size)
    row = {s: i for i, s in enumerate(uniq)}
    sims = cosine(emb[[row[s] for s in s1]], emb[[row[s] for s in s2]])
    return correlations(sims, gold) | {"n_pairs": len(gold)}
