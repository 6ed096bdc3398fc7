"""Harvest on one machine: stream every input through a source's functions,
clean, de-duplicate and write pair shards plus `summary.json`.

Memory stays flat in the size of the dump: records stream one at a time;
joins (Reddit, Stack Exchange, S2ORC) go through an on-disk SQLite group-by;
de-duplication keeps 8-byte digests only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence

from tqdm import tqdm

from e5jax.errors import E5Error
from e5jax.data.harvest.cleaning import CleanConfig, Deduper, clean_pair
from e5jax.data.harvest.grouping import DiskGrouper
from e5jax.data.harvest.registry import get_source
from e5jax.data.harvest.summary import Summary
from e5jax.data.harvest.types import Drop, Pair, Record, Source
from e5jax.data.harvest.writer import ShardWriter
from e5jax.paths import local


class _Limit(Exception):
    """Raised internally when `--limit` pairs have been kept."""


def check_limit(limit: int | None) -> None:
    """None means no limit; 0 or less would still keep one pair (the check follows a write), so refuse it."""
    if limit is not None and limit < 1:
        raise E5Error(f"harvest: --limit {limit}: want 1 or more pairs (leave --limit out for no limit)")


def require_pairs(summary: Summary) -> None:
    """A harvest that kept nothing is an error, not an empty success: name the inputs and the top drop reasons."""
    if summary.kept > 0:
        return
    inputs = " ".join(summary.inputs[:3]) + (f" (+{len(summary.inputs) - 3} more)" if len(summary.inputs) > 3 else "")
    top = sorted(summary.dropped.items(), key=lambda kv: -kv[1])[:3]
    why = "dropped " + ", ".join(f"{r}={n:,}" for r, n in top) if top else "nothing dropped"
    hint = f"is it empty, or not in {summary.source} format?" if summary.records == 0 else "see summary.json"
    raise E5Error(
        f"harvest {summary.source}: kept 0 pairs from --input {inputs} "
        f"({summary.records:,} records read, {why}); {hint}"
    )


def _records(source: Source, inputs: Sequence[str], cfg: CleanConfig, summary: Summary) -> Iterator[Record]:
    """Every record of every input; drops are counted, not passed on."""
    bar = tqdm(total=sum(os.path.getsize(p) for p in inputs), unit="B", unit_scale=True,
               desc=f"harvest {source.name}", mininterval=1.0, disable=None)
    try:
        for path in inputs:
            for rec in source.read(path, cfg.max_record_chars):
                summary.records += 1
                if isinstance(rec, Drop):
                    summary.drop(rec.reason)
                else:
                    yield rec
            bar.update(os.path.getsize(path))
            bar.set_postfix(kept=summary.kept)
    finally:
        bar.close()


def _raw_pairs(source: Source, records: Iterable[Record], tmp_dir: str | None) -> Iterator[Pair | Drop]:
    if not source.keyed:
        for rec in records:
            yield from source.to_pairs(rec)
        return
    with DiskGrouper(tmp_dir) as grouper:
        for rec in records:
            grouper.add(source.key(rec), rec)
        for key, group in grouper.groups():
            yield from source.group_to_pairs(key, group)


def harvest(
    source_name: str,
    inputs: Sequence[str],
    output: str | os.PathLike,
    cfg: CleanConfig = CleanConfig(),
    limit: int | None = None,
    compress: str | None = None,
    tmp_dir: str | None = None,
) -> Summary:
    """Harvest `inputs` (files in `source_name`'s format) into pair shards in
    `output`; returns (and writes) the summary. Stops after `limit` pairs."""
    source = get_source(source_name)
    check_limit(limit)
    for p in inputs:
        local(p, "harvest: --input", "the local harvest reads and sizes files on disk (use --beam for gs://)")
        if os.path.isdir(p):
            raise E5Error(f"harvest: --input {p} is a directory; pass the dump files inside it")
        if not os.path.isfile(p):
            raise E5Error(f"harvest: input file not found: {p}")
    if not inputs:
        raise E5Error("harvest: give at least one --input file")
    out = local(output, "harvest: --output", "the local harvest writes and renames shard files (use --beam for gs://)")
    if out.exists() and not out.is_dir():
        raise E5Error(f"harvest: --output {out} is a file; give a folder for the pair shards and summary.json")
    if out.exists() and any(out.glob("pairs-*")):
        raise E5Error(f"harvest: {out} already holds pair shards; choose an empty --output folder")
    summary = Summary(source.name, inputs=[str(p) for p in inputs], config=cfg.to_dict())
    dedup = Deduper()
    start = time.perf_counter()
    # The writer is closed (its shard completed) on any exit, errors included.
    with ShardWriter(out, cfg.lines_per_shard, compress) as writer:
        try:
            for item in _raw_pairs(source, _records(source, inputs, cfg, summary), tmp_dir):
                if isinstance(item, Drop):
                    summary.drop(item.reason)
                    continue
                rec = clean_pair(source.name, item, cfg)
                if isinstance(rec, Drop):
                    summary.drop(rec.reason)
                elif not dedup.first_time(rec["id"]):
                    summary.drop("duplicate")
                else:
                    writer.write(rec)
                    summary.kept += 1
                    if limit is not None and summary.kept >= limit:
                        raise _Limit
        except _Limit:
            pass
        finally:
            summary.seconds = time.perf_counter() - start
    summary.shards = writer.shards
    summary.write(out)
    return summary
