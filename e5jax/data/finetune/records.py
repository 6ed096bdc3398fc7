"""Fine-tuning records: the one JSONL layout every converter and the miner write.

One record per line::

    {"query": str, "positive": str, "negatives": [str, ...],
     "teacher_scores": [float, ...],   # optional, len = 1 + len(negatives)
     "source": str, "id": str}

The TFDS fine-tuning builder reads these files. Texts are raw: the "query: " /
"passage: " prefixes are added later by the input pipeline, never stored.

Everything random here is seeded *per record* (`record_rng(seed, key)`), so a
record's negatives depend only on (seed, record id) and not on file order or
on how many records came before it.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any, NotRequired, TypedDict

import numpy as np
from etils import epath

from e5jax.data import compressed
from e5jax.errors import E5Error
from e5jax.paths import check_file


class Record(TypedDict):
    """One fine-tuning example (see the module docstring)."""

    query: str
    positive: str
    negatives: list[str]
    teacher_scores: NotRequired[list[float]]
    source: str
    id: str


@dataclasses.dataclass
class Stats:
    """What a conversion did: counters plus the first few malformed lines.

    Converters fill it as they go; the CLI prints `summary()`. Counter names
    used throughout: records, no_positive, malformed, duplicate_negatives,
    short_negatives (fewer than k negatives were available).
    """

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    malformed_examples: list[str] = dataclasses.field(default_factory=list)

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def malformed(self, where: str, why: str) -> None:
        """Count one skipped input item; keep the first 5 locations for the summary."""
        self.counts["malformed"] += 1
        if len(self.malformed_examples) < 5:
            self.malformed_examples.append(f"{where}: {why}")

    def __getitem__(self, name: str) -> int:
        return self.counts[name]

    def nonzero(self) -> str:
        """The counters that moved, on one line ("" when none did): for one-line errors."""
        return ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()) if v)

    def summary(self) -> str:
        keys = ["records", "no_positive", "malformed", "duplicate_negatives", "short_negatives"]
        keys += sorted(k for k in self.counts if k not in keys)
        lines = [", ".join(f"{k}={self.counts[k]}" for k in keys)]
        lines += [f"  malformed: {m}" for m in self.malformed_examples]
        return "\n".join(lines)


def open_text(path: str | os.PathLike) -> IO[str]:
    """Open a text file (local or gs://) for reading, decompressing .gz / .bz2 /
    .xz / .zst by suffix; a cut compressed file raises a one-line E5Error."""
    if not epath.Path(path).exists():
        raise E5Error(f"input file not found: {path}")
    return compressed.open_text(path)


def join_title_text(title: str | None, text: str | None) -> str:
    """E5's passage text: title and text joined by a space (either may be empty)."""
    return " ".join(p.strip() for p in (title or "", text or "") if p and p.strip())


def record_rng(seed: int, key: str) -> np.random.Generator:
    """A generator that depends only on (seed, key): stable across runs and
    platforms (blake2b, not Python's salted `hash`) and independent of order."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int.from_bytes(digest, "little")])


def sample_in_order(items: Sequence[Any], k: int, rng: np.random.Generator) -> list[Any]:
    """k items drawn without replacement, returned in their original order
    (so a ranked list stays ranked); all of them if there are at most k."""
    if k >= len(items):
        return list(items)
    picked = np.sort(rng.choice(len(items), size=k, replace=False))
    return [items[i] for i in picked]


def pick_negatives(
    tiers: Sequence[Sequence[str]],
    exclude: Iterable[str],
    k: int | None,
    rng: np.random.Generator,
    stats: Stats | None = None,
) -> list[str]:
    """Choose up to k distinct negative texts, preferring earlier tiers.

    `tiers` are candidate lists in priority order (e.g. DPR's hard negatives,
    then its other negatives). Texts equal to one in `exclude` (the
    positives) or repeated are dropped — a positive listed as a negative would
    teach the model the opposite of the truth — and counted as
    `duplicate_negatives`. Then tier 1 is used first; a tier with more
    candidates than still needed is sampled with `rng`. k=None keeps all.
    """
    seen = {t.strip() for t in exclude}
    deduped: list[list[str]] = []
    dropped = 0
    for tier in tiers:
        kept = []
        for text in tier:
            key = text.strip()
            if not key or key in seen:
                dropped += 1
                continue
            seen.add(key)
            kept.append(text)
        deduped.append(kept)
    out: list[str] = []
    for tier in deduped:
        need = len(tier) if k is None else k - len(out)
        if need <= 0:
            break
        out += sample_in_order(tier, need, rng)
    if stats is not None:
        stats.add("duplicate_negatives", dropped)
        if k is not None and len(out) < k:
            stats.add("short_negatives")
    return out


def make_record(
    query: str,
    positive: str,
    negatives: list[str],
    source: str,
    id: str,
    teacher_scores: Sequence[float] | None = None,
) -> Record:
    """Build a record, checking the invariants the builder relies on."""
    if teacher_scores is not None and len(teacher_scores) != 1 + len(negatives):
        raise E5Error(
            f"record {id!r}: teacher_scores has {len(teacher_scores)} values, "
            f"need 1 + {len(negatives)} (positive + negatives)"
        )
    rec: Record = {"query": query, "positive": positive, "negatives": list(negatives), "source": source, "id": str(id)}
    if teacher_scores is not None:
        rec["teacher_scores"] = [float(s) for s in teacher_scores]
    return rec


def write_records(records: Iterable[Record], path: str | os.PathLike, stats: Stats | None = None) -> int:
    """Write records as JSONL (UTF-8, one per line) and return how many.

    Written to a temporary file and renamed at the end, so an interrupted run
    never leaves a truncated file that looks complete; on error the temporary
    is removed and an existing `path` is left as it was.
    """
    path = check_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if stats is not None:
        stats.add("records", n)
    return n


def read_records(path: str | os.PathLike) -> Iterator[Record]:
    """Read a fine-tuning JSONL file, refusing lines that break the layout."""
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                assert isinstance(rec["query"], str) and isinstance(rec["positive"], str)
                assert all(isinstance(n, str) for n in rec["negatives"])
                if "teacher_scores" in rec:
                    assert len(rec["teacher_scores"]) == 1 + len(rec["negatives"])
            except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as e:
                raise E5Error(f"{path}:{lineno}: not a fine-tuning record ({type(e).__name__})") from e
            yield rec
