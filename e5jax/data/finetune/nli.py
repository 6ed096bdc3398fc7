"""SNLI / MultiNLI JSONL → fine-tuning records (SimCSE's supervised recipe).

Input lines as published (`snli_1.0_train.jsonl`, `multinli_1.0_train.jsonl`)::

    {"gold_label": "entailment", "sentence1": premise, "sentence2": hypothesis,
     "pairID": "3416050480.jpg#4r1e", ...}

Pairs are grouped by premise. Every entailed hypothesis gives one record
(query = premise, positive = that hypothesis); its negatives are the
premise's contradicted hypotheses — the hard negatives E5 fine-tunes on.
Neutral pairs are unused; pairs whose gold label is "-" (no annotator
majority) are skipped and counted as `no_gold_label`. Premises without both
an entailment and a contradiction give no record (`no_positive` /
`no_negative`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator

from tqdm.auto import tqdm

from e5jax.data.finetune.records import Record, Stats, make_record, open_text, pick_negatives, record_rng

SOURCE = "nli"
LABELS = ("entailment", "neutral", "contradiction")


def read_nli(paths: Iterable[str | os.PathLike], stats: Stats) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """{premise: {"entailment": [(pair id, hypothesis)], "contradiction": [...]}}, file order.

    Lines that are not JSON objects with string sentence1/sentence2 and a
    known label are counted as malformed.
    """
    groups: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for path in paths:
        name = os.path.basename(path)
        with open_text(path) as f:
            for lineno, line in enumerate(tqdm(f, desc=name, unit=" pairs", disable=None, leave=False), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    label, premise, hyp = obj["gold_label"], obj["sentence1"].strip(), obj["sentence2"].strip()
                    if not premise or not hyp:
                        raise ValueError("empty sentence")
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
                    stats.malformed(f"{name}:{lineno}", f"not an NLI pair ({type(e).__name__})")
                    continue
                if label == "-":
                    stats.add("no_gold_label")
                    continue
                if label not in LABELS:
                    stats.malformed(f"{name}:{lineno}", f"unknown gold_label {label!r}")
                    continue
                pair_id = str(obj.get("pairID") or f"{name}:{lineno}")
                groups.setdefault(premise, {}).setdefault(label, []).append((pair_id, hyp))
    return groups


def convert_nli(
    groups: dict[str, dict[str, list[tuple[str, str]]]], k: int | None, seed: int, stats: Stats
) -> Iterator[Record]:
    """One record per (premise, entailed hypothesis); ids ``nli-<pairID>``."""
    for premise, by_label in groups.items():
        entailed = by_label.get("entailment", [])
        contradicted = [h for _, h in by_label.get("contradiction", [])]
        if not entailed:
            stats.add("no_positive")
            continue
        if not contradicted:
            stats.add("no_negative")
            continue
        positives = [h for _, h in entailed]
        for pair_id, hyp in entailed:
            rid = f"{SOURCE}-{pair_id}"
            # Other entailed hypotheses of the premise are positives too: keep them out.
            negs = pick_negatives([contradicted], positives, k, record_rng(seed, rid), stats)
            if not negs:  # every contradiction repeated an entailment: no hard negative left
                stats.add("no_negative")
                continue
            yield make_record(premise, hyp, negs, SOURCE, rid)
