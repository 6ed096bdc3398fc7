"""Pure functions that turn pair-shard lines into dataset examples.

Shared by the local TFDS generator and the Apache Beam path, so that both
builds keep and drop exactly the same records. No TFDS, no JAX here.

Two record kinds:
- ``pairs``    ``{"query", "passage", "source", "id"?, ...}`` (pre-training)
- ``finetune`` ``{"query", "positive", "negatives": [k], "teacher_scores":
  [k+1]?, "source", "id"?}`` (fine-tuning; missing scores are stored empty)

Counting: every line ends in exactly one outcome, reported to a `count(name)`
callback as ``"<split>|<source>|<outcome>"`` where outcome is ``kept`` or a
drop reason. Lines that never become a pair (broken JSON, wrong fields,
undecodable bytes, a truncated compressed file) belong to no split and are
counted as ``"-|-|<reason>"`` — only by the ``train`` pass, because every
split pass reads every line.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from etils import epath

from e5jax.data import compressed
from e5jax.errors import E5Error

KINDS = ("pairs", "finetune")
SPLITS = ("train", "heldout")
# Shard names a directory may hold; other files (summaries, READMEs) are skipped.
SHARD_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".ndjson", ".ndjson.gz", ".ndjson.zst")
DEFAULT_MAX_CHARS = 20_000  # ~4k tokens: well past any max length the recipe uses
NO_SPLIT = "-"


# ------------------------------------------------------------------ inputs


def expand_inputs(paths: Sequence[str | os.PathLike]) -> list[epath.Path]:
    """Files as given plus shard files found (recursively) under directories, sorted.

    Local paths or URLs (gs://...): epath, since pathlib folds `gs://b` into `gs:/b`.
    """
    found: list[epath.Path] = []
    for p in map(epath.Path, paths):
        if p.is_dir():
            found += _shards_under(p)
        elif p.is_file():
            found.append(p)
        else:
            raise E5Error(f"input not found: {p}; pass pair shard files or folders holding *.jsonl[.gz|.zst]")
    if not found:
        raise E5Error(f"no pair shards (*{', *'.join(SHARD_SUFFIXES)}) under {', '.join(map(str, paths))}")
    return sorted(set(found), key=str)


def _shards_under(folder: epath.Path) -> list[epath.Path]:
    # By hand: epath refuses `rglob` on object stores, and its `walk` drops the
    # gs:// of the folders it yields.
    found = []
    for child in folder.iterdir():
        if child.is_dir():
            found += _shards_under(child)
        elif child.name.endswith(SHARD_SUFFIXES):
            found.append(child)
    return found


def read_lines(path: str | epath.Path, count: Callable[[str], None]) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of a possibly compressed file (local or gs://), in constant memory.

    A truncated or corrupt compressed stream ends the file early with one
    ``truncated_file`` count instead of an exception: the lines already read
    are kept. (`compressed.TruncatedInput` is an EOFError, `CorruptInput` an
    OSError, and bz2 raises a plain OSError on damaged data.)
    """
    try:
        with compressed.open_binary(path) as f:
            yield from enumerate(f)
    except (EOFError, OSError):
        count(f"{NO_SPLIT}|{NO_SPLIT}|truncated_file")


# ------------------------------------------------------------------ one record


def pair_hash(*texts: str) -> str:
    """Stable 16-hex-digit hash of a record's texts (the id and the split key)."""
    h = hashlib.blake2b(digest_size=8)
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x1f")  # separator: ("ab", "c") and ("a", "bc") must differ
    return h.hexdigest()


def split_of(key: str, heldout_fraction: float) -> str:
    """Deterministic split from a record hash: the same pair always lands in the same split."""
    return "heldout" if int(key, 16) / 2.0**64 < heldout_fraction else "train"


def _clean_source(value) -> str:
    s = value if isinstance(value, str) and value.strip() else "unknown"
    return s.strip().replace("|", "/")  # '|' separates count-name fields


def parse_record(line: bytes, kind: str, max_chars: int) -> tuple[dict | None, str, str, str]:
    """One line -> (example or None, split key, source, outcome).

    ``outcome`` is ``kept`` or the drop reason (``malformed``, ``empty``,
    ``oversized``). The split key is ``""`` when the line is malformed.
    """
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, "", NO_SPLIT, "malformed"
    if not isinstance(obj, dict):
        return None, "", NO_SPLIT, "malformed"
    pos_field = "passage" if kind == "pairs" else "positive"
    query, positive = obj.get("query"), obj.get(pos_field)
    if not isinstance(query, str) or not isinstance(positive, str):
        return None, "", NO_SPLIT, "malformed"
    source = _clean_source(obj.get("source"))
    texts = [query, positive]
    if kind == "finetune":
        negatives = obj.get("negatives", [])
        scores = obj.get("teacher_scores")
        if not isinstance(negatives, list) or not all(isinstance(n, str) for n in negatives):
            return None, "", NO_SPLIT, "malformed"
        if scores is not None and (
            not isinstance(scores, list)
            or len(scores) != len(negatives) + 1
            or not all(s is None or (isinstance(s, (int, float)) and not isinstance(s, bool)) for s in scores)
        ):
            return None, "", NO_SPLIT, "malformed"
        texts += negatives
    key = pair_hash(query, positive)
    if any(not t.strip() for t in texts):
        return None, key, source, "empty"
    if any(len(t) > max_chars for t in texts):
        return None, key, source, "oversized"
    rid = obj.get("id")
    example = {"query": query, "source": source, "id": rid if isinstance(rid, str) and rid else key}
    if kind == "pairs":
        example["passage"] = positive
    else:
        example["positive"] = positive
        example["negatives"] = negatives
        # Empty = no teacher for this record; a null inside the list becomes NaN.
        example["teacher_scores"] = np.asarray(
            [math.nan if s is None else float(s) for s in (scores or [])], np.float32
        )
    return example, key, source, "kept"


def examples_from_file(
    path: str | epath.Path,
    file_index: int,
    *,
    kind: str,
    split: str,
    heldout_fraction: float,
    max_chars: int,
    count: Callable[[str], None],
) -> Iterator[tuple[str, dict]]:
    """(TFDS key, example) for the records of `path` that belong to `split`.

    Keys are ``"<file index>:<line>"``: unique even when the input repeats a
    pair, and identical between the local and the Beam build.
    """
    for line_no, line in read_lines(path, count if split == "train" else lambda _: None):
        if not line.strip():
            continue  # blank lines (e.g. a trailing newline) are not records
        example, key, source, outcome = parse_record(line, kind, max_chars)
        if not key:  # never became a pair: belongs to no split
            if split == "train":
                count(f"{NO_SPLIT}|{NO_SPLIT}|{outcome}")
            continue
        if split_of(key, heldout_fraction) != split:
            continue
        count(f"{split}|{source}|{outcome}")
        if example is not None:
            yield f"{file_index}:{line_no}", example


# ------------------------------------------------------------------ summary


def summarize(counts: dict[str, int]) -> dict:
    """Flat ``split|source|outcome`` counts -> nested, JSON-ready summary."""
    out: dict = {"splits": {}, "unassigned": {}}
    for name, n in sorted(counts.items()):
        split, source, outcome = name.split("|", 2)
        if split == NO_SPLIT:
            out["unassigned"][outcome] = out["unassigned"].get(outcome, 0) + n
            continue
        s = out["splits"].setdefault(split, {"kept": 0, "dropped": {}, "sources": {}})
        src = s["sources"].setdefault(source, {"kept": 0, "dropped": {}})
        if outcome == "kept":
            s["kept"] += n
            src["kept"] += n
        else:
            s["dropped"][outcome] = s["dropped"].get(outcome, 0) + n
            src["dropped"][outcome] = src["dropped"].get(outcome, 0) + n
    return out


def format_summary(name: str, summary: dict) -> str:
    """A few readable lines: kept / dropped per reason, per split and per source."""
    lines = [f"dataset {name}: {summary.get('path', '')}"]
    for split, s in sorted(summary["splits"].items()):
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(s["dropped"].items())) or "none"
        lines.append(f"  {split}: kept {s['kept']}, dropped {dropped}")
        for source, c in sorted(s["sources"].items()):
            d = ", ".join(f"{k}={v}" for k, v in sorted(c["dropped"].items())) or "none"
            lines.append(f"    {source}: kept {c['kept']}, dropped {d}")
    skipped = ", ".join(f"{k}={v}" for k, v in sorted(summary["unassigned"].items())) or "none"
    lines.append(f"  unreadable lines/files: {skipped}")
    return "\n".join(lines)
